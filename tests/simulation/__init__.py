"""A seeded, reproducible simulation of several gateways over a faulty network, checked against global invariants.

Run one seed with ``python -m tests.simulation --seed N``, many with ``make simulate SEEDS=N``. A failing seed
prints the one command that replays it exactly.
"""
