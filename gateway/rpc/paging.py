"""Pages of the operator API's lists: a page size, an opaque token for where the next page starts, and a byte
budget, so that no answer outgrows a default gRPC client (4 MiB) and no list holds the event loop for long."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from gateway.domain import text
from gateway.domain.errors import GatewayError, ResponseCode

DEFAULT_PAGE_SIZE = 1_000
MAX_PAGE_SIZE = 5_000
MAX_PAGE_BYTES = 3 << 20
"""The items of one page take at most this much (one item takes what it takes, even more)."""
MAX_TOKEN_LENGTH = 1_024

Position = tuple[str | int, ...]
Item = TypeVar("Item")
Proto = TypeVar("Proto", bound=Message)


def page_size(requested: int) -> int:
    """The items a page holds at the most: ``requested``, or the default for 0; refuse more than the maximum."""
    if requested > MAX_PAGE_SIZE:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"page_size {requested} is above {MAX_PAGE_SIZE}; ask for fewer and follow next_page_token",
            field="page_size",
        )
    return requested or DEFAULT_PAGE_SIZE


def scope_tag(scope: str) -> str:
    """What a token carries of its list and filters (``scope``): a check against a token reused with other
    filters, not a secret."""
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def encode_token(position: Position, scope: str = "") -> str:
    """The token of the page that starts after ``position``, in the list and with the filters ``scope`` names
    (the method and its filter fields: a token is taken back only with the same)."""
    values = [scope_tag(scope), *position]
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode("ascii")


def decode_token(
    token: str, shape: Sequence[type], scope: str = "", check: Callable[[Position], object] | None = None
) -> Position | None:
    """The position a token names, of the given shape (``str`` and ``int`` items), given for the list and
    filters ``scope`` names; None for no token. A token of another shape, of another list or filters, or whose
    position ``check`` refuses (by raising `ValueError`), is refused, naming ``page_token`` (a token names a
    position; it is not a secret)."""
    if not token:
        return None
    refused = GatewayError(
        ResponseCode.INVALID_ARGUMENT,
        "page_token is not a token this list gave: pass the next_page_token of the page before, or none",
        field="page_token",
    )
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise refused
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, binascii.Error):
        raise refused from None
    if not isinstance(values, list) or len(values) != len(shape) + 1:
        raise refused
    if values[0] != scope_tag(scope):
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            "page_token comes from another list, or from this list with other filters: pass the next_page_token of"
            " the page before with the same filters, or none",
            field="page_token",
        )
    position: list[str | int] = []
    for value, kind in zip(values[1:], shape, strict=True):
        if type(value) is not kind:  # also refuses a bool for an int
            raise refused
        if isinstance(value, int):
            if not 0 <= value <= text.MAX_INT64:
                raise refused
            position.append(value)
        elif isinstance(value, str) and len(value) <= text.MAX_IDENTIFIER_LENGTH * 4 and text.encodable(value) == value:
            position.append(value)
        else:
            raise refused
    if check is not None:
        try:
            check(tuple(position))
        except ValueError:
            raise refused from None
    return tuple(position)


async def fill(
    read: Callable[[Position | None, int], Awaitable[Sequence[Item]]],
    after: Position | None,
    size: int,
    to_proto: Callable[[Item], Proto],
    position: Callable[[Item], Position],
    *,
    chunk: int,
    scope: str = "",
) -> tuple[list[Proto], str]:
    """A page: the messages of the items after ``after``, read ``chunk`` at a time, until ``size`` of them or
    `MAX_PAGE_BYTES`; and the token of the next page (for the list and filters ``scope`` names), empty when this
    one is the last."""
    messages: list[Proto] = []
    total = 0
    last: Item | None = None
    while len(messages) < size:
        wanted = min(chunk, size - len(messages))
        batch = await read(after, wanted + 1)  # one more, to know whether the list goes on
        for item in batch[:wanted]:
            message = to_proto(item)
            total += message.ByteSize() + 8
            if messages and total > MAX_PAGE_BYTES:
                assert last is not None
                return messages, encode_token(position(last), scope)
            messages.append(message)
            last = item
        if len(batch) <= wanted:
            return messages, ""
        assert last is not None
        after = position(last)
    assert last is not None
    return messages, encode_token(position(last), scope)
