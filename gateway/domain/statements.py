"""The statement header checks of DESIGN.md section 5, steps 5 to 8, as pure functions."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import dataclass

from gateway.domain.errors import GatewayError, ResponseCode

GENESIS_HASH = bytes(32)
"""The previous-payload hash of the first message on a channel."""


@dataclass(frozen=True, slots=True)
class Header:
    """The header every statement carries."""

    message_id: str
    sender: str
    receiver: str
    sequence: int
    previous_hash: bytes
    issued_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ChannelState:
    """The high-water mark of one (sender, receiver) channel: the last sequence and its payload's hash."""

    last_sequence: int = 0
    last_hash: bytes = GENESIS_HASH

    def advance(self, payload: bytes) -> ChannelState:
        """The state after one more message with ``payload``."""
        return ChannelState(self.last_sequence + 1, payload_hash(payload))


def payload_hash(payload: bytes) -> bytes:
    """SHA-256 of a payload, as chained in the statement header."""
    return hashlib.sha256(payload).digest()


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """How far a receiver trusts the sender's clock, and how long a message may live."""

    clock_skew: dt.timedelta = dt.timedelta(minutes=5)
    max_lifetime: dt.timedelta = dt.timedelta(hours=24)


def check_addressing(header: Header, *, partner: str, self_party: str) -> None:
    """Step 5: the signed sender is the partner whose keys verified, and the receiver is this gateway."""
    if header.sender != partner:
        raise GatewayError(
            ResponseCode.KEY_UNKNOWN_OR_REVOKED,
            f"the payload names sender {header.sender!r} but was signed by {partner!r}'s keys",
        )
    if header.receiver != self_party:
        raise GatewayError(
            ResponseCode.WRONG_RECIPIENT, f"the message is addressed to {header.receiver!r}, not {self_party!r}"
        )


def check_window(header: Header, *, now: dt.datetime, window: TimeWindow) -> None:
    """Step 7: the message is within its validity window, allowing for clock skew."""
    if header.expires_at <= header.issued_at:
        raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the message expires before it was issued")
    if header.expires_at - header.issued_at > window.max_lifetime:
        raise GatewayError(
            ResponseCode.MESSAGE_EXPIRED,
            f"the message lives longer than the maximum of {window.max_lifetime}",
        )
    if header.issued_at > now + window.clock_skew:
        raise GatewayError(ResponseCode.MESSAGE_EXPIRED, "the message is issued in the future beyond the clock skew")
    if now - window.clock_skew >= header.expires_at:
        raise GatewayError(ResponseCode.MESSAGE_EXPIRED, f"the message expired at {header.expires_at.isoformat()}")


class SequenceVerdict(enum.StrEnum):
    """Where a message stands on its channel."""

    NEXT = "next"
    GAP = "gap"


def check_sequence(header: Header, channel: ChannelState) -> SequenceVerdict:
    """Step 8: the sequence is exactly last + 1 and the hash chains to the previous payload.

    An old sequence number is a replay. A higher one is a gap: the caller holds the message and asks for a
    resend from ``channel.last_sequence + 1``.
    """
    if header.sequence <= channel.last_sequence:
        raise GatewayError(
            ResponseCode.REPLAY,
            f"sequence {header.sequence} was already processed (last is {channel.last_sequence})",
        )
    if header.sequence > channel.last_sequence + 1:
        return SequenceVerdict.GAP
    if header.previous_hash != channel.last_hash:
        raise GatewayError(
            ResponseCode.REPLAY, "the previous-payload hash does not chain to the last message on the channel"
        )
    return SequenceVerdict.NEXT
