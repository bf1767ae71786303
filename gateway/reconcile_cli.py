"""``carbon-gateway reconcile ...``: reconciliation runs from the command line, through a running gateway's
operator API.

``carbon-gateway reconcile --partner CHE --config chn.toml`` starts a run, waits for its result and prints the
report. ``reconcile list``, ``reconcile show RUN`` and ``reconcile resolve RUN --reason TEXT --key K`` follow
and close runs. The exit code says what was found: 0 consistent (or resolved), 3 a discrepancy, 4 no result
within ``--wait`` seconds (the run goes on; ``show`` follows it), 1 a refusal, 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

from gateway.ledger_cli import EXIT_USAGE, RefusedError, UsageError, _command, _run, credentials, fail, seconds
from signing.files import write_new_file

EXIT_DISCREPANCY = 3
EXIT_WAITING = 4
EXIT_ABANDONED = 5


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``reconcile`` commands."""
    reconcile = commands.add_parser(
        "reconcile",
        help="reconcile the ledger with a partner's (run, list, show, resolve)",
        description="Without a subcommand: start a run with --partner, wait for it and print the report.",
    )
    reconcile.add_argument("--partner", help="the partner's Party code, e.g. CHE")
    reconcile.add_argument("--config", help="the gateway's configuration file (its operator address is used)")
    reconcile.add_argument("--address", help="the operator API's address, HOST:PORT")
    credentials(reconcile)
    reconcile.add_argument("--key", help="the idempotency key (a new one by default): reuse it to retry safely")
    reconcile.add_argument("--wait", type=seconds, default=60.0, help="seconds to wait for the result (default 60)")
    reconcile.add_argument("--out", help="also write the signed report (DSSE, JSON) to this file")
    reconcile.set_defaults(func=_start)
    subcommands = reconcile.add_subparsers(dest="reconcile_command")

    listing = subcommands.add_parser("list", help="the latest runs, newest first")
    _target_after(listing)
    listing.add_argument(
        "--partner", dest="list_partner", default="", help="only the runs with this partner (here or before list)"
    )
    listing.set_defaults(func=_list)

    show = subcommands.add_parser("show", help="print one run and its report")
    _target_after(show)
    show.add_argument("run_id")
    show.add_argument("--out", dest="show_out", help="also write the signed report (DSSE, JSON) to this file")
    show.set_defaults(func=_show)

    resolve = subcommands.add_parser("resolve", help="resolve an inconsistent run: its frozen blocks move again")
    _target_after(resolve)
    resolve.add_argument("run_id")
    resolve.add_argument("--reason", required=True, help="why the discrepancy is resolved (recorded)")
    resolve.add_argument("--key", dest="resolve_key", help="the idempotency key (required, here or before resolve)")
    resolve.set_defaults(func=_resolve)


