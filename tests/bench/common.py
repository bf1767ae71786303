"""Shared helpers for the benchmarks: timing, and the figure record written to bench-results.json."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Figure:
    """One measured figure, the limit it is measured against, and the target ratio.

    ``direction`` says how the ratio is judged: ``"max"`` means ratio = value / limit must be at most
    ``target`` (latency, overhead); ``"min"`` means ratio must be at least ``target`` (throughput share).
    A ``target`` of None makes a reported figure: printed with its ratio, judged against nothing.
    """

    name: str
    value: float
    unit: str
    limit_name: str
    limit: float
    target: float | None
    direction: Literal["max", "min"]

    @property
    def ratio(self) -> float:
        """value / limit."""
        return self.value / self.limit if self.limit else float("inf")

    @property
    def met(self) -> bool:
        """Whether the target was met (a reported figure has none to miss)."""
        if self.target is None:
            return True
        return self.ratio <= self.target if self.direction == "max" else self.ratio >= self.target

    def as_json(self) -> dict[str, Any]:
        """The entry written to bench-results.json."""
        entry = asdict(self)
        entry.update(ratio=round(self.ratio, 4), target_met=self.met if self.target is not None else None)
        return entry

    def line(self) -> str:
        """A human-readable line: value, limit, ratio and target."""
        op = "<=" if self.direction == "max" else ">="
        verdict = "met" if self.met else "MISSED"
        judged = "(reported, no target)" if self.target is None else f"(target {op} {self.target}) {verdict}"
        return (
            f"{self.name}: {self.value:,.3f} {self.unit} vs {self.limit_name} {self.limit:,.3f} {self.unit}"
            f" -> ratio {self.ratio:.3f} {judged}"
        )


def rate(fn: Callable[[], object], *, seconds: float = 1.0, min_calls: int = 50) -> float:
    """Calls per second of ``fn``, measured for about ``seconds`` after a short warm-up."""
    for _ in range(min(20, min_calls)):
        fn()
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if calls >= min_calls and now >= deadline:
            return calls / (now - start)


def paired(value: Callable[[], float], limit: Callable[[], float], *, rounds: int) -> tuple[float, float]:
    """``(value, limit)`` of the round with the median ratio, each round measuring both back to back.

    The machine is shared and its speed drifts from one second to the next: measuring the limit right
    before the figure, and taking the median round, keeps a burst of other load (or of quiet) on one side
    from deciding the ratio.
    """
    pairs = []
    for _ in range(rounds):
        base = limit()
        pairs.append((value(), base))
    pairs.sort(key=lambda pair: pair[0] / pair[1])
    return pairs[len(pairs) // 2]
