"""Real ``carbon-gateway serve`` processes for tests: configure, start, wait for health, SIGKILL, restart.

`write_pair` writes everything two partner gateways (``CHN`` and ``CHE``) need in one folder: a key and a
self-signed trust document each, a second key each under ``[signers] next`` (for a trust rotation), and a
configuration file each with fixed loopback ports. A `ServeProcess` runs one of them as a child process;
stopping it and starting it again keeps its SQLite file, keys and ports, as an operator's restart does.
Fault points (`gateway.faults`) are armed per start, through ``CARBON_GATEWAY_FAULTS``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carbon_gateway.v1 import operator_pb2_grpc
from gateway.faults import ENVIRONMENT_VARIABLE
from gateway.harness import self_signed_trust_document
from signing import generate_key, signer_from_uri

SERVE = [sys.executable, "-m", "gateway.cli", "serve"]
START_TIMEOUT = 60.0
"""Seconds a start may take before the test fails: generous, as the test machines are shared and slow."""


def free_ports(count: int) -> list[int]:
    """``count`` different loopback TCP ports nobody holds right now, below the kernel's ephemeral range.

    A port the kernel hands out (``bind`` to port 0) comes from the ephemeral range, from which it also numbers
    the local end of every outgoing connection: a gateway killed and restarted on such a port may find it taken
    meanwhile by a connection of another process. Below that range only a listener takes a port.
    """
    low = _ephemeral_range()[0]
    ports: list[int] = []
    for _ in range(count * 100):
        if len(ports) == count:
            return ports
        port = _PORTS.randrange(PORTS_FROM, low) if low - PORTS_FROM >= 1000 else 0
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            bound: int = probe.getsockname()[1]
        if bound not in ports:
            ports.append(bound)
    raise RuntimeError(f"found no {count} free loopback ports below {low}")


def free_port() -> int:
    """A loopback TCP port nobody holds right now, below the kernel's ephemeral range (see `free_ports`)."""
    return free_ports(1)[0]


PORTS_FROM = 10000
"""The lowest port `free_ports` hands out: above the ports well-known services listen on."""

_PORTS = random.Random()  # its own generator: a test that seeds the module's does not make two runs collide


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for the local end of outgoing connections (Linux), or its usual default."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _text(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


