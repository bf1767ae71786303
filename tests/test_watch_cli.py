"""``carbon-gateway watch`` against real gateways: JSON lines in position order, resuming with --after, the kind
filter, a change that commits while it follows, and refusals as one line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.demo import start_pair
from tests.integration.harness import operator, proposal_request, setup_accounts, transfer


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
        code, _, err = await cli(capsys, "watch", "--address", address, "--after", "1", "--digest", "not base64!")
        assert code == 2 and err.count("\n") == 1 and "--digest" in err
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_watch_the_gateway_ends_says_where_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = await start_pair(tmp_path)
    try:
        await transfer(pair, await setup_accounts(pair), 1, 10, "t1")
        follower = asyncio.create_task(cli(capsys, "watch", "--address", pair.chn.operator_address))
        await asyncio.sleep(1.0)
        await pair.chn.stop()
        code, lines, err = await asyncio.wait_for(follower, 10)
    finally:
        await pair.che.stop()
    assert [line["position"] for line in lines] == ["1", "2", "3", "4"]
    assert code == 1 and err.count("\n") == 1
    assert "UNAVAILABLE" in err and err.rstrip().endswith(f"resume with --after 4 --digest {lines[-1]['digest']}")