def _target_after(parser: argparse.ArgumentParser) -> None:
    """The gateway and credential options on a subcommand, given there or before it (``reconcile --config F
    show RUN`` as ``reconcile show --config F RUN``)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="the gateway's configuration file (its operator address is used)",
    )
    where.add_argument("--address", default=argparse.SUPPRESS, help="the operator API's address, HOST:PORT")
    credentials(parser, default=argparse.SUPPRESS)


def _check_target(args: argparse.Namespace) -> None:
    if bool(args.config) == bool(args.address):
        raise UsageError("give one of --config FILE or --address HOST:PORT, before or after the subcommand")


def _do_start(args: argparse.Namespace) -> int:
    from carbon_gateway.v1 import operator_pb2

    if not args.partner:
        raise UsageError("name the partner with --partner (or use a subcommand: list, show, resolve)")
    _check_target(args)
    if not 0 <= args.wait <= 86_400:
        raise UsageError("--wait is between 0 and 86400 seconds")
    _check_out(args.out)
    request = operator_pb2.RunReconciliationRequest(idempotency_key=args.key or str(uuid.uuid4()), partner=args.partner)
    started = _run("reconcile", args, lambda stub: stub.RunReconciliation(request, timeout=30))
    run = _wait(args, started.run_id, args.wait)
    print(format_run(run))
    _write_report(run, args.out)
    return _exit_code(run)


def _wait(args: argparse.Namespace, run_id: str, seconds: float) -> Any:
    from carbon_gateway.v1 import operator_pb2

    request = operator_pb2.GetReconciliationRequest(run_id=run_id)
    deadline = time.monotonic() + seconds

    async def poll(stub: Any) -> Any:
        while True:
            run = await stub.GetReconciliation(request, timeout=30)
            if run.status != 1 or time.monotonic() >= deadline:
                return run
            await asyncio.sleep(0.2)

    return _run("reconcile", args, poll)


def _exit_code(run: Any) -> int:
    if run.status in (2, 5):
        return 0
    if run.status == 1:
        return EXIT_WAITING
    if run.status == 7:  # ABANDONED: nothing was compared, so nothing is known to differ
        return EXIT_ABANDONED
    return EXIT_DISCREPANCY


def _check_out(out: str | None) -> None:
    """Refuse an ``--out`` that names something already there before any call: a run started, and a report
    printed, before the refusal would end with the usage error's status instead of the run's."""
    if out and os.path.lexists(out):
        raise UsageError(f"--out {out}: refusing to overwrite what is there; remove it or name a new file")


def _write_report(run: Any, out: str | None) -> None:
    if not out:
        return
    if not run.signed_report:
        raise UsageError(f"run {run.run_id} has no signed report here (it is still running, or the partner ran it)")
    try:
        # A new file only: --out naming a configuration, a key or a link to one must not replace it.
        write_new_file(Path(out), run.signed_report, 0o644)
    except FileExistsError:
        raise UsageError(f"--out {out}: refusing to overwrite what is there; remove it or name a new file") from None
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write the signed report there: {exc.strerror or exc}") from None
    print(f"signed report written to {out}")


def _do_list(args: argparse.Namespace) -> int:
    from carbon_gateway.v1 import operator_pb2, partner_pb2

    _check_target(args)
    request = operator_pb2.ListReconciliationsRequest(partner=args.list_partner or args.partner or "")
    listed = _run("reconcile list", args, lambda stub: stub.ListReconciliations(request, timeout=30))
    for run in listed.runs:
        print(
            _printable(
                f"{run.run_id}  {run.partner}  {run.role}  {_name(partner_pb2.ReconciliationStatus, run.status)}"
                f"  {run.started_at.ToJsonString()}  {run.detail[:80]}"
            )
        )
    if not listed.runs:
        print("no reconciliation runs yet")
    return 0


def _do_show(args: argparse.Namespace) -> int:
    from carbon_gateway.v1 import operator_pb2

    _check_target(args)
    _check_out(args.show_out or args.out)
    request = operator_pb2.GetReconciliationRequest(run_id=args.run_id)
    run = _run("reconcile show", args, lambda stub: stub.GetReconciliation(request, timeout=30))
    print(format_run(run))
    _write_report(run, args.show_out or args.out)
    return _exit_code(run)


def _do_resolve(args: argparse.Namespace) -> int:
    from carbon_gateway.v1 import operator_pb2

    _check_target(args)
    key = args.resolve_key or args.key
    if not key:
        raise UsageError("name the idempotency key with --key: reuse it to retry safely")
    request = operator_pb2.ResolveReconciliationRequest(idempotency_key=key, run_id=args.run_id, reason=args.reason)
    run = _run("reconcile resolve", args, lambda stub: stub.ResolveReconciliation(request, timeout=30))
    print(_printable(f"run {run.run_id} with {run.partner} resolved: {run.resolved_reason}"))
    return 0


def format_run(run: Any) -> str:
    """A run and its report as text."""
    from carbon_gateway.v1 import partner_pb2, records_pb2

    status = _name(partner_pb2.ReconciliationStatus, run.status)
    lines = [
        f"run {run.run_id} with {run.partner} ({run.role}), snapshot {run.snapshot_at.ToJsonString()}",
        f"status: {status}",
    ]
    if run.detail:
        lines.append(f"detail: {run.detail}")
    if run.resolved_reason:
        lines.append(f"resolved {run.resolved_at.ToJsonString()}: {run.resolved_reason}")
    report = run.report
    if run.status == 1:
        lines.append(
            f"still waiting for the partner's answers: `carbon-gateway reconcile show {run.run_id}` follows it"
        )
        return _printable("\n".join(lines))
    for group in report.groups:
        g = group.group
        lines.append(
            f"group {g.unit_kind} {g.issuing_registry} vintage {g.vintage} {g.action} {g.purpose}:"
            f" {report.requester} {group.requester.blocks} blocks / {group.requester.quantity} units,"
            f" {report.responder} {group.responder.blocks} blocks / {group.responder.quantity} units"
        )
    for difference in report.differences:
        fields = f" ({', '.join(difference.fields)})" if difference.fields else ""
        lines.append(
            f"difference {_name(partner_pb2.DifferenceKind, difference.kind)}"
            f" in transfer {difference.transfer_id}{fields}"
        )
        for side, blocks in (
            (report.requester, difference.requester_blocks),
            (report.responder, difference.responder_blocks),
        ):
            for b in blocks:
                issuance = f"/{b.issuance}" if b.issuance else ""
                lines.append(
                    f"  {side}: {b.unit_kind}/{b.issuing_registry}{issuance} [{b.serial_start}, {b.serial_end}]"
                    f" vintage {b.vintage} {b.transferring_party}->{b.acquiring_party} purpose {b.purpose}"
                    f" first transferred {'yes' if b.first_transferred else 'no'}"
                )
            if not blocks:
                lines.append(f"  {side}: no record")
        for side, evidence in (
            (report.requester, difference.requester_evidence),
            (report.responder, difference.responder_evidence),
        ):
            state = _name(records_pb2.TransferState, evidence.state) if evidence.known else "transfer unknown"
            digests = ", ".join(
                f"#{m.log_index} {m.direction} {m.kind} {m.envelope_sha256.hex()[:12]}" for m in evidence.messages
            )
            omitted = evidence.messages_omitted
            if omitted and digests:
                digests += f" and {omitted} more left out for lack of room"
            elif omitted:
                digests = f"none listed, {omitted} left out for lack of room"
            lines.append(f"  {side} holds: {state}; messages {digests or 'none'}")
    if report.differences_omitted:
        lines.append(f"{report.differences_omitted} more differences did not fit in the report")
    for transfer_id in report.in_flight:
        lines.append(f"in flight (compared next time): transfer {transfer_id}")
    if run.HasField("report"):
        lines.append(
            f"log heads: {report.requester} {report.requester_head.tree_size} entries"
            f" (root {report.requester_head.root_hash.hex()[:16]}), {report.responder}"
            f" {report.responder_head.tree_size} entries (root {report.responder_head.root_hash.hex()[:16]})"
        )
    else:
        lines.append("no report: the run ended before the two sides compared their books")
    return _printable("\n".join(lines))


def _name(enum: Any, value: int) -> str:
    """An enum value's name in the protos, or its number when this version does not know it."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def _printable(text: str) -> str:
    """``text`` with every control character but the line break shown as an escape: a partner's words (a
    detail, a code) never drive the operator's terminal."""
    return "".join(c if c == "\n" or c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


_start = _command("reconcile", _do_start)
_list = _command("reconcile list", _do_list)
_show = _command("reconcile show", _do_show)
_resolve = _command("reconcile resolve", _do_resolve)

__all__ = ["EXIT_DISCREPANCY", "EXIT_USAGE", "EXIT_WAITING", "RefusedError", "fail", "format_run", "register"]