@dataclass
class ServeProcess:
    """One gateway run as ``carbon-gateway serve CONFIG``, started and restarted on the same files and ports."""

    party: str
    folder: Path
    config: Path
    operator_port: int
    partner_port: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    returncodes: list[int] = field(default_factory=list)
    """How each earlier run ended (``-9`` for SIGKILL), oldest first."""
    log_level: str = "WARNING"
    """The ``--log-level`` each start passes."""

    @property
    def operator_address(self) -> str:
        """The operator gRPC API's address."""
        return f"127.0.0.1:{self.operator_port}"

    @property
    def partner_address(self) -> str:
        """The partner exchange's address."""
        return f"127.0.0.1:{self.partner_port}"

    @property
    def log(self) -> Path:
        """The file every run's stderr is appended to."""
        return self.folder / f"{self.party.lower()}.log"

    def log_tail(self, lines: int = 40) -> str:
        """The end of the log, for failure messages."""
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        """Whether the current run is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, faults: str = "") -> None:
        """Start ``serve`` with the fault points ``faults`` armed (see `gateway.faults`); none by default."""
        assert not self.running, f"{self.party} is already running"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop(ENVIRONMENT_VARIABLE, None)
        if faults:
            env[ENVIRONMENT_VARIABLE] = faults
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts + 1} faults={faults!r}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*SERVE, str(self.config), "--log-level", self.log_level],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=self.folder,
            )
        self.starts += 1

    async def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the operator API answers its health check; fail with the log if the process exits."""
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.operator_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if not self.running:
                    raise AssertionError(f"{self.party} exited during its start:\n{self.log_tail()}")
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.party} did not serve within {timeout} s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    async def restart(self, faults: str = "") -> None:
        """Start again (after a kill or a stop) and wait until it serves."""
        self.start(faults)
        await self.wait_serving()

    async def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to end by itself; its return code, or None if it runs on."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        return self._ended()

    def kill(self) -> int:
        """SIGKILL the process (a crash at whatever instant it is) and return its return code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return self._ended()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the process (a clean stop; SIGKILL after ``timeout`` s) and return its return code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self._ended()

    def _ended(self) -> int:
        assert self.process is not None
        code = self.process.returncode
        self.returncodes.append(code)
        self.process = None
        return code

    def channel(self) -> grpc.aio.Channel:
        """A channel to the operator API; gRPC reconnects it by itself across restarts."""
        return grpc.aio.insecure_channel(self.operator_address)

    @staticmethod
    def stub(channel: grpc.aio.Channel) -> operator_pb2_grpc.OperatorServiceAsyncStub:
        """The operator API over ``channel``."""
        return operator_pb2_grpc.OperatorServiceStub(channel)


def _config_text(
    party: str,
    partner: str,
    *,
    operator_port: int,
    partner_port: int,
    partner_address: str,
    policy: str,
) -> str:
    own, theirs = party.lower(), partner.lower()
    return (
        f"party = {_text(party)}\n"
        f"database = {_text(own + '.db')}\n"
        f"signer = {_text('file:' + own + '.key')}\n"
        f"trust_document = {_text(own + '.trust.json')}\n\n"
        f"[signers]\nnext = {_text('file:' + own + '-next.key')}\n\n"
        f"[operator]\nlisten = {_text(f'127.0.0.1:{operator_port}')}\nunauthenticated_loopback = true\n\n"
        f"[partner]\nlisten = {_text(f'127.0.0.1:{partner_port}')}\n\n"
        f"[[partners]]\nparty = {_text(partner)}\naddress = {_text(partner_address)}\n"
        f"trust_document = {_text(theirs + '.trust.json')}\n\n"
        f"[policy]\nrules = [\n{policy}\n]\n"
    )


ACCEPT_ALL_POLICY = '  { verdict = "accept" },'
"""The acquiring side's policy when a test wants every proposal accepted."""


def write_pair(
    folder: Path,
    *,
    chn_dials: str | None = None,
    che_dials: str | None = None,
    che_policy: str = ACCEPT_ALL_POLICY,
) -> tuple[ServeProcess, ServeProcess]:
    """Keys, trust documents and configurations for a ``CHN`` and a ``CHE`` gateway that are partners.

    Each dials the other's partner port unless ``chn_dials`` / ``che_dials`` names another address (a proxy).
    ``che_policy`` is the body of ``CHE``'s ``[policy] rules`` list. Nothing is started.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("chn", "che", "chn-next", "che-next"):
        generate_key(folder / name)
    for party in ("CHN", "CHE"):
        signer = signer_from_uri(str(folder / f"{party.lower()}.key"))
        (folder / f"{party.lower()}.trust.json").write_bytes(self_signed_trust_document(party, signer).to_json())
    names = ("chn_operator", "chn_partner", "che_operator", "che_partner")
    ports = dict(zip(names, free_ports(len(names)), strict=True))  # distinct: one port for two listeners fails
    chn = ServeProcess("CHN", folder, folder / "chn.toml", ports["chn_operator"], ports["chn_partner"])
    che = ServeProcess("CHE", folder, folder / "che.toml", ports["che_operator"], ports["che_partner"])
    chn.config.write_text(
        _config_text(
            "CHN",
            "CHE",
            operator_port=chn.operator_port,
            partner_port=chn.partner_port,
            partner_address=chn_dials or che.partner_address,
            policy='  { verdict = "hold" },',
        ),
        encoding="utf-8",
    )
    che.config.write_text(
        _config_text(
            "CHE",
            "CHN",
            operator_port=che.operator_port,
            partner_port=che.partner_port,
            partner_address=che_dials or chn.partner_address,
            policy=che_policy,
        ),
        encoding="utf-8",
    )
    return chn, che
