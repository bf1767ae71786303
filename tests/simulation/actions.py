"""What happens in the simulated world, one random step at a time: operators' actions, deliveries, sweeps,
restarts, key rotations, network faults, and the adversary's double counts and poison."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from carbon_gateway.v1 import envelope_pb2, operator_pb2, partner_pb2, records_pb2
from gateway import wire
from gateway.domain.errors import ResponseCode
from gateway.domain.nomenclature import fold
from gateway.domain.statements import ChannelState
from gateway.domain.transfer import TransferRole, TransferState
from gateway.store.base import BlockStatus, OutboxState
from signing import Role, TrustDocument, sign_envelope, sign_trust_document
from tests.integration.harness import Crafter
from tests.simulation.world import (
    ADVERSARY,
    NOMENCLATURE,
    OWN_SPACES,
    PARTIES,
    START,
    SimAbort,
    SimCrash,
    World,
    accounts_of,
    signer_from,
)

INTERNATIONAL = ("XXU", "XX-SIM")
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


def _authorization(party: str, later: bool) -> records_pb2.Authorization:
    day = START.date() + (dt.timedelta(days=2) if later else -dt.timedelta(days=30))
    return records_pb2.Authorization(
        authorization_id=f"{party}-AUTH-LATER" if later else f"{party}-AUTH",
        date=day.isoformat(),
        version="1.0",
        cooperative_approach="CA0001",
        metric="GHG",
        purposes=["NDC"],
        authorized_quantity=6000,
        timeframe_start=2021,
        timeframe_end=2030,
        first_transfer_definition="First international transfer",
    )


def _refused(answer: object, world: World, what: str) -> bool:
    """True for a refusal; an INTERNAL or UNKNOWN status is a bug, never an expected refusal."""
    if isinstance(answer, SimAbort):
        name = getattr(answer.code, "name", str(answer.code))
        if name in ("INTERNAL", "UNKNOWN"):
            raise ActionFailed(f"{what}: {name}: {answer.details}")
        world.note(f"  refused: {answer.details[:160]}")
        return True
    return False


async def setup(world: World) -> None:
    """Accounts, authorizations at every gateway (so onward transfers can name them), and first issuances."""
    for party in PARTIES:
        for request in accounts_of(party):
            assert not _refused(await world.call(party, "OpenAccount", request), world, "open account")
        for issuer in PARTIES:
            for later in (False, True):
                authorize = operator_pb2.RegisterAuthorizationRequest(
                    idempotency_key=f"auth-{issuer}-{later}", authorization=_authorization(issuer, later)
                )
                assert not _refused(await world.call(party, "RegisterAuthorization", authorize), world, "authorize")
    for party in PARTIES:
        for _ in range(3):
            await issue_fresh(world, party)


def _space_of(world: World, party: str) -> tuple[str, str, str]:
    if world.rng.random() < 0.2:
        return (*INTERNATIONAL, ISSUANCE[party])
    kind, registry = world.rng.choice(OWN_SPACES[party])
    return (kind, registry, "")


def _next_serial(world: World, key: tuple[str, str, str]) -> int:
    ranges = world.issued.get(key, [])
    return max((end for _, end in ranges), default=0) + 1 + world.rng.randrange(0, 50)


async def issue_fresh(world: World, party: str) -> None:
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
    request = operator_pb2.RegisterIssuanceRequest(
        idempotency_key=f"issue-{world.rng.getrandbits(48)}", account_id=f"{party}-H1", block=block
    )
    answer = await world.call(party, "RegisterIssuance", request)
    world.note(f"{party} issues {kind}/{registry}/{issuance} [{start}, {end}]")
    if not _refused(answer, world, "issue"):
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
    """Ranges that left ``party`` by a completed transfer: of its own issue, or of the registry outside the
    network (units that passed through it, which it must never register as new either)."""
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        blocks = await tx.list_blocks(statuses=(BlockStatus.TRANSFERRED, BlockStatus.DEBITED))
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


async def propose(world: World, party: str) -> None:
    held = await _held(world, party)
    if not held:
        return
    stored = world.rng.choice(held)
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
    account = world.rng.choice([f"{partner}-H1"] * 4 + [f"{partner}-H2", f"{partner}-CLOSED", f"{partner}-RET", "NOPE"])
    issuer = NOMENCLATURE.issuer(block.space) or party
    authorization = f"{issuer}-AUTH-LATER" if world.rng.random() < 0.06 else f"{issuer}-AUTH"
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
        purpose="NDC",
        adjustment_method="single-year averaging",
    )
    answer = await world.call(party, "ProposeTransfer", request)
    world.note(f"{party} proposes {block.describe()} {selections} to {partner}/{account} under {authorization}")
    if _refused(answer, world, "propose"):
        return
    assert not isinstance(answer, SimAbort)
    world.note(f"  transfer {answer.transfer_id}")
    if world.rng.random() < 0.2:  # an operator's retry with the same key returns the same transfer
        again = await world.call(party, "ProposeTransfer", request)
        if not isinstance(again, SimAbort) and again.transfer_id != answer.transfer_id:
            raise ActionFailed(f"an idempotent retry made a second transfer {again.transfer_id}")


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
    except SimCrash as crash:
        world.crashed(party, crash)
        return
    world.note(f"{party} sweeps: {[t.transfer_id for t in changed]}")


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
        # Units the receiver holds, has reserved, pending or owes, respelled: a double count.
        async with node.core.store.read() as tx:
            guarded = await tx.list_blocks(
                statuses=(BlockStatus.HELD, BlockStatus.RESERVED, BlockStatus.PENDING, BlockStatus.DEBITED)
            )
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
        blocks = await tx.list_blocks(
            statuses=(BlockStatus.HELD, BlockStatus.RESERVED, BlockStatus.PENDING, BlockStatus.DEBITED)
        )
    covered = sorted((b.block.start, b.block.end) for b in blocks if b.block.space.issuing_registry == registry)
    from gateway.domain import ranges

    return ranges.covers(covered, start, end)


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
    (3, "cancel", cancel),
    (3, "decide", decide),
    (22, "deliver", deliver),
    (6, "sweep", sweep),
    (1, "rotate", rotate),
    (1, "dead letters", dead_letters),
    (6, "adversary", adversary),
]

_ = dataclasses  # the module keeps the standard library names its actions may need
