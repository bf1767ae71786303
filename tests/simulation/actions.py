"""What happens in the simulated world, one random step at a time: operators' actions (transfers above all, and
uses, cancellations, registrations under authorizations, and requests that must be refused), deliveries, sweeps,
restarts, key rotations, network faults, and the adversary's double counts and poison."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from carbon_gateway.v1 import envelope_pb2, operator_pb2, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import DEMO_LEDGER
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.nomenclature import fold
from gateway.domain.reconciliation import Status, reconciled_block
from gateway.domain.records import Authorization, FirstTransferDefinition, Purpose
from gateway.domain.statements import ChannelState
from gateway.domain.transfer import TransferRole, TransferState
from gateway.rpc.errors import read_error_detail
from gateway.store.base import BlockStatus, OutboxState, RunRole
from gateway.store.sqlite import SQLiteStore, SQLiteTransaction
from gateway.usecases.base import Idempotency
from gateway.usecases.reconciling import ABANDON_AFTER
from signing import Role, TrustDocument, sign_envelope, sign_trust_document
from tests.integration.harness import Crafter
from tests.simulation.world import (
    ADVERSARY,
    AUTHORIZATIONS,
    NOMENCLATURE,
    OWN_SPACES,
    PARTIES,
    START,
    Corruption,
    CrashingStore,
    SimAbort,
    SimCrash,
    SimRun,
    World,
    accounts_of,
    signer_from,
)

INTERNATIONAL = ("XXU", "XX-SIM")
GUARDED = (
    BlockStatus.HELD,
    BlockStatus.RESERVED,
    BlockStatus.PENDING,
    BlockStatus.DEBITED,
    BlockStatus.USED,
    BlockStatus.CANCELLED,
)
"""The blocks no incoming block may overlap at a gateway, spelled out here rather than taken from the gateway."""
ISSUANCE = {"CHN": "I1", "CHE": "I2", "SGP": "I3"}
"""Each gateway registers units of the registry outside the network in an issuance of its own, so that no
two gateways ever register the same units there (which no gateway could detect)."""


class ActionFailed(AssertionError):
    """An action met something no correct gateway does: an internal error, or an escaped exception."""


def respell(rng: Any, code: str) -> str:
    """Another spelling of ``code`` that names the same thing: case, surrounding space, full-width forms."""
    choice = rng.randrange(4)
    if choice == 0:
        return code.lower()
    if choice == 1:
        return f" {code} "
    if choice == 2:
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in code)
    return code


def _authorization(party: str, suffix: str) -> records_pb2.Authorization:
    purposes, definition, quantity = AUTHORIZATIONS[suffix]
    later = suffix == "AUTH-LATER"
    day = START.date() + (dt.timedelta(days=2) if later else -dt.timedelta(days=30))
    return records_pb2.Authorization(
        authorization_id=f"{party}-{suffix}",
        date=day.isoformat(),
        version="1.0",
        cooperative_approach="CA0001",
        metric="GHG",
        purposes=list(purposes),
        authorized_quantity=quantity,
        timeframe_start=2021,
        timeframe_end=2030,
        first_transfer_definition=definition,
        sectors=["Energy generation"],
        activity_types=["Solar"],
        authorized_parties=[party],
    )


def _purposes_of(world: World, party: str, authorization_id: str) -> tuple[str, ...]:
    """The purposes of one of the simulation's authorizations at ``party``: those of the version in force there
    today, or those it was registered with when none is (none for an ID the simulation never registered)."""
    version = world.version_on(party, authorization_id, world.clock().date())
    if version is not None:
        return tuple(p.value for p in Purpose if p in version.purposes)
    suffix = authorization_id.partition("-")[2]
    return AUTHORIZATIONS[suffix][0] if suffix in AUTHORIZATIONS else ()


def _refused(answer: object, world: World, what: str) -> bool:
    """True for a refusal; an INTERNAL or UNKNOWN status is a bug, never an expected refusal."""
    if isinstance(answer, SimAbort):
        name = getattr(answer.code, "name", str(answer.code))
        if name in ("INTERNAL", "UNKNOWN"):
            raise ActionFailed(f"{what}: {name}: {answer.details}")
        world.note(f"  refused: {answer.details[:160]}")
        return True
    return False


def _code(answer: SimAbort, what: str) -> ResponseCode:
    """The response code a refusal carries in its error detail: every refusal names one."""
    detail = read_error_detail(answer.metadata)
    if detail is None:
        raise ActionFailed(f"{what}: refused without a response code: {answer.details[:160]}")
    code = ResponseCode(detail.code)
    if code in (ResponseCode.OK, ResponseCode.INTERNAL_ERROR):
        raise ActionFailed(f"{what}: refused with {code.name}: {answer.details[:160]}")
    return code


def _expect_refusal(answer: object, world: World, what: str, expected: set[ResponseCode]) -> None:
    """``answer`` must be a refusal with one of the ``expected`` response codes."""
    if not isinstance(answer, SimAbort):
        raise ActionFailed(f"{what}: accepted, but it must be refused with one of {sorted(c.name for c in expected)}")
    _refused(answer, world, what)
    code = _code(answer, what)
    if code not in expected:
        raise ActionFailed(
            f"{what}: refused with {code.name}, expected one of {sorted(c.name for c in expected)}:"
            f" {answer.details[:200]}"
        )


async def _frozen(world: World, party: str, selections: Sequence[operator_pb2.BlockSelection]) -> bool:
    """Whether a selection shares a unit with a range a reconciliation run froze at ``party``."""
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        for selection in selections:
            space = SerialSpace(selection.space.unit_kind, selection.space.issuing_registry, selection.space.issuance)
            if await tx.frozen_by(space, selection.start, selection.end):
                return True
    return False


def _check_freeze(answer: object, frozen: bool, what: str) -> None:
    """Frozen units never move, and only frozen units are refused as frozen (`ResponseCode.BLOCK_FROZEN`)."""
    if frozen and not isinstance(answer, SimAbort):
        raise ActionFailed(f"{what}: accepted, but a selected unit is frozen by a reconciliation discrepancy")
    if isinstance(answer, SimAbort) and not frozen:
        detail = read_error_detail(answer.metadata)
        if detail is not None and int(detail.code) == int(ResponseCode.BLOCK_FROZEN):
            raise ActionFailed(f"{what}: refused as frozen, but no selected unit is frozen: {answer.details[:160]}")


async def setup(world: World) -> None:
    """Accounts, authorizations at every gateway (so onward transfers can name them), and first issuances."""
    for party in PARTIES:
        for request in accounts_of(party):
            assert not _refused(await world.call(party, "OpenAccount", request), world, "open account")
        for issuer in PARTIES:
            for suffix in AUTHORIZATIONS:
                authorization = _authorization(issuer, suffix)
                authorization.party = issuer  # at another Party's gateway, a copy
                authorize = operator_pb2.RegisterAuthorizationRequest(
                    idempotency_key=f"auth-{issuer}-{suffix}", authorization=authorization
                )
                answer = await world.call(party, "RegisterAuthorization", authorize)
                assert not _refused(answer, world, "authorize") and not isinstance(answer, SimAbort)
                world.record_version(party, _version_from(answer))
    for party in PARTIES:
        for i in range(3):
            await issue_fresh(world, party, tie=i == 0)


def _space_of(world: World, party: str) -> tuple[str, str, str]:
    if world.rng.random() < 0.2:
        return (*INTERNATIONAL, ISSUANCE[party])
    kind, registry = world.rng.choice(OWN_SPACES[party])
    return (kind, registry, "")


def _next_serial(world: World, key: tuple[str, str, str]) -> int:
    ranges = world.issued.get(key, [])
    return max((end for _, end in ranges), default=0) + 1 + world.rng.randrange(0, 50)


async def issue_fresh(world: World, party: str, tie: bool | None = None) -> None:
    """Register fresh units at ``party``, under an authorization when ``tie`` says so (at random when None)."""
    kind, registry, issuance = _space_of(world, party)
    key = (fold(kind), fold(registry), fold(issuance))
    start = _next_serial(world, key)
    end = start + world.rng.randrange(0, 800)
    block = records_pb2.UnitBlock(
        space=records_pb2.SerialSpace(
            unit_kind=respell(world.rng, kind), issuing_registry=respell(world.rng, registry), issuance=issuance
        ),
        start=start,
        end=end,
        vintage=world.rng.choice([2019, 2022, 2024, 2025, 2025, 2026]),
        project_id=f"P-{world.rng.randrange(100)}",
        methodology_code="CCER-14-001-V01",
        mitigation_type="Removals",
    )
    # Sometimes under an authorization: the units are tied at registration (an Authorization entry), and first
    # transferred then if the authorization defines their first transfer as the issuance.
    authorization = ""
    if tie or (tie is None and world.rng.random() < 0.3):
        suffix = world.rng.choice(["AUTH", "AUTH", "AUTH-ISS", "AUTH-UC"])
        authorization = f"{party}-{suffix}"  # a gateway registers only units its own Party issues
    request = operator_pb2.RegisterIssuanceRequest(
        idempotency_key=f"issue-{world.rng.getrandbits(48)}",
        account_id=f"{party}-H1",
        block=block,
        authorization_id=authorization,
    )
    answer = await world.call(party, "RegisterIssuance", request)
    what = f"{party} issues {kind}/{registry}/{issuance} [{start}, {end}] under {authorization or 'none'}"
    world.note(what)
    if issuance and authorization:
        # Tying them would make a ledger entry the AEF report refuses for good: refused, nothing registered.
        _expect_refusal(answer, world, what, {ResponseCode.INVALID_ARGUMENT})
        return
    if not _refused(answer, world, "issue"):
        assert not isinstance(answer, SimAbort)
        if answer.block.authorization_id != authorization:
            raise ActionFailed(f"registered under {authorization!r}, but tied to {answer.block.authorization_id!r}")
        world.issued.setdefault(key, []).append((start, end))


async def issue_again(world: World, party: str) -> None:
    """Register again units this gateway issued before: always refused, even after they left."""
    mine = [
        (key, r)
        for key, ranges in sorted(world.issued.items())
        for r in ranges
        if NOMENCLATURE.registries[_canonical_registry(key)].party == party
        or (key[1] == fold(INTERNATIONAL[1]) and key[2] == fold(ISSUANCE[party]))
    ]
    if not mine:
        return
    key, (start, end) = world.rng.choice(mine)
    gone = await _left(world, party)
    if gone and world.rng.random() < 0.7:
        # Most often units that have left: exactly what a registry of record must never issue twice.
        key, (start, end) = world.rng.choice(gone)
    lo = world.rng.randint(start, end)
    hi = world.rng.randint(lo, end)
    registry = _canonical_registry(key)
    kind = NOMENCLATURE.registries[registry].unit_kinds[0]
    block = records_pb2.UnitBlock(
        space=records_pb2.SerialSpace(
            unit_kind=respell(world.rng, kind), issuing_registry=respell(world.rng, registry), issuance=key[2].upper()
        ),
        start=lo,
        end=hi,
        vintage=2025,
    )
    request = operator_pb2.RegisterIssuanceRequest(
        idempotency_key=f"again-{world.rng.getrandbits(48)}", account_id=f"{party}-H2", block=block
    )
    answer = await world.call(party, "RegisterIssuance", request)
    world.note(f"{party} registers again {registry} [{lo}, {hi}]")
    if not _refused(answer, world, "issue again"):
        # The registry of record issued these units once; the oracle does not count them again, so units that
        # now exist twice show up in the conservation invariant.
        world.note("  accepted: the units now exist twice")


async def _left(world: World, party: str) -> list[tuple[tuple[str, str, str], tuple[int, int]]]:
    """Ranges that left ``party`` by a completed transfer, or were used or cancelled there: of its own issue, or
    of the registry outside the network (units that passed through it, which it must never register as new
    either)."""
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        blocks = await tx.list_blocks(
            statuses=(BlockStatus.TRANSFERRED, BlockStatus.DEBITED, BlockStatus.USED, BlockStatus.CANCELLED)
        )
    return [
        (
            (fold(b.block.space.unit_kind), fold(b.block.space.issuing_registry), fold(b.block.space.issuance)),
            (b.block.start, b.block.end),
        )
        for b in blocks
        if NOMENCLATURE.issuer(b.block.space) in (party, "")
    ]


def _canonical_registry(key: tuple[str, str, str]) -> str:
    return next(code for code in NOMENCLATURE.registries if fold(code) == key[1])


async def _held(world: World, party: str) -> list[Any]:
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        return [b for b in await tx.list_blocks(statuses=(BlockStatus.HELD,)) if b.account_id.endswith(("H1", "H2"))]


def _itmo_serials(block: Any) -> bool:
    """Whether ``block``'s serials can serve as ITMO serials, so that its units may enter the ledger (move
    abroad, or be tied, used or cancelled): not those of a registry whose serials restart per issuance, which are
    registered and held but refused at every such door (`gateway.domain.protocol.check_itmo_serials`)."""
    return not block.space.issuance


def _pick_held(world: World, held: Sequence[Any]) -> Any:
    """One of ``held``: mostly one whose units may enter the ledger, sometimes any (one of a registry whose serials
    restart per issuance then and again, whose move must be refused). Units that can never leave would otherwise
    crowd out the others as the run goes on."""
    movable = [b for b in held if _itmo_serials(b.block)]
    if movable and world.rng.random() < 0.75:
        return world.rng.choice(movable)
    return world.rng.choice(held)


async def propose(world: World, party: str) -> None:
    held = await _held(world, party)
    if not held:
        return
    stored = _pick_held(world, held)
    block = stored.block
    selections = []
    cursor = block.start
    for _ in range(world.rng.randrange(1, 4)):
        if cursor > block.end:
            break
        start = world.rng.randint(cursor, min(block.end, cursor + 300))
        end = world.rng.randint(start, min(block.end, start + 400))
        selections.append((start, end))
        cursor = end + 2
    others = [p for p in PARTIES if p != party]
    partner = world.rng.choice(others)
    account = world.rng.choice(
        [f"{partner}-H1"] * 5 + [f"{partner}-H2", f"{partner}-CLOSED", f"{partner}-RET", f"{partner}-USE", "NOPE"]
    )
    authorization = _transfer_authorization(world, party, block)
    purposes = _purposes_of(world, party, authorization)
    # Mostly NDC where the authorization allows it, sometimes another of its purposes: a first transfer is booked
    # under the authorization's purpose, and the acquiring side under the transfer's.
    purpose = "NDC" if "NDC" in purposes and world.rng.random() < 0.7 else world.rng.choice(purposes or ("NDC",))
    space = records_pb2.SerialSpace(
        unit_kind=block.space.unit_kind, issuing_registry=block.space.issuing_registry, issuance=block.space.issuance
    )
    request = operator_pb2.ProposeTransferRequest(
        idempotency_key=f"propose-{world.rng.getrandbits(48)}",
        source_account=stored.account_id,
        selections=[operator_pb2.BlockSelection(space=space, start=s, end=e) for s, e in selections],
        acquiring_account=records_pb2.AccountRef(party=partner, account_id=account),
        cooperative_approach="CA0001",
        authorization_id=authorization,
        purpose=purpose,
        adjustment_method="single-year averaging",
    )
    frozen = await _frozen(world, party, request.selections)
    answer = await world.call(party, "ProposeTransfer", request)
    what = f"{party} proposes {block.describe()} {selections} to {partner}/{account} under {authorization}"
    world.note(what)
    _check_freeze(answer, frozen, what)
    if not _itmo_serials(block):
        # Checked before the authorization and the acquiring account: only a frozen unit is refused first.
        expected = {ResponseCode.INVALID_ARGUMENT} | ({ResponseCode.BLOCK_FROZEN} if frozen else set())
        _expect_refusal(answer, world, what, expected)
        return
    if _refused(answer, world, "propose"):
        return
    assert not isinstance(answer, SimAbort)
    world.note(f"  transfer {answer.transfer_id}")
    if world.rng.random() < 0.2:  # an operator's retry with the same key returns the same transfer
        again = await world.call(party, "ProposeTransfer", request)
        if not isinstance(again, SimAbort) and again.transfer_id != answer.transfer_id:
            raise ActionFailed(f"an idempotent retry made a second transfer {again.transfer_id}")


def _transfer_authorization(world: World, party: str, block: Any) -> str:
    """The authorization a transfer of ``block`` names: the one its units are tied to, else mostly the issuer's
    main one, sometimes one whose first transfer is the issuance or the use or cancellation, and sometimes one
    not yet in force (refused)."""
    if block.authorization_id:
        return str(block.authorization_id)
    issuer = NOMENCLATURE.issuer(block.space) or party
    roll = world.rng.random()
    suffix = "AUTH-LATER" if roll < 0.06 else "AUTH-UC" if roll < 0.18 else "AUTH-ISS" if roll < 0.26 else "AUTH"
    return f"{issuer}-{suffix}"


async def _transfers(world: World, party: str, role: TransferRole, state: TransferState) -> list[str]:
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        return [t.transfer_id for t in await tx.open_transfers() if t.role is role and t.state is state]


async def cancel(world: World, party: str) -> None:
    open_ = await _transfers(world, party, TransferRole.INITIATING, TransferState.CHECKED)
    if open_:
        transfer_id = world.rng.choice(open_)
        request = operator_pb2.CancelTransferRequest(
            idempotency_key=f"cancel-{transfer_id}", transfer_id=transfer_id, reason="changed my mind"
        )
        _refused(await world.call(party, "CancelTransfer", request), world, "cancel")
        world.note(f"{party} cancels {transfer_id}")


async def decide(world: World, party: str) -> None:
    held = await _transfers(world, party, TransferRole.ACQUIRING, TransferState.CHECKED)
    if held:
        transfer_id = world.rng.choice(held)
        accept = world.rng.random() < 0.7
        request = operator_pb2.DecideTransferRequest(
            idempotency_key=f"decide-{transfer_id}", transfer_id=transfer_id, accept=accept, reason="reviewed"
        )
        _refused(await world.call(party, "DecideTransfer", request), world, "decide")
        world.note(f"{party} decides {transfer_id}: {'accept' if accept else 'reject'}")


async def deliver(world: World, party: str) -> None:
    node = world.nodes[party]
    if node.core is None or party in world.down:
        return
    try:
        delivered = await node.core.outbox.drain()
    except SimCrash as crash:
        world.crashed(party, crash)
        return
    world.note(f"{party} delivers {delivered}")


async def sweep(world: World, party: str) -> None:
    node = world.nodes[party]
    if node.core is None or party in world.down:
        return
    try:
        changed = await node.core.gateway.sweep()
        # The core's background loop folds the ledger's changes into the reconciliation tree after its sweeps
        # (`GatewayCore._sweep`, every few seconds, more often than it sweeps): so does the simulation.
        folded = await node.core.gateway.fold_trees()
    except SimCrash as crash:
        world.crashed(party, crash)
        return
    world.note(f"{party} sweeps: {[t.transfer_id for t in changed]}, folds {folded}")


async def rotate(world: World, party: str) -> None:
    node = world.nodes[party]
    assert node.core is not None
    old = node.signer
    new = signer_from(world.rng)
    version = node.core.trust.own.version + 1
    document = TrustDocument(
        party=party,
        version=version,
        expires=world.clock() + dt.timedelta(days=3650),
        keys={new.keyid: new.public_key},
        roles={"trust": Role((new.keyid,), 1), "transfer": Role((new.keyid,), 1)},
    )
    envelope = sign_trust_document(document, [old, new])
    name = f"v{version}"
    node.signers[name] = new
    node.core.signers[name] = new
    request = operator_pb2.RotateTrustDocumentRequest(
        idempotency_key=f"rotate-{version}", envelope_json=envelope.to_json(), signer=name
    )
    answer = await world.call(party, "RotateTrustDocument", request)
    world.note(f"{party} rotates to version {version}")
    if not _refused(answer, world, "rotate"):
        node.signer_name = name


async def dead_letters(world: World, party: str) -> None:
    node = world.nodes[party]
    assert node.core is not None
    letters = await node.core.gateway.list_outbox(states=(OutboxState.DEAD,))
    if not letters:
        return
    letter = world.rng.choice(letters)
    if world.rng.random() < 0.5:
        request = operator_pb2.RetryDeadLetterRequest(
            idempotency_key=f"retry-{world.rng.getrandbits(32)}", message_id=letter.message_id
        )
        _refused(await world.call(party, "RetryDeadLetter", request), world, "retry")
    else:
        request2 = operator_pb2.AbandonDeadLetterRequest(
            idempotency_key=f"abandon-{world.rng.getrandbits(32)}", message_id=letter.message_id, reason="sim"
        )
        _refused(await world.call(party, "AbandonDeadLetter", request2), world, "abandon")
    world.note(f"{party} handles dead letter {letter.message_id} ({letter.kind.value})")


# uses and cancellations

USE_NDC = "use towards the NDC"
USE_OIMP = "use for other international mitigation purposes"
CANCELLATION_SUBTYPES = (
    "Mandatory and Voluntary cancellation to deliver OMGE",
    "Mandatory and Voluntary transfer to the Adaptation Fund (A6.4ERs)",
    "Other cancellations",
)
RETIREMENTS = ("ndc", "ndc", "oimp", "cancel", "cancel", "voluntary")
"""What a retirement step does: a use towards the NDC, an OIMP use, a cancellation, a voluntary cancellation."""
RETIRED_AS = {"ndc": "Use", "oimp": "Use", "cancel": "Cancellation", "voluntary": "Voluntary Cancellation"}


def _pieces(world: World, block: Any, most: int, width: int) -> list[tuple[int, int]]:
    """Up to ``most`` disjoint sub-ranges of ``block`` in serial order, each at most ``width`` + 1 long."""
    rng = world.rng
    pieces: list[tuple[int, int]] = []
    cursor = block.start
    for _ in range(rng.randrange(1, most + 1)):
        if cursor > block.end:
            break
        start = rng.randint(cursor, min(block.end, cursor + width))
        end = rng.randint(start, min(block.end, start + width))
        pieces.append((start, end))
        cursor = end + 2
    return pieces


def _selections(block: Any, pieces: list[tuple[int, int]]) -> list[operator_pb2.BlockSelection]:
    space = records_pb2.SerialSpace(
        unit_kind=block.space.unit_kind, issuing_registry=block.space.issuing_registry, issuance=block.space.issuance
    )
    return [operator_pb2.BlockSelection(space=space, start=s, end=e) for s, e in pieces]


def _retirement(
    world: World,
    party: str,
    kind: str,
    source: str,
    selections: list[operator_pb2.BlockSelection],
    authorization: str,
    *,
    purpose: str = "OIMP",
    year_of_use: int | None = None,
) -> tuple[str, Any]:
    """The method and request of a use (``ndc``, ``oimp``) or cancellation (``cancel``, ``voluntary``)."""
    rng = world.rng
    key = f"retire-{rng.getrandbits(48)}"
    entity = rng.choice(["", "", "ENT-1"])
    note = rng.choice(["", "", "simulated"])
    if kind in ("ndc", "oimp"):
        ndc = kind == "ndc"
        return "UseUnits", operator_pb2.UseUnitsRequest(
            idempotency_key=key,
            source_account=source,
            selections=selections,
            use_account=f"{party}-USE",
            authorization_id=authorization,
            action=USE_NDC if ndc else USE_OIMP,
            year_of_use=(year_of_use or rng.randrange(2021, 2031)) if ndc else 0,
            purpose="" if ndc else purpose,
            using_entity=entity,
            note=note,
        )
    return "CancelUnits", operator_pb2.CancelUnitsRequest(
        idempotency_key=key,
        source_account=source,
        selections=selections,
        cancellation_account=rng.choice([f"{party}-CAN", f"{party}-RET"]),
        authorization_id=authorization,
        voluntary=kind == "voluntary",
        subtype="" if kind == "voluntary" else rng.choice(CANCELLATION_SUBTYPES),
        purpose=rng.choice(["", "", "", "OIMP", "NDC"]),
        using_entity=entity,
        note=note,
    )


def _retirement_authorization(world: World, party: str, block: Any) -> str:
    """The authorization a use or cancellation of ``block`` names: mostly none for tied units (sometimes their
    own), one of the issuer's for untied units, and sometimes none for those (which must be refused)."""
    rng = world.rng
    if block.authorization_id:
        return str(block.authorization_id) if rng.random() < 0.3 else ""
    if rng.random() < 0.15:
        return ""
    issuer = NOMENCLATURE.issuer(block.space) or party
    return f"{issuer}-{rng.choice(['AUTH', 'AUTH', 'AUTH-UC', 'AUTH-ISS'])}"


