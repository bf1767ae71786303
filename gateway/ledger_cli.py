"""``carbon-gateway ledger ...``: the ledger's actions and books from the command line, through a running
gateway's operator API (``--config`` names the gateway's configuration, whose operator address is used, or
``--address`` gives it).

Every write takes ``--key``, its idempotency key: run a command again with the same key after a timeout and the
gateway answers with the first result instead of acting twice.

Credentials, shared by every command that calls the operator API: ``--token-file`` (or the environment variable
``CARBON_GATEWAY_TOKEN_FILE``) sends ``authorization: Bearer <token>``; ``--ca-cert`` connects with TLS and
verifies the gateway against that CA; ``--client-cert`` and ``--client-key`` present a client certificate. With
``--config`` naming a gateway whose ``[operator.tls]`` is set, TLS is used without ``--ca-cert``: the gateway is
verified against ``[operator.tls] client_ca`` when set (the private CA that issues both), else the system's roots.
With ``--config``, a wildcard ``listen`` (``0.0.0.0``, ``[::]``) is called on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from gateway.domain.blocks import MAX_SERIAL
from gateway.domain.text import parse_seconds, parse_whole_number, quoted

if TYPE_CHECKING:
    from gateway.domain.errors import ResponseCode

EXIT_REFUSED = 1
EXIT_USAGE = 2


def seconds(value: str) -> float:
    """The argparse ``type`` of options in seconds: ASCII digits only (`parse_seconds`)."""
    try:
        return parse_seconds(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def whole_number(value: str) -> int:
    """The argparse ``type`` of integer options: ASCII digits only (`parse_whole_number`)."""
    try:
        return parse_whole_number(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


TOKEN_FILE_VARIABLE = "CARBON_GATEWAY_TOKEN_FILE"
"""The environment variable naming a bearer-token file, when ``--token-file`` is not given."""

UNITS = re.compile(
    r"(?P<kind>[^/:]+)/(?P<registry>[^/:]+)(?:/(?P<issuance>[^/:]+))?:(?P<start>[0-9]{1,40})-(?P<end>[0-9]{1,40})"
)
"""A selection on the command line: ``KIND/REGISTRY[/ISSUANCE]:START-END``, e.g. ``CCER/CN-CCER:1-100``."""


class UsageError(Exception):
    """A command-line argument the command cannot use."""


class OneLineParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line on stderr (exit 2), like every other refusal of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ledger`` commands."""
    ledger = commands.add_parser("ledger", help="the corresponding-adjustment ledger")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True, parser_class=OneLineParser)

    summary = ledger_commands.add_parser("summary", help="print the adjustment summary")
    _target(summary)
    summary.set_defaults(func=_summary)

    use = ledger_commands.add_parser("use", help="use units towards the NDC or for other international purposes")
    _target(use)
    _write(use)
    use.add_argument("--account", required=True, help="the holding account the units are in")
    use.add_argument("--to", required=True, dest="target", help="the use account they move into")
    use.add_argument("--units", required=True, action="append", help="KIND/REGISTRY[/ISSUANCE]:START-END (repeatable)")
    use.add_argument("--year", type=whole_number, default=None, help="the calendar year of use towards the NDC")
    use.add_argument(
        "--oimp", metavar="PURPOSE", default="", help="use for other international mitigation purposes: OIMP, IMP or OP"
    )
    use.add_argument("--authorization", default="", help="for units not yet tied to an authorization")
    use.add_argument("--entity", default="", help="the authorized entity that uses them")
    use.add_argument("--note", default="")
    use.set_defaults(func=_use)

    cancel = ledger_commands.add_parser("cancel", help="cancel units (OMGE, Adaptation Fund, other) or voluntarily")
    _target(cancel)
    _write(cancel)
    cancel.add_argument("--account", required=True, help="the holding account the units are in")
    cancel.add_argument("--to", required=True, dest="target", help="the cancellation or retirement account")
    cancel.add_argument("--units", required=True, action="append", help="KIND/REGISTRY[/ISSUANCE]:START-END")
    kind = cancel.add_mutually_exclusive_group(required=True)
    kind.add_argument("--subtype", default="", help="the AEF cancellation subtype, word for word")
    kind.add_argument("--voluntary", action="store_true", help="a voluntary cancellation")
    cancel.add_argument("--purpose", default="", help="when the units' authorization is not known here")
    cancel.add_argument("--authorization", default="", help="for units not yet tied to an authorization")
    cancel.add_argument("--entity", default="", help="the authorized entity that cancels them")
    cancel.add_argument("--note", default="")
    cancel.set_defaults(func=_cancel)

    emissions = ledger_commands.add_parser("emissions", help="record the Party's reported emissions of a year")
    _target(emissions)
    _write(emissions)
    emissions.add_argument("--year", type=whole_number, required=True)
    emissions.add_argument("--quantity", type=whole_number, required=True, help="t CO2e")
    emissions.set_defaults(func=_emissions)

    lock = ledger_commands.add_parser("lock", help="make past years final (PERIOD_LOCKED afterwards)")
    _target(lock)
    _write(lock)
    lock.add_argument("--from", dest="first_year", type=whole_number, required=True)
    lock.add_argument("--to", dest="last_year", type=whole_number, required=True)
    lock.add_argument("--reason", required=True)
    lock.set_defaults(func=_lock)


