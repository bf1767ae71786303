"""`wire.BlockReader` reads every block exactly as `wire.block_from_proto` does, refusals included."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbon_gateway.v1 import records_pb2
from gateway import wire
from gateway.domain import text
from gateway.domain.blocks import MAX_SERIAL, UnitBlock
from gateway.domain.errors import GatewayError
from gateway.domain.nomenclature import DEFAULT_NOMENCLATURE, IssuingRegistry, Nomenclature

NOMENCLATURE = Nomenclature.of(
    (
        *DEFAULT_NOMENCLATURE.registries.values(),
        IssuingRegistry(code="XX-REG", unit_kinds=("VCU", "VER"), issuance_pattern="I[0-9]+"),
        IssuingRegistry(code="YY-REG", unit_kinds=("VCU",), issuance_pattern="I[0-9]+"),
    )
)


_Values = tuple[st.SearchStrategy[object], st.SearchStrategy[object]]


def _mostly(good: list[object], bad: list[object]) -> _Values:
    """The good values alone, for a base message, and good values far more often than bad ones, for a change."""
    return st.sampled_from(good), st.sampled_from(good * (3 * len(bad) // max(len(good), 1) + 3) + bad)


_SPACES = _mostly(
    [
        ("CCER", "CN-CCER", ""),
        ("ccer", "cn-ccer", ""),
        ("CEA", "CN-CEA", ""),
        ("VCU", "XX-REG", "I7"),
        ("VCU", "XX-REG", "i7"),
        ("VCU", "XX-REG", "I8"),
        ("VCU", "YY-REG", "I8"),
        ("VER", "XX-REG", "I8"),
    ],
    [
        ("VCU", "XX-REG", ""),
        ("CCER", "CN-CEA", ""),
        ("CCER", "NOWHERE", ""),
        ("", "CN-CCER", ""),
        ("CCER", "CN-CCER", "I7"),
        None,
    ],
)
_STARTS = _mostly([0, 1, 5, 1000, MAX_SERIAL - 1], [MAX_SERIAL + 1, -1, -(2**63)])
_LENGTHS = _mostly([0, 1, 4], [-1, 2**63 - 1])
_ATTRIBUTES = _mostly(
    [(), (("k", "v"),), (("b", "1"), ("a", "2")), (("a", "2"), ("b", "1"))], [(("k", "v"), ("k", "w")), (("", "v"),)]
)
_TIES = _mostly(
    [("", "", ""), ("CHN", "CA0001", "CHN-A-0001"), ("CHN", "CA0001", "CHN-A-0002"), ("CHN", "CA0002", "CHN-A-0001")],
    [("CHN", "CA1", "CHN-A-0001"), ("chn", "CA0001", "A"), ("CHN", "", ""), ("ZZZ", "CA0001", "CHN-A-0001")],
)


_FIELDS: dict[str, _Values] = {
    "start": _STARTS,
    "length": _LENGTHS,
    "vintage": _mostly([2021, 2025], [0, 99999]),
    "project_id": _mostly(["", "P-1"], ["P 1\x00"]),
    "methodology_code": _mostly(["", "M-1"], []),
    "mitigation_type": _mostly(["", "Removals"], ["x" * 10_000]),
    "registry_reference": _mostly(["", "ref-1"], []),
    "first_transferred": (st.booleans(), st.booleans()),
    "space": _SPACES,
    "attributes": _ATTRIBUTES,
    "tie": _TIES,
}


def _message(values: dict[str, object]) -> records_pb2.UnitBlock:
    start, length = values["start"], values["length"]
    assert isinstance(start, int) and isinstance(length, int)
    msg = records_pb2.UnitBlock(start=start, end=max(min(start + length, 2**63 - 1), -(2**63)))
    for name in ("vintage", "project_id", "methodology_code", "mitigation_type", "registry_reference"):
        setattr(msg, name, values[name])
    msg.first_transferred = bool(values["first_transferred"])
    if values["space"] is not None:
        msg.space.unit_kind, msg.space.issuing_registry, msg.space.issuance = values["space"]  # type: ignore[misc]
    for name, value in values["attributes"]:  # type: ignore[attr-defined]
        msg.attributes.add(name=name, value=value)
    msg.first_transferring_party, msg.cooperative_approach, msg.authorization_id = values["tie"]  # type: ignore[misc]
    return msg


@st.composite
def _messages(draw: st.DrawFn) -> list[records_pb2.UnitBlock]:
    """Messages that each differ from one base in a field or two, so that a reader meets blocks alike but for
    any one of their values."""
    base = {name: draw(good) for name, (good, _) in _FIELDS.items()}
    messages = []
    for _ in range(draw(st.integers(0, 30))):
        values = dict(base)
        for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=2)):
            values[name] = draw(_FIELDS[name][1])
        messages.append(_message(values))
    return messages


def _outcome(read: Callable[[], UnitBlock]) -> object:
    try:
        block = read()
    except GatewayError as exc:
        return (exc.code, exc.field, exc.message)
    assert isinstance(block, UnitBlock)
    return block


@settings(max_examples=400)
@given(_messages(), st.booleans())
def test_a_reader_reads_each_block_as_block_from_proto_does(messages: list[records_pb2.UnitBlock], named: bool) -> None:
    nomenclature = NOMENCLATURE if named else None
    reader = wire.BlockReader(nomenclature)
    for i, msg in enumerate(messages):
        field = f"proposal.blocks[{i}]"
        expected = _outcome(functools.partial(wire.block_from_proto, msg, field, nomenclature))
        assert _outcome(functools.partial(reader.read, msg, field)) == expected


def test_blocks_alike_but_for_their_serials_are_refused_for_their_serials_alone() -> None:
    reader = wire.BlockReader(NOMENCLATURE)
    good = records_pb2.UnitBlock(start=1, end=5, vintage=2025)
    good.space.unit_kind, good.space.issuing_registry = "ccer", "cn-ccer"
    first = reader.read(good, "blocks[0]")
    assert (first.space.unit_kind, first.space.issuing_registry) == ("CCER", "CN-CCER")
    backwards = records_pb2.UnitBlock()
    backwards.CopyFrom(good)
    backwards.start, backwards.end = 9, 8
    try:
        reader.read(backwards, "blocks[1]")
    except GatewayError as exc:
        assert exc.field == "blocks[1].end"
    else:
        raise AssertionError("a backwards range was read")
    later = records_pb2.UnitBlock()
    later.CopyFrom(good)
    later.start, later.end = 7, 7
    assert reader.read(later, "blocks[2]") == first.with_range(7, 7)


def test_a_block_with_too_many_attributes_is_refused_as_block_from_proto_refuses_it() -> None:
    msg = records_pb2.UnitBlock(start=1, end=5, vintage=2025)
    msg.space.unit_kind, msg.space.issuing_registry = "CCER", "CN-CCER"
    for i in range(text.MAX_ATTRIBUTES + 1):
        msg.attributes.add(name=f"a{i}", value="v")
    expected = _outcome(functools.partial(wire.block_from_proto, msg, "blocks[0]", NOMENCLATURE))
    assert isinstance(expected, tuple) and expected[1] == "blocks[0].attributes"
    assert _outcome(functools.partial(wire.BlockReader(NOMENCLATURE).read, msg, "blocks[0]")) == expected


def test_a_block_tied_by_a_party_code_outside_iso_3166_is_refused() -> None:
    """Three capitals are not yet a Party: a partner's block tied by ``ZZZ`` was taken in, and the acquiring
    side's AEF report, which writes ISO codes only, refused that year and every later one while it held them."""
    msg = records_pb2.UnitBlock(start=1, end=10, vintage=2025, mitigation_type="Removals")
    msg.space.unit_kind, msg.space.issuing_registry = "CCER", "CN-CCER"
    msg.first_transferring_party, msg.cooperative_approach, msg.authorization_id = "ZZZ", "CA0001", "CHN-A-0001"
    with pytest.raises(GatewayError) as refused:
        wire.block_from_proto(msg, "proposal.blocks[0]", None)
    assert refused.value.field == "proposal.blocks[0].first_transferring_party"
    assert "'ZZZ' is not an ISO 3166-1 alpha-3 Party code" in refused.value.message
    msg.first_transferring_party = "CHN"
    assert wire.block_from_proto(msg, "proposal.blocks[0]", None).first_transferring_party == "CHN"