def _retired(answer: Any) -> list[tuple[int, int, str, str]]:
    return sorted((h.block.start, h.block.end, h.status, h.account_id) for h in answer.retired)


def _check_retired(answer: Any, kind: str, request: Any, pieces: list[tuple[int, int]], what: str) -> None:
    """The answer of an accepted use or cancellation: the selected units, in the target account, used or
    cancelled, each with its one entry of the action's type."""
    used = kind in ("ndc", "oimp")
    target = request.use_account if used else request.cancellation_account
    status = "used" if used else "cancelled"
    expected = sorted((s, e, status, target) for s, e in pieces)
    if _retired(answer) != expected:
        raise ActionFailed(f"{what}: retired {_retired(answer)}, but {expected} were selected")
    moves = sorted((e.block.start, e.block.end) for e in answer.entries if e.action_type == RETIRED_AS[kind])
    if moves != sorted(pieces):
        raise ActionFailed(f"{what}: {RETIRED_AS[kind]} entries {moves} for the selected {sorted(pieces)}")
    for entry in answer.entries:
        if entry.transfer_id != answer.action_id or entry.quantity != entry.block.end - entry.block.start + 1:
            raise ActionFailed(f"{what}: entry {entry.action_type} {entry.block.start}-{entry.block.end} is wrong")
        if entry.action_type != RETIRED_AS[kind]:
            continue
        if kind == "ndc" and entry.year_of_use != request.year_of_use:
            raise ActionFailed(f"{what}: used for {entry.year_of_use}, asked for {request.year_of_use}")
        if kind == "cancel" and entry.action_subtype != request.subtype:
            raise ActionFailed(f"{what}: cancelled as {entry.action_subtype!r}, asked as {request.subtype!r}")
        if not entry.authorization_id:
            raise ActionFailed(f"{what}: units were retired without being tied to an authorization")


