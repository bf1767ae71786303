"""``carbon-gateway watch``: the change feed of a running gateway (WatchChanges), one JSON line per change.

``carbon-gateway watch --config chn.toml`` prints every transfer and ledger change from the beginning, then
each new one as it commits, until interrupted. ``--after N`` starts after position N (the last one already
received; with ``--digest``, the digest printed with it), ``--kind`` keeps only some kinds and ``--limit``
stops after that many changes. Each line is the `carbon_gateway.v1.Change` message in protobuf's JSON mapping,
with the field names of the .proto file (64-bit integers are strings, bytes are base64). Exit status: 0 after
``--limit`` changes, 1 when the gateway refuses the call or the stream breaks (the line says the position to
resume from), 2 for a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
from typing import Any

from gateway.ledger_cli import RefusedError, UsageError, _command, _run, _target, whole_number

EXIT_INTERRUPTED = 130

PROBE_SECONDS = 60.0
"""How often a watch checks that the gateway still answers (ListTrust, which reads no database). A watch that
receives nothing cannot tell a quiet feed from a gateway that froze or a network that dropped the connection
without closing it: TCP tells the watcher nothing while it sends nothing, and it would wait for ever."""
PROBE_TIMEOUT_SECONDS = 20.0
"""How long a check waits for the gateway's answer before the watch ends, saying where to resume."""

KINDS = ("TRANSFER", "LEDGER_ENTRY", "LEDGER_ENTRY_CHANGED", "LEDGER_ENTRY_REMOVED")
"""The change kinds ``--kind`` takes: the names of the `ChangeKind` enum."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``watch`` command."""
    watch = commands.add_parser(
        "watch",
        help="print every transfer and ledger change as one JSON line, then follow new ones",
        description="Follow a gateway's change feed (WatchChanges) through its operator API.",
    )
    _target(watch)
    watch.add_argument(
        "--after",
        type=whole_number,
        default=0,
        help="the position of the last change already received (default 0: from the beginning)",
    )
    watch.add_argument(
        "--digest",
        default="",
        help="with --after: the digest printed with that change; the gateway refuses to resume if its change there"
        " is another (its database was restored from a backup since)",
    )
    watch.add_argument(
        "--kind", action="append", default=[], choices=KINDS, help="only changes of this kind (repeatable)"
    )
    watch.add_argument(
        "--limit",
        type=whole_number,
        default=0,
        help="stop after this many changes (default 0: follow until interrupted)",
    )
    watch.set_defaults(func=_watch)


def _do_watch(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from carbon_gateway.v1 import operator_pb2

    if args.limit < 0:
        raise UsageError(f"--limit {args.limit}: give 0 (follow until interrupted) or a number of changes")
    try:
        digest = base64.b64decode(args.digest, validate=True)
    except binascii.Error:
        raise UsageError(f"--digest {args.digest!r}: not base64; give the digest as a printed line shows it") from None
    request = operator_pb2.WatchChangesRequest(
        after_position=args.after, kinds=[operator_pb2.ChangeKind.Value(k) for k in args.kind], after_digest=digest
    )
    received = 0
    last = args.after
    last_digest = ""

    async def read(call: Any) -> None:
        nonlocal received, last, last_digest
        async for change in call:
            line = json.dumps(json_format.MessageToDict(change, preserving_proto_field_name=True), ensure_ascii=False)
            print(line, flush=True)
            received += 1
            last = change.position
            last_digest = base64.b64encode(change.digest).decode()
            if received == args.limit:
                call.cancel()
                return

    async def follow(stub: Any) -> None:
        call = stub.WatchChanges(request)
        reading = asyncio.ensure_future(read(call))
        probing = asyncio.ensure_future(_answering(stub))
        try:
            await asyncio.wait((reading, probing), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                probing.result()  # raises when the gateway stopped answering
            await reading
        finally:
            for task in (reading, probing):
                task.cancel()
            call.cancel()

    try:
        _run("watch", args, follow)
    except RefusedError as exc:
        from gateway.domain.errors import ResponseCode

        # A feed pruned past the last change printed: the refusal names where to continue, and no resume from
        # the last change could work.
        if received and exc.code is not ResponseCode.CHANGES_PRUNED:
            resume = f"--after {last} --digest {last_digest}"
            raise RefusedError(f"{exc}; the last change printed is at position {last}: resume with {resume}") from None
        raise
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


async def _answering(stub: Any) -> None:
    """Check every `PROBE_SECONDS` that the gateway answers; raise `RefusedError` once a check goes unanswered
    for `PROBE_TIMEOUT_SECONDS` or finds the connection gone. Any other answer, a refusal too, shows that the
    gateway answered then, not that it will later: the checks go on (a caller's places all taken, say, refuse
    one check, and a gateway that froze after it must still end the watch)."""
    import grpc

    from carbon_gateway.v1 import operator_pb2

    while True:
        await asyncio.sleep(PROBE_SECONDS)
        try:
            await stub.ListTrust(operator_pb2.ListTrustRequest(), timeout=PROBE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                continue
            raise RefusedError(
                f"the gateway stopped answering: a check got no answer within {PROBE_TIMEOUT_SECONDS:g} s"
                f" ({exc.code().name}); it froze, or the network between dropped the connection"
            ) from None


_watch = _command("watch", _do_watch)
