"""The ``adapters`` and ``map`` subcommands of ``carbon-gateway``.

``carbon-gateway adapters [--json]`` lists the installed adapters and the schemas each reads and writes.

``carbon-gateway map --from SCHEMA --to SCHEMA FILE [--strict] [--per-record] [--out FILE]`` maps a file.
Formats follow the file extensions (``.json``, ``.csv``, ``.xlsx``, ``.txt``) unless ``--from-format`` or
``--to-format`` say otherwise. ``--context FILE`` gives, as JSON, the facts the source does not carry (see
`adapters.context.context_from_json`). Exit codes: 0 mapped; 1 refused (nothing written unless
``--per-record``, which writes the records that mapped); 2 a usage problem (unknown schema or format,
unreadable context, no adapters installed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from adapters import tabular
from adapters.base import Adapter
from adapters.context import MappingContext, context_from_json
from adapters.mapping import encode_outputs, map_batch
from adapters.registry import AdapterNotFound, NoAdaptersInstalled, get_adapter, list_adapters, load_problems
from gateway.domain.mapping import RecordRejected, issue_runs

LARGE_BATCH = 10_000
"""Batches at least this large show a progress bar on standard error."""

_EXTENSIONS = {".json": "json", ".csv": "csv", ".xlsx": "xlsx", ".txt": "text"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``adapters`` and ``map`` subcommands; each sets ``func`` to a callable returning an exit code."""
    listing = subparsers.add_parser("adapters", help="list the installed adapters and their schemas")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=run_adapters)

    mapping = subparsers.add_parser("map", help="map a file from one schema to another")
    mapping.add_argument("--from", dest="source", required=True, metavar="SCHEMA", help="source schema")
    mapping.add_argument("--to", dest="target", required=True, metavar="SCHEMA", help="target schema")
    mapping.add_argument("file", type=Path, metavar="FILE", help="the file to map")
    mapping.add_argument("--strict", action="store_true", help="refuse any record that would lose a field")
    mapping.add_argument(
        "--per-record", action="store_true", help="apply the records that map even if others are refused"
    )
    mapping.add_argument(
        "--strict-nomenclature", action="store_true", help="refuse AEF extension codes instead of reporting them"
    )
    mapping.add_argument("--out", type=Path, metavar="FILE", help="write here instead of standard output")
    mapping.add_argument("--from-format", metavar="FORMAT", help="format of FILE (default: from its extension)")
    mapping.add_argument("--to-format", metavar="FORMAT", help="output format (default: from --out's extension)")
    mapping.add_argument("--context", type=Path, metavar="FILE", help="JSON file of mapping facts and settings")
    mapping.set_defaults(func=run_map)