async def retire(world: World, party: str) -> None:
    """Use or cancel random sub-ranges of one held block; sometimes retry with the same key, or reuse the key
    for another request."""
    rng = world.rng
    held = await _held(world, party)
    if not held:
        return
    stored = _pick_held(world, held)
    block = stored.block
    pieces = _pieces(world, block, 3, 120)
    authorization = _retirement_authorization(world, party, block)
    kind = rng.choice(RETIREMENTS)
    tie = block.authorization_id or authorization
    purpose = "OIMP" if "OIMP" in _purposes_of(world, party, tie) and rng.random() < 0.9 else rng.choice(["OP", "IMP"])
    method, request = _retirement(
        world, party, kind, stored.account_id, _selections(block, pieces), authorization, purpose=purpose
    )
    what = f"{party} {method} {kind} {block.describe()} {pieces} under {authorization or 'no authorization'}"
    frozen = await _frozen(world, party, request.selections)
    answer = await world.call(party, method, request)
    world.note(what)
    _check_freeze(answer, frozen, what)
    if not _itmo_serials(block):
        # Refused once the units are found, before any authorization is looked at; a locked year of use (or a
        # frozen unit) is refused before that.
        expected = {ResponseCode.INVALID_ARGUMENT, ResponseCode.PERIOD_LOCKED, ResponseCode.BLOCK_FROZEN}
        _expect_refusal(answer, world, what, expected)
        return
    untied = not block.authorization_id and not authorization
    if isinstance(answer, SimAbort):
        _refused(answer, world, what)
        code = _code(answer, what)
        # Frozen units are refused before their authorization is looked at.
        acceptable = (ResponseCode.AUTHORIZATION_MISSING, ResponseCode.PERIOD_LOCKED, ResponseCode.BLOCK_FROZEN)
        if untied and code not in acceptable:
            raise ActionFailed(f"{what}: untied units named no authorization, but were refused with {code.name}")
        return
    if untied:
        raise ActionFailed(f"{what}: units tied to no authorization were retired without naming one")
    _check_retired(answer, kind, request, pieces, what)
    world.note(f"  action {answer.action_id}")
    if rng.random() < 0.25:  # an operator's retry with the same key returns the same action
        again = await world.call(party, method, request)
        if isinstance(again, SimAbort):
            raise ActionFailed(f"{what}: a retry with the same key was refused: {again.details[:160]}")
        if again.action_id != answer.action_id or _retired(again) != _retired(answer):
            raise ActionFailed(f"{what}: a retry with the same key made action {again.action_id}")
    if rng.random() < 0.1:  # the same key for another request is refused
        changed = type(request)()
        changed.CopyFrom(request)
        changed.note = f"{request.note} changed".strip()
        reused = await world.call(party, method, changed)
        _expect_refusal(reused, world, f"{what} (key reused)", {ResponseCode.IDEMPOTENCY_KEY_REUSED})


async def lock(world: World, party: str) -> None:
    """An operator locks one past vintage year, transfers of its units perhaps in flight: from then on none of
    them is first transferred (`invariants._locked`)."""
    year = world.rng.choice([2019, 2022, 2024])
    request = operator_pb2.LockPeriodRequest(
        idempotency_key=f"lock-{world.rng.getrandbits(48)}", first_year=year, last_year=year, reason="simulated"
    )
    answer = await world.call(party, "LockPeriod", request)
    world.note(f"{party} locks {year}")
    _refused(answer, world, "lock")


