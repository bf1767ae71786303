"""Named fault points: places in the protocol where a test makes the gateway process die.

A crash at any instant must leave a state the gateway recovers from. The tests prove it at the instants
that matter by killing real ``carbon-gateway serve`` processes there. Fault points are off unless the
environment variable ``CARBON_GATEWAY_FAULTS`` names them when ``serve`` starts::

    CARBON_GATEWAY_FAULTS="outbox-sent,completion-committed@2"

``name`` kills the process the first time the point is reached, ``name@N`` the Nth time. An unknown name
or a malformed count refuses the start, so a typo never silently tests nothing. Reaching an armed point
sends SIGKILL to the own process: no ``finally`` clause, no buffered write, no clean shutdown runs; the
state on disk is exactly what the last commit left. Unarmed, a point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Final

ENVIRONMENT_VARIABLE: Final = "CARBON_GATEWAY_FAULTS"

POINTS: Final[Mapping[str, str]] = {
    "propose-committed": (
        "Initiating side, ProposeTransfer: the reservation, the transfer and its Proposal in the outbox have"
        " committed; the operator has no reply yet, and the outbox worker, woken by the commit, may have claimed"
        " and sealed the Proposal but has not sent it."
    ),
    "outbox-claimed": (
        "Outbox worker: it has claimed its due messages (the heads of the partner lanes) and holds their"
        " leases, and has neither sealed nor sent them. Another replica takes them over when the leases end."
    ),
    "outbox-sent": (
        "Outbox worker: an envelope was sent and the partner's receipt came back, but the receipt is not stored"
        " and the message is still pending: the restarted worker sends it again."
    ),
    "proposal-committed": (
        "Acquiring side, incoming Proposal: its check, the pending units and the Decision in the outbox have"
        " committed; the Receipt has not gone back to the initiating side."
    ),
    "decision-committed": (
        "Initiating side, incoming Decision: the debit, the ledger entries and the Completion (or the release of"
        " a rejected transfer's units) have committed; the Receipt has not gone back."
    ),
    "completion-committed": (
        "Acquiring side, incoming Completion: the credit of the units and the ledger entries have committed;"
        " the Receipt has not gone back."
    ),
    "rotation-committed": (
        "RotateTrustDocument: the new trust document is stored and queued for every partner; the gateway has"
        " not switched to the new signer and the operator has no reply."
    ),
}
"""Every fault point, by name, with where it is and what has happened when it is reached."""

COMMITTED_BY_STATEMENT: Final[Mapping[str, str]] = {
    "proposal": "proposal-committed",
    "decision": "decision-committed",
    "completion": "completion-committed",
}
"""The point reached after an incoming statement's effect commits, by the statement's body."""

ARMED: dict[str, int] = {}
"""The armed points: how many more times each may be reached before the one that kills. Empty when off."""


class FaultSpecError(ValueError):
    """The value of ``CARBON_GATEWAY_FAULTS`` names an unknown point or a bad count."""


def parse(spec: str) -> dict[str, int]:
    """The points ``spec`` arms (``name[@N][,name[@N]...]``), each with the time it is reached that kills."""
    armed: dict[str, int] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, at, count = item.partition("@")
        if name not in POINTS:
            raise FaultSpecError(
                f"{ENVIRONMENT_VARIABLE}: unknown fault point {name[:80]!r}; the points are {', '.join(sorted(POINTS))}"
            )
        nth = 1
        if at:
            if not (count.isascii() and count.isdigit()) or len(count) > 9 or int(count) < 1:
                raise FaultSpecError(
                    f"{ENVIRONMENT_VARIABLE}: {item[:80]!r}: the count after @ must be a whole number from 1"
                )
            nth = int(count)
        if name in armed:
            raise FaultSpecError(f"{ENVIRONMENT_VARIABLE}: fault point {name!r} is named twice")
        armed[name] = nth
    return armed


def arm(spec: str) -> None:
    """Arm the points ``spec`` names (replacing any armed before); raise `FaultSpecError` if it is wrong."""
    armed = parse(spec)
    ARMED.clear()
    ARMED.update(armed)


def arm_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Arm the points ``CARBON_GATEWAY_FAULTS`` names; return them (empty when it is unset or empty)."""
    arm((os.environ if environ is None else environ).get(ENVIRONMENT_VARIABLE, ""))
    return dict(ARMED)


def reach(name: str) -> None:
    """The process is at fault point ``name``: die here by SIGKILL if the point is armed and its time has come."""
    if name in ARMED:
        _count(name)


def _count(name: str) -> None:
    ARMED[name] -= 1
    if ARMED[name] > 0:
        return
    # Straight to the file descriptor: a buffered logger would never flush.
    os.write(2, f"carbon-gateway: fault point {name!r} reached: SIGKILL\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
