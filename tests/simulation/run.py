"""Running one seed: set up, take random steps checking the invariants after each, then settle and check again."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

from gateway.domain.errors import ResponseCode
from gateway.domain.records import LedgerEntry
from gateway.domain.transfer import FINAL_STATES
from gateway.store.base import OutboxState
from tests.simulation import actions
from tests.simulation.invariants import check
from tests.simulation.world import PARTIES, Corruption, Faults, World

DEFAULT_STEPS = 300
SETTLE_ROUNDS = 120


@dataclass(frozen=True)
class Outcome:
    """How a seed ended: ``failure`` is empty when every invariant held."""

    seed: int
    steps: int
    failure: str
    step: int
    trace_digest: str
    trace_tail: tuple[str, ...]
    stats: str = ""

    @property
    def replay(self) -> str:
        return f"python -m tests.simulation --seed {self.seed} --steps {self.steps}"


def _scratch() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


async def simulate(seed: int, steps: int = DEFAULT_STEPS) -> Outcome:
    """Run ``seed`` for ``steps`` random steps; never raises for a failure of the gateways, returns it."""
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # crashes and partners' refusals are the simulation's daily bread
    try:
        return await _simulate(seed, steps)
    finally:
        logger.setLevel(level)  # the tests run after it under pytest read the gateway's log


async def _simulate(seed: int, steps: int) -> Outcome:
    with tempfile.TemporaryDirectory(prefix=f"sim-{seed}-", dir=_scratch()) as folder:
        world = World(seed=seed, folder=Path(folder), rng=random.Random(seed))
        step = -1
        try:
            world.faults = Faults.none()
            await world.start()
            await actions.setup(world)
            world.faults = Faults()
            await check(world)
            for step in range(steps):
                world.step = step
                await take_step(world, step)
                await world.restart_crashed()
                await check(world)
            step = world.step = steps
            await settle(world)
            await check(world, settled=True)
            step = world.step = steps + 1
            await reconcile_settled(world)
            await check(world, settled=True)
            stats = await _stats(world)
        except AssertionError as failure:
            return _outcome(world, seed, steps, f"{type(failure).__name__}: {failure}", step)
        except Exception:
            return _outcome(world, seed, steps, traceback.format_exc(limit=8), step)
        finally:
            for node in world.nodes.values():
                if node.core is not None:
                    await node.core.store.close()
        return _outcome(world, seed, steps, "", step, stats)


def _outcome(world: World, seed: int, steps: int, failure: str, step: int, stats: str = "") -> Outcome:
    digest = hashlib.sha256("\n".join(world.trace).encode()).hexdigest()
    return Outcome(seed, steps, failure, step, digest, tuple(world.trace[-25:]), stats)


async def _stats(world: World) -> str:
    """What the seed exercised: transfers by final state (initiating side), uses and cancellations, first
    transfers, authorizations amended and revoked, crashes, restarts."""
    from collections import Counter

    from gateway.domain.records import ActionType
    from gateway.domain.transfer import TransferRole

    states: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    for party in PARTIES:
        core = world.nodes[party].core
        assert core is not None
        async with core.store.read() as tx:
            for transfer in await tx.list_transfers():
                if transfer.role is TransferRole.INITIATING or transfer.partner == "EVL":
                    states[transfer.state.name if transfer.partner != "EVL" else f"EVL {transfer.state.name}"] += 1
            for entry in await tx.list_ledger():
                if entry.action_type in (ActionType.USE, ActionType.CANCELLATION, ActionType.VOLUNTARY_CANCELLATION):
                    actions[entry.action_type.value.lower()] += entry.quantity
                elif entry.action_type is ActionType.FIRST_TRANSFER:
                    actions["first transfer"] += entry.quantity
                    if _after_revocation(world, party, entry):
                        actions["first transfer after a revocation"] += entry.quantity
    crashes = sum(1 for line in world.trace if line.startswith("crash:"))
    restarts = sum(1 for line in world.trace if line.startswith("restarted"))
    moved = ", ".join(f"{k} {v} t" for k, v in sorted(actions.items()))
    return (
        ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
        + f"; {moved or 'nothing used or cancelled'}; {_amendment_stats(world)}; {crashes} crashes, {restarts} restarts"
        + f"; {await reconciliation_stats(world)}"
    )


def _after_revocation(world: World, party: str, entry: LedgerEntry) -> bool:
    """Whether ``party`` recorded ``entry`` once a revocation of its authorization was in force there (which a
    transfer proposed before the revocation may do: `invariants._governed`)."""
    day = entry.action_date.date()
    return any(
        v.authorization.revoked and v.recorded_at <= entry.action_date and v.authorization.date <= day
        for v in world.versions.get((party, entry.authorization_id), [])
    )


def _amendment_stats(world: World) -> str:
    """How many versions the operators recorded after the first ones: amendments and revocations."""
    later = [v.authorization for versions in world.versions.values() for v in versions[1:]]
    revoked = sum(1 for a in later if a.revoked)
    return f"authorizations amended {len(later) - revoked}, revoked {revoked}"


async def reconciliation_stats(world: World) -> str:
    """The requester's runs by how they ended (a run that found a corruption counts as found, resolved or not),
    and the corruptions injected, found and repaired."""
    from collections import Counter

    from gateway.domain.reconciliation import Status
    from gateway.store.base import RunRole

    ended: Counter[str] = Counter()
    for party in PARTIES:
        core = world.nodes[party].core
        assert core is not None
        async with core.store.read() as tx:
            for run in await tx.list_reconciliations("", 100_000):
                if run.role is not RunRole.REQUESTER:
                    continue
                verdict = world.verified.get(run.run_id)
                if verdict is None:
                    ended[run.status.name.lower()] += 1
                elif verdict[1]:
                    ended["found corruption"] += 1
                else:  # the invariants accept nothing else without a corruption
                    ended[Status(verdict[0]).name.lower()] += 1
    found = {number for _, reported in world.verified.values() for number in reported}
    runs = ", ".join(f"{k} {v}" for k, v in sorted(ended.items())) or "none"
    text = f"reconciliations: {runs}"
    if world.corrupting:
        repaired = sum(1 for c in world.corruptions if c.repaired is not None)
        text += f"; corruptions {len(world.corruptions)} ({len(found)} found, {repaired} repaired)"
        text += f", {world.frozen_refusals} frozen ranges refused to move"
        text += f", {world.frozen_while_waiting} transfers cancelled as frozen while they waited"
    return text


async def take_step(world: World, step: int) -> None:
    rng = world.rng
    world.clock.advance(rng.uniform(0, 20) if rng.random() < 0.93 else rng.uniform(120, 900))
    world.note(f"step {step} at {world.clock().isoformat()}")
    roll = rng.random()
    if roll < 0.03:
        party = rng.choice(PARTIES)
        await world.restart(party)
        return
    if roll < 0.07:
        await actions.network_change(world)
        return
    if roll < 0.11:
        await world.deliver_late(rng.randrange(1, 4))
        return
    weights = [w for w, _, _ in actions.ACTIONS]
    _, _name, action = rng.choices(actions.ACTIONS, weights=weights)[0]
    party = rng.choice(PARTIES)
    if world.nodes[party].crashed:
        return
    await action(world, party)


async def settle(world: World) -> None:
    """Heal the network, stop the faults, and let deliveries, sweeps and time end every transfer."""
    world.faults = Faults.none()
    world.down.clear()
    world.cut.clear()
    await world.deliver_late(len(world.late))
    await world.restart_crashed()
    for _ in range(SETTLE_ROUNDS):
        world.clock.advance(60)
        for party in PARTIES:
            await actions.deliver(world, party)
            await actions.sweep(world, party)
        if await _quiet(world):
            return
    world.note("the world did not settle")


async def reconcile_settled(world: World) -> None:
    """Once the world has settled: in a corrupting seed, corrupt one more ledger entry; then every Party
    reconciles with every other, one run at a time, each run delivered to its end. A run that found the injected
    corruptions has its frozen units refused to move, is resolved on both sides (which puts the rows back), and
    is followed by another run with that partner, which must find nothing. By the end every corruption was
    found and repaired, wherever the steps left the gateways."""
    from gateway.usecases.reconciling import ABANDON_AFTER

    # A run that waited in vain during the steps (its statements dead-lettered) gives way to a new one now.
    world.clock.advance(ABANDON_AFTER.total_seconds() + 60)
    if world.corrupting:
        parties = list(PARTIES)
        world.rng.shuffle(parties)
        for party in parties:
            corruption = await actions.inject(world, party)
            if corruption is not None:
                await freeze_while_waiting(world, corruption)
                break
    pairs = [(a, b) for a in PARTIES for b in PARTIES if a != b]
    world.rng.shuffle(pairs)
    for requester, partner in pairs:
        # A run that found corruptions is resolved and the rows put back: the next one must find nothing.
        if await _reconcile_once(world, requester, partner) and await _reconcile_once(world, requester, partner):
            raise AssertionError(f"{requester} found a discrepancy with {partner} again after the repair")
    left = [c.describe() for c in world.corruptions if c.repaired is None]
    if left:
        raise AssertionError(f"corruptions never found and repaired: {left}")


async def freeze_while_waiting(world: World, corruption: Corruption) -> None:
    """Freeze units while a transfer of them waits, then let the partner accept it: the transfer must be cancelled
    (`ResponseCode.BLOCK_FROZEN`) on both sides and its units stay home.

    The units of the corrupted transfer are proposed to the third Party over a cut link; a run between the
    corrupted pair finds the corruption and freezes them; the link heals and the third Party accepts (its operator,
    if its policy holds the proposal). The run is then resolved on both sides, which repairs the row."""
    from gateway.domain.transfer import TransferState

    proposed = await actions.propose_to_freeze(world, corruption)
    if proposed is None:
        return
    holder, third, transfer_id = proposed
    requester, partner = corruption.party, corruption.partner
    run_id = await actions.start_run(world, requester, partner)
    if run_id is None:
        raise AssertionError(f"{requester} could not start a reconciliation with {partner} in a settled world")
    for _ in range(SETTLE_ROUNDS):
        world.clock.advance(5)  # well within the transfer's decision deadline
        for party in PARTIES:
            await actions.deliver(world, party)
        await check(world)
        if run_id in world.verified:
            break
    else:
        raise AssertionError(f"{requester}'s reconciliation run {run_id} with {partner} did not finish")
    if not world.verified[run_id][1]:
        raise AssertionError(f"{requester}'s run {run_id} with {partner} did not find {corruption.describe()}")
    world.cut.discard((holder, third))
    world.note(f"link {(holder, third)} heals")
    decided = False
    for _ in range(SETTLE_ROUNDS):
        world.clock.advance(20)
        for party in PARTIES:
            await actions.deliver(world, party)
            await actions.sweep(world, party)
        await check(world)
        if not decided and await actions.transfers_in(world, third, transfer_id, TransferState.CHECKED):
            await actions.decide_held(world, third, transfer_id)
            decided = True
        if await _quiet(world):
            break
    ends = {party: await actions.transfer_state(world, party, transfer_id) for party in (holder, third)}
    if ends[holder][0] is ends[third][0] is TransferState.REJECTED:
        # The third Party refused the units on grounds of its own (frozen there too by a run of the steps, say):
        # nothing waited for a decision here.
        world.note(f"{third} rejected {transfer_id}: {ends}")
    elif ends[holder] != (TransferState.CANCELLED, int(ResponseCode.BLOCK_FROZEN)) or ends[third][0] != (
        TransferState.CANCELLED
    ):
        raise AssertionError(
            f"transfer {transfer_id} of units frozen while it waited ended {ends}: it must be CANCELLED on both"
            " sides, as frozen at its initiator"
        )
    else:
        world.frozen_while_waiting += 1
    for party in (requester, partner):
        await actions.resolve_run(world, party, run_id)
    await check(world, settled=True)


async def _reconcile_once(world: World, requester: str, partner: str) -> bool:
    """One run between settled gateways, delivered to its end and judged; True when it found corruptions (it is
    then resolved on both sides)."""
    from gateway.domain.reconciliation import Status

    run_id = await actions.start_run(world, requester, partner)
    if run_id is None:
        raise AssertionError(f"{requester} could not start a reconciliation with {partner} in a settled world")
    for _ in range(SETTLE_ROUNDS):
        world.clock.advance(60)
        for party in PARTIES:
            await actions.deliver(world, party)
            await actions.sweep(world, party)
        if await _quiet(world):
            break
    await check(world, settled=True)
    verdict = world.verified.get(run_id)
    if verdict is None:
        raise AssertionError(f"{requester}'s reconciliation run {run_id} with {partner} did not finish")
    if verdict[0] == int(Status.CONSISTENT):
        return False
    for party in (requester, partner):
        world.frozen_refusals += await actions.frozen_refusals(world, party)
        await actions.resolve_run(world, party, run_id)
    return True


async def _quiet(world: World) -> bool:
    for party in PARTIES:
        core = world.nodes[party].core
        assert core is not None
        async with core.store.read() as tx:
            if await tx.list_outbox(states=(OutboxState.PENDING,)):
                return False
            if any(t.state not in FINAL_STATES for t in await tx.list_transfers()):
                return False
    return True


def run(seed: int, steps: int = DEFAULT_STEPS) -> Outcome:
    """Run one seed in a fresh event loop."""
    return asyncio.run(simulate(seed, steps))