AMENDABLE = ("AUTH", "AUTH", "AUTH-UC", "AUTH-ISS")
"""The authorizations an operator amends or revokes, by ID suffix, each of its own Party: every one but
``AUTH-LATER``, the main one most often."""
AMENDMENTS = ("revoke", "quantity", "quantity", "purposes", "validity", "definition")
"""What an amendment changes (or whether it revokes the authorization instead)."""
AEF_PURPOSE_SETS = (
    *(frozenset({p}) for p in (Purpose.NDC, Purpose.OIMP, Purpose.IMP, Purpose.OP)),
    *(frozenset({Purpose.NDC, p}) for p in (Purpose.OIMP, Purpose.IMP, Purpose.OP)),
)
"""The purposes a version may name: one, or NDC with one other (the AEF's "Purposes for authorization" column
holds one value, e.g. ``NDC and OIMP``)."""


async def amend(world: World, party: str) -> None:
    """An operator amends or revokes one of its own Party's authorizations, most often one that transfers in
    flight name: its quantity lowered or raised, a purpose dropped or added, its validity or timeframe shortened,
    its first-transfer definition changed; dated today, back to an earlier day, or a later one. Sometimes the
    request is one the gateway must refuse (a label used before, a date before the latest version's, a version
    after a revocation, an NDC-only authorization first transferred otherwise than abroad).

    The world records each version recorded, and when (`World.versions`): the invariants judge by it what each
    transfer, tie and first transfer was allowed to do (`invariants._governed`, `invariants._authorized_quantity`).
    """
    rng = world.rng
    authorization_id = await _authorization_to_amend(world, party)
    versions = world.versions[(party, authorization_id)]
    latest = versions[-1].authorization
    today = world.clock().date()
    label = f"{len(versions) + 1}.0"
    # The refusals a request with a defect may meet: the first check that fails decides which.
    expected: set[ResponseCode] = set()
    if latest.revoked:
        expected.add(ResponseCode.INVALID_STATE)  # a revocation is final
    bad = rng.random()
    if bad < 0.05:
        label = rng.choice(versions).authorization.version
        expected.add(ResponseCode.INVALID_ARGUMENT)
    date = _amendment_date(world, latest.date, today)
    if bad > 0.96:
        date = latest.date - dt.timedelta(days=1)
        # Refused when the latest version is in force: versions follow each other in time. Before a version still
        # to come, a new one may be dated from today on, and supersedes it (`gateway.domain.ledger.check_new_version`).
        if latest.date <= today:
            expected.add(ResponseCode.INVALID_ARGUMENT)
    kind = rng.choice(AMENDMENTS)
    if kind == "revoke":
        reason = "simulated revocation"
        request: Any = operator_pb2.RevokeAuthorizationRequest(
            idempotency_key=f"revoke-{rng.getrandbits(48)}",
            authorization_id=authorization_id,
            version=label,
            date=date.isoformat(),
            reason=reason,
        )
        method, what = "RevokeAuthorization", "revokes"
        # A revoking version dated after the latest one expired does not expire before its own date.
        expires = latest.expires if latest.expires is None or latest.expires >= date else None
        intended = dataclasses.replace(latest, version=label, date=date, revoked=True, note=reason, expires=expires)
    else:
        changed, what = await _amended(world, party, latest, kind, date)
        intended = dataclasses.replace(
            changed, version=label, date=date, revoked=False, note=f"simulated amendment: {what}"
        )
        if _definition_misfits(intended):
            expected.add(ResponseCode.INVALID_ARGUMENT)
        if intended.expires is not None and intended.expires < date:
            # Dated after the validity it repeats ends: a version never expires before its date (README, "Limits").
            expected.add(ResponseCode.INVALID_ARGUMENT)
        request = operator_pb2.AmendAuthorizationRequest(
            idempotency_key=f"amend-{rng.getrandbits(48)}", authorization=wire.authorization_to_proto(intended)
        )
        method, what = "AmendAuthorization", f"amends ({what})"
    note = f"{party} {what} {authorization_id} as version {label} dated {date.isoformat()}"
    world.note(note)
    answer = await world.call(party, method, request)
    if expected:
        _expect_refusal(answer, world, note, expected)
        return
    if isinstance(answer, SimAbort):
        _refused(answer, world, note)
        raise ActionFailed(f"{note}: refused, but the version follows the latest: {answer.details[:200]}")
    recorded = _version_from(answer)
    if recorded.expires is not None and recorded.expires < recorded.date:
        # README, "Limits": an authorization expires on or after its date (what the wire form refuses).
        raise ActionFailed(f"{note}: the gateway recorded a version expiring {recorded.expires}, before its date")
    if recorded != intended:
        raise ActionFailed(f"{note}: the gateway recorded {recorded}, not {intended}")
    world.record_version(party, recorded)
    if rng.random() < 0.2:  # an operator's retry with the same key returns the same version, recorded once
        again = await world.call(party, method, request)
        if isinstance(again, SimAbort) or _version_from(again) != recorded:
            raise ActionFailed(f"{note}: a retry with the same key answered {again}")


def _version_from(answer: records_pb2.Authorization) -> Authorization:
    """The version a gateway answered with, as a domain record, whatever it says: the wire form takes no revoked
    version in, nor one that expires before its date (`amend` judges that)."""
    parsed = records_pb2.Authorization()
    parsed.CopyFrom(answer)
    parsed.revoked, parsed.expires = False, ""
    expires = dt.date.fromisoformat(answer.expires) if answer.expires else None
    return dataclasses.replace(wire.authorization_from_proto(parsed), revoked=answer.revoked, expires=expires)


async def _authorization_to_amend(world: World, party: str) -> str:
    """One of ``party``'s own authorizations: most often one that an outgoing transfer in flight names."""
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        waiting = sorted(
            t.terms.authorization_id
            for t in await tx.open_transfers()
            if t.role is TransferRole.INITIATING and t.terms.authorization_id in _amendable(party)
        )
    if waiting and world.rng.random() < 0.7:
        return world.rng.choice(waiting)
    return f"{party}-{world.rng.choice(AMENDABLE)}"


def _amendable(party: str) -> set[str]:
    return {f"{party}-{suffix}" for suffix in AMENDABLE}


def _amendment_date(world: World, latest: dt.date, today: dt.date) -> dt.date:
    """Mostly today; sometimes an earlier day (back to the latest version's date), sometimes a later one (not yet
    in force). Never before the latest version's date: versions follow each other in time."""
    roll = world.rng.random()
    if latest > today or roll < 0.1:
        return max(latest, today) + dt.timedelta(days=world.rng.randint(1, 3))
    if roll < 0.3:
        return latest + dt.timedelta(days=world.rng.randint(0, (today - latest).days))
    return today


async def _amended(
    world: World, party: str, latest: Authorization, kind: str, date: dt.date
) -> tuple[Authorization, str]:
    """``latest`` with one change of ``kind`` for a version dated ``date``, and what it changed."""
    rng = world.rng
    if kind == "quantity":
        node = world.nodes[party]
        assert node.core is not None
        async with node.core.store.read() as tx:
            used = await tx.first_transfer_quantity_used(latest.authorization_id)
        # Around what is used already: below it (no more first transfers), just above it, or much more.
        quantity = rng.choice([max(1, used - rng.randrange(0, 200)), used + rng.randrange(1, 300), used + 5000])
        return dataclasses.replace(latest, authorized_quantity=quantity), f"quantity {quantity}, {used} used"
    if kind == "purposes":
        # A purpose dropped, added or swapped for another: the sets the AEF's one column holds (one purpose, or
        # NDC with one other), which are all a version may name.
        others = [s for s in AEF_PURPOSE_SETS if s != latest.purposes]
        purposes = rng.choice(others)
        change = f"purposes {', '.join(p.value for p in Purpose if p in purposes)}"
        changed = dataclasses.replace(latest, purposes=purposes)
        if _definition_misfits(changed) and rng.random() < 0.8:
            # Mostly with the definition the new purposes take (else refused, `_definition_misfits`).
            fit = FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER
            definition = (
                fit if purposes == {Purpose.NDC} else rng.choice([d for d in FirstTransferDefinition if d != fit])
            )
            changed = dataclasses.replace(changed, first_transfer_definition=definition)
            change += f", first transfer at {definition.value}"
        return changed, change
    if kind == "validity":
        if rng.random() < 0.5:
            # Expiring on or after its date, soon: already, for some versions dated in the past.
            late = max(0, (world.clock().date() - date).days) + 2
            expires = date + dt.timedelta(days=rng.randint(0, late))
            return dataclasses.replace(latest, expires=expires), f"expires {expires.isoformat()}"
        start = max(latest.timeframe_start, rng.choice([2021, 2023, 2025]))
        end = min(latest.timeframe_end, rng.choice([2025, 2026, 2030]))
        return dataclasses.replace(latest, timeframe_start=start, timeframe_end=end), f"timeframe {start}-{end}"
    definition = rng.choice([d for d in FirstTransferDefinition if d is not latest.first_transfer_definition])
    return dataclasses.replace(latest, first_transfer_definition=definition), f"first transfer at {definition.value}"


def _definition_misfits(authorization: Authorization) -> bool:
    """An authorization whose first-transfer definition does not fit its purposes, so it is refused: the first
    international transfer is the definition for NDC use alone, and the other three are for every other purpose
    (DESIGN.md section 2), which the AEF's "First transfer definition for OIMP" column requires."""
    ndc_alone = authorization.purposes == frozenset({Purpose.NDC})
    fit = authorization.first_transfer_definition is FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER
    return ndc_alone != fit


async def _blocks_at(world: World, party: str, *statuses: BlockStatus) -> list[Any]:
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        return list(await tx.list_blocks(statuses=statuses))


