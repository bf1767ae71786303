"""`wire.transfer_to_proto` keeps the blocks of the latest transfers in wire form: what it sends must not change."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from gateway import wire
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.protocol import Rejection
from gateway.domain.records import AdjustmentMethod, Purpose, TransferTerms
from gateway.domain.statements import Header
from gateway.domain.transfer import Transfer, TransferRole, TransferState

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def _transfer(blocks: tuple[UnitBlock, ...]) -> Transfer:
    terms = TransferTerms(
        transferring_party="CHN",
        acquiring_party="CHE",
        source_account="PO",
        acquiring_account="PH",
        cooperative_approach="CA",
        authorization_id="A-1",
        purpose=Purpose.NDC,
        adjustment_method=AdjustmentMethod.TRAJECTORY,
        blocks=blocks,
    )
    return Transfer("t-1", TransferRole.ACQUIRING, TransferState.CHECKED, terms, (), NOW, NOW)


def _built_afresh(t: Transfer) -> bytes:
    message = wire.transfer_to_proto(dataclasses.replace(t, terms=dataclasses.replace(t.terms, blocks=())))
    message.blocks.extend(wire.block_to_proto(b) for b in t.terms.blocks)
    message.quantity = t.terms.quantity
    return message.SerializeToString(deterministic=True)


def test_each_change_of_a_transfer_converts_as_if_for_the_first_time() -> None:
    space = SerialSpace("CCER", "CN-CCER")
    blocks = tuple(UnitBlock(space, 10 * i + 1, 10 * i + 5, 2021, attributes=(("k", str(i)),)) for i in range(50))
    first = _transfer(blocks)
    later = dataclasses.replace(
        first,
        state=TransferState.REJECTED,
        rejections=(Rejection(ResponseCode.BLOCK_FROZEN, "frozen", blocks[:1]),),
        updated_at=NOW + dt.timedelta(seconds=1),
    )
    for t in (first, later, first, later):
        assert wire.transfer_to_proto(t).SerializeToString(deterministic=True) == _built_afresh(t)
    # Other blocks (even equal ones in another tuple) are converted from themselves.
    other = _transfer(tuple(b.with_range(b.start + 1, b.end) for b in blocks))
    assert wire.transfer_to_proto(other).SerializeToString(deterministic=True) == _built_afresh(other)
    assert len(wire.transfer_to_proto(other).blocks) == len(blocks)


def test_a_previous_hash_missing_or_of_the_wrong_length_is_named_as_such() -> None:
    at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    message = wire.header_to_proto(Header("m-1", "CHN", "CHE", 1, b"\x00" * 32, at, at + dt.timedelta(hours=1)))
    for previous, says in ((b"", "the header lacks previous_hash"), (b"\x01", "previous_hash is 1 bytes, not 32")):
        message.previous_hash = previous
        with pytest.raises(GatewayError) as caught:
            wire.header_from_proto(message)
        assert caught.value.code is ResponseCode.MALFORMED_PAYLOAD
        assert (caught.value.field, says in caught.value.message) == ("header.previous_hash", True)


@pytest.mark.parametrize(("code", "said"), [(0, "response code 0 (OK), which gives no reason"), (9999, "unknown")])
def test_a_partner_s_rejection_without_a_known_reason_is_kept_as_malformed(code: int, said: str) -> None:
    from carbon_gateway.v1 import records_pb2

    message = records_pb2.Rejection(code=code, message="looks fine")  # type: ignore[arg-type]
    rejection = wire.rejection_from_proto(message, "decision")
    assert rejection.code is ResponseCode.MALFORMED_PAYLOAD
    assert said in rejection.message and rejection.message.endswith("looks fine")