def run_adapters(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """List the installed adapters."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        infos = list_adapters()
    except NoAdaptersInstalled as error:
        print(f"error: {error}", file=err)
        return 2
    for problem in load_problems():
        print(f"warning: adapter entry point {problem.entry_point!r} skipped: {problem.message}", file=err)
    if args.json:
        json.dump(
            [
                {
                    "name": i.name,
                    "description": i.description,
                    "reads": list(i.reads),
                    "writes": list(i.writes),
                    "record": i.record,
                }
                for i in infos
            ],
            out,
            indent=2,
        )
        out.write("\n")
        return 0
    width = max(len(i.name) for i in infos)
    for info in infos:
        print(
            f"{info.name:<{width}}  reads {', '.join(info.read_formats):<10}  "
            f"writes {', '.join(info.write_formats):<10}  {info.description}",
            file=out,
        )
    return 0


def _format(path: Path | None, given: str | None, adapter: Adapter, reading: bool) -> str:
    formats = adapter.info.read_formats if reading else adapter.info.write_formats
    if given:
        fmt = given
    elif path is not None and path.suffix.lower() in _EXTENSIONS:
        fmt = _EXTENSIONS[path.suffix.lower()]
    elif len(formats) == 1:
        fmt = formats[0]
    else:
        where = f"{path}" if path else "standard output"
        raise ValueError(
            f"cannot tell the format of {where}: pass --{'from' if reading else 'to'}-format ({', '.join(formats)})"
        )
    if fmt not in formats:
        raise ValueError(f"{adapter.info.name} {'reads' if reading else 'writes'} {', '.join(formats)}, not {fmt!r}")
    return fmt


def run_map(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Map one file; see the module docstring for the exit codes."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        source, target = get_adapter(args.source), get_adapter(args.target)
        in_fmt = _format(args.file, args.from_format, source, reading=True)
        out_fmt = _format(args.out, args.to_format, target, reading=False)
        _check_out_is_no_input(args.out, args.file, args.context)
        context = _context(args.context)
        data = args.file.read_bytes()
    except OSError as error:
        print(f"error: {error.filename or args.file}: {error.strerror or error}", file=err)
        return 2
    except (AdapterNotFound, NoAdaptersInstalled, ValueError) as error:
        print(f"error: {error}", file=err)
        return 2
    except RecordRejected as rejected:
        for problem in rejected.problems:
            print(f"error: {problem.field}: {problem.message} [{problem.code}]", file=err)
        return 2
    try:
        raws = source.decode(data, in_fmt)
    except RecordRejected as rejected:
        for problem in rejected.problems:
            print(f"error: {args.file}: {problem.field}: {problem.message} [{problem.code}]", file=err)
        print("nothing was mapped", file=err)
        return 1
    with tqdm(total=len(raws), disable=len(raws) < LARGE_BATCH, file=err, unit="record") as bar:
        result = map_batch(
            args.source,
            args.target,
            raws,
            strict=args.strict,
            per_record=args.per_record,
            context=context,
            strict_nomenclature=args.strict_nomenclature,
            progress=bar.update,
        )
    for run in issue_runs(result.issues):
        print(f"error: {run}", file=err)
    for run in issue_runs(result.notes):
        print(f"note: {run}", file=err)
    lossy = [r for r in result.records if r.lost_fields and r.output is not None]
    if lossy:
        print(
            f"lost: {len(lossy)} record(s) lost fields the target cannot carry: {', '.join(result.lost_fields)}",
            file=err,
        )
    if result.outputs or result.ok:  # an empty batch is an empty table, not nothing
        try:
            payload = encode_outputs(result, target, out_fmt)
        except RecordRejected as rejected:
            for problem in rejected.problems:
                print(f"error: {problem.field}: {problem.message} [{problem.code}]", file=err)
            print(f"nothing was written: the {out_fmt} output cannot hold the value above", file=err)
            return 1
        if args.out is not None:
            try:
                args.out.write_bytes(payload)
            except OSError as error:
                print(f"error: {args.out}: {error.strerror or error}", file=err)
                return 2
        elif out_fmt == "xlsx":
            print("error: an XLSX workbook cannot be written to standard output: pass --out", file=err)
            return 2
        else:
            out.write(payload.decode())
    applied = len(result.outputs)
    if not result.ok:
        print(
            f"{'refused' if not result.applied else 'partly mapped'}: {applied} of {len(result.records)} "
            "record(s) written",
            file=err,
        )
        return 1
    print(f"mapped {applied} record(s) from {args.source} to {args.target}", file=err)
    return 0


def _check_out_is_no_input(out: Path | None, file: Path, context: Path | None) -> None:
    """Refuse an ``--out`` that is the file to map or the context file: writing the result there destroys the
    source the mapping came from."""
    if out is None or not out.exists():
        return
    for given, what in ((file, "the file to map"), (context, "the --context file")):
        if given is not None and given.exists() and os.path.samefile(out, given):
            raise ValueError(f"--out {out} is {what}: the mapping would replace it; name another file")


def _context(path: Path | None) -> MappingContext:
    if path is None:
        return MappingContext()
    try:
        data = tabular.loads_finite(path.read_text(encoding="utf-8-sig"))  # as editors on Windows save it
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: it nests arrays or objects too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return context_from_json(data)


def main(argv: Sequence[str] | None = None) -> int:
    """A stand-alone entry for the two subcommands (the gateway's CLI calls `register`)."""
    parser = argparse.ArgumentParser(prog="carbon-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