async def retire_badly(world: World, party: str) -> None:
    """One use, cancellation or registration with exactly one defect: refused with its response code."""
    rng = world.rng
    held = await _held(world, party)
    stored = _pick_held(world, held) if held else None
    block: Any = stored.block if stored is not None else None
    if block is None:
        block = UnitBlock(space=SerialSpace("CCER", "CN-CCER"), start=1, end=1, vintage=2025)
    source = stored.account_id if stored is not None else f"{party}-H1"
    pieces = [(block.start, min(block.end, block.start + rng.randrange(0, 50)))]
    tie = block.authorization_id or ("" if stored is None else f"{NOMENCLATURE.issuer(block.space) or party}-AUTH")
    kind = rng.choice(RETIREMENTS)
    invalid = {ResponseCode.INVALID_ARGUMENT}

    def base(kind: str = kind, authorization: str = tie, **options: Any) -> tuple[str, Any]:
        return _retirement(
            world, party, kind, source, _selections(block, pieces), authorization, year_of_use=2030, **options
        )

    case = rng.randrange(26)
    expected: set[ResponseCode]
    if case == 0:
        label, (method, request), expected = "an NDC use without a year", base("ndc"), invalid
        request.year_of_use = 0
    elif case == 1:
        label, (method, request), expected = "an unknown action", base("ndc"), invalid
        request.action = rng.choice(["use towards the moon", "cancellation", "", "USE TOWARDS THE NDC"])
    elif case == 2:
        label, (method, request), expected = "a use into a cancellation account", base("ndc"), set()
        request.use_account = f"{party}-{rng.choice(['CAN', 'RET', 'H2'])}"
        expected = {ResponseCode.ACCOUNT_NOT_ELIGIBLE}
    elif case == 3:
        label, (method, request), expected = "a cancellation into a use account", base("cancel"), set()
        request.cancellation_account = f"{party}-{rng.choice(['USE', 'H1', 'CLOSED'])}"
        expected = {ResponseCode.ACCOUNT_NOT_ELIGIBLE}
    elif case == 4:
        label, (method, request) = "an unknown target account", base()
        setattr(request, "use_account" if method == "UseUnits" else "cancellation_account", "NOPE")
        expected = {ResponseCode.UNKNOWN_ACCOUNT}
    elif case == 5:
        label, (method, request) = "an unknown source account", base()
        request.source_account = "NOPE"
        expected = {ResponseCode.UNKNOWN_ACCOUNT}
    elif case == 6:
        label, (method, request) = "a use account as the source", base()
        request.source_account = f"{party}-{rng.choice(['USE', 'CAN', 'RET'])}"
        expected = {ResponseCode.ACCOUNT_NOT_ELIGIBLE}
    elif case == 7:
        label, (method, request), expected = "a cancellation without its subtype", base("cancel"), invalid
        request.subtype = ""
    elif case == 8:
        label, (method, request), expected = "a voluntary cancellation with a subtype", base("voluntary"), invalid
        request.subtype = rng.choice(CANCELLATION_SUBTYPES)
    elif case == 9:
        label, (method, request), expected = "an unknown cancellation subtype", base("cancel"), invalid
        request.subtype = rng.choice(["Cancellation to please", "other cancellations", "Not yet defined"])
    elif case == 10:
        label, (method, request), expected = "an OIMP use without an OIMP purpose", base("oimp"), invalid
        request.purpose = rng.choice(["", "NDC", "XYZ", "NDC and OIMP"])
    elif case == 11:
        label, (method, request), expected = "a year of use on an OIMP use", base("oimp"), invalid
        request.year_of_use = 2025
    elif case == 12:
        label, (method, request), expected = "a year of use that is no year", base("ndc"), invalid
        request.year_of_use = rng.choice([99999, 999, -2025, 2**31 - 1])
    elif case == 13:
        label, (method, request), expected = "no selections", base(), invalid
        del request.selections[:]
    elif case == 14:
        label, (method, request), expected = "overlapping selections", base(), invalid
        request.selections.append(request.selections[0])
    elif case == 15:
        label, (method, request), expected = "a selection that ends before it starts", base(), invalid
        request.selections[0].start, request.selections[0].end = block.start + 1, block.start
    elif case == 16:
        label, (method, request) = "an unknown serial space", base()
        request.selections[0].space.unit_kind = "ZZZ"
        expected = {ResponseCode.UNKNOWN_SERIAL_SPACE, ResponseCode.INVALID_ARGUMENT}
    elif case == 17:
        label, (method, request), expected = "no idempotency key", base(), invalid
        request.idempotency_key = ""
    elif case == 18:
        label, (method, request) = "units not held here", base()
        far = 10**12 + rng.randrange(1000)
        request.selections[0].start, request.selections[0].end = far, far + rng.randrange(10)
        expected = {ResponseCode.UNIT_NOT_HELD}
    elif case == 19:
        gone = await _blocks_at(world, party, BlockStatus.USED, BlockStatus.CANCELLED, BlockStatus.RESERVED)
        if not gone:
            return
        other = rng.choice(gone)
        label = f"units {other.status.value} already"
        method, request = base()
        request.source_account = rng.choice([f"{party}-H1", f"{party}-H2"])
        request.selections[0].CopyFrom(_selections(other.block, [(other.block.start, other.block.end)])[0])
        expected = {ResponseCode.UNIT_NOT_HELD}
    elif case == 20:
        if stored is None:
            return
        label, (method, request) = "units held in another account", base()
        request.source_account = f"{party}-H2" if source.endswith("H1") else f"{party}-H1"
        expected = {ResponseCode.UNIT_NOT_HELD}
    elif case == 21:
        if stored is None or block.authorization_id:
            return
        label, (method, request) = "untied units under no authorization", base(authorization="")
        expected = {ResponseCode.AUTHORIZATION_MISSING}
    elif case == 22:
        if stored is None:
            return
        issuer = NOMENCLATURE.issuer(block.space) or party
        label, (method, request) = "an authorization unknown or not in force", base()
        request.authorization_id = rng.choice([f"{issuer}-AUTH-NONE", f"{issuer}-AUTH-LATER", "EVL-AUTH"])
        expected = {ResponseCode.AUTHORIZATION_MISSING, ResponseCode.AUTHORIZATION_EXPIRED}
    elif case == 23:
        if stored is None:
            return
        if block.authorization_id:
            others = [f"{p}-{s}" for p in PARTIES for s in ("AUTH", "AUTH-UC", "AUTH-ISS")]
            label = "tied units under another authorization"
            named = rng.choice([a for a in others if a != block.authorization_id])
            method, request = base(authorization=named)
            # The named authorization is looked up first: one amended out of force is refused as such.
            expected = invalid | _lapsed(world, party, named, block.vintage)
        elif not 2021 <= block.vintage <= 2030:
            label, (method, request) = "a vintage outside the authorized timeframe", base()
            expected = {ResponseCode.AUTHORIZATION_EXPIRED}
        else:
            return
    elif case == 24:
        if stored is None or not (block.authorization_id or 2021 <= block.vintage <= 2030):
            return
        # Not authorized by the version in force today, which an amendment may have given either.
        current = _purposes_of(world, party, tie)
        wrongs = [p for p in ("OP", "IMP") if p not in current]
        if not wrongs:
            return
        wrong = world.rng.choice(wrongs)
        label, (method, request) = "an OIMP use for a purpose not authorized", base("oimp", purpose=wrong)
        expected = {ResponseCode.PURPOSE_NOT_ALLOWED} | _lapsed(world, party, tie, block.vintage)
    else:
        node = world.nodes[party]
        assert node.core is not None
        async with node.core.store.read() as tx:
            locks = await tx.locked_periods()
        if not locks:
            return
        period = DEMO_LEDGER.adjustments
        assert period is not None
        first, last = max(locks[0].first_year, period.first_year), min(locks[0].last_year, period.last_year)
        if first > last:
            return  # the locked years lie outside the NDC period: a use for one of them is refused as such
        label, (method, request) = "a use for a year made final", base("ndc")
        request.year_of_use = rng.randint(first, last)
        expected = {ResponseCode.PERIOD_LOCKED}
    if not _itmo_serials(block) and case in (21, 22, 23, 24):
        # Units that cannot enter the ledger are refused as such before any authorization is looked at.
        expected = invalid
    what = f"{party} {method} with {label}"
    world.note(what)
    if await _frozen(world, party, request.selections):
        expected = expected | {ResponseCode.BLOCK_FROZEN}  # a frozen unit may be refused as such first
    _expect_refusal(await world.call(party, method, request), world, what, expected)


def _lapsed(world: World, party: str, authorization_id: str, vintage: int) -> set[ResponseCode]:
    """``{AUTHORIZATION_EXPIRED}`` when no version of the authorization in force at ``party`` today allows an action
    on units of ``vintage`` (revoked, expired, or the vintage outside its timeframe, all since an amendment), else
    nothing: what a request under it may be refused with before the defect it was made with."""
    today = world.clock().date()
    version = world.version_on(party, authorization_id, today)
    if version is None:
        return set()  # not in force yet (``AUTH-LATER``) or unknown: the cases that name one expect that already
    lapsed = (
        version.revoked
        or (version.expires is not None and today > version.expires)
        or not version.timeframe_start <= vintage <= version.timeframe_end
    )
    return {ResponseCode.AUTHORIZATION_EXPIRED} if lapsed else set()


async def issue_badly(world: World, party: str) -> None:
    """A registration of fresh units under an authorization that cannot take them: refused, nothing registered."""
    rng = world.rng
    kind, registry, issuance = _space_of(world, party)
    key = (fold(kind), fold(registry), fold(issuance))
    start = _next_serial(world, key) + 10**9
    issuer = party  # a gateway registers only units its own Party issues
    case = rng.randrange(3)
    authorization, vintage = f"{issuer}-AUTH", 2025
    if case == 0:
        authorization, expected = f"{issuer}-AUTH-NONE", {ResponseCode.AUTHORIZATION_MISSING}
    elif case == 1:
        authorization = f"{issuer}-AUTH-LATER"
        expected = {ResponseCode.AUTHORIZATION_MISSING, ResponseCode.AUTHORIZATION_EXPIRED}
    else:
        vintage, expected = rng.choice([2019, 2031]), {ResponseCode.AUTHORIZATION_EXPIRED}
    if issuance:
        # Units whose serials restart per issuance are refused under any authorization before it is looked up.
        expected = {ResponseCode.INVALID_ARGUMENT}
    block = records_pb2.UnitBlock(
        space=records_pb2.SerialSpace(unit_kind=kind, issuing_registry=registry, issuance=issuance),
        start=start,
        end=start + rng.randrange(100),
        vintage=vintage,
        mitigation_type="Emission reductions",
    )
    request = operator_pb2.RegisterIssuanceRequest(
        idempotency_key=f"issue-badly-{rng.getrandbits(48)}",
        account_id=f"{party}-H1",
        block=block,
        authorization_id=authorization,
    )
    what = f"{party} registers {registry} [{block.start}, {block.end}] of {vintage} under {authorization}"
    world.note(what)
    _expect_refusal(await world.call(party, "RegisterIssuance", request), world, what, expected)


