"""Statement header checks (DESIGN.md section 5, steps 5, 7 and 8) as a named table of cases."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.statements import (
    GENESIS_HASH,
    ChannelState,
    Header,
    SequenceVerdict,
    TimeWindow,
    check_addressing,
    check_sequence,
    check_window,
    payload_hash,
)

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
WINDOW = TimeWindow(clock_skew=dt.timedelta(minutes=5), max_lifetime=dt.timedelta(hours=24))


def header(
    *,
    sender: str = "CHN",
    receiver: str = "CHE",
    sequence: int = 1,
    previous_hash: bytes = GENESIS_HASH,
    issued: dt.timedelta = dt.timedelta(0),
    lifetime: dt.timedelta = dt.timedelta(hours=1),
) -> Header:
    return Header("m-1", sender, receiver, sequence, previous_hash, NOW + issued, NOW + issued + lifetime)


WINDOW_CASES = [
    ("fresh", header(), None),
    ("issued within the skew ahead", header(issued=dt.timedelta(minutes=4)), None),
    ("issued beyond the skew ahead", header(issued=dt.timedelta(minutes=6)), ResponseCode.MESSAGE_EXPIRED),
    ("expired beyond the skew", header(issued=-dt.timedelta(hours=2)), ResponseCode.MESSAGE_EXPIRED),
    (
        "expired within the skew",
        header(issued=-dt.timedelta(hours=1, minutes=-3)),
        None,
    ),
    ("lifetime too long", header(lifetime=dt.timedelta(hours=25)), ResponseCode.MESSAGE_EXPIRED),
    ("expires before issued", header(lifetime=-dt.timedelta(seconds=1)), ResponseCode.MALFORMED_PAYLOAD),
]


@pytest.mark.parametrize(("case", "h", "code"), WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_time_window(case: str, h: Header, code: ResponseCode | None) -> None:
    if code is None:
        check_window(h, now=NOW, window=WINDOW)
    else:
        with pytest.raises(GatewayError) as caught:
            check_window(h, now=NOW, window=WINDOW)
        assert caught.value.code is code


def test_addressing() -> None:
    check_addressing(header(), partner="CHN", self_party="CHE")
    with pytest.raises(GatewayError) as caught:
        check_addressing(header(receiver="JPN"), partner="CHN", self_party="CHE")
    assert caught.value.code is ResponseCode.WRONG_RECIPIENT
    with pytest.raises(GatewayError) as caught:
        check_addressing(header(sender="SGP"), partner="CHN", self_party="CHE")
    assert caught.value.code is ResponseCode.KEY_UNKNOWN_OR_REVOKED


FIRST = b"first payload"
AFTER_FIRST = ChannelState().advance(FIRST)

SEQUENCE_CASES = [
    ("first message", ChannelState(), header(sequence=1), SequenceVerdict.NEXT),
    ("next message", AFTER_FIRST, header(sequence=2, previous_hash=payload_hash(FIRST)), SequenceVerdict.NEXT),
    ("gap", AFTER_FIRST, header(sequence=4, previous_hash=payload_hash(FIRST)), SequenceVerdict.GAP),
    ("old sequence", AFTER_FIRST, header(sequence=1), ResponseCode.REPLAY),
    ("broken chain", AFTER_FIRST, header(sequence=2, previous_hash=GENESIS_HASH), ResponseCode.REPLAY),
]


@pytest.mark.parametrize(("case", "channel", "h", "outcome"), SEQUENCE_CASES, ids=[c[0] for c in SEQUENCE_CASES])
def test_sequence_and_chain(
    case: str, channel: ChannelState, h: Header, outcome: SequenceVerdict | ResponseCode
) -> None:
    if isinstance(outcome, SequenceVerdict):
        assert check_sequence(h, channel) is outcome
    else:
        with pytest.raises(GatewayError) as caught:
            check_sequence(h, channel)
        assert caught.value.code is outcome


def test_channel_advances_by_one_and_chains_the_payload_hash() -> None:
    state = ChannelState().advance(b"a").advance(b"b")
    assert state == ChannelState(2, payload_hash(b"b"))
