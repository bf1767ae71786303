"""``carbon-gateway token generate``: a new operator bearer token in a private file, and its configuration line.

The token is written to ``--out`` (mode 0600, never overwriting a file) and never printed; standard output gets
the ``token_sha256 = "..."`` line for the caller's ``[[operator.callers]]`` table.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from gateway.domain.access import token_digest
from signing.files import write_new_file

EXIT_USAGE = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``token`` commands."""
    token = commands.add_parser("token", help="bearer tokens for operator API callers")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    generate = token_commands.add_parser(
        "generate",
        help="write a new random token to a private file and print its token_sha256 line",
        description="Write a new random bearer token (32 random bytes, URL-safe base64) to FILE with mode 0600, "
        "and print the token_sha256 line for the caller's [[operator.callers]] table. The token is never printed.",
    )
    generate.add_argument("--out", required=True, metavar="FILE", help="the new token file (must not exist)")
    generate.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    path = Path(args.out)
    token = secrets.token_urlsafe(32)
    try:
        write_new_file(path, (token + "\n").encode("ascii"), 0o600)
    except FileExistsError:
        if path.is_dir():
            return _fail(f"{path} is a folder; name a new file in it (a token is never overwritten)")
        return _fail(f"{path} exists; remove it or name a new file (a token is never overwritten)")
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}")
    print(f'token_sha256 = "{token_digest(token).hex()}"')
    return 0


def _fail(message: str) -> int:
    print(f"carbon-gateway token generate: {message}", file=sys.stderr)
    return EXIT_USAGE
