"""``carbon-gateway watch`` against real gateways: JSON lines in position order, resuming with --after, the kind
filter, a change that commits while it follows, refusals as one line, and a real `serve` process stopped while
a watch follows it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2_grpc
from gateway import watch_cli
from gateway.cli import main
from gateway.demo import start_pair
from gateway.domain.access import CALLS_AT_ONCE
from gateway.store.sqlite import SQLiteStore
from tests.integration.harness import operator, proposal_request, setup_accounts, transfer
from tests.integration.test_watch import REPLICA_TRANSFER
from tests.processes import START_TIMEOUT, free_port, write_pair
from tests.test_cli import CLI, _write_config


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


@pytest.mark.asyncio
async def test_watch_prints_each_change_as_a_json_line_and_resumes_after_a_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        transfer_id = await transfer(pair, block, 1, 400, "t1")
        address = pair.chn.operator_address
        async with pair.chn.store.read() as tx:
            last = await tx.last_change_position()
        assert last == 4

        code, lines, err = await cli(capsys, "watch", "--address", address, "--limit", "4")
        assert code == 0, err
        assert [line["position"] for line in lines] == ["1", "2", "3", "4"]
        assert [line["kind"] for line in lines] == ["TRANSFER", "TRANSFER", "LEDGER_ENTRY", "TRANSFER"]
        assert lines[0]["transfer"]["transfer_id"] == transfer_id and lines[0]["transfer"]["state"] == "CHECKED"
        assert lines[2]["ledger_entry"]["action_type"] == "First transfer"
        assert lines[2]["ledger_entry"]["quantity"] == "400"
        assert lines[3]["transfer"]["state"] == "COMPLETED"

        code, resumed, _ = await cli(capsys, "watch", "--address", address, "--after", "2", "--limit", "2")
        assert code == 0 and resumed == lines[2:]
        digest = lines[1]["digest"]
        code, resumed, _ = await cli(
            capsys, "watch", "--address", address, "--after", "2", "--digest", digest, "--limit", "2"
        )
        assert code == 0 and resumed == lines[2:]
        code, _, err = await cli(capsys, "watch", "--address", address, "--after", "3", "--digest", digest)
        assert code == 1 and "(field after_digest)" in err
        code, only, _ = await cli(capsys, "watch", "--address", address, "--kind", "LEDGER_ENTRY", "--limit", "1")
        assert code == 0 and only == [lines[2]]

        # Following: started after the last change, it prints the next one as it commits, then stops.
        follower = asyncio.create_task(cli(capsys, "watch", "--address", address, "--after", str(last), "--limit", "1"))
        await asyncio.sleep(0.5)
        async with operator(pair.chn) as chn:
            proposed = await chn.ProposeTransfer(proposal_request(block, 401, 410, "t2"))
        code, live, err = await asyncio.wait_for(follower, 10)
        assert code == 0, err
        assert [(line["position"], line["transfer"]["transfer_id"]) for line in live] == [
            (str(last + 1), proposed.transfer_id)
        ]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_watch_refusals_and_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pair = await start_pair(tmp_path)
    try:
        address = pair.chn.operator_address
        code, lines, err = await cli(capsys, "watch", "--address", address, "--after", "-1")
        assert (code, lines) == (1, [])
        assert err.startswith("carbon-gateway watch: INVALID_ARGUMENT: ") and err.count("\n") == 1
        assert "(field after_position)" in err
        code, _, err = await cli(capsys, "watch", "--address", address, "--after", "5")
        assert code == 1 and "beyond the latest change (0)" in err
        code, _, err = await cli(capsys, "watch", "--address", address, "--limit", "-3")
        assert code == 2 and err.count("\n") == 1 and "--limit" in err
        code, _, err = await cli(capsys, "watch", "--address", address, "--after", str(2**64))
        assert code == 2 and "--after" in err and "out of range" in err
        for lookalike in ("\u0661\u0662", "1_000", "\uff11"):
            with pytest.raises(SystemExit) as exited:
                await cli(capsys, "watch", "--address", address, "--after", lookalike)
            err = capsys.readouterr().err
            assert exited.value.code == 2 and "is not a whole number in the digits 0-9" in err
        code, _, err = await cli(capsys, "watch", "--address", address, "--after", "1", "--digest", "not base64!")
        assert code == 2 and err.count("\n") == 1 and "--digest" in err
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_watch_the_gateway_ends_says_where_to_resume(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await transfer(pair, await setup_accounts(pair), 1, 10, "t1")
        # A process of its own, whose lines the test reads as they come: the gateway stops once the watch has
        # printed the four changes, however long a loaded machine takes to print them.
        follower = await asyncio.create_subprocess_exec(
            *CLI,
            "watch",
            "--address",
            pair.chn.operator_address,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert follower.stdout is not None
            async with asyncio.timeout(60):
                printed = [await follower.stdout.readline() for _ in range(4)]
            await pair.chn.stop()
            rest, said = await asyncio.wait_for(follower.communicate(), 30)
        finally:
            if follower.returncode is None:
                follower.kill()
                await follower.wait()
        code, err = follower.returncode, said.decode()
        lines = [json.loads(line) for line in b"".join([*printed, rest]).splitlines()]
    finally:
        await pair.che.stop()
    assert [line["position"] for line in lines] == ["1", "2", "3", "4"]
    assert code == 1 and err.count("\n") == 1
    assert "UNAVAILABLE" in err and err.rstrip().endswith(f"resume with --after 4 --digest {lines[-1]['digest']}")


@pytest.mark.asyncio
async def test_watch_with_config_follows_a_serve_process_and_sigterm_ends_the_watch_at_once(tmp_path: Path) -> None:
    """Real processes: `serve` from a configuration, `watch --config` reading its operator address; a change
    another process writes into the gateway's database arrives, and SIGTERM ends the watch (exit 1, resume line)
    while the gateway itself stops cleanly (exit 0)."""
    config = _write_config(tmp_path)
    port = free_port()
    config.write_text(
        config.read_text().replace('[operator]\nlisten = "127.0.0.1:0"', f'[operator]\nlisten = "127.0.0.1:{port}"')
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([*CLI, "serve", str(config)], stderr=subprocess.PIPE, text=True, env=env)
    watcher: subprocess.Popen[str] | None = None
    try:
        assert server.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT  # a loaded machine starts a gateway slowly
        line = ""
        while "serving" not in line:
            line = server.stderr.readline()
            assert line, "serve ended during its start"
            assert time.monotonic() < deadline, f"serve did not serve within {START_TIMEOUT} s"
        refused = subprocess.run(
            [*CLI, "watch", "--config", str(config), "--after", "1"], capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 1 and "beyond the latest change (0)" in refused.stderr
        watcher = subprocess.Popen(
            [*CLI, "watch", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        # Another process writes the database (as a replica would): the watch finds it by polling.
        replica = await SQLiteStore.open(tmp_path / "chn.db")
        try:
            async with replica.transaction() as tx:
                await tx.insert_transfer(REPLICA_TRANSFER)
        finally:
            await replica.close()
        assert watcher.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(watcher.stdout.readline), 30)
        change = json.loads(line)
        assert (change["position"], change["kind"], change["transfer"]["transfer_id"]) == ("1", "TRANSFER", "replica-1")
        server.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 30) == 0
        _, err = await asyncio.to_thread(watcher.communicate, None, 30)
        assert watcher.returncode == 1
        assert "UNAVAILABLE" in err and f"resume with --after 1 --digest {change['digest']}" in err
    finally:
        for process in (server, watcher):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        if server.stderr is not None:
            server.stderr.close()


@pytest.mark.asyncio
async def test_a_watch_the_feed_is_pruned_under_names_where_to_continue_not_a_resume_that_cannot_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = await start_pair(tmp_path)
    try:
        await transfer(pair, await setup_accounts(pair), 1, 400, "t1")
        feed = pair.chn.changes
        feed.batch = 1
        follow = feed.follow

        async def pruned_after_the_first(*args: Any, **kwargs: Any) -> Any:
            # The feed is pruned past the watcher once it has the first change: its next read finds it behind.
            changes = follow(*args, **kwargs)
            yield await anext(changes)
            async with pair.chn.store.transaction() as tx:
                await tx.prune_changes(3, 100)
            async for change in changes:
                yield change

        feed.follow = pruned_after_the_first  # type: ignore[method-assign]
        code, lines, err = await cli(capsys, "watch", "--address", pair.chn.operator_address)
        assert code == 1 and [line["position"] for line in lines] == ["1"]
        assert "CHANGES_PRUNED" in err and "watch from position 3" in err
        assert "resume with" not in err
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_watch_of_a_gateway_that_stops_answering_ends_saying_where_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that freezes (SIGSTOP here; a host that vanished, or a network that dropped the connection
    without closing it, alike) sends nothing more and closes nothing: TCP tells a watcher that sends nothing
    nothing either. The watch checks that the gateway answers, and ends (exit 1) with the line to resume from,
    instead of waiting for ever."""
    monkeypatch.setattr(watch_cli, "PROBE_SECONDS", 0.5)
    monkeypatch.setattr(watch_cli, "PROBE_TIMEOUT_SECONDS", 2.0)
    chn, _ = write_pair(tmp_path)
    chn.start()
    try:
        await chn.wait_serving()
        replica = await SQLiteStore.open(tmp_path / "chn.db")
        try:
            async with replica.transaction() as tx:
                await tx.insert_transfer(REPLICA_TRANSFER)
        finally:
            await replica.close()
        follower = asyncio.create_task(asyncio.to_thread(main, ["watch", "--address", chn.operator_address]))
        printed = ""
        async with asyncio.timeout(30):
            while "\n" not in printed:  # the change is printed: the watch follows, at the end of the feed
                printed += capsys.readouterr().out
                await asyncio.sleep(0.05)
        assert chn.process is not None
        chn.process.send_signal(signal.SIGSTOP)
        try:
            code = await asyncio.wait_for(follower, 30)
        finally:
            chn.process.send_signal(signal.SIGCONT)
        out, err = capsys.readouterr()
        [change] = [json.loads(line) for line in (printed + out).splitlines()]
        assert code == 1 and err.count("\n") == 1, err
        assert "the gateway stopped answering" in err
        assert err.rstrip().endswith(f"resume with --after {change['position']} --digest {change['digest']}")
    finally:
        chn.stop()


