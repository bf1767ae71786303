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

from gateway.domain.transfer import FINAL_STATES
from gateway.store.base import OutboxState
from tests.simulation import actions
from tests.simulation.invariants import check
from tests.simulation.world import PARTIES, Faults, World

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
    logging.getLogger("gateway").setLevel(logging.CRITICAL)
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
                await take_step(world, step)
                await world.restart_crashed()
                await check(world)
            step = steps
            await settle(world)
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
    transfers, crashes, restarts."""
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
    crashes = sum(1 for line in world.trace if line.startswith("crash:"))
    restarts = sum(1 for line in world.trace if line.startswith("restarted"))
    moved = ", ".join(f"{k} {v} t" for k, v in sorted(actions.items()))
    return (
        ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
        + f"; {moved or 'nothing used or cancelled'}; {crashes} crashes, {restarts} restarts"
    )


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
