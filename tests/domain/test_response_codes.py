"""Stable response codes (DESIGN.md section 4): documented meanings and pinned wire values."""

from __future__ import annotations

import pytest

from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.errors import RESPONSE_CODE_MEANINGS, GatewayError, ResponseCode

PINNED_VALUES: dict[str, int] = {
    "OK": 0,
    "UNKNOWN_ACCOUNT": 1,
    "ACCOUNT_NOT_ELIGIBLE": 2,
    "UNIT_NOT_HELD": 3,
    "BLOCK_OVERLAP": 4,
    "BLOCK_FROZEN": 5,
    "AUTHORIZATION_MISSING": 6,
    "AUTHORIZATION_EXPIRED": 7,
    "AUTHORIZATION_EXCEEDED": 8,
    "PURPOSE_NOT_ALLOWED": 9,
    "SIGNATURE_INVALID": 10,
    "KEY_UNKNOWN_OR_REVOKED": 11,
    "REPLAY": 12,
    "SEQUENCE_GAP": 13,
    "MESSAGE_EXPIRED": 14,
    "WRONG_RECIPIENT": 15,
    "UNSUPPORTED_PAYLOAD_TYPE": 16,
    "MALFORMED_PAYLOAD": 17,
    "ENVELOPE_TOO_LARGE": 18,
    "UNKNOWN_TRANSFER": 19,
    "INVALID_STATE": 20,
    "IDEMPOTENCY_KEY_REUSED": 21,
    "INVALID_ARGUMENT": 22,
    "UNKNOWN_PARTNER": 23,
    "PEER_IDENTITY_MISMATCH": 24,
    "THRESHOLD_NOT_MET": 25,
    "TRUST_DOCUMENT_EXPIRED": 26,
    "TRUST_UPDATE_REFUSED": 27,
    "DECISION_DEADLINE_PASSED": 28,
    "INTERNAL_ERROR": 29,
    "UNKNOWN_SERIAL_SPACE": 30,
    "PROVENANCE_REFUSED": 31,
    "PERIOD_LOCKED": 32,
    "CALLER_UNAUTHENTICATED": 33,
    "CALLER_NOT_PERMITTED": 34,
    "CHANGES_PRUNED": 35,
    "TOO_MANY_WATCHES": 36,
    "TOO_MANY_MAPPINGS": 37,
    "TOO_MANY_OPEN_CALLS": 38,
    "TOO_MANY_CALLS": 39,
    "UNKNOWN_RECONCILIATION_RUN": 40,
    "UNKNOWN_MESSAGE": 41,
    "TRANSFER_DECLINED": 42,
    "TRANSFER_ENDED": 43,
}
"""The wire values. They are part of the contract: a renumbering must fail here."""


@pytest.mark.parametrize(("name", "value"), list(PINNED_VALUES.items()), ids=list(PINNED_VALUES))
def test_pinned_value(name: str, value: int) -> None:
    assert ResponseCode[name].value == value
    assert ResponseCode(value).name == name


def test_no_code_is_added_or_removed_without_updating_the_pinned_table() -> None:
    assert {name: member.value for name, member in ResponseCode.__members__.items()} == PINNED_VALUES


def test_values_are_unique() -> None:
    # __members__ includes aliases, which iterating the enum would hide.
    values = [member.value for member in ResponseCode.__members__.values()]
    assert len(values) == len(set(values))


@pytest.mark.parametrize("code", list(ResponseCode), ids=lambda c: c.name)
def test_every_code_has_a_meaning(code: ResponseCode) -> None:
    meaning = RESPONSE_CODE_MEANINGS[code]
    assert isinstance(meaning, str)
    assert meaning.strip() == meaning
    assert meaning


def test_meanings_name_exactly_the_codes_and_are_distinct() -> None:
    assert set(RESPONSE_CODE_MEANINGS) == set(ResponseCode)
    assert len(set(RESPONSE_CODE_MEANINGS.values())) == len(RESPONSE_CODE_MEANINGS)


def test_gateway_error_carries_its_code_field_and_blocks() -> None:
    block = UnitBlock(SerialSpace("CCER", "CN-CCER"), 1, 10, vintage=2025)
    error = GatewayError(ResponseCode.BLOCK_OVERLAP, "overlaps", field="blocks[0]", blocks=[block])
    assert error.code is ResponseCode.BLOCK_OVERLAP
    assert error.message == "overlaps"
    assert error.field == "blocks[0]"
    assert error.blocks == (block,)
    assert str(error) == "BLOCK_OVERLAP: overlaps (field blocks[0])"
    assert str(GatewayError(ResponseCode.REPLAY, "seen")) == "REPLAY: seen"
