"""The command line as a user runs it: real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.harness import self_signed_trust_document
from signing import generate_key, signer_from_uri

CLI = [sys.executable, "-m", "gateway.cli"]


def test_demo_json_reports_a_completed_transfer_and_agreeing_ledgers() -> None:
    result = subprocess.run([*CLI, "demo", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["completed"] is True
    assert summary["ledgers_agree"] is True
    assert summary["chn"]["state"] == summary["che"]["state"] == "COMPLETED"
    assert [e["action_type"] for e in summary["chn"]["ledger"]] == ["First transfer"]
    assert [e["action_type"] for e in summary["che"]["ledger"]] == ["Acquisition"]
    assert summary["chn"]["ledger"][0]["transfer_id"] == summary["transfer_id"]
    assert summary["chn"]["ledger"][0]["quantity"] == "400"  # int64 is a string in proto JSON


def test_demo_prints_each_step() -> None:
    result = subprocess.run([*CLI, "demo"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    for step in ("1. Opened account", "4. CHN proposed transfer", "Final states: CHN COMPLETED, CHE COMPLETED"):
        assert step in result.stdout


def _write_config(folder: Path) -> Path:
    generate_key(folder / "chn")
    generate_key(folder / "che")
    (folder / "chn.trust.json").write_bytes(
        self_signed_trust_document("CHN", signer_from_uri(str(folder / "chn.key"))).to_json()
    )
    (folder / "che.trust.json").write_bytes(
        self_signed_trust_document("CHE", signer_from_uri(str(folder / "che.key"))).to_json()
    )
    config = folder / "chn.toml"
    config.write_text(
        """
party = "CHN"
database = "chn.db"
signer = "file:chn.key"
trust_document = "chn.trust.json"

[operator]
listen = "127.0.0.1:0"
unauthenticated_loopback = true

[partner]
listen = "127.0.0.1:0"

[[partners]]
party = "CHE"
address = "127.0.0.1:9"
trust_document = "che.trust.json"

[policy]
rules = [{ verdict = "accept", partner = "CHE", purpose = "NDC", max_quantity = 1000 }]
"""
    )
    return config


def test_serve_runs_from_a_config_file_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    process = subprocess.Popen(
        [*CLI, "serve", str(config)], stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        assert process.stderr is not None
        address = None
        deadline = time.monotonic() + 30
        while address is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            match = re.search(r"operator API (127\.0\.0\.1:\d+)", line)
            if match:
                address = match.group(1)
        assert address is not None, "the gateway did not report its operator address"
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert (tmp_path / "chn.db").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_serve_reports_a_bad_config_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('party = "China"\ndatabase = "x.db"\nsigner = "k"\ntrust_document = "t"\n')
    result = subprocess.run([*CLI, "serve", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "'China' is not an ISO 3166-1 alpha-3 code" in result.stderr


def test_settling_the_heap_takes_what_exists_out_of_garbage_collection() -> None:
    import gc

    from gateway.cli import settle_heap

    before = gc.get_freeze_count()
    kept = [[i] for i in range(100)]  # lists are tracked by the collector
    try:
        settle_heap()
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()


def test_a_reader_that_closes_the_output_early_gets_no_traceback(tmp_path: Path) -> None:
    # `carbon-gateway ... | head -1`: the command's output goes to a pipe whose reader has gone.
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "keys", "generate", "--out", str(tmp_path / "k")],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, b"")
    assert (tmp_path / "k.key").exists()


def test_ctrl_c_while_a_command_waits_for_a_gateway_is_one_line_and_status_130() -> None:
    import socket

    # A listener that never answers, as a gateway still starting: the command's connection to it shows that the
    # command is past its own start (on a loaded machine that may take seconds) and waits.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(60)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        command = [*CLI, "call", "GetTransfer", "--wait", "--address", address, '{"transfer_id":"x"}']
        # A shell running a command in the background ignores SIGINT for it; an operator's terminal does not.
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            connection, _ = silent.accept()
        except BaseException:
            process.kill()
            process.communicate()
            raise
        with connection:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
    assert (process.returncode, out, err) == (130, "", "carbon-gateway: interrupted\n")


def test_an_address_out_of_range_or_an_unbracketed_ipv6_one_is_a_usage_error_not_another_port() -> None:
    # gRPC would take port 111637 as 46101 (modulo 65536) and call whatever listens there.
    for command in (
        ["call", "ListTrust", "{}", "--address", "127.0.0.1:111637"],
        ["ledger", "summary", "--address", "127.0.0.1:99999"],
        ["reconcile", "list", "--address", "::1:5000"],
        ["watch", "--address", "127.0.0.1:0"],
        ["call", "ListTrust", "{}", "--address", "127.0.0.1:" + "9" * 5_000],  # past int()'s 4,300 digits
    ):
        result = subprocess.run([*CLI, *command], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, (command, result.stderr)
        assert "--address: " in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("request_json", "said"),
    [
        ('{"page_size": 9007199254740993.0}', "9007199254740993.0 in the request is not exactly"),
        ('{"page_size": 2.00000000000000001}', "2.00000000000000001 in the request"),
        ("[" * 100_000, "nests arrays or objects too deeply"),
        ('{"page_size": 0e-99999999999999999999999}', "0e-99999999999999999999999 in the request is not exactly"),
        # json_format reads an integer in a string through a float too: "100000000000000001.0" became ...000.
        ('{"page_size": "100000000000000001.0"}', "page_size: '100000000000000001.0' is not a whole number"),
        ('{"page_size": "9007199254740993e0"}', "page_size: '9007199254740993e0' is not a whole number"),
    ],
)
def test_call_refuses_a_number_it_would_round_and_a_request_too_deep_in_one_line(request_json: str, said: str) -> None:
    # json_format would take 9007199254740993.0 as 9007199254740992, and 2.00000000000000001 as 2.
    result = subprocess.run(
        [*CLI, "call", "ListTransfers", request_json, "--address", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr, result.stderr[-400:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-400:]


def test_call_takes_quoted_whole_numbers_as_digits_only_in_nested_and_repeated_fields() -> None:
    from carbon_gateway.v1 import operator_pb2
    from gateway.call_cli import parse_request
    from gateway.ledger_cli import UsageError

    service = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"]
    issuance = service.methods_by_name["RegisterIssuance"]
    taken = parse_request(issuance, '{"block": {"start": "100000000000000001", "end": "100000000000000003"}}')
    assert (taken.block.start, taken.block.end) == (100000000000000001, 100000000000000003)  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match=r"^block\.end: '100000000000000003\.0' is not a whole number"):
        parse_request(issuance, '{"block": {"start": "1", "end": "100000000000000003.0"}}')
    proposal = service.methods_by_name["ProposeTransfer"]
    with pytest.raises(UsageError, match=r"^selections\.start: '1e2' is not a whole number"):
        parse_request(proposal, '{"selections": [{"start": "1", "end": "2"}, {"start": "1e2", "end": "200"}]}')


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        (b'{"page_size": 1, "x\xc3": 1}', "-: the request on standard input is not UTF-8 text (byte 19)"),
        (b"{" + b" " * (16 << 20) + b"}", "-: the request on standard input is larger than 16,777,216 bytes"),
    ],
    ids=["not-utf-8", "too-large"],
)
def test_call_refuses_a_request_on_standard_input_that_is_not_utf8_or_too_large_in_one_line(
    sent: bytes, said: str
) -> None:
    result = subprocess.run(
        [*CLI, "call", "ListTransfers", "-", "--address", "127.0.0.1:1"],
        input=sent,
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode == 2 and said in err and len(err.strip().splitlines()) == 1, err[-400:]
