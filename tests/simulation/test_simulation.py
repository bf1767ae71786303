"""The simulation's fixed seeds, run by ``make test``; ``make simulate SEEDS=N`` runs more.

Each seed starts three gateways and an adversary, takes random steps over a faulty network with crashes and
restarts (transfers above all, and uses, cancellations and refused requests among them), and checks the
invariants after every step and once the world has settled.
"""

from __future__ import annotations

import pytest

from tests.simulation.run import run

SEEDS = range(12)
STEPS = 250


@pytest.mark.parametrize("seed", SEEDS)
def test_every_invariant_holds_for_seed(seed: int) -> None:
    outcome = run(seed, STEPS)
    assert not outcome.failure, (
        f"seed {seed} failed at step {outcome.step}: {outcome.failure}\n"
        + "\n".join(outcome.trace_tail)
        + f"\nreplay it with: {outcome.replay}"
    )


def test_a_seed_replays_exactly() -> None:
    first, second = run(3, 120), run(3, 120)
    assert not first.failure
    assert first.trace_digest == second.trace_digest
    assert first.stats == second.stats
