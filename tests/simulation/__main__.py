"""``python -m tests.simulation``: run seeds of the simulation; a failing seed prints its replay command."""

from __future__ import annotations

import argparse
import sys
import time

from tests.simulation.run import DEFAULT_STEPS, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__)
    parser.add_argument("--seed", type=int, help="run this one seed (replays it exactly)")
    parser.add_argument("--seeds", type=int, default=20, help="run this many seeds, from --first (default 20)")
    parser.add_argument("--first", type=int, default=0, help="the first seed of a range (default 0)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"steps per seed (default {DEFAULT_STEPS})")
    parser.add_argument("--trace", action="store_true", help="print the trace tail of a failing seed")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    failed = 0
    started = time.monotonic()
    for seed in seeds:
        outcome = run(seed, args.steps)
        if outcome.failure:
            failed += 1
            print(f"seed {seed}: FAILED at step {outcome.step}: {outcome.failure}")
            if args.trace or args.seed is not None:
                print("  " + "\n  ".join(outcome.trace_tail))
            print(f"  replay: {outcome.replay}")
        else:
            print(f"seed {seed}: ok ({args.steps} steps, trace {outcome.trace_digest[:16]}): {outcome.stats}")
    elapsed = time.monotonic() - started
    print(f"{len(seeds) - failed} of {len(seeds)} seeds held every invariant in {elapsed:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