async def books(world: World, party: str) -> None:
    """The ledger's books: a year's reported emissions, a past period made final, or the summary."""
    rng = world.rng
    roll = rng.random()
    if roll < 0.4:
        year = rng.randrange(2021, 2031)
        emissions = operator_pb2.SetReportedEmissionsRequest(
            idempotency_key=f"emissions-{rng.getrandbits(32)}", year=year, quantity=rng.randrange(10**9)
        )
        answer = await world.call(party, "SetReportedEmissions", emissions)
        world.note(f"{party} reports emissions of {year}")
        if isinstance(answer, SimAbort):
            _expect_refusal(answer, world, f"{party} reports emissions of {year}", {ResponseCode.PERIOD_LOCKED})
    elif roll < 0.6:
        last = rng.choice([2021, 2022, 2023])
        lock = operator_pb2.LockPeriodRequest(
            idempotency_key=f"lock-2021-{last}", first_year=2021, last_year=last, reason="reviewed"
        )
        answer = await world.call(party, "LockPeriod", lock)
        world.note(f"{party} locks 2021-{last}")
        if isinstance(answer, SimAbort):  # another period is locked already: they may not overlap
            _expect_refusal(answer, world, f"{party} locks 2021-{last}", {ResponseCode.INVALID_ARGUMENT})
    else:
        answer = await world.call(party, "GetLedgerSummary", operator_pb2.GetLedgerSummaryRequest())
        world.note(f"{party} reads its ledger summary")
        if isinstance(answer, SimAbort):
            raise ActionFailed(f"{party}: the ledger summary was refused: {answer.details[:200]}")


# the adversary


def _adversary_crafter(world: World, receiver: str) -> Crafter:
    assert world.adversary is not None
    channel = world.adversary_channels.get(receiver, ChannelState())
    return Crafter(signer=world.adversary, sender=ADVERSARY, receiver=receiver, channel=channel, clock=world.clock)


async def _adversary_send(
    world: World, receiver: str, payload_of: Callable[[Crafter], bytes], raw: bool = False
) -> None:
    node = world.nodes[receiver]
    if node.core is None or node.crashed:
        return
    crafter = _adversary_crafter(world, receiver)
    before = crafter.channel
    payload = payload_of(crafter)
    envelope = payload if raw else wire.envelope_to_bytes(crafter.envelope(payload))
    try:
        received = await node.core.exchange.receive(envelope, form=_form(world))
    except SimCrash as crash:
        world.crashed(receiver, crash)
        return
    except Exception as exc:  # exactly what the channel cannot survive: the sender would retry this for ever
        raise ActionFailed(f"a poison statement to {receiver} escaped as {exc!r}") from exc
    if received.code is ResponseCode.INTERNAL_ERROR:
        # The gateway survived, but a value from outside reached a bug: the poison must be refused by name.
        raise ActionFailed(f"a poison statement to {receiver} reached a bug: {received.detail}")
    world.adversary_channels[receiver] = crafter.channel if received.taken_in else before
    world.note(f"  {ADVERSARY} -> {receiver}: {received.code.name}{' taken in' if received.taken_in else ''}")


def _form(world: World) -> Any:
    from gateway.exchange import EnvelopeForm

    return EnvelopeForm.PROTOBUF


def _proposal(receiver: str, transfer_id: str, blocks: list[records_pb2.UnitBlock]) -> partner_pb2.Proposal:
    return partner_pb2.Proposal(
        transfer_id=transfer_id,
        blocks=blocks,
        source_account=records_pb2.AccountRef(party=ADVERSARY, account_id="EVL-1"),
        acquiring_account=records_pb2.AccountRef(party=receiver, account_id=f"{receiver}-H1"),
        cooperative_approach="CA0001",
        authorization_id=f"{receiver}-AUTH",
        purpose="NDC",
        adjustment_method="single-year averaging",
    )


def _wire_block(kind: str, registry: str, issuance: str, start: int, end: int) -> records_pb2.UnitBlock:
    return records_pb2.UnitBlock(
        space=records_pb2.SerialSpace(unit_kind=kind, issuing_registry=registry, issuance=issuance),
        start=start,
        end=end,
        vintage=2025,
        mitigation_type="Removals",
        first_transferred=True,
    )


async def adversary(world: World, receiver: str) -> None:
    """One double count or one poison statement from the adversary to ``receiver``."""
    node = world.nodes[receiver]
    if node.core is None or node.crashed:
        return
    rng = world.rng
    transfer_id = f"evl-{rng.getrandbits(40)}"
    kind = rng.randrange(9)
    if kind in (0, 1):
        # Units the receiver holds, has reserved, pending, owes, used or cancelled, respelled: a double count.
        async with node.core.store.read() as tx:
            guarded = await tx.list_blocks(statuses=GUARDED)
        # Half the time units it used or cancelled, of a space it does not issue (its own issue is guarded by its
        # provenance too): only the overlap guard keeps a used or cancelled unit from coming back to life.
        retired = [
            b
            for b in guarded
            if b.status in (BlockStatus.USED, BlockStatus.CANCELLED) and NOMENCLATURE.issuer(b.block.space) != receiver
        ]
        if kind == 1 and retired:
            guarded = retired
        if not guarded:
            return
        block = rng.choice(guarded).block
        lo = rng.randint(block.start, block.end)
        hi = rng.randint(lo, block.end)
        wire_block = _wire_block(
            respell(rng, block.space.unit_kind),
            respell(rng, block.space.issuing_registry),
            block.space.issuance,
            lo,
            hi,
        )
        message = _proposal(receiver, transfer_id, [wire_block])
        world.note(f"{ADVERSARY} proposes {receiver}'s own {block.describe()} [{lo}, {hi}] respelled")
        await _adversary_send(world, receiver, lambda c: c.statement(proposal=message)[0])
    elif kind == 2:
        # Units of the receiver's own issue that never left it (or were never issued): from nowhere.
        spaces = OWN_SPACES[receiver]
        unit_kind, registry = rng.choice(spaces)
        key = (fold(unit_kind), fold(registry), "")
        issued = world.issued.get(key, [])
        # Units abroad could come back from anyone who holds them now: the receiver cannot tell the adversary
        # apart, so the simulation only claims units that are at the receiver, or were never issued.
        lo = hi = -1
        if issued and rng.random() < 0.6:
            start, end = rng.choice(issued)
            lo = rng.randint(start, end)
            hi = rng.randint(lo, end)
            if not await _all_at(world, receiver, registry, lo, hi):
                lo = -1
        if lo < 0:
            lo = max((e for _, e in issued), default=0) + 10_000 + rng.randrange(1000)
            hi = lo + rng.randrange(100)
        message = _proposal(receiver, transfer_id, [_wire_block(unit_kind, registry, "", lo, hi)])
        world.note(f"{ADVERSARY} proposes {receiver}-issued {registry} [{lo}, {hi}]")
        await _adversary_send(world, receiver, lambda c: c.statement(proposal=message)[0])
    elif kind == 3:
        # Values beyond 64 bits and limits: the largest serial, an overflowing total, 1,001 blocks.
        choice = rng.randrange(3)
        if choice == 0:
            blocks = [_wire_block("CCER", "CN-CCER", "", 2**63 - 2, 2**63 - 1)]
        elif choice == 1:
            # 2^63 - 1 units and 100 more: the total does not fit 64 bits.
            blocks = [_wire_block("CCER", "CN-CCER", "", 0, 2**63 - 2), _wire_block("CEA", "CN-CEA", "", 0, 99)]
        else:
            blocks = [_wire_block("CHU", "CH-SIM", "", 10**9 + 2 * i, 10**9 + 2 * i) for i in range(1001)]
        message = _proposal(receiver, transfer_id, blocks)
        world.note(f"{ADVERSARY} sends a proposal beyond the limits ({choice})")
        await _adversary_send(world, receiver, lambda c: c.statement(proposal=message)[0])
    elif kind == 4:
        # A header sequence beyond 64-bit signed.
        def beyond(c: Crafter) -> bytes:
            payload, _ = c.statement(status_query=partner_pb2.StatusQuery(transfer_id=transfer_id))
            statement = partner_pb2.Statement()
            statement.ParseFromString(payload)
            statement.header.sequence = rng.choice([2**63, 2**64 - 1])
            return statement.SerializeToString()

        world.note(f"{ADVERSARY} sends a sequence beyond 2^63 - 1")
        await _adversary_send(world, receiver, beyond)
    elif kind == 5:
        # Garbage: random bytes, a truncated envelope, or an envelope with too many signatures.
        garbage = rng.randbytes(rng.randrange(1, 200))
        if rng.random() < 0.5:
            assert world.adversary is not None
            signed = sign_envelope(wire.STATEMENT_PAYLOAD_TYPE, b"\x0a\x00", [world.adversary])
            flood = envelope_pb2.Envelope(payload=signed.payload, payload_type=signed.payload_type)
            flood.signatures.extend(envelope_pb2.Signature(sig=s.sig, keyid=s.keyid) for s in signed.signatures * 17)
            garbage = flood.SerializeToString()
        world.note(f"{ADVERSARY} sends {len(garbage)} bytes of garbage")
        await _adversary_send(world, receiver, lambda c: garbage, raw=True)
    elif kind == 6:
        # Decisions, completions, cancels and reports about other Parties' transfers.
        async with node.core.store.read() as tx:
            known = [t.transfer_id for t in await tx.list_transfers()]
        target = rng.choice(known) if known else transfer_id
        state: Any = rng.choice([4, 7, 99])
        bodies: list[dict[str, Any]] = [
            {"decision": partner_pb2.Decision(transfer_id=target, accepted=True)},
            {"completion": partner_pb2.Completion(transfer_id=target)},
            {"cancel": partner_pb2.Cancel(transfer_id=target, terminated=True)},
            {"status_report": partner_pb2.StatusReport(transfer_id=target, state=state, known=True)},
        ]
        body = rng.choice(bodies)
        world.note(f"{ADVERSARY} sends {next(iter(body))} about {target}")
        await _adversary_send(world, receiver, lambda c: c.statement(**body)[0])
    elif kind == 7:
        # An unknown serial space, a decision with 10,000 rejections.
        if rng.random() < 0.5:
            message = _proposal(receiver, transfer_id, [_wire_block("CCER", "CN-CCER-2", "", 1, 10)])
            await _adversary_send(world, receiver, lambda c: c.statement(proposal=message)[0])
        else:
            decision = partner_pb2.Decision(
                transfer_id=transfer_id,
                accepted=False,
                rejections=[records_pb2.Rejection(code=records_pb2.BLOCK_OVERLAP, message="x")] * 10_000,
            )
            await _adversary_send(world, receiver, lambda c: c.statement(decision=decision)[0])
        world.note(f"{ADVERSARY} sends an unknown space or a flood of rejections")
    else:
        # A proposal of units the receiver issued and sent away, as if it came back from elsewhere:
        # only the real holder can send those back; the adversary's copy must lose to whoever holds them.
        spaces = OWN_SPACES[receiver]
        unit_kind, registry = rng.choice(spaces)
        issued = world.issued.get((fold(unit_kind), fold(registry), ""), [])
        if not issued:
            return
        start, end = rng.choice(issued)
        message = _proposal(receiver, transfer_id, [_wire_block(unit_kind, registry, "", start, end)])
        message.blocks[0].space.unit_kind = respell(rng, unit_kind)
        world.note(f"{ADVERSARY} proposes back all of {registry} [{start}, {end}]")
        # The units may well be abroad at an honest gateway: then this is a double count no receiver can
        # detect alone. The simulation only sends it when the whole range is at the receiver itself.
        if await _all_at(world, receiver, registry, start, end):
            await _adversary_send(world, receiver, lambda c: c.statement(proposal=message)[0])