@pytest.mark.asyncio
async def test_a_watch_keeps_checking_the_gateway_after_a_check_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check the gateway refuses (here TOO_MANY_CALLS: calls on loopback without credentials, one caller, hold
    its `CALLS_AT_ONCE` places, as any local program may) shows that it answered then, not that it will later.
    The watch stopped checking after such an answer, and so waited for ever once the gateway froze; it now
    checks on, and ends with the line to resume from."""
    monkeypatch.setattr(watch_cli, "PROBE_SECONDS", 0.5)
    monkeypatch.setattr(watch_cli, "PROBE_TIMEOUT_SECONDS", 5.0)  # a loaded machine answers a check slowly
    refused = threading.Event()

    made = operator_pb2_grpc.OperatorServiceStub

    def spied_stub(channel: Any) -> Any:
        """The stub the command makes, noting each check refused for want of a place."""
        stub: Any = made(channel)
        list_trust = stub.ListTrust

        async def spied(*args: Any, **kwargs: Any) -> Any:
            try:
                return await list_trust(*args, **kwargs)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused.set()
                raise

        stub.ListTrust = spied
        return stub

    monkeypatch.setattr(operator_pb2_grpc, "OperatorServiceStub", spied_stub)
    chn, _ = write_pair(tmp_path)
    chn.start()
    try:
        await chn.wait_serving()
        replica = await SQLiteStore.open(tmp_path / "chn.db")
        try:
            async with replica.transaction() as tx:
                await tx.insert_transfer(REPLICA_TRANSFER)
        finally:
            await replica.close()
        follower = asyncio.create_task(asyncio.to_thread(main, ["watch", "--address", chn.operator_address]))
        printed = ""
        async with asyncio.timeout(30):
            while "\n" not in printed:  # the change is printed: the watch follows, at the end of the feed
                printed += capsys.readouterr().out
                await asyncio.sleep(0.05)
        never = asyncio.Event()

        async def withheld() -> AsyncIterator[bytes]:
            await never.wait()
            yield b""

        async with grpc.aio.insecure_channel(chn.operator_address) as channel:
            method = "/carbon_gateway.v1.OperatorService/ListTrust"
            held = [channel.stream_unary(method, None, None)(withheld(), timeout=60) for _ in range(CALLS_AT_ONCE)]
            try:
                assert await asyncio.to_thread(refused.wait, 30), "no check was refused"
            finally:
                for call in held:
                    call.cancel()
        assert chn.process is not None
        chn.process.send_signal(signal.SIGSTOP)
        try:
            code = await asyncio.wait_for(asyncio.shield(follower), 30)
        finally:
            chn.process.send_signal(signal.SIGCONT)
        out, err = capsys.readouterr()
        [change] = [json.loads(line) for line in (printed + out).splitlines()]
        assert code == 1 and err.count("\n") == 1, err
        assert "the gateway stopped answering" in err
        assert err.rstrip().endswith(f"resume with --after {change['position']} --digest {change['digest']}")
    finally:
        chn.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(follower, 60)  # the stopped gateway ends a watch that still waits
