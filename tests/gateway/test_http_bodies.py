"""Request bodies of the JSON partner path, decompressed by the gateway (`gateway.http.app.decoded_body`): only
as far as the limit, and only whole compressed streams."""

from __future__ import annotations

import gzip
import zlib

import pytest

from gateway.http.app import BodyTooLarge, BodyUnreadable, decoded_body

LIMIT = 64 * 1024
BODY = b'{"payload": "e30", "payloadType": "application/json", "signatures": []}' * 10


def _deflate(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [
        ("", BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        (" GZIP ", gzip.compress(BODY)),
        ("deflate", _deflate(BODY, zlib.MAX_WBITS)),  # the zlib format RFC 9110 names
        ("deflate", _deflate(BODY, -zlib.MAX_WBITS)),  # the raw stream some senders send
    ],
)
def test_a_body_is_read_as_its_encoding_says(encoding: str, raw: bytes) -> None:
    assert decoded_body(raw, encoding, LIMIT) == BODY


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_too_large() -> None:
    assert decoded_body(gzip.compress(b"x" * LIMIT), "gzip", LIMIT) == b"x" * LIMIT
    with pytest.raises(BodyTooLarge, match=f"more than {LIMIT} bytes"):
        decoded_body(gzip.compress(b"x" * (LIMIT + 1)), "gzip", LIMIT)


def test_a_bomb_is_decompressed_no_further_than_the_limit() -> None:
    # Zeros past the limit, then bytes that do not decompress: a decoder that went on past the limit would meet
    # them and call the body unreadable. This one stops at the limit and calls it too large.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = compressor.compress(b"\0" * (50 * LIMIT)) + compressor.flush(zlib.Z_FULL_FLUSH) + b"\xff" * 64
    with pytest.raises(BodyUnreadable):
        decoded_body(bomb, "gzip", 100 * LIMIT)
    with pytest.raises(BodyTooLarge):
        decoded_body(bomb, "gzip", LIMIT)


CASES = {
    "gzip that is not gzip": ("gzip", b"\x1f\x8b not gzip at all", "does not decompress"),
    "deflate that is not deflate": ("deflate", b"xyz", "does not decompress"),
    "gzip without its trailer": ("gzip", gzip.compress(BODY)[:-8], "ends before the end"),
    "gzip cut inside its stream": ("gzip", gzip.compress(BODY)[:12], "ends before the end"),
    "gzip cut inside its header": ("gzip", gzip.compress(BODY)[:5], "ends before the end"),
    "an empty gzip body": ("gzip", b"", "ends before the end"),
    "deflate cut short": ("deflate", _deflate(BODY, zlib.MAX_WBITS)[:-4], "ends before the end"),
    "data after the gzip stream": ("gzip", gzip.compress(BODY) + b"junk", "4 bytes follow the end"),
    "a second gzip member": ("gzip", gzip.compress(BODY) * 2, "bytes follow the end"),
    "brotli": ("br", b"\x0b\x02\x80{}\x03", "'br' is not supported"),
    "two encodings": ("gzip, gzip", gzip.compress(gzip.compress(BODY)), "not supported"),
    "a long unknown encoding": ("z" * 5000, b"", "'zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz...' is not"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_body_that_cannot_be_read_as_its_encoding_says_is_refused(case: str) -> None:
    encoding, raw, reason = CASES[case]
    with pytest.raises(BodyUnreadable) as refused:
        decoded_body(raw, encoding, LIMIT)
    assert reason in str(refused.value)
