"""The ``carbon-gateway`` command line."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo

    logging.basicConfig(
        level=logging.ERROR if args.json else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    with tempfile.TemporaryDirectory(prefix="carbon-gateway-demo-") as folder:
        return asyncio.run(demo(Path(folder), as_json=args.json))


def settle_heap() -> None:
    """Exempt what starting made (modules, configuration, compiled schemas: it lives as long as the process)
    from garbage collection. A full collection otherwise walks all of it again, which paused a busy gateway
    for tens of milliseconds every few large transfers."""
    gc.collect()
    gc.freeze()


async def _serve(config_path: Path) -> int:
    from gateway.config import exposed_secrets, load_config, settings_without_effect
    from gateway.node import GatewayNode

    config = load_config(config_path)
    for warning in settings_without_effect(config):
        logging.getLogger("gateway").warning("%s: %s", config_path, warning)
    node = await GatewayNode.from_config(config)
    try:
        await node.start()
    except BaseException:
        await node.stop(grace=0)
        raise
    settle_heap()
    for warning in exposed_secrets(config):  # once started: a failed start ends in its one line, nothing else
        logging.getLogger("gateway").warning("%s: %s", config_path, warning)
    logging.getLogger("gateway").warning(
        "%s gateway serving: operator API %s, partner exchange %s",
        config.party,
        node.operator_address,
        node.partner_address,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("gateway").warning("stopping: finishing in-flight calls")
    await node.stop(grace=10.0)
    return 0


SWITCH_INTERVAL_SECONDS = 0.0005
"""The interpreter's switch interval in a ``serve`` process (the default is 5 ms)."""


def _serve_command(args: argparse.Namespace) -> int:
    from gateway import faults
    from gateway.config import ConfigError

    try:
        armed = faults.arm_from_environment()
    except faults.FaultSpecError as exc:
        print(f"carbon-gateway serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if armed:
        logging.getLogger("gateway").warning(
            "fault points armed (%s): this process kills itself when it reaches them",
            ", ".join(f"{name}@{nth}" for name, nth in sorted(armed.items())),
        )
    # A thread that wants the interpreter waits up to this long for the one holding it. The mapping thread holds
    # it for CPU work; at the default 5 ms, each of the event loop's many waits for it while a batch is mapped
    # made a commit ten times slower.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        return asyncio.run(_serve(Path(args.config)))
    except ConfigError as exc:
        # One line, whatever the message quotes (a library's multi-line reason): it is what a supervisor's
        # log shows of a start that failed.
        message = " ".join(str(exc).split())
        if not message.startswith(args.config):  # the file, then the setting, as `config check` says it
            message = f"{args.config}: {message}"
        print(f"carbon-gateway serve: {message}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="carbon-gateway",
        description="Cross-border carbon credit gateway: signed transfers between registries, AEF mapping, trust.",
    )
    parser.add_argument("--version", action="version", version=f"carbon-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run two gateways on loopback and move part of a CCER block")
    demo.add_argument("--json", action="store_true", help="print one JSON object at the end instead of the steps")
    demo.set_defaults(func=_demo)

    serve = commands.add_parser("serve", help="run one gateway from a TOML configuration file")
    serve.add_argument("config", help="path of the configuration file (see the README)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(func=_serve_command)

    from gateway.tools import register as register_tools

    register_tools(commands)
    from gateway.ledger_cli import register as register_ledger

    register_ledger(commands)
    from gateway.token_cli import register as register_token

    register_token(commands)
    from gateway.report_cli import register as register_report

    register_report(commands)
    from gateway.reconcile_cli import register as register_reconcile

    register_reconcile(commands)
    from gateway.setup_cli import register as register_setup

    register_setup(commands)
    from gateway.call_cli import register as register_call

    register_call(commands)
    from gateway.watch_cli import register as register_watch

    register_watch(commands)
    from adapters.commands import register as register_adapters

    register_adapters(commands)
    return parser


EXIT_OUTPUT_CLOSED = 141
"""The exit code of a command whose reader closed its output early (``| head``): a shell's for SIGPIPE."""


EXIT_OUTPUT_FAILED = 1
"""The exit code of a command whose output could not be written."""

OUTPUT_FAILED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
"""Write failures a command reports in one line: the output's device or file cannot take more."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (130 when interrupted, as a shell reports SIGINT)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while a command waits for a gateway, or while it starts: one line, not a traceback.
        print("carbon-gateway: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


EXIT_INTERRUPTED = 130


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # what is still buffered fails here, not at exit
    except BrokenPipeError:
        # The reader has what it wanted; the buffered rest, flushed at exit, would fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OUTPUT_CLOSED
    except OSError as exc:
        if exc.errno not in OUTPUT_FAILED:
            raise
        # Standard output (or a file a command writes) cannot take what is written: a full disk, say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"carbon-gateway {args.command}: cannot write the output: {exc.strerror}", file=sys.stderr)
        return EXIT_OUTPUT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
