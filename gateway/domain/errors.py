"""Stable response codes and the typed errors of the domain.

The integer values are part of the wire contract (``ResponseCode`` in ``proto/``): never renumber them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from gateway.domain.blocks import UnitBlock


class ResponseCode(enum.IntEnum):
    """Why a message, proposal or request was refused. Values are stable."""

    OK = 0
    UNKNOWN_ACCOUNT = 1
    ACCOUNT_NOT_ELIGIBLE = 2
    UNIT_NOT_HELD = 3
    BLOCK_OVERLAP = 4
    BLOCK_FROZEN = 5
    AUTHORIZATION_MISSING = 6
    AUTHORIZATION_EXPIRED = 7
    AUTHORIZATION_EXCEEDED = 8
    PURPOSE_NOT_ALLOWED = 9
    SIGNATURE_INVALID = 10
    KEY_UNKNOWN_OR_REVOKED = 11
    REPLAY = 12
    SEQUENCE_GAP = 13
    MESSAGE_EXPIRED = 14
    WRONG_RECIPIENT = 15
    UNSUPPORTED_PAYLOAD_TYPE = 16
    MALFORMED_PAYLOAD = 17
    ENVELOPE_TOO_LARGE = 18
    UNKNOWN_TRANSFER = 19
    INVALID_STATE = 20
    IDEMPOTENCY_KEY_REUSED = 21
    INVALID_ARGUMENT = 22
    UNKNOWN_PARTNER = 23
    PEER_IDENTITY_MISMATCH = 24
    THRESHOLD_NOT_MET = 25
    TRUST_DOCUMENT_EXPIRED = 26
    TRUST_UPDATE_REFUSED = 27
    DECISION_DEADLINE_PASSED = 28
    INTERNAL_ERROR = 29
    UNKNOWN_SERIAL_SPACE = 30
    PROVENANCE_REFUSED = 31
    PERIOD_LOCKED = 32
    CALLER_UNAUTHENTICATED = 33
    CALLER_NOT_PERMITTED = 34
    CHANGES_PRUNED = 35
    TOO_MANY_WATCHES = 36
    TOO_MANY_MAPPINGS = 37
    TOO_MANY_OPEN_CALLS = 38
    TOO_MANY_CALLS = 39
    UNKNOWN_RECONCILIATION_RUN = 40
    UNKNOWN_MESSAGE = 41
    TRANSFER_DECLINED = 42
    TRANSFER_ENDED = 43


RESPONSE_CODE_MEANINGS: dict[ResponseCode, str] = {
    ResponseCode.OK: "accepted",
    ResponseCode.UNKNOWN_ACCOUNT: "the account is not known at this gateway",
    ResponseCode.ACCOUNT_NOT_ELIGIBLE: "the account may not take part in this action (e.g. not a holding account)",
    ResponseCode.UNIT_NOT_HELD: "the units are not held, free, in the named account",
    ResponseCode.BLOCK_OVERLAP: "the block overlaps a block this gateway holds, has reserved, has pending or still "
    "owes a partner, or a range it has issued before",
    ResponseCode.BLOCK_FROZEN: "the block is frozen by an unresolved reconciliation discrepancy",
    ResponseCode.AUTHORIZATION_MISSING: "no authorization is named, or the one named or needed is not known here",
    ResponseCode.AUTHORIZATION_EXPIRED: "the authorization is not in force on the action's date (expired, or dated "
    "later) or the vintage is outside its timeframe",
    ResponseCode.AUTHORIZATION_EXCEEDED: "the transfer would exceed the authorized quantity",
    ResponseCode.PURPOSE_NOT_ALLOWED: "the purpose is not among the authorization's purposes",
    ResponseCode.SIGNATURE_INVALID: "no threshold of valid signatures over the envelope",
    ResponseCode.KEY_UNKNOWN_OR_REVOKED: "no signature by a key the receiver trusts for this sender",
    ResponseCode.REPLAY: "the message, or its sequence number, was already processed",
    ResponseCode.SEQUENCE_GAP: "the sequence number skips ahead; the sender must resend from the first missing number",
    ResponseCode.MESSAGE_EXPIRED: "the message is outside its validity window",
    ResponseCode.WRONG_RECIPIENT: "the message is addressed to another gateway",
    ResponseCode.UNSUPPORTED_PAYLOAD_TYPE: "the payload type is not on the receiver's allow-list",
    ResponseCode.MALFORMED_PAYLOAD: "the envelope or its payload cannot be parsed or lacks a required field",
    ResponseCode.ENVELOPE_TOO_LARGE: "the envelope exceeds the receiver's size cap",
    ResponseCode.UNKNOWN_TRANSFER: "no transfer with this ID is known here",
    ResponseCode.INVALID_STATE: "the transfer's state does not allow this step",
    ResponseCode.IDEMPOTENCY_KEY_REUSED: "the idempotency key was used before with a different request",
    ResponseCode.INVALID_ARGUMENT: "a request field is missing or malformed",
    ResponseCode.UNKNOWN_PARTNER: "no partner gateway is configured for this Party",
    ResponseCode.PEER_IDENTITY_MISMATCH: "the transport identity differs from the signed sender",
    ResponseCode.THRESHOLD_NOT_MET: "fewer distinct trusted keys signed than the role's threshold",
    ResponseCode.TRUST_DOCUMENT_EXPIRED: "the sender's trusted document has expired; it must publish a new version",
    ResponseCode.TRUST_UPDATE_REFUSED: "a trust update is not the next version or lacks the old or new trust threshold",
    ResponseCode.DECISION_DEADLINE_PASSED: "the proposal waited for a decision past its deadline",
    ResponseCode.INTERNAL_ERROR: "the receiver failed while handling the message; nothing took effect, and the "
    'sender retries (taken in refused only after five failed deliveries of a statement: see "Partner exchange")',
    ResponseCode.UNKNOWN_SERIAL_SPACE: "the unit kind, issuing registry or issuance is not on this gateway's "
    "configured lists",
    ResponseCode.PROVENANCE_REFUSED: "the units belong to a serial space whose history refuses this: a space this "
    "gateway issues where the units were never issued, never left or are already back, or a space another Party "
    "issues, whose units arrive only by transfer",
    ResponseCode.PERIOD_LOCKED: "the action is dated in a period an operator locked as final; record a correction as a "
    "new entry dated in an open period",
    ResponseCode.CALLER_UNAUTHENTICATED: "the operator call carries no credentials this gateway accepts: no or an "
    "unknown bearer token or client certificate, or a partner's certificate",
    ResponseCode.CALLER_NOT_PERMITTED: "the authenticated caller's role is below the role the method needs",
    ResponseCode.CHANGES_PRUNED: "the change feed was pruned past the position to resume from; read the current "
    "state with ListTransfers and ListLedgerEntries, then watch from the position the refusal names",
    ResponseCode.TOO_MANY_WATCHES: "the gateway, or this caller, follows as many WatchChanges calls as it serves at "
    "once (64, 16 per caller, and the last 16 kept for operators and administrators); close one, or call again "
    "later",
    ResponseCode.TOO_MANY_MAPPINGS: "the gateway, or this caller, has as many mapping calls in hand as it takes at "
    "once (16, 4 per caller, and the last 4 kept for operators and administrators): they are mapped one at a time; "
    "wait for one to end, or call again later",
    ResponseCode.TOO_MANY_OPEN_CALLS: "as many health checks without credentials as the operator API reads at once "
    "(16, 2 from one address) are being read, or as many health watches without credentials as it serves at once "
    "(32, 4 from one address) are open; check again shortly, or check with credentials (a read-only token "
    "suffices), which are not counted",
    ResponseCode.TOO_MANY_CALLS: "the caller, or all callers together, have as many calls that take one request in "
    "progress as the server takes at once (the operator API: 64 per caller unless its `calls_at_once` says otherwise, "
    "streams counted apart; the partner port: 16 deliveries and 4 from one address unless `[limits]` says otherwise); "
    "wait for one to end, or call again "
    "later",
    ResponseCode.UNKNOWN_RECONCILIATION_RUN: "no reconciliation run with this ID is known here",
    ResponseCode.UNKNOWN_MESSAGE: "no outbox message with this ID is known here",
    ResponseCode.TRANSFER_DECLINED: (
        "the acquiring side's decision policy or operator declined the transfer (the rejection's message says why)"
    ),
    ResponseCode.TRANSFER_ENDED: (
        "the initiating side cancelled or terminated the transfer (its operator, or its own rules; the message says"
        " why)"
    ),
}


class GatewayError(Exception):
    """An expected refusal: bad data or a request the rules forbid. Carries a stable response code.

    ``field`` names the offending request field (a dotted path) and ``blocks`` the offending blocks, where
    they apply, so that the caller can see exactly what to correct.
    """

    def __init__(
        self,
        code: ResponseCode,
        message: str,
        *,
        field: str = "",
        blocks: Sequence[UnitBlock] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.blocks = tuple(blocks)

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.code.name}: {self.message}{where}"