async def _all_at(world: World, party: str, registry: str, start: int, end: int) -> bool:
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        blocks = await tx.list_blocks(statuses=GUARDED)
    covered = sorted((b.block.start, b.block.end) for b in blocks if b.block.space.issuing_registry == registry)
    from gateway.domain import ranges

    return ranges.covers(covered, start, end)


# reconciliation

OPERATOR = "sim-operator"
"""The caller of the operator's reconciliation calls (idempotency keys are scoped to it)."""


async def reconcile(world: World, party: str) -> None:
    """``party``'s operator starts a reconciliation run with a random partner, whatever runs are under way (as a
    schedule does: runs in both directions overlap). The run goes on as the simulation delivers its statements
    (through drops, delays, crashes and restarts); the invariants judge it once it finishes. Refused only while
    a run with that partner still waits for its answers."""
    await start_run(world, party, world.rng.choice([p for p in PARTIES if p != party]))


async def start_run(world: World, party: str, partner: str) -> str | None:
    """Start a run of ``party`` with ``partner`` through the gateway's use case; its ID, or None if refused."""
    rng = world.rng
    key = f"reconcile-{rng.getrandbits(48)}"
    idem = Idempotency(OPERATOR, "RunReconciliation", key, f"{key}:{partner}")
    what = f"{party} starts a reconciliation with {partner}"
    answer = await world.gateway_call(party, what, lambda g: g.start_reconciliation(idem, partner))
    world.note(what)
    if isinstance(answer, GatewayError):
        world.note(f"  refused: {answer.code.name}: {answer.message[:160]}")
        if answer.code is not ResponseCode.INVALID_STATE:
            raise ActionFailed(f"{what}: refused with {answer.code.name}: {answer.message[:200]}")
        await _waiting_run(world, party, partner, what)
        return None
    world.note(f"  run {answer.run_id}")
    if answer.run_id not in world.runs:
        world.runs[answer.run_id] = SimRun(answer.run_id, party, partner, world.tick(), world.step)
    if answer.partner != partner or answer.role is not RunRole.REQUESTER:
        raise ActionFailed(f"{what}: run {answer.run_id} is {answer.role.value} with {answer.partner}")
    if rng.random() < 0.2:  # an operator's retry with the same key returns the same run
        again = await world.gateway_call(party, what, lambda g: g.start_reconciliation(idem, partner))
        if isinstance(again, GatewayError) or again.run_id != answer.run_id:
            raise ActionFailed(f"{what}: a retry with the same key answered {again}")
    return str(answer.run_id)


async def _waiting_run(world: World, party: str, partner: str, what: str) -> None:
    """A run may only be refused while another with ``partner`` waits for answers, and not for too long."""
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        runs = await tx.list_reconciliations(partner, 1000)
    now = world.clock()
    if not any(
        r.role is RunRole.REQUESTER and r.status is Status.RUNNING and now - r.updated_at < ABANDON_AFTER for r in runs
    ):
        raise ActionFailed(f"{what}: refused as waiting, but no run with {partner} waits for its answers")


def _inner(world: World, party: str) -> SQLiteStore:
    node = world.nodes[party]
    assert node.core is not None and isinstance(node.core.store, CrashingStore)
    return node.core.store.inner


def _stored_columns(tx: SQLiteTransaction) -> list[str]:
    """The ledger's stored columns (its generated columns are left out: SQLite computes them)."""
    return [str(r[1]) for r in tx._db.execute("PRAGMA table_xinfo(ledger)").fetchall() if r[6] == 0]


async def corrupt(world: World, party: str) -> None:
    """Rarely, and only in corrupting seeds (`World.corrupting`): `inject` a corruption at ``party``."""
    if world.corrupting and world.rng.random() < 0.5:
        await inject(world, party)


async def inject(world: World, party: str) -> Corruption | None:
    """Change one of ``party``'s ledger movement entries with a partner behind the gateway's back, with raw SQL
    on its database (the ledger's triggers note the change for reconciliation, as for any write): its block's
    last serial or vintage, or delete or duplicate the row. The world records what was changed and what
    reconciliation must report.

    Only entries of transfers completed on both sides are changed, so that the difference is certain (not a
    transfer in flight), and never a block that another unrepaired corruption already changed."""
    rng = world.rng
    store = _inner(world, party)
    async with store.read() as tx:
        ledger = await tx.list_ledger()
        completed = {t.transfer_id for t in await tx.list_transfers() if t.state is TransferState.COMPLETED}
    done_at: dict[str, set[str]] = {}
    for other in PARTIES:
        if other != party:
            async with _inner(world, other).read() as tx:
                done_at[other] = {
                    t.transfer_id for t in await tx.list_transfers() if t.state is TransferState.COMPLETED
                }
    outstanding = {(c.transfer_id, c.identity) for c in world.corruptions if c.repaired is None}
    candidates = []
    for entry in ledger:
        found = reconciled_block(entry, party)
        if found is None or found[0] not in done_at:
            continue
        partner, block = found
        identity = (block.unit_kind, block.issuing_registry, block.issuance, block.serial_start)
        if (
            entry.transfer_id in completed
            and entry.transfer_id in done_at[partner]
            and (entry.transfer_id, identity) not in outstanding
        ):
            candidates.append((entry.entry_id, entry.transfer_id, partner, identity))
    if not candidates:
        return None
    entry_id, transfer_id, partner, identity = rng.choice(candidates)
    how = rng.choice(["end", "vintage", "delete", "duplicate"])
    duplicate_id = 0
    async with store.transaction() as tx:
        db = tx._db
        columns = _stored_columns(tx)
        row = db.execute(f"SELECT {', '.join(columns)} FROM ledger WHERE entry_id = ?", (entry_id,)).fetchone()
        original = dict(zip(columns, row, strict=True))
        block = json.loads(original["block"])
        if how == "end":
            block["end"] = block["end"] - 1 if block["end"] > block["start"] else block["end"] + 1
            db.execute(
                "UPDATE ledger SET block = ?, quantity = ? WHERE entry_id = ?",
                (json.dumps(block, sort_keys=True), block["end"] - block["start"] + 1, entry_id),
            )
        elif how == "vintage":
            block["vintage"] = rng.choice([v for v in (2019, 2022, 2024, 2025, 2026) if v != block["vintage"]])
            db.execute(
                "UPDATE ledger SET block = ?, vintage = ? WHERE entry_id = ?",
                (json.dumps(block, sort_keys=True), block["vintage"], entry_id),
            )
        elif how == "delete":
            db.execute("DELETE FROM ledger WHERE entry_id = ?", (entry_id,))
        else:
            copied = [c for c in columns if c != "entry_id"]
            cursor = db.execute(
                f"INSERT INTO ledger ({', '.join(copied)}) VALUES ({', '.join('?' for _ in copied)})",
                [original[c] for c in copied],
            )
            assert cursor.lastrowid is not None
            duplicate_id = cursor.lastrowid
    corruption = Corruption(
        number=len(world.corruptions) + 1,
        party=party,
        partner=partner,
        transfer_id=transfer_id,
        how=how,
        identity=identity,
        entry_id=entry_id,
        original=original,
        injected=world.tick(),
        step=world.step,
        duplicate_id=duplicate_id,
    )
    world.corruptions.append(corruption)
    world.note(f"CORRUPT {corruption.describe()}")
    return corruption


async def repair(world: World, corruption: Corruption) -> None:
    """Put the corrupted row back as it was (what an operator does once a run found it)."""
    async with _inner(world, corruption.party).transaction() as tx:
        db = tx._db
        original = corruption.original
        if corruption.how in ("end", "vintage"):
            db.execute(
                "UPDATE ledger SET block = ?, quantity = ?, vintage = ? WHERE entry_id = ?",
                (original["block"], original["quantity"], original["vintage"], corruption.entry_id),
            )
        elif corruption.how == "duplicate":
            db.execute("DELETE FROM ledger WHERE entry_id = ?", (corruption.duplicate_id,))
        else:
            # The deleted entry's ID may have been given to a later entry: then the row comes back under a new ID.
            taken = db.execute("SELECT 1 FROM ledger WHERE entry_id = ?", (corruption.entry_id,)).fetchone()
            columns = [c for c in original if not (taken and c == "entry_id")]
            db.execute(
                f"INSERT INTO ledger ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                [original[c] for c in columns],
            )
    corruption.repaired = world.tick()
    world.note(f"REPAIR {corruption.describe()}")


