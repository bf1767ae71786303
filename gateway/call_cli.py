"""``carbon-gateway call METHOD [JSON|-]``: any OperatorService method, with a JSON request and a JSON answer.

The request is the method's request message in the protobuf JSON mapping (`google.protobuf.json_format`), given
on the command line or on standard input (``-``); the answer is printed the same way, with the field names of
the ``.proto`` files. The call goes through `gateway.ledger_cli._run`, as every command-line client of the API
does: a refusal is one line with the response code and the field, and exit status 1. An unknown method, a
request that does not parse or is not a JSON object, a ``--field`` the response message does not have, or a
``--timeout`` that is not a number of seconds is exit status 2, before anything is sent. The credentials are
those of every such client (``--token-file``, ``--ca-cert``, ``--client-cert``, ``--client-key``; see
`gateway.ledger_cli`).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from typing import Any, NoReturn

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from gateway.domain.text import InexactNumber, escaped, read_float
from gateway.ledger_cli import EXIT_REFUSED, EXIT_USAGE, RefusedError, UsageError, credentials, fail, seconds

SERVICE = "carbon_gateway.v1.OperatorService"

MAX_TIMEOUT = 365 * 24 * 3600
"""The longest ``--timeout``, in seconds (a year): gRPC cannot keep a deadline much further off."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``call`` command."""
    options = call_options()
    call = commands.add_parser(
        "call",
        help="call an OperatorService method with a JSON request and print the JSON answer",
        usage=options.format_usage().removeprefix("usage: "),
        description=options.description,
        epilog=options.format_help().partition("\n\n")[2].partition("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("method", metavar="METHOD", help=argparse.SUPPRESS)
    # The request and the options may come in any order after METHOD: `call_options` reads them.
    call.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    call.set_defaults(func=_call)


def call_options() -> argparse.ArgumentParser:
    """The parser of what follows ``call METHOD``: the request and the options, in any order."""
    call = argparse.ArgumentParser(
        prog="carbon-gateway call METHOD",
        description="Call METHOD of carbon_gateway.v1.OperatorService on a running gateway. REQUEST is the request "
        "message in the protobuf JSON mapping (default {}; - reads it from standard input). Prints the answer as "
        "JSON (a streaming method prints one JSON object per line). A refusal prints the response code and the "
        "field on standard error and exits 1; an unknown method or a malformed request exits 2.",
        add_help=False,
    )
    call.add_argument("request", metavar="REQUEST", nargs="?", default="{}", help="JSON, or - for standard input")
    call.add_argument("--config", help="the gateway's configuration file (its operator address is used)")
    call.add_argument("--address", help="the operator API's address, HOST:PORT")
    call.add_argument(
        "--field",
        metavar="NAME",
        help="print only this field of the answer (a dotted path, e.g. transfer_id or block.start), as text",
    )
    call.add_argument(
        "--wait",
        action="store_true",
        help="wait for the gateway to come up (until the timeout) instead of failing at once when it is not there",
    )
    call.add_argument(
        "--all-pages",
        action="store_true",
        help="for a list that comes in pages, ask for every page, following next_page_token, and print each page"
        " as one JSON object per line",
    )
    call.add_argument("--timeout", type=seconds, default=30.0, help="seconds (default: %(default)s)")
    credentials(call)
    return call


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parse_options(args: argparse.Namespace) -> argparse.Namespace:
    parser = call_options()
    quiet = _Parser(prog=parser.prog, add_help=False)
    for action in parser._actions:
        kwargs: dict[str, Any] = {"default": action.default, "help": action.help}
        if action.option_strings:
            if isinstance(action, argparse._StoreTrueAction):
                quiet.add_argument(*action.option_strings, action="store_true")
                continue
            kwargs.update(metavar=action.metavar, type=action.type)
            quiet.add_argument(*action.option_strings, **kwargs)
        else:
            quiet.add_argument(action.dest, nargs=action.nargs, metavar=action.metavar, **kwargs)
    if "-h" in args.arguments or "--help" in args.arguments:
        parser.print_help()
        raise SystemExit(0)
    parsed = quiet.parse_intermixed_args(args.arguments)
    parsed.method = args.method
    if (parsed.config is None) == (parsed.address is None):
        raise UsageError("give the gateway: --config FILE or --address HOST:PORT (one of them)")
    return parsed


def operator_service() -> ServiceDescriptor:
    """The OperatorService descriptor."""
    from carbon_gateway.v1 import operator_pb2

    service: ServiceDescriptor = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"]
    return service


def find_method(name: str) -> MethodDescriptor:
    """The OperatorService method ``name``; `UsageError` naming the close ones if there is none."""
    methods = operator_service().methods_by_name
    method = methods.get(name)
    if method is None:
        close = difflib.get_close_matches(name, sorted(methods), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UsageError(f"{SERVICE} has no method {name!r}; {hint}the methods are {', '.join(sorted(methods))}")
    if method.client_streaming:
        raise UsageError(f"{name} takes a stream of requests, which `call` cannot send")
    return method


class _InexactNumber(ValueError):
    def __init__(self, written: str) -> None:
        super().__init__(written)
        self.written = escaped(written, 60)


def _exact_float(written: str) -> float:
    """``json.loads``' ``parse_float``: no field of a request is a float, and an integer written with a fraction or
    an exponent is taken only if a float holds it exactly (json_format would round ``9007199254740993.0``)."""
    value = read_float(written)
    if isinstance(value, InexactNumber):
        raise _InexactNumber(written)
    return value


_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_DIGITS = re.compile(r"-?[0-9]+")


def _check_whole_numbers(message: Descriptor, value: object, path: str) -> None:
    """Refuse an integer field written as a quoted number with a fraction or an exponent (``"3.0"``,
    ``"9007199254740993e0"``): json_format reads such a string through a float, so a serial or a quantity past
    2^53 would change without a word. Digits alone are taken, as the protobuf JSON mapping writes 64-bit numbers."""
    if not isinstance(value, dict):
        return
    by_json = {f.json_name: f for f in message.fields}
    for key, item in value.items():
        field = message.fields_by_name.get(key) or by_json.get(key)
        if field is None:
            continue  # json_format names an unknown field
        where = f"{path}.{field.name}" if path else field.name
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            field, items = entry.fields_by_name["value"], list(item.values()) if isinstance(item, dict) else []
            entry = field.message_type
        elif field.is_repeated and isinstance(item, list):
            items = item
        else:
            items = [item]
        for one in items:
            if entry is not None:
                _check_whole_numbers(entry, one, where)
            elif field.type in _INTEGER_TYPES and isinstance(one, str) and not _DIGITS.fullmatch(one):
                raise UsageError(
                    f"{where}: {escaped(one[:40])!r} is not a whole number written as digits; write it so (a fraction"
                    " or an exponent in a string would be read through a floating-point number and could change it)"
                )


MAX_REQUEST_TEXT = 16 << 20
"""The most of a request read from standard input: the operator port takes requests of 4 MiB, and their JSON
form (field names, base64, quoted 64-bit numbers) a few times that at most."""


def _request_from_stdin() -> str:
    """The request on standard input; `UsageError` for one too large to send, or not UTF-8 text."""
    data = sys.stdin.buffer.read(MAX_REQUEST_TEXT + 1)
    if len(data) > MAX_REQUEST_TEXT:
        raise UsageError(
            f"-: the request on standard input is larger than {MAX_REQUEST_TEXT:,} bytes; the operator port takes"
            " requests of 4 MiB"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"-: the request on standard input is not UTF-8 text (byte {exc.start})") from None


def parse_request(method: MethodDescriptor, text: str) -> Message:
    """The request message of ``method`` from its JSON form; `UsageError` saying what is wrong."""
    request_class = message_factory.GetMessageClass(method.input_type)
    request: Message = request_class()
    try:
        value = json.loads(text, parse_float=_exact_float)
    except _InexactNumber as exc:
        raise UsageError(
            f"the number {exc.written} in the request is not exactly any floating-point number, so the whole number"
            " meant cannot be told: write whole numbers as digits alone"
        ) from None
    except RecursionError:
        raise UsageError("the request nests arrays or objects too deeply to be read") from None
    except ValueError:
        value = {}  # json_format says what is wrong with it
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}.get(
            type(value), "a number"
        )
        raise UsageError(
            f"the request is {kind}, not a JSON object: give a {method.input_type.full_name}"
            f" as {{...}} (its fields: {', '.join(f.name for f in method.input_type.fields)})"
        )
    _check_whole_numbers(method.input_type, value, "")
    try:
        json_format.Parse(text, request)
    except json_format.ParseError as exc:
        raise UsageError(
            f"the request is not a {method.input_type.full_name} in JSON: {exc}"
            f" (its fields: {', '.join(f.name for f in method.input_type.fields)})"
        ) from None
    return request


def answer_json(answer: Message) -> dict[str, Any]:
    """An answer in the protobuf JSON mapping, with the ``.proto`` field names."""
    result: dict[str, Any] = json_format.MessageToDict(answer, preserving_proto_field_name=True)
    return result


def check_field(message: Descriptor, path: str) -> None:
    """Refuse a ``--field`` path that names no field of ``message`` (the method's response), listing the fields
    there are: a typo would otherwise print an empty line, as a field left at its default does."""
    parts = path.split(".")
    for depth, part in enumerate(parts):
        field = message.fields_by_name.get(part)
        if field is None:
            where = f"the answer's {'.'.join(parts[:depth])}" if depth else "the answer"
            fields = ", ".join(f.name for f in message.fields) or "none"
            raise UsageError(
                f"--field {path}: {where} ({message.full_name}) has no field {part!r}; its fields: {fields}"
            )
        if depth + 1 < len(parts):
            nested = field.message_type
            if (
                nested is None
                or field.is_repeated
                or nested.full_name.startswith("google.protobuf.")  # printed as one JSON value, not an object
            ):
                raise UsageError(f"--field {path}: {part!r} is not a single message with fields of its own")
            message = nested


def _pick(answer: dict[str, Any], path: str) -> str:
    value: Any = answer
    for part in path.split("."):
        if not isinstance(value, dict):
            raise UsageError(f"--field {path}: the answer's {part!r} is not inside an object")
        value = value.get(part, "")
    return value if isinstance(value, str) else json.dumps(value)


def _call(args: argparse.Namespace) -> int:
    from gateway.ledger_cli import _run, check_arguments

    try:
        args = _parse_options(args)
        check_arguments(args)
        method = find_method(args.method)
        if not 0 < args.timeout <= MAX_TIMEOUT:  # also refuses nan
            raise UsageError(f"--timeout {args.timeout}: give a number of seconds above 0, at most {MAX_TIMEOUT}")
        if args.field:
            check_field(method.output_type, args.field)
        paged = (
            "page_token" in method.input_type.fields_by_name and "next_page_token" in method.output_type.fields_by_name
        )
        if args.all_pages and not paged:
            raise UsageError(f"--all-pages: {method.name} does not answer in pages")
        text = _request_from_stdin() if args.request == "-" else args.request
        request = parse_request(method, text)
        printed: list[dict[str, Any]] = []

        def show(answer: Message) -> None:
            data = answer_json(answer)
            printed.append(data)
            if args.field:
                print(_pick(data, args.field), flush=True)
            else:
                one_line = method.server_streaming or args.all_pages
                print(json.dumps(data, indent=None if one_line else 2, ensure_ascii=False), flush=True)

        async def invoke(stub: Any) -> None:
            rpc = getattr(stub, method.name)
            options: dict[str, Any] = {"timeout": args.timeout, "wait_for_ready": args.wait}
            if method.server_streaming:
                async for answer in rpc(request, **options):
                    show(answer)
            elif args.all_pages:
                page: Any = request  # a request with page_token (checked above)
                while True:
                    answer = await rpc(page, **options)
                    show(answer)
                    if not answer.next_page_token:
                        return
                    page.page_token = answer.next_page_token
            else:
                show(await rpc(request, **options))

        _run(f"call {method.name}", args, invoke)
        return 0
    except UsageError as exc:
        return fail("call", str(exc), EXIT_USAGE)
    except RefusedError as exc:
        return fail(f"call {args.method}", str(exc), EXIT_REFUSED)
