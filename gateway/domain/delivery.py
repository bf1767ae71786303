"""What the sender does with a partner's receipt: the outbox's decision table (DESIGN.md section 4).

A receipt says whether the partner took a message in. If it did, the message is delivered, whatever the
partner then made of its effect (a business refusal travels as its own statement). If it did not, the code
says whether trying again can help:

- the partner lacks earlier statements (``SEQUENCE_GAP`` with the first missing number): resend from there,
  at the pace of the backoff;
- the partner already took in the statements up to a later sequence (``REPLAY`` with its position, after a
  lost receipt): continue from its position;
- the partner failed while handling it (``INTERNAL_ERROR``): retry after a backoff, as after a lost
  connection;
- anything else is final: a key or trust document the partner does not accept, a replayed sequence after a
  restored backup, clocks that disagree (statements are signed with a fresh validity window at every send, so
  an expiry refusal means the clocks differ), a message too large or malformed, a wrong recipient. Such a
  message leaves its channel for the dead-letter list, where an operator retries or abandons it, and the
  messages behind it flow on.
"""

from __future__ import annotations

import enum

from gateway.domain.errors import ResponseCode


class Outcome(enum.StrEnum):
    """What to do with an outbox message after a delivery attempt."""

    DELIVERED = "delivered"
    CATCH_UP = "catch up"
    RESEND_FROM = "resend from"
    RETRY = "retry"
    DEAD_LETTER = "dead letter"


RETRYABLE_REFUSALS = frozenset({ResponseCode.INTERNAL_ERROR})
"""Refusals of a message not taken in that a later attempt may overcome without anyone acting."""


def classify(code: ResponseCode, *, taken_in: bool, resend_from: int, sequence: int, behind: bool = False) -> Outcome:
    """The outcome of a receipt for a message sent with ``sequence`` (0 for a trust document).

    ``behind`` is True when a REPLAY receipt says the partner's copy of the channel is not where this side
    thought: it took in statements whose receipts were lost (or this side's store was restored from a backup).
    The sender then continues from the partner's position and sends the message again; a statement the
    partner took in before is acknowledged by its message ID, with no second effect.
    """
    if taken_in:
        return Outcome.DELIVERED
    if code is ResponseCode.REPLAY and behind:
        return Outcome.CATCH_UP
    if code is ResponseCode.SEQUENCE_GAP:
        # Only a gap below what was sent can be filled by resending; any other claim cannot be acted on.
        return Outcome.RESEND_FROM if 0 < resend_from < sequence else Outcome.DEAD_LETTER
    if code in RETRYABLE_REFUSALS:
        return Outcome.RETRY
    return Outcome.DEAD_LETTER
