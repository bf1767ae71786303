"""Fault points (`gateway.faults`): what arms them, that an armed one kills the process outright, that a typo
refuses the start, and that the registry and the call sites name the same points."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import faults

ROOT = Path(__file__).resolve().parents[1]


def test_a_spec_arms_each_named_point_at_its_count() -> None:
    assert faults.parse("") == {}
    assert faults.parse("outbox-sent") == {"outbox-sent": 1}
    assert faults.parse(" outbox-sent@3 , rotation-committed ,") == {"outbox-sent": 3, "rotation-committed": 1}


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("outbox-snet", "'outbox-snet'"),
        ("outbox_sent", "'outbox_sent'"),
        ("outbox-sent@0", "'outbox-sent@0'"),
        ("outbox-sent@x", "'outbox-sent@x'"),
        ("outbox-sent@", "'outbox-sent@'"),
        ("outbox-sent@\u00b2", "'outbox-sent@\u00b2'"),  # a superscript two: a digit to str.isdigit, not to int()
        ("outbox-sent,outbox-sent@2", "'outbox-sent'"),
    ],
)
def test_a_wrong_spec_is_refused_naming_the_variable_and_the_item(spec: str, named: str) -> None:
    with pytest.raises(faults.FaultSpecError) as refused:
        faults.parse(spec)
    assert str(refused.value).startswith(f"{faults.ENVIRONMENT_VARIABLE}: ")
    assert named in str(refused.value)


def test_serve_refuses_to_start_with_an_unknown_point(tmp_path: Path) -> None:
    # The variable is read before the configuration: even a missing file is not reached.
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, faults.ENVIRONMENT_VARIABLE: "propose-comitted"},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("carbon-gateway serve: CARBON_GATEWAY_FAULTS: unknown fault point 'propose-comitted'")
    assert "propose-committed" in lines[0]  # the list of the real points


def test_an_armed_point_kills_the_process_by_sigkill_at_its_nth_time() -> None:
    script = (
        "import sys\n"
        "from gateway import faults\n"
        "faults.arm('outbox-sent@2')\n"
        "faults.reach('outbox-claimed')\n"
        "faults.reach('outbox-sent')\n"
        "print('first time survived', flush=True)\n"
        "try:\n"
        "    faults.reach('outbox-sent')\n"
        "finally:\n"
        "    print('a finally clause ran', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )
    assert result.returncode == -9, result.stderr
    assert result.stdout == "first time survived\n"
    assert result.stderr == "carbon-gateway: fault point 'outbox-sent' reached: SIGKILL\n"


def test_an_unarmed_point_does_nothing() -> None:
    faults.arm("")
    for name in faults.POINTS:
        faults.reach(name)


def test_the_registry_and_the_call_sites_name_the_same_points() -> None:
    reached: set[str] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        reached.update(re.findall(r'faults\.reach\("([a-z-]+)"\)', path.read_text(encoding="utf-8")))
    reached.update(faults.COMMITTED_BY_STATEMENT.values())
    assert reached == set(faults.POINTS)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in faults.POINTS:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)+", name), name
        assert f"`{name}`" in readme, f"the README's Fault points section does not list {name}"


def test_the_soak_arms_only_registered_points() -> None:
    from tests.integration.test_soak import CHAOS_POINTS

    for points in CHAOS_POINTS.values():
        assert set(points) <= set(faults.POINTS)
