"""The simulation's fixed seeds, run by ``make test``; ``make simulate SEEDS=N`` runs more.

Each seed starts three gateways and an adversary, takes random steps over a faulty network with crashes and
restarts (transfers above all, and uses, cancellations, refused requests and reconciliation runs among them),
and checks the invariants after every step and once the world has settled; then every Party reconciles with
every other. One seed in four (3, 7, 11, ...) also corrupts ledgers behind the gateways' backs: reconciliation
must find exactly those corruptions, freeze their units until they are resolved (a transfer of them that waited
when they froze is cancelled at its partner's acceptance), and find nothing once the rows are put back.
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


def test_a_corrupting_seed_finds_and_repairs_its_corruptions() -> None:
    outcome = run(7, 120)
    assert not outcome.failure, outcome.failure
    assert "found corruption" in outcome.stats, outcome.stats
    corrupted = outcome.stats.partition("; corruptions ")[2]
    injected, _, rest = corrupted.partition(" (")
    assert int(injected) > 0 and rest.startswith(f"{injected} found, {injected} repaired"), outcome.stats
    # Units of the corrupted transfer were proposed on, and frozen by the run while the proposal waited: the
    # partner's acceptance cancelled it (`tests.simulation.run.freeze_while_waiting`, invariant 13).
    assert "1 transfers cancelled as frozen while they waited" in outcome.stats, outcome.stats