async def frozen_refusals(world: World, party: str) -> int:
    """Try to move units ``party`` holds that a run froze there: a transfer of them and a cancellation of them
    must both be refused as frozen (`ResponseCode.BLOCK_FROZEN`), whatever else the request says. Returns how
    many frozen ranges were tried."""
    rng = world.rng
    async with _inner(world, party).read() as tx:
        frozen = tx._db.execute(
            "SELECT DISTINCT unit_kind, issuing_registry, issuance, serial_start, serial_end FROM frozen_ranges"
            " ORDER BY unit_kind, issuing_registry, issuance, serial_start, serial_end"
        ).fetchall()
        held = await tx.list_blocks(statuses=(BlockStatus.HELD,))
    tried = 0
    for kind, registry, issuance, start, end in frozen:
        for stored in held:
            block = stored.block
            lo, hi = max(start, block.start), min(end, block.end)
            space = (block.space.unit_kind, block.space.issuing_registry, block.space.issuance)
            if space != (kind, registry, issuance) or lo > hi or not stored.account_id.endswith(("H1", "H2")):
                continue
            selections = _selections(block, [(lo, hi)])
            authorization = block.authorization_id or f"{NOMENCLATURE.issuer(block.space) or party}-AUTH"
            partner = rng.choice([p for p in PARTIES if p != party])
            propose = operator_pb2.ProposeTransferRequest(
                idempotency_key=f"propose-frozen-{rng.getrandbits(48)}",
                source_account=stored.account_id,
                selections=selections,
                acquiring_account=records_pb2.AccountRef(party=partner, account_id=f"{partner}-H1"),
                cooperative_approach="CA0001",
                authorization_id=authorization,
                purpose="NDC",
                adjustment_method="single-year averaging",
            )
            what = f"{party} proposes frozen {block.describe()} [{lo}, {hi}] to {partner}"
            world.note(what)
            frozen_code = {ResponseCode.BLOCK_FROZEN}
            _expect_refusal(await world.call(party, "ProposeTransfer", propose), world, what, frozen_code)
            method, retire = _retirement(world, party, "cancel", stored.account_id, selections, authorization)
            what = f"{party} cancels frozen {block.describe()} [{lo}, {hi}]"
            world.note(what)
            _expect_refusal(await world.call(party, method, retire), world, what, frozen_code)
            tried += 1
            break
    return tried


async def propose_to_freeze(world: World, corruption: Corruption) -> tuple[str, str, str] | None:
    """Propose units of ``corruption``'s transfer, held at one of its two Parties, to the third Party while the
    link to it is cut: the transfer waits while the run that finds the corruption freezes its units. Returns the
    proposing Party, the third Party and the transfer ID, or None when no such units can be proposed (the link is
    then left whole)."""
    third = next(p for p in PARTIES if p not in (corruption.party, corruption.partner))
    kind, registry, issuance, first = corruption.identity
    for holder in (corruption.partner, corruption.party):
        async with _inner(world, holder).read() as tx:
            transfer = await tx.get_transfer(corruption.transfer_id)
            held = await tx.list_blocks(statuses=(BlockStatus.HELD,))
        if transfer is None:
            continue
        moved = [
            b
            for b in transfer.terms.blocks
            if (b.space.unit_kind, b.space.issuing_registry, b.space.issuance, b.start)
            == (kind, registry, issuance, first)
        ]
        for block in moved:
            # Short of the block's last serial: a corrupted end may leave it out of the difference.
            last = block.end - 1 if block.end > block.start else block.end
            for stored in held:
                lo, hi = max(block.start, stored.block.start), min(last, stored.block.end)
                if stored.block.space != block.space or lo > hi or not stored.account_id.endswith(("H1", "H2")):
                    continue
                proposed = await _propose_cut_off(world, holder, third, stored, lo, hi)
                if proposed is not None:
                    return holder, third, proposed
    return None


async def _propose_cut_off(world: World, holder: str, third: str, stored: Any, lo: int, hi: int) -> str | None:
    block = stored.block
    authorization = block.authorization_id or f"{NOMENCLATURE.issuer(block.space) or holder}-AUTH"
    purposes = _purposes_of(world, holder, authorization)
    request = operator_pb2.ProposeTransferRequest(
        idempotency_key=f"propose-to-freeze-{world.rng.getrandbits(48)}",
        source_account=stored.account_id,
        selections=_selections(block, [(lo, hi)]),
        acquiring_account=records_pb2.AccountRef(party=third, account_id=f"{third}-H1"),
        cooperative_approach="CA0001",
        authorization_id=authorization,
        purpose="NDC" if "NDC" in purposes or not purposes else purposes[0],
        adjustment_method="single-year averaging",
    )
    world.cut.add((holder, third))
    answer = await world.call(holder, "ProposeTransfer", request)
    world.note(f"{holder} proposes {block.describe()} [{lo}, {hi}] to {third} over a cut link, to be frozen")
    if isinstance(answer, SimAbort):
        world.note(f"  refused: {answer.details[:160]}")
        world.cut.discard((holder, third))
        return None
    world.note(f"  transfer {answer.transfer_id}")
    return str(answer.transfer_id)


async def transfers_in(world: World, party: str, transfer_id: str, state: TransferState) -> bool:
    """Whether ``party`` holds transfer ``transfer_id`` in ``state``."""
    found = await transfer_state(world, party, transfer_id)
    return found[0] is state


async def transfer_state(world: World, party: str, transfer_id: str) -> tuple[TransferState | None, int]:
    """The state of ``transfer_id`` at ``party`` and the code of its latest rejection (0 without one)."""
    async with _inner(world, party).read() as tx:
        transfer = await tx.get_transfer(transfer_id)
    if transfer is None:
        return None, 0
    return transfer.state, int(transfer.rejections[-1].code) if transfer.rejections else 0


async def decide_held(world: World, party: str, transfer_id: str) -> None:
    """``party``'s operator accepts the held proposal ``transfer_id``, or rejects it when the accept is refused
    (units frozen at ``party`` too, say)."""
    for accept in (True, False):
        request = operator_pb2.DecideTransferRequest(
            idempotency_key=f"decide-{accept}-{transfer_id}", transfer_id=transfer_id, accept=accept, reason="reviewed"
        )
        answer = await world.call(party, "DecideTransfer", request)
        world.note(f"{party} {'accepts' if accept else 'rejects'} held {transfer_id}")
        if not _refused(answer, world, "decide"):
            return


async def resolve(world: World, party: str) -> None:
    """``party``'s operator resolves a run (on either side) that the invariants already judged: its blocks are
    no longer frozen."""
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        runs = await tx.list_reconciliations("", 1000)
    candidates = [r for r in runs if r.status.freezes and r.run_id in world.verified]
    if candidates:
        await resolve_run(world, party, world.rng.choice(candidates).run_id)


async def resolve_run(world: World, party: str, run_id: str) -> None:
    """Resolve ``run_id`` at ``party`` with a reason, check nothing stays frozen by it, and put back the rows of
    the corruptions it found: the gateways are honest again, and later runs must find nothing."""
    key = f"resolve-{world.rng.getrandbits(48)}"
    idem = Idempotency(OPERATOR, "ResolveReconciliation", key, f"{key}:{run_id}")
    reason = "the simulation's injected corruption, found and repaired"
    what = f"{party} resolves run {run_id}"
    answer = await world.gateway_call(party, what, lambda g: g.resolve_reconciliation(idem, run_id, reason))
    world.note(what)
    if isinstance(answer, GatewayError):
        raise ActionFailed(f"{what}: refused with {answer.code.name}: {answer.message[:200]}")
    if answer.status is not Status.RESOLVED or answer.resolved_reason != reason:
        raise ActionFailed(f"{what}: the run is {answer.status.name} ({answer.resolved_reason!r})")
    async with _inner(world, party).read() as tx:
        left = tx._db.execute("SELECT COUNT(*) FROM frozen_ranges WHERE run_id = ?", (run_id,)).fetchone()[0]
    if left:
        raise ActionFailed(f"{what}: {left} ranges are still frozen by the resolved run")
    _, reported = world.verified[run_id]
    for corruption in world.corruptions:
        if corruption.number in reported and corruption.repaired is None:
            await repair(world, corruption)


# the network


async def network_change(world: World) -> None:
    rng = world.rng
    if rng.random() < 0.5:
        link = (rng.choice(PARTIES), rng.choice(PARTIES))
        if link[0] != link[1]:
            if link in world.cut:
                world.cut.discard(link)
                world.note(f"link {link} healed")
            else:
                world.cut.add(link)
                world.note(f"link {link} cut")
    else:
        party = rng.choice(PARTIES)
        if party in world.down:
            world.down.discard(party)
            world.note(f"{party} reachable again")
        else:
            world.down.add(party)
            world.note(f"{party} unreachable")


def _digest(world: World) -> str:
    return hashlib.sha256("\n".join(world.trace).encode()).hexdigest()


Action = Callable[[World, str], Awaitable[None]]

ACTIONS: list[tuple[int, str, Action]] = [
    (3, "issue", issue_fresh),
    (3, "issue again", issue_again),
    (14, "propose", propose),
    (4, "retire", retire),
    (2, "retire badly", retire_badly),
    (1, "issue badly", issue_badly),
    (1, "books", books),
    (1, "lock", lock),
    (1, "amend", amend),
    (3, "cancel", cancel),
    (3, "decide", decide),
    (22, "deliver", deliver),
    (6, "sweep", sweep),
    (1, "rotate", rotate),
    (1, "dead letters", dead_letters),
    (6, "adversary", adversary),
    (2, "reconcile", reconcile),
    (1, "corrupt", corrupt),
    (1, "resolve", resolve),
]

_ = dataclasses  # the module keeps the standard library names its actions may need
