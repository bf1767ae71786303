"""``make bench``: measure every figure next to its limit in the same run, print the ratios, and write
bench-results.json (one entry per figure)."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

from tests.bench.common import Figure

# Each module exposes run() -> list[Figure]; later issues append theirs.
MODULES = (
    "tests.bench.envelopes",
    "tests.bench.transfer",
    "tests.bench.mapping",
    "tests.bench.ledger",
    "tests.bench.reconciliation",
    "tests.bench.throughput",
)


def main() -> int:
    """Run the benchmarks; exit 0 whether or not targets are met (the file records which were)."""
    logging.basicConfig(level=logging.ERROR)
    figures: list[Figure] = []
    for name in MODULES:
        module = importlib.import_module(name)
        for figure in module.run():
            print(figure.line(), flush=True)
            figures.append(figure)
    out = Path("bench-results.json")
    out.write_text(json.dumps([f.as_json() for f in figures], indent=2, ensure_ascii=False) + "\n")
    judged = [f for f in figures if f.target is not None]
    met = sum(f.met for f in judged)
    reported = len(figures) - len(judged)
    print(f"{met} of {len(judged)} targets met ({reported} figures reported without a target); written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