def _target(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the gateway's configuration file (its operator address is used)")
    where.add_argument("--address", help="the operator API's address, HOST:PORT")
    credentials(parser)


def credentials(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """Add the operator API's credential options: a bearer-token file, TLS and a client certificate (``default``
    `argparse.SUPPRESS` on a subcommand leaves the value given before it)."""
    group = parser.add_argument_group("operator API credentials")
    group.add_argument(
        "--token-file",
        default=default,
        help=f"a file holding the bearer token (default: the file ${TOKEN_FILE_VARIABLE} names)",
    )
    group.add_argument(
        "--ca-cert", default=default, help="connect with TLS, verifying the gateway's certificate against this CA"
    )
    group.add_argument(
        "--client-cert", default=default, help="a client certificate (PEM) to present; needs --client-key"
    )
    group.add_argument("--client-key", default=default, help="the client certificate's private key (PEM, unencrypted)")


def _write(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", required=True, help="the idempotency key: reuse it to retry safely")


def fail(command: str, message: str, code: int = EXIT_REFUSED) -> int:
    """Print one line on standard error and return the exit code."""
    print(f"carbon-gateway {command}: {' '.join(message.split())}", file=sys.stderr)
    return code


def _address(args: argparse.Namespace) -> str:
    return _connection(args)[0]


def _connection(args: argparse.Namespace) -> tuple[str, Any, str | None]:
    """The operator API's address, for TLS its channel credentials (None for plaintext), and the Party whose
    configuration names it (None when an address is given instead)."""
    from gateway.config import ConfigError, check_address, load_config

    party: str | None = None
    if args.address:
        try:
            address, tls = check_address(str(args.address), "--address"), None
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    else:
        try:
            config = load_config(Path(args.config))
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        address, tls, party = _on_this_machine(config.operator_listen), config.operator_access.tls, config.party
    ca_cert = getattr(args, "ca_cert", None)
    client_cert, client_key = getattr(args, "client_cert", None), getattr(args, "client_key", None)
    if bool(client_cert) != bool(client_key):
        raise UsageError("--client-cert and --client-key go together: give both or neither")
    if tls is not None and tls.client_ca is not None and not client_cert:
        # The gateway ends the TLS handshake of a connection without one, which gRPC reports only as unavailable.
        raise UsageError(
            f"--client-cert: {args.config} sets [operator.tls] client_ca, so the gateway takes only connections"
            " that present a certificate that CA issued: give --client-cert and --client-key"
        )
    if not (ca_cert or client_cert or tls):
        return address, None, party
    import grpc

    root = _read_pem("--ca-cert", ca_cert, key=False) if ca_cert else None
    if root is None and tls is not None and tls.client_ca is not None:
        root = _read_pem("[operator.tls] client_ca", str(tls.client_ca), key=False)
    private_key = _read_pem("--client-key", client_key, key=True) if client_key else None
    certificate_chain = _read_pem("--client-cert", client_cert, key=False) if client_cert else None
    if private_key is not None and certificate_chain is not None:
        _check_paired(str(client_cert), certificate_chain, str(client_key), private_key)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=private_key, certificate_chain=certificate_chain
    )
    return address, credentials, party


def _check_paired(certificate_path: str, certificate: bytes, key_path: str, key: bytes) -> None:
    """Refuse a ``--client-key`` that is not the key of the first certificate of ``--client-cert``: gRPC would
    only fail the call as unavailable, unable to "create security handshaker"."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    leaf = x509.load_pem_x509_certificates(certificate)[0]
    if serialization.load_pem_private_key(key, password=None).public_key() != leaf.public_key():
        raise UsageError(
            f"--client-key {key_path}: not the key of the certificate --client-cert {certificate_path}; give the"
            " key the certificate was issued for"
        )


def _read_pem(option: str, path: str, *, key: bool) -> bytes:
    """A file of PEM certificates (or, with ``key``, an unencrypted PEM private key), checked here: gRPC would
    only log its own complaint and fail the call as unavailable."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = _read_file(option, path)
    try:
        if key:
            serialization.load_pem_private_key(data, password=None)
        else:
            x509.load_pem_x509_certificates(data)
    except (ValueError, TypeError) as exc:
        what = "an unencrypted PEM private key" if key else "PEM certificates"
        raise UsageError(f"{option} {path}: the file does not hold {what} ({exc})") from None
    return data


def _on_this_machine(listen: str) -> str:
    """The address to call a gateway on this machine at: a wildcard listen (``0.0.0.0``, ``[::]``) becomes
    loopback, which the gateway also serves and its certificate usually names (demo certificates do)."""
    host, _, port = listen.rpartition(":")
    return {"0.0.0.0": f"127.0.0.1:{port}", "[::]": f"[::1]:{port}"}.get(host, listen)


def _read_file(option: str, path: str) -> bytes:
    from signing.files import read_small_file

    try:
        data = read_small_file(Path(path))
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot be read: {exc.strerror or exc}") from None
    if not data.strip():
        raise UsageError(f"{option} {path}: the file is empty")
    return data


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token from ``--token-file`` or ``$CARBON_GATEWAY_TOKEN_FILE``; never printed."""
    path = getattr(args, "token_file", None)
    option = "--token-file"
    if not path:
        path, option = os.environ.get(TOKEN_FILE_VARIABLE), f"${TOKEN_FILE_VARIABLE}"
    if not path:
        return None
    try:
        token = _read_file(option, path).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: the token file is not UTF-8 text") from None
    if not token or not token.isascii() or any(c.isspace() or not c.isprintable() for c in token):
        raise UsageError(
            f"{option} {path}: the file must hold one token of printable ASCII (as `carbon-gateway token` writes"
            " them), without spaces, on one line"
        )
    return token


def _selections(values: list[str]) -> list[Any]:
    from carbon_gateway.v1 import operator_pb2, records_pb2

    selections = []
    for value in values:
        match = UNITS.fullmatch(value)
        if match is None:
            raise UsageError(
                f"--units {quoted(value, 80)} is not KIND/REGISTRY[/ISSUANCE]:START-END, e.g. CCER/CN-CCER:1-100"
                " (serials in the digits 0-9, at most 2^63 - 2)"
            )
        space = records_pb2.SerialSpace(
            unit_kind=match["kind"], issuing_registry=match["registry"], issuance=match["issuance"] or ""
        )
        start, end = int(match["start"]), int(match["end"])
        if max(start, end) > MAX_SERIAL:
            raise UsageError(f"--units {value!r}: serials are at most 2^63 - 2")
        selections.append(operator_pb2.BlockSelection(space=space, start=start, end=end))
    return selections


def _run(command: str, args: argparse.Namespace, call: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Call the operator API with the command's credentials; a refusal becomes one line naming the response code
    and the field."""
    import grpc

    from carbon_gateway.v1 import operator_pb2_grpc
    from gateway.domain.access import is_loopback_host
    from gateway.rpc.errors import read_error_detail

    address, channel_credentials, expected = _connection(args)
    token = _token(args)
    if token is not None and channel_credentials is None and not is_loopback_host(address.rpartition(":")[0]):
        raise UsageError(
            f"{address} is not a loopback address: the token would cross the network in plaintext; give --ca-cert"
        )
    interceptors = _bearer_token(token) if token is not None else None

    reached = False  # whether the channel was connected when a call failed: a gateway answered there

    async def go() -> Any:
        nonlocal reached
        channel = (
            grpc.aio.secure_channel(address, channel_credentials, interceptors=interceptors)
            if channel_credentials is not None
            else grpc.aio.insecure_channel(address, interceptors=interceptors)
        )
        async with channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            if expected is not None:
                # The configuration names this Party's gateway: refuse to act on another's that answers there.
                from carbon_gateway.v1 import operator_pb2

                # `call --timeout` bounds this check too: a gateway still starting is waited for as long as asked.
                trust = await stub.ListTrust(
                    operator_pb2.ListTrustRequest(),
                    timeout=getattr(args, "timeout", None) or 30,
                    wait_for_ready=bool(getattr(args, "wait", False)),
                )
                if trust.own.party != expected:
                    raise UsageError(
                        f"the gateway at {address} is {trust.own.party}'s, and {args.config} configures {expected}'s:"
                        " its operator.listen names another Party's gateway; nothing was done"
                    )
            try:
                return await call(stub)
            except grpc.aio.AioRpcError:
                reached = channel.get_state() == grpc.ChannelConnectivity.READY
                raise

    try:
        return asyncio.run(go())
    except grpc.aio.AioRpcError as exc:
        detail = read_error_detail(exc.trailing_metadata())
        if detail is None:
            # Only where gRPC itself reports that nothing answered: a gateway's own UNAVAILABLE says what to do.
            unanswered = not reached and (
                exc.code() != grpc.StatusCode.UNAVAILABLE or "failed to connect" in (exc.details() or "")
            )
            hint = _NO_ANSWER_HINT.get(exc.code().name, "") if unanswered else ""
            if unanswered and exc.code() == grpc.StatusCode.UNAVAILABLE:
                hint = _tls_hint(exc.details() or "", tls=channel_credentials is not None) or hint
            raise RefusedError(f"{address}: {exc.code().name}: {exc.details()}{hint}") from None
        from gateway.domain.errors import ResponseCode

        where = f" (field {detail.field})" if detail.field else ""
        code = ResponseCode(detail.code)
        raise RefusedError(f"{code.name}: {detail.message}{where}", code=code) from None


_NO_ANSWER_HINT = {
    "UNAVAILABLE": "; is the gateway running? Start it (carbon-gateway serve CONFIG), or check operator.listen"
    " or --address",
    "DEADLINE_EXCEEDED": "; no answer in time: start the gateway (carbon-gateway serve CONFIG) or check"
    " operator.listen or --address, and give a gateway that is still starting a longer --timeout with --wait",
}
"""What to do when the operator API did not answer at all (no ErrorDetail: no gateway took the call)."""


def _tls_hint(details: str, *, tls: bool) -> str | None:
    """What to do when gRPC's ``details`` of a failed connection say that something answered at the address and
    the TLS handshake with it failed, which no start of a gateway mends; None when they do not say so."""
    if "wrong_version_number" in details.lower():
        # What BoringSSL reports when the first bytes that come back are no TLS record: no TLS answered there.
        return (
            "; something answered at the address without TLS: the gateway's operator API serves plaintext there"
            " (no [operator.tls]), so leave out --ca-cert, --client-cert and --client-key, or check operator.listen"
            " or --address"
        )
    if "handshake failed" in details.lower():
        return (
            "; a gateway answered, but the TLS handshake failed: give --ca-cert the CA that issued its operator"
            " certificate, and an address that certificate names"
        )
    if "socket closed" in details.lower():
        if not tls:
            # A gateway whose operator API serves TLS ends a connection that opens without a handshake.
            return (
                "; something answered at the address and closed the plaintext connection: a gateway whose"
                " [operator.tls] is set takes only TLS, so give --ca-cert the CA that issued its operator certificate"
                " (or check operator.listen or --address)"
            )
        return (
            "; a gateway answered and closed the connection during the TLS handshake: check that its [operator.tls]"
            " client_ca issued the --client-cert certificate, and that it serves the operator API with TLS"
        )
    return None


def _bearer_token(token: str) -> list[Any]:
    """Client interceptors that add ``authorization: Bearer <token>`` to every call of a channel: unary calls and
    streaming ones (WatchChanges, StreamMapRecords) alike. A grpc.aio channel files each interceptor under one
    kind of call only, so there is one per kind."""
    import grpc

    header = ("authorization", f"Bearer {token}")

    def with_token(client_call_details: Any) -> Any:
        return grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            grpc.aio.Metadata(*(client_call_details.metadata or ()), header),
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
        async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
            return await continuation(with_token(client_call_details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
        async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
            return await continuation(with_token(client_call_details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
        async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
            return await continuation(with_token(client_call_details), requests)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
        async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
            return await continuation(with_token(client_call_details), requests)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


class RefusedError(Exception):
    """The gateway refused the call (``code`` says why, when the refusal carried a response code), or could not
    be reached."""

    def __init__(self, message: str, *, code: ResponseCode | None = None) -> None:
        super().__init__(message)
        self.code = code


_OPTIONS = {"first_year": "--from", "last_year": "--to", "target": "--to", "oimp": "--oimp"}
"""Options whose name differs from where argparse keeps their value."""


def _option(name: str) -> str:
    return _OPTIONS.get(name, "--" + name.replace("_", "-"))


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse an argument no request can carry: text that is not UTF-8, a number beyond 64 bits (years beyond
    32 bits), before anything is sent."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(f"{_option(name)}: not UTF-8 text") from None
            elif isinstance(item, int) and not isinstance(item, bool):
                limit = 2**31 - 1 if "year" in name else 2**63 - 1
                if not -limit - 1 <= item <= limit:
                    raise UsageError(f"{_option(name)} {item}: out of range")


def _command(name: str, body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            check_arguments(args)
            return body(args)
        except UsageError as exc:
            return fail(name, str(exc), EXIT_USAGE)
        except RefusedError as exc:
            return fail(name, str(exc))

    return run


def _print_retirement(result: Any) -> None:
    print(f"action {result.action_id}")
    for held in result.retired:
        b = held.block
        issuance = f"/{b.space.issuance}" if b.space.issuance else ""
        space = f"{b.space.unit_kind}/{b.space.issuing_registry}{issuance}"
        print(f"  {space} [{b.start}, {b.end}] {held.status} in {held.account_id}")
    for e in result.entries:
        subtype = f" ({e.action_subtype})" if e.action_subtype else ""
        print(f"  ledger: {e.action_type}{subtype} of {e.quantity} units, vintage {e.block.vintage}")


def _do_use(args: argparse.Namespace) -> int:
    from carbon_gateway.v1 import operator_pb2
    from gateway.domain.adjustments import MAX_YEAR, MIN_YEAR

    if (args.year is None) == (not args.oimp):
        raise UsageError("give --year for a use towards the NDC, or --oimp PURPOSE for another purpose (not both)")
    if args.year is not None and not MIN_YEAR <= args.year <= MAX_YEAR:
        raise UsageError(f"--year {args.year}: the year of use is not in {MIN_YEAR}..{MAX_YEAR}")
    request = operator_pb2.UseUnitsRequest(
        idempotency_key=args.key,
        source_account=args.account,
        use_account=args.target,
        selections=_selections(args.units),
        action="use towards the NDC" if args.year is not None else "use for other international mitigation purposes",
        year_of_use=args.year or 0,
        purpose=args.oimp,
        authorization_id=args.authorization,
        using_entity=args.entity,
        note=args.note,
    )
    _print_retirement(_run("ledger use", args, lambda stub: stub.UseUnits(request, timeout=30)))
    return 0


def _do_cancel(args: argparse.Namespace) -> int:
    from carbon_gateway.v1 import operator_pb2

    request = operator_pb2.CancelUnitsRequest(
        idempotency_key=args.key,
        source_account=args.account,
        cancellation_account=args.target,
        selections=_selections(args.units),
        voluntary=args.voluntary,
        subtype=args.subtype,
        purpose=args.purpose,
        authorization_id=args.authorization,
        using_entity=args.entity,
        note=args.note,
    )
    _print_retirement(_run("ledger cancel", args, lambda stub: stub.CancelUnits(request, timeout=30)))
    return 0


def _do_emissions(args: argparse.Namespace) -> int:
    from carbon_gateway.v1 import operator_pb2

    request = operator_pb2.SetReportedEmissionsRequest(idempotency_key=args.key, year=args.year, quantity=args.quantity)
    recorded = _run("ledger emissions", args, lambda stub: stub.SetReportedEmissions(request, timeout=30))
    print(f"reported emissions {recorded.year}: {recorded.quantity} t CO2e")
    return 0


def _do_lock(args: argparse.Namespace) -> int:
    from carbon_gateway.v1 import operator_pb2

    request = operator_pb2.LockPeriodRequest(
        idempotency_key=args.key, first_year=args.first_year, last_year=args.last_year, reason=args.reason
    )
    lock = _run("ledger lock", args, lambda stub: stub.LockPeriod(request, timeout=30))
    print(f"locked {lock.first_year}-{lock.last_year} at {lock.locked_at}: {lock.reason}")
    return 0


def _do_summary(args: argparse.Namespace) -> int:
    from carbon_gateway.v1 import operator_pb2

    request = operator_pb2.GetLedgerSummaryRequest()
    print(format_summary(_run("ledger summary", args, lambda stub: stub.GetLedgerSummary(request, timeout=30))))
    return 0


_use = _command("ledger use", _do_use)
_cancel = _command("ledger cancel", _do_cancel)
_emissions = _command("ledger emissions", _do_emissions)
_lock = _command("ledger lock", _do_lock)
_summary = _command("ledger summary", _do_summary)


def format_summary(summary: object) -> str:
    """The summary as text: the settings, the groups, the structured summary's rows and what is unresolved."""
    from carbon_gateway.v1 import operator_pb2

    assert isinstance(summary, operator_pb2.LedgerSummary)
    divisor = summary.averaging_divisor  # a configured summary's note names itself ("averaging divisor: ...")
    labelled = divisor if divisor.startswith("averaging divisor") else f"averaging divisor: {divisor}"
    lines = [f"method: {summary.method}", labelled]
    lines.append(f"convention: {summary.convention}")
    lines.append("")
    lines.append(
        "approach  sectors  partner  vintage  registered  first-transferred  acquired  used  cancelled  adjusted"
        "  transferred"
    )
    for g in summary.groups:  # transferred last: scripts that read the columns before it by position go on
        lines.append(
            f"{g.cooperative_approach}  {g.sectors or '-'}  {g.partner or '-'}  {g.vintage}  {g.authorized}"
            f"  {g.first_transferred}  {g.acquired}  {g.used}  {g.cancelled}  {g.adjusted}  {g.transferred or '-'}"
        )
    if summary.years:
        lines.append("")
        lines.append("year  FT-NDC  FT-OIMP-only  used-NDC  averaging  adjustment  running-total  emissions  balance")
        for y in summary.years:
            lines.append(
                f"{y.year}  {y.first_transferred_ndc}  {y.first_transferred_oimp_only}  {y.used_ndc}"
                f"  {y.annual_adjustment_averaging or '-'}  {y.total_adjustment}  {y.running_total}"
                f"  {y.reported_emissions or '-'}  {y.emissions_balance or '-'}"
            )
    if summary.cumulative_adjustment:
        lines.append(f"cumulative adjustment at the end of the period: {summary.cumulative_adjustment}")
    if summary.outside_period_years:
        years = ", ".join(str(y) for y in summary.outside_period_years)
        lines.append(
            f"outside the NDC period: {years}: their first transfers, acquisitions and reported emissions count in"
            " no year row"
        )
    for lock in summary.locked:
        lines.append(f"locked: {lock.first_year}-{lock.last_year} since {lock.locked_at}: {lock.reason}")
    for e in summary.unresolved:
        lines.append(
            f"unresolved: {e.quantity} units to {e.acquiring_party} on {e.action_date.ToJsonString()} (transfer"
            f" {e.transfer_id}): their first transfer is yet to come; counted in no row"
        )
    if summary.unresolved_total > len(summary.unresolved):
        lines.append(
            f"unresolved: {summary.unresolved_total - len(summary.unresolved):,} more, not shown here"
            " (`carbon-gateway call ListLedgerEntries` lists every entry)"
        )
    return "\n".join(lines)
