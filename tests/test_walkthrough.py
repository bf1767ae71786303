"""The README's "Setting up two Parties" walkthrough, run as written: two empty folders to a completed transfer.

The shell blocks of that section are joined into one script and run by bash in an empty temporary folder, with
``carbon-gateway`` on the PATH. Real ``carbon-gateway serve`` processes start in the background; the only change
to the text is the four fixed ports, replaced by free ones so that the test can run beside other gateways.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.processes import free_ports

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Setting up two Parties"
PORTS = ("50061", "50062", "50071", "50072")
"""The ports the walkthrough names: CHN's operator and partner ports, then CHE's."""


def walkthrough_blocks() -> list[str]:
    """The ``sh`` blocks of the walkthrough section, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```sh\n(.*?)```", text[start : end if end != -1 else None], flags=re.DOTALL)


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The pretty-printed JSON objects in ``text``: from a line ``{`` to the next line ``}``."""
    objects, current = [], None
    for line in text.splitlines():
        if line == "{":
            current = [line]
        elif current is not None:
            current.append(line)
            if line == "}":
                objects.append(json.loads("\n".join(current)))
                current = None
    return objects


def test_the_walkthrough_blocks_use_only_the_setup_commands() -> None:
    blocks = walkthrough_blocks()
    assert len(blocks) >= 5
    commands = re.findall(r"carbon-gateway (\w+)", "\n".join(blocks))
    assert set(commands) == {"init", "config", "serve", "call"}
    methods = set(re.findall(r"carbon-gateway call (\w+)", "\n".join(blocks)))
    assert methods == {"OpenAccount", "RegisterAuthorization", "RegisterIssuance", "ProposeTransfer", "GetTransfer"}
    for port in PORTS:
        assert port in "\n".join(blocks)


def test_the_readme_walkthrough_completes_a_transfer_on_both_sides(tmp_path: Path) -> None:
    script = "\n".join(walkthrough_blocks())
    for port, free in zip(PORTS, free_ports(len(PORTS)), strict=True):
        script = script.replace(port, str(free))
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "carbon-gateway").exists(), "the carbon-gateway entry point is installed beside python"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    (tmp_path / "walkthrough.sh").write_text("set -eu\n" + script)
    process = subprocess.Popen(
        ["bash", "walkthrough.sh"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the background gateways are stopped with it
    )
    try:
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # gateways left behind by a failed step
    logs = "".join(f"\n--- {p.relative_to(tmp_path)}\n{p.read_text()}" for p in sorted(tmp_path.glob("*/serve.log")))
    assert process.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}{logs}"
    transfers = [o for o in _json_objects(out) if "transfer_id" in o]
    assert [(t["role"], t["state"]) for t in transfers] == [("initiating", "COMPLETED"), ("acquiring", "COMPLETED")]
    assert transfers[0]["transfer_id"] == transfers[1]["transfer_id"]
    assert [(t["transferring_party"], t["acquiring_party"], t["quantity"]) for t in transfers] == [
        ("CHN", "CHE", "400")
    ] * 2
    assert transfers[1]["blocks"][0]["first_transferred"] is True
    for party in ("chn", "che"):
        log = (tmp_path / party / "serve.log").read_text()
        assert "WITHOUT TLS" not in log  # the partner exchange ran over mTLS
        assert "stopping: finishing in-flight calls" in log  # stopped cleanly, as the last block says
