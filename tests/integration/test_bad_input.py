"""Bad input to every operator RPC and to both partner transports (issue 8, defect 14).

Each bad operator request gets a clear status (never UNKNOWN or INTERNAL), an `ErrorDetail` with its response
code and the dotted path of the offending field, and changes nothing on either gateway. Garbage request bytes
get INVALID_ARGUMENT (MALFORMED_PAYLOAD); a retry carrying a field this version does not know returns the
first result. Poison statements signed by the real partner key, over gRPC and over HTTP, are each answered
with a signed receipt and a response code, and the channel keeps working after each. The limits themselves
are documented in `gateway.domain.text`.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from google.protobuf.message import Message

from carbon_gateway.v1 import envelope_pb2, mapping_pb2, operator_pb2, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import DEMO_AUTHORIZATION, Pair, demo_block, start_pair, wait_for_state
from gateway.domain import text
from gateway.domain.blocks import MAX_SERIAL
from gateway.domain.errors import ResponseCode
from gateway.domain.protocol import DecisionPolicy
from gateway.exchange import TRUST_BUNDLE_PAYLOAD_TYPE
from gateway.harness import Network, start_network
from gateway.http.app import DELIVER_PATH
from gateway.node import GatewayNode
from gateway.rpc.errors import read_error_detail
from gateway.rpc.partner import DELIVER_BATCH_METHOD, DELIVER_METHOD
from gateway.store.base import LogKind
from signing import Envelope, Signer, SignerError, pae, sign_envelope
from tests.integration.harness import (
    TERMINAL,
    Crafter,
    error_code,
    operator,
    proposal_request,
    settle,
    setup_accounts,
    snapshot,
    transfer,
)

MODULE = pytest.mark.asyncio(loop_scope="module")

BIG = "A" * (3 * 1024 * 1024)
"""A 3 MB string: far over every string limit, within gRPC's 4 MiB message limit."""
NUL = "CN-\x00-0001"
BIDI = "CN-\u202e1000-PO"
ZWSP = "CN\u200b-0001"
NON_NFC = "CN-Cafe\u0301"
KEY = "k-bad-input"
"""The (valid) idempotency key of every bad request whose fault lies elsewhere."""
WRITES = (
    "OpenAccount",
    "RegisterAuthorization",
    "RegisterIssuance",
    "ProposeTransfer",
    "CancelTransfer",
    "DecideTransfer",
    "RetryDeadLetter",
    "AbandonDeadLetter",
    "RotateTrustDocument",
    "AmendAuthorization",
    "RevokeAuthorization",
    "UseUnits",
    "CancelUnits",
    "SetReportedEmissions",
    "LockPeriod",
    "RunReconciliation",
    "ResolveReconciliation",
    "PruneChanges",
)
OPERATOR_SERVICE = "carbon_gateway.v1.OperatorService"
MAPPING_SERVICE = "carbon_gateway.v1.MappingService"


# -- request builders ---------------------------------------------------------------------------------


def open_account(key: str = KEY, **fields: object) -> operator_pb2.OpenAccountRequest:
    values: dict[str, object] = {"account_id": "CN-NEW-0001", "holder_name": "Holder", "account_type": "project owner"}
    values.update(fields)
    return operator_pb2.OpenAccountRequest(idempotency_key=key, account=records_pb2.Account(**values))  # type: ignore[arg-type]


def authorization(key: str = KEY, **fields: object) -> operator_pb2.RegisterAuthorizationRequest:
    auth = records_pb2.Authorization()
    auth.CopyFrom(DEMO_AUTHORIZATION)
    auth.authorization_id = "CHN-A-0100"
    for name, value in fields.items():
        if isinstance(value, list):
            repeated = getattr(auth, name)
            del repeated[:]
            repeated.extend(value)
        else:
            setattr(auth, name, value)
    return operator_pb2.RegisterAuthorizationRequest(idempotency_key=key, authorization=auth)


def authorization_listing(name: str, values: list[str]) -> operator_pb2.RegisterAuthorizationRequest:
    """`authorization` with the list field ``name`` holding ``values``."""
    request = authorization()
    repeated = getattr(request.authorization, name)
    del repeated[:]
    repeated.extend(values)
    return request


def issuance(
    key: str = KEY, account_id: str = "CN-PO-0001", attributes: list[tuple[str, str]] | None = None, **fields: object
) -> operator_pb2.RegisterIssuanceRequest:
    block = demo_block(5001, 6000)
    for name, value in fields.items():
        if name in ("unit_kind", "issuing_registry", "issuance"):
            setattr(block.space, name, value)
        else:
            setattr(block, name, value)
    block.attributes.extend(records_pb2.Attribute(name=n, value=v) for n, v in attributes or [])
    return operator_pb2.RegisterIssuanceRequest(idempotency_key=key, account_id=account_id, block=block)


def no_block() -> operator_pb2.RegisterIssuanceRequest:
    return operator_pb2.RegisterIssuanceRequest(idempotency_key=KEY, account_id="CN-PO-0001")


def no_space() -> operator_pb2.RegisterIssuanceRequest:
    request = issuance()
    request.block.ClearField("space")
    return request


def amend(key: str = KEY, **fields: object) -> operator_pb2.AmendAuthorizationRequest:
    auth = records_pb2.Authorization()
    auth.CopyFrom(DEMO_AUTHORIZATION)
    auth.version = "v2-bad"
    for name, value in fields.items():
        if isinstance(value, list):
            repeated = getattr(auth, name)
            del repeated[:]
            repeated.extend(value)
        else:
            setattr(auth, name, value)
    return operator_pb2.AmendAuthorizationRequest(idempotency_key=key, authorization=auth)


def revoke(key: str = KEY, **fields: object) -> operator_pb2.RevokeAuthorizationRequest:
    values: dict[str, object] = {
        "authorization_id": DEMO_AUTHORIZATION.authorization_id,
        "version": "revoked-bad",
        "date": "2026-01-01",
        "reason": "test",
    }
    values.update(fields)
    return operator_pb2.RevokeAuthorizationRequest(idempotency_key=key, **values)  # type: ignore[arg-type]


def use(key: str = KEY, **fields: object) -> operator_pb2.UseUnitsRequest:
    values: dict[str, object] = {
        "source_account": "CN-PO-0001",
        "use_account": "CN-USE-0001",
        "action": "use towards the NDC",
        "year_of_use": 2025,
    }
    values.update(fields)
    request = operator_pb2.UseUnitsRequest(idempotency_key=key, **values)  # type: ignore[arg-type]
    request.selections.append(operator_pb2.BlockSelection(space=demo_block().space, start=1, end=10))
    return request


def cancel_units(key: str = KEY, **fields: object) -> operator_pb2.CancelUnitsRequest:
    values: dict[str, object] = {
        "source_account": "CN-PO-0001",
        "cancellation_account": "CN-CAN-0001",
        "subtype": "Other cancellations",
    }
    values.update(fields)
    request = operator_pb2.CancelUnitsRequest(idempotency_key=key, **values)  # type: ignore[arg-type]
    request.selections.append(operator_pb2.BlockSelection(space=demo_block().space, start=1, end=10))
    return request


def _backwards(request: operator_pb2.UseUnitsRequest) -> operator_pb2.UseUnitsRequest:
    request.selections[0].start, request.selections[0].end = 10, 1
    return request


def propose(
    key: str = KEY,
    selections: list[tuple[int, int]] | None = None,
    space: dict[str, str] | None = None,
    party: str = "CHE",
    account: str = "CH-PH-0001",
    **fields: object,
) -> operator_pb2.ProposeTransferRequest:
    request = proposal_request(demo_block(), 1, 10, key)
    if selections is not None:
        del request.selections[:]
        request.selections.extend(
            operator_pb2.BlockSelection(space=demo_block().space, start=s, end=e) for s, e in selections
        )
    for code, spelled in (space or {}).items():
        setattr(request.selections[0].space, code, spelled)
    request.acquiring_account.party = party
    request.acquiring_account.account_id = account
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def _third_space_unknown() -> operator_pb2.ProposeTransferRequest:
    """Two selections in the demo's serial space, spelled alike, then one in a registry nobody configured."""
    request = propose(selections=[(1, 2), (3, 4), (5, 6)])
    request.selections[2].space.issuing_registry = "VERRA"
    return request


def cancel(transfer_id: str = "t-0001", reason: str = "", key: str = KEY) -> operator_pb2.CancelTransferRequest:
    return operator_pb2.CancelTransferRequest(idempotency_key=key, transfer_id=transfer_id, reason=reason)


def decide(transfer_id: str = "t-0001", reason: str = "", key: str = KEY) -> operator_pb2.DecideTransferRequest:
    return operator_pb2.DecideTransferRequest(idempotency_key=key, transfer_id=transfer_id, accept=False, reason=reason)


def rotate(
    envelope_json: bytes = b"", signer: str = "default", key: str = KEY
) -> operator_pb2.RotateTrustDocumentRequest:
    return operator_pb2.RotateTrustDocumentRequest(idempotency_key=key, envelope_json=envelope_json, signer=signer)


def parseable_envelope() -> bytes:
    """An envelope that parses (its signature is never checked: the cases refuse something else first)."""
    return Envelope(b"{}", "application/vnd.example+json", ()).to_json()


def retry(message_id: str = "m-0001", key: str = KEY) -> operator_pb2.RetryDeadLetterRequest:
    return operator_pb2.RetryDeadLetterRequest(idempotency_key=key, message_id=message_id)


def abandon(message_id: str = "m-0001", reason: str = "lost", key: str = KEY) -> operator_pb2.AbandonDeadLetterRequest:
    return operator_pb2.AbandonDeadLetterRequest(idempotency_key=key, message_id=message_id, reason=reason)


def prune(through: int, key: str = KEY) -> operator_pb2.PruneChangesRequest:
    return operator_pb2.PruneChangesRequest(idempotency_key=key, through_position=through)


def watch(after: int = 0, kinds: list[int] | None = None, digest: bytes = b"") -> operator_pb2.WatchChangesRequest:
    request = operator_pb2.WatchChangesRequest(after_position=after, kinds=kinds or [])  # type: ignore[arg-type]
    request.after_digest = digest
    return request


# -- the table of bad operator requests ---------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad operator request and how it must be refused."""

    name: str
    method: str
    request: Callable[[], Message]
    field: str
    code: ResponseCode = ResponseCode.INVALID_ARGUMENT
    status: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    node: str = "CHN"


INVALID_IDS = {
    "3mb": BIG,
    "nul": NUL,
    "bidi-override": BIDI,
    "zero-width-space": ZWSP,
    "blank": "",
    "whitespace-only": "   ",
    "leading-space": " CN-0001",
    "trailing-space": "CN-0001 ",
    "trailing-newline": "CN-0001\n",
    "non-nfc": NON_NFC,
}
"""Identifier values every identifier field refuses."""

INVISIBLE_REASONS = {"joiner": "\u200d", "hangul-filler": "\u3164", "combining-mark": "\u0301", "selector": "\ufe0f"}
"""Reasons that show nothing: refused where a person must say why."""

LOOK_ALIKE_IDS = {
    "no-break-space": "CN\u00a0PO-0001",
    "em-space": "CN\u2003PO-0001",
    "two-spaces": "CN  PO-0001",
    "hyphen": "CN\u2010PO-0001",
    "fullwidth": "\uff23\uff2e-PO-0001",
    "minus-sign": "CN\u2212PO-0001",
    "hangul-filler": "CN-PO-0001\u3164",
    "braille-blank": "\u2800",
}
"""Identifiers refused where this gateway would name something new (an account, an incoming transfer), and still
looked up where they name what is stored or what another Party named (a copy of its authorization)."""


def each_id(method: str, path: str, build: Callable[[str], Message], node: str = "CHN") -> list[Bad]:
    return [
        Bad(f"{path}-{name}", method, partial(build, value), path, node=node) for name, value in INVALID_IDS.items()
    ]


def bad_keys(method: str, build: Callable[[str], Message], node: str = "CHN") -> list[Bad]:
    return [
        Bad(f"idempotency_key-{name}", method, partial(build, value), "idempotency_key", node=node)
        for name, value in (("3mb", BIG), ("blank", ""), ("nul", "k\x00"), ("bidi-override", "k\u202e1"))
    ]


def bad_parties(method: str, build: Callable[[str], Message], path: str = "party") -> list[Bad]:
    return [
        Bad(f"{path}-{name}", method, partial(build, value), path)
        for name, value in (
            ("trailing-newline", "CHE\n"),
            ("lowercase", "che"),
            ("trailing-space", "CHE "),
            ("3mb", BIG),
            ("nul", "CH\x00"),
            ("arabic-indic-digits", "١٢٣"),
            ("accented", "CHÉ"),
        )
    ]


def _token(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


PAGE_TOKENS = {
    "3mb": BIG,
    "not-base64": "%%%",
    "not-json": base64.urlsafe_b64encode(b"\xff\x00").decode(),
    "not-a-list": _token({"after": 1}),
    "empty-list": _token([]),
    "five-bools": _token([True, True, True, True, True]),
    "negative": _token([-1]),
    "past-2^63-1": _token([2**63]),
    "nul": "a\x00",
}
"""Page tokens no list gives: each list refuses them all, whatever its own token's shape."""

SERIAL_SPACE = grpc.StatusCode.FAILED_PRECONDITION
"""A well-formed code that is not on the configured lists: UNKNOWN_SERIAL_SPACE's status."""

TABLE: list[Bad] = [
    # OpenAccount
    *each_id("OpenAccount", "account.account_id", lambda v: open_account(account_id=v)),
    *[
        Bad(f"account.account_id-{name}", "OpenAccount", partial(open_account, account_id=v), "account.account_id")
        for name, v in LOOK_ALIKE_IDS.items()
    ],
    Bad("holder_name-3mb", "OpenAccount", lambda: open_account(holder_name=BIG), "account.holder_name"),
    Bad("holder_name-nul", "OpenAccount", lambda: open_account(holder_name="A\x00B"), "account.holder_name"),
    Bad("holder_name-bidi", "OpenAccount", lambda: open_account(holder_name="A\u202eB"), "account.holder_name"),
    Bad("holder_name-blank", "OpenAccount", lambda: open_account(holder_name=""), "account.holder_name"),
    Bad("account_type-unknown", "OpenAccount", lambda: open_account(account_type="owner"), "account.account_type"),
    Bad("account_type-3mb", "OpenAccount", lambda: open_account(account_type=BIG), "account.account_type"),
    *bad_keys("OpenAccount", lambda k: open_account(key=k)),
    # RegisterAuthorization
    *each_id("RegisterAuthorization", "authorization.authorization_id", lambda v: authorization(authorization_id=v)),
    Bad("version-nul", "RegisterAuthorization", lambda: authorization(version="1\x00"), "authorization.version"),
    Bad("version-3mb", "RegisterAuthorization", lambda: authorization(version=BIG), "authorization.version"),
    Bad("version-empty", "RegisterAuthorization", lambda: authorization(version=""), "authorization.version"),
    # A list naming one value twice (the AEF report would print it twice), however it is spelled.
    *(
        Bad(
            f"{name}-twice",
            "RegisterAuthorization",
            partial(authorization_listing, name, values),
            f"authorization.{name}[{i}]",
        )
        for name, values, i in (
            ("purposes", ["NDC", "OIMP", "ndc"], 2),
            ("sectors", ["Forestry and land use", "Forestry and land use"], 1),
            ("activity_types", ["A", "B", "A"], 2),
            ("authorized_parties", ["CHN", "CHE", "CHE"], 2),
            ("authorized_entities", ["E-1", "E-1"], 1),
        )
    ),
    *[
        Bad(
            f"cooperative_approach-{name}",
            "RegisterAuthorization",
            partial(authorization, cooperative_approach=value),
            "authorization.cooperative_approach",
        )
        for name, value in (
            ("arabic-indic-digits", "CA١٢٣٤"),
            ("fullwidth-digits", "CA\uff10\uff10\uff10\uff11"),
            ("trailing-newline", "CA0001\n"),
            ("five-digits", "CA00001"),
            ("3mb", BIG),
        )
    ],
    Bad("metric-lowercase", "RegisterAuthorization", lambda: authorization(metric="ghg"), "authorization.metric"),
    Bad("metric-3mb", "RegisterAuthorization", lambda: authorization(metric=BIG), "authorization.metric"),
    Bad(
        "authorized_quantity-zero",
        "RegisterAuthorization",
        lambda: authorization(authorized_quantity=0),
        "authorization.authorized_quantity",
    ),
    Bad(
        "authorized_quantity-negative",
        "RegisterAuthorization",
        lambda: authorization(authorized_quantity=-5),
        "authorization.authorized_quantity",
    ),
    Bad(
        "timeframe-minus-5-to-minus-1",
        "RegisterAuthorization",
        lambda: authorization(timeframe_start=-5, timeframe_end=-1),
        "authorization.timeframe_start",
    ),
    Bad(
        "timeframe-end-10000",
        "RegisterAuthorization",
        lambda: authorization(timeframe_end=10000),
        "authorization.timeframe_end",
    ),
    Bad(
        "timeframe-start-after-end",
        "RegisterAuthorization",
        lambda: authorization(timeframe_start=2030, timeframe_end=2021),
        "authorization.timeframe_end",
    ),
    Bad(
        "dated-9999-12-31-expiring-0001-01-01",
        "RegisterAuthorization",
        lambda: authorization(date="9999-12-31", expires="0001-01-01"),
        "authorization.expires",
    ),
    Bad(
        "expires-before-date",
        "RegisterAuthorization",
        lambda: authorization(date="2026-01-15", expires="2025-01-01"),
        "authorization.expires",
    ),
    Bad("date-year-1", "RegisterAuthorization", lambda: authorization(date="0001-01-01"), "authorization.date"),
    Bad("date-unpadded", "RegisterAuthorization", lambda: authorization(date="2026-1-15"), "authorization.date"),
    Bad("date-iso-week", "RegisterAuthorization", lambda: authorization(date="2026-W03-4"), "authorization.date"),
    Bad(
        "date-arabic-indic-digits",
        "RegisterAuthorization",
        lambda: authorization(date="٢٠٢٦-01-15"),
        "authorization.date",
    ),
    Bad("date-3mb", "RegisterAuthorization", lambda: authorization(date=BIG), "authorization.date"),
    Bad("purposes-none", "RegisterAuthorization", lambda: authorization(purposes=[]), "authorization.purposes"),
    Bad(
        "purposes-65",
        "RegisterAuthorization",
        lambda: authorization(purposes=["NDC"] * (text.MAX_LIST_ITEMS + 1)),
        "authorization.purposes",
    ),
    Bad(
        "purpose-unknown",
        "RegisterAuthorization",
        lambda: authorization(purposes=["NDC", "Offsetting"]),
        "authorization.purposes[1]",
    ),
    Bad(
        "purpose-nul", "RegisterAuthorization", lambda: authorization(purposes=["N\x00DC"]), "authorization.purposes[0]"
    ),
    Bad("purpose-3mb", "RegisterAuthorization", lambda: authorization(purposes=[BIG]), "authorization.purposes[0]"),
    # Two purposes the AEF column cannot hold together (only NDC with one other): never reportable.
    Bad(
        "purposes-not-one-aef-value",
        "RegisterAuthorization",
        lambda: authorization(purposes=["OIMP", "IMP"]),
        "authorization.purposes",
    ),
    Bad(
        "purposes-pair-and-more",
        "RegisterAuthorization",
        lambda: authorization(purposes=["NDC", "OIMP", "OP"]),
        "authorization.purposes",
    ),
    Bad(
        "sectors-65",
        "RegisterAuthorization",
        lambda: authorization(sectors=["Energy"] * (text.MAX_LIST_ITEMS + 1)),
        "authorization.sectors",
    ),
    Bad("sector-3mb", "RegisterAuthorization", lambda: authorization(sectors=[BIG]), "authorization.sectors[0]"),
    Bad(
        "sector-not-aef", "RegisterAuthorization", lambda: authorization(sectors=["Energy"]), "authorization.sectors[0]"
    ),
    Bad("sectors-none", "RegisterAuthorization", lambda: authorization(sectors=[]), "authorization.sectors"),
    # The AEF's Activity type(s) column takes no NA: a version without one made every later report fail.
    Bad(
        "activity_types-none",
        "RegisterAuthorization",
        lambda: authorization(activity_types=[]),
        "authorization.activity_types",
    ),
    Bad(
        "authorized_party-not-iso",
        "RegisterAuthorization",
        lambda: authorization(authorized_parties=["CHN", "XXX"]),
        "authorization.authorized_parties[1]",
    ),
    Bad(
        "authorized_parties-none",
        "RegisterAuthorization",
        lambda: authorization(authorized_parties=[]),
        "authorization.authorized_parties",
    ),
    Bad(
        "activity_type-bidi",
        "RegisterAuthorization",
        lambda: authorization(activity_types=["A\u202eB"]),
        "authorization.activity_types[0]",
    ),
    Bad(
        "first_transfer_definition-unknown",
        "RegisterAuthorization",
        lambda: authorization(first_transfer_definition="first transfer"),
        "authorization.first_transfer_definition",
    ),
    Bad(
        "first_transfer_definition-3mb",
        "RegisterAuthorization",
        lambda: authorization(first_transfer_definition=BIG),
        "authorization.first_transfer_definition",
    ),
    # The first international transfer is the definition for NDC use alone: every other purpose needs one of the
    # other three in the AEF's "First transfer definition for OIMP" column, and a version is never changed.
    Bad(
        "first_transfer_definition-fit-for-oimp",
        "RegisterAuthorization",
        lambda: authorization(purposes=["OIMP"], first_transfer_definition="First international transfer"),
        "authorization.first_transfer_definition",
    ),
    Bad(
        "first_transfer_definition-fit-for-ndc-and-op",
        "RegisterAuthorization",
        lambda: authorization(purposes=["NDC", "OP"], first_transfer_definition="First international transfer"),
        "authorization.first_transfer_definition",
    ),
    Bad(
        "first_transfer_definition-issuance-for-ndc-alone",
        "RegisterAuthorization",
        lambda: authorization(purposes=["NDC"], first_transfer_definition="Issuance"),
        "authorization.first_transfer_definition",
    ),
    Bad(
        "authorized_party-lowercase",
        "RegisterAuthorization",
        lambda: authorization(authorized_parties=["CHN", "che"]),
        "authorization.authorized_parties[1]",
    ),
    Bad(
        "authorized_entity-bidi",
        "RegisterAuthorization",
        lambda: authorization(authorized_entities=[BIDI]),
        "authorization.authorized_entities[0]",
    ),
    Bad(
        "documentation-3mb",
        "RegisterAuthorization",
        lambda: authorization(documentation=BIG),
        "authorization.documentation",
    ),
    *bad_keys("RegisterAuthorization", lambda k: authorization(key=k)),
    # RegisterIssuance
    Bad("block-missing", "RegisterIssuance", no_block, "block"),
    # Part of a tie names what is missing of it.
    Bad(
        "tie-approach-only",
        "RegisterIssuance",
        lambda: issuance(cooperative_approach="CA0001"),
        "block.first_transferring_party",
    ),
    Bad(
        "tie-party-only",
        "RegisterIssuance",
        lambda: issuance(first_transferring_party="CHN"),
        "block.cooperative_approach",
    ),
    Bad("space-missing", "RegisterIssuance", no_space, "block.space"),
    *each_id("RegisterIssuance", "account_id", lambda v: issuance(account_id=v)),
    Bad("block-0-to-2^63-1", "RegisterIssuance", lambda: issuance(start=0, end=2**63 - 1), "block.end"),
    Bad("block-end-2^63-1", "RegisterIssuance", lambda: issuance(end=2**63 - 1), "block.end"),
    Bad("block-start-negative", "RegisterIssuance", lambda: issuance(start=-1), "block.start"),
    Bad("block-end-negative", "RegisterIssuance", lambda: issuance(start=-10, end=-1), "block.start"),
    Bad("block-start-after-end", "RegisterIssuance", lambda: issuance(start=6000, end=5001), "block.end"),
    Bad("vintage-minus-7", "RegisterIssuance", lambda: issuance(vintage=-7), "block.vintage"),
    Bad("vintage-10000", "RegisterIssuance", lambda: issuance(vintage=10000), "block.vintage"),
    Bad("vintage-missing", "RegisterIssuance", lambda: issuance(vintage=0), "block.vintage"),
    Bad(
        "unit_kind-unknown",
        "RegisterIssuance",
        lambda: issuance(unit_kind="VCU"),
        "block.space.unit_kind",
        ResponseCode.UNKNOWN_SERIAL_SPACE,
        SERIAL_SPACE,
    ),
    Bad(
        "issuing_registry-unknown",
        "RegisterIssuance",
        lambda: issuance(issuing_registry="VERRA"),
        "block.space.issuing_registry",
        ResponseCode.UNKNOWN_SERIAL_SPACE,
        SERIAL_SPACE,
    ),
    Bad(
        "issuance-on-continuous-registry",
        "RegisterIssuance",
        lambda: issuance(issuance="ISS-1"),
        "block.space.issuance",
        ResponseCode.UNKNOWN_SERIAL_SPACE,
        SERIAL_SPACE,
    ),
    Bad(
        "issuing_registry-3mb",
        "RegisterIssuance",
        lambda: issuance(issuing_registry=BIG),
        "block.space.issuing_registry",
    ),
    Bad(
        "issuing_registry-nul",
        "RegisterIssuance",
        lambda: issuance(issuing_registry="CN-\x00CCER"),
        "block.space.issuing_registry",
    ),
    Bad("unit_kind-3mb", "RegisterIssuance", lambda: issuance(unit_kind=BIG), "block.space.unit_kind"),
    Bad("unit_kind-bidi", "RegisterIssuance", lambda: issuance(unit_kind="CC\u202eER"), "block.space.unit_kind"),
    Bad("issuance-3mb", "RegisterIssuance", lambda: issuance(issuance=BIG), "block.space.issuance"),
    Bad("project_id-nul", "RegisterIssuance", lambda: issuance(project_id="P\x00"), "block.project_id"),
    Bad("project_id-3mb", "RegisterIssuance", lambda: issuance(project_id=BIG), "block.project_id"),
    Bad(
        "methodology_code-bidi",
        "RegisterIssuance",
        lambda: issuance(methodology_code="M\u202e"),
        "block.methodology_code",
    ),
    Bad(
        "registry_reference-zwsp",
        "RegisterIssuance",
        lambda: issuance(registry_reference=ZWSP),
        "block.registry_reference",
    ),
    Bad("mitigation_type-3mb", "RegisterIssuance", lambda: issuance(mitigation_type=BIG), "block.mitigation_type"),
    Bad(
        "attributes-33",
        "RegisterIssuance",
        lambda: issuance(attributes=[(f"a{i}", "v") for i in range(text.MAX_ATTRIBUTES + 1)]),
        "block.attributes",
    ),
    Bad(
        "attribute-name-nul",
        "RegisterIssuance",
        lambda: issuance(attributes=[("a\x00", "v")]),
        "block.attributes[0].name",
    ),
    Bad(
        "attribute-name-65",
        "RegisterIssuance",
        lambda: issuance(attributes=[("a" * 65, "v")]),
        "block.attributes[0].name",
    ),
    Bad(
        "attribute-value-3mb",
        "RegisterIssuance",
        lambda: issuance(attributes=[("a", BIG)]),
        "block.attributes[0].value",
    ),
    Bad(
        "attribute-twice", "RegisterIssuance", lambda: issuance(attributes=[("a", "1"), ("a", "2")]), "block.attributes"
    ),
    Bad("first_transferred", "RegisterIssuance", lambda: issuance(first_transferred=True), "block.first_transferred"),
    *bad_keys("RegisterIssuance", lambda k: issuance(key=k)),
    # ProposeTransfer
    Bad(
        "selections-1001",
        "ProposeTransfer",
        lambda: propose(selections=[(i, i) for i in range(1, text.MAX_BLOCKS_PER_TRANSFER + 2)]),
        "selections",
    ),
    Bad("selections-none", "ProposeTransfer", lambda: propose(selections=[]), "selections"),
    Bad("selection-0-to-2^63-1", "ProposeTransfer", lambda: propose(selections=[(0, 2**63 - 1)]), "selections[0].end"),
    Bad(
        "selection-end-2^63-1-second",
        "ProposeTransfer",
        lambda: propose(selections=[(1, 10), (20, 2**63 - 1)]),
        "selections[1].end",
    ),
    Bad("selection-start-negative", "ProposeTransfer", lambda: propose(selections=[(-5, 10)]), "selections[0].start"),
    Bad("selection-start-after-end", "ProposeTransfer", lambda: propose(selections=[(10, 1)]), "selections[0].end"),
    Bad("selections-overlap", "ProposeTransfer", lambda: propose(selections=[(1, 10), (5, 20)]), "selections[1]"),
    Bad(
        "selection-registry-unknown",
        "ProposeTransfer",
        lambda: propose(space={"issuing_registry": "VERRA"}),
        "selections[0].space.issuing_registry",
        ResponseCode.UNKNOWN_SERIAL_SPACE,
        SERIAL_SPACE,
    ),
    Bad(
        "selection-registry-unknown-third",
        "ProposeTransfer",
        _third_space_unknown,
        "selections[2].space.issuing_registry",
        ResponseCode.UNKNOWN_SERIAL_SPACE,
        SERIAL_SPACE,
    ),
    Bad(
        "selection-unit_kind-unknown",
        "ProposeTransfer",
        lambda: propose(space={"unit_kind": "CEA"}),
        "selections[0].space.unit_kind",
        ResponseCode.UNKNOWN_SERIAL_SPACE,
        SERIAL_SPACE,
    ),
    Bad(
        "selection-unit_kind-3mb",
        "ProposeTransfer",
        lambda: propose(space={"unit_kind": BIG}),
        "selections[0].space.unit_kind",
    ),
    Bad(
        "selection-registry-nul",
        "ProposeTransfer",
        lambda: propose(space={"issuing_registry": "CN-CCER\x00"}),
        "selections[0].space.issuing_registry",
    ),
    *each_id("ProposeTransfer", "source_account", lambda v: propose(source_account=v)),
    *bad_parties("ProposeTransfer", lambda v: propose(party=v), "acquiring_account.party"),
    Bad(
        "acquiring_account.party-unknown",
        "ProposeTransfer",
        lambda: propose(party="FRA"),
        "acquiring_account.party",
        ResponseCode.UNKNOWN_PARTNER,
        grpc.StatusCode.NOT_FOUND,
    ),
    *each_id("ProposeTransfer", "acquiring_account.account_id", lambda v: propose(account=v)),
    *[
        Bad(
            f"cooperative_approach-{name}",
            "ProposeTransfer",
            partial(propose, cooperative_approach=value),
            "cooperative_approach",
        )
        for name, value in (("arabic-indic-digits", "CA١٢٣٤"), ("trailing-newline", "CA0001\n"), ("3mb", BIG))
    ],
    *each_id("ProposeTransfer", "authorization_id", lambda v: propose(authorization_id=v)),
    Bad("purpose-unknown", "ProposeTransfer", lambda: propose(purpose="Offsetting"), "purpose"),
    Bad(
        "purpose-not-authorized",
        "ProposeTransfer",
        lambda: propose(purpose="OIMP"),
        "purpose",
        ResponseCode.PURPOSE_NOT_ALLOWED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Bad("purpose-3mb", "ProposeTransfer", lambda: propose(purpose=BIG), "purpose"),
    Bad("purpose-nul", "ProposeTransfer", lambda: propose(purpose="NDC\x00"), "purpose"),
    Bad("purpose-trailing-newline", "ProposeTransfer", lambda: propose(purpose="NDC\n"), "purpose"),
    Bad(
        "adjustment_method-unknown", "ProposeTransfer", lambda: propose(adjustment_method="yearly"), "adjustment_method"
    ),
    Bad("adjustment_method-3mb", "ProposeTransfer", lambda: propose(adjustment_method=BIG), "adjustment_method"),
    *bad_keys("ProposeTransfer", lambda k: propose(key=k)),
    # CancelTransfer
    *each_id("CancelTransfer", "transfer_id", lambda v: cancel(transfer_id=v)),
    Bad("reason-3mb", "CancelTransfer", lambda: cancel(reason=BIG), "reason"),
    Bad("reason-nul", "CancelTransfer", lambda: cancel(reason="no\x00"), "reason"),
    Bad("reason-bidi", "CancelTransfer", lambda: cancel(reason="no \u202eway"), "reason"),
    *bad_keys("CancelTransfer", lambda k: cancel(key=k)),
    # DecideTransfer
    *each_id("DecideTransfer", "transfer_id", lambda v: decide(transfer_id=v), node="CHE"),
    Bad("reason-3mb", "DecideTransfer", lambda: decide(reason=BIG), "reason", node="CHE"),
    Bad("reason-nul", "DecideTransfer", lambda: decide(reason="no\x00"), "reason", node="CHE"),
    *bad_keys("DecideTransfer", lambda k: decide(key=k), node="CHE"),
    # GetTransfer
    *each_id("GetTransfer", "transfer_id", lambda v: operator_pb2.GetTransferRequest(transfer_id=v)),
    # ListHoldings (an empty account ID means every account)
    *[
        case
        for case in each_id("ListHoldings", "account_id", lambda v: operator_pb2.ListHoldingsRequest(account_id=v))
        if not case.name.endswith("-blank")
    ],
    Bad(
        "unknown-account",
        "ListHoldings",
        lambda: operator_pb2.ListHoldingsRequest(account_id="CN-NOBODY-0001"),
        "account_id",
        ResponseCode.UNKNOWN_ACCOUNT,
        grpc.StatusCode.NOT_FOUND,
    ),
    # ListTransfers, ListLedgerEntries, ListHoldings, ListAuthorizations: pages
    *[
        case
        for method, request in (
            ("ListTransfers", operator_pb2.ListTransfersRequest),
            ("ListLedgerEntries", operator_pb2.ListLedgerEntriesRequest),
            ("ListHoldings", operator_pb2.ListHoldingsRequest),
            ("ListAuthorizations", operator_pb2.ListAuthorizationsRequest),
        )
        for case in (
            Bad("page_size-5001", method, partial(request, page_size=5001), "page_size"),
            Bad("page_size-2^32-1", method, partial(request, page_size=2**32 - 1), "page_size"),
            *[
                Bad(f"page_token-{name}", method, partial(request, page_token=token), "page_token")
                for name, token in PAGE_TOKENS.items()
            ],
        )
    ],
    # RotateTrustDocument
    Bad("envelope_json-garbage", "RotateTrustDocument", lambda: rotate(b"\xff\xfe"), "envelope_json"),
    Bad("envelope_json-empty", "RotateTrustDocument", lambda: rotate(b""), "envelope_json"),
    Bad("envelope_json-3mb", "RotateTrustDocument", lambda: rotate(b"[" * len(BIG)), "envelope_json"),
    Bad(
        "envelope_json-3mb-payload-type",
        "RotateTrustDocument",
        lambda: rotate(
            json.dumps({"payload": "", "payloadType": "é" * 2**20, "signatures": []}, ensure_ascii=False).encode()
        ),
        "envelope_json",
    ),
    Bad(
        "envelope_json-17-signatures",
        "RotateTrustDocument",
        lambda: rotate(
            json.dumps({"payload": "", "payloadType": "t", "signatures": [{"keyid": "k", "sig": "AAAA"}] * 17}).encode()
        ),
        "envelope_json",
    ),
    Bad("signer-unknown", "RotateTrustDocument", lambda: rotate(parseable_envelope(), "next"), "signer"),
    Bad("signer-3mb", "RotateTrustDocument", lambda: rotate(parseable_envelope(), BIG), "signer"),
    Bad("signer-nul", "RotateTrustDocument", lambda: rotate(parseable_envelope(), "default\x00"), "signer"),
    Bad("signer-blank", "RotateTrustDocument", lambda: rotate(parseable_envelope(), ""), "signer"),
    *bad_keys("RotateTrustDocument", lambda k: rotate(parseable_envelope(), key=k)),
    # RefreshPartnerTrust
    *bad_parties("RefreshPartnerTrust", lambda v: operator_pb2.RefreshPartnerTrustRequest(party=v)),
    Bad("party-blank", "RefreshPartnerTrust", lambda: operator_pb2.RefreshPartnerTrustRequest(party=""), "party"),
    Bad(
        "party-unknown",
        "RefreshPartnerTrust",
        lambda: operator_pb2.RefreshPartnerTrustRequest(party="FRA"),
        "party",
        ResponseCode.UNKNOWN_PARTNER,
        grpc.StatusCode.NOT_FOUND,
    ),
    # ListOutbox and ListDeadLetters (an empty party means every partner)
    *bad_parties("ListOutbox", lambda v: operator_pb2.ListOutboxRequest(party=v)),
    *bad_parties("ListDeadLetters", lambda v: operator_pb2.ListDeadLettersRequest(party=v)),
    # RetryDeadLetter
    *each_id("RetryDeadLetter", "message_id", lambda v: retry(message_id=v)),
    *bad_keys("RetryDeadLetter", lambda k: retry(key=k)),
    Bad(
        "message_id-unknown",
        "RetryDeadLetter",
        retry,
        "message_id",
        ResponseCode.UNKNOWN_MESSAGE,
        grpc.StatusCode.NOT_FOUND,
    ),
    # AbandonDeadLetter
    *each_id("AbandonDeadLetter", "message_id", lambda v: abandon(message_id=v)),
    Bad("reason-3mb", "AbandonDeadLetter", lambda: abandon(reason=BIG), "reason"),
    Bad("reason-nul", "AbandonDeadLetter", lambda: abandon(reason="no\x00"), "reason"),
    Bad("reason-empty", "AbandonDeadLetter", lambda: abandon(reason=""), "reason"),
    Bad("reason-blank", "AbandonDeadLetter", lambda: abandon(reason="   "), "reason"),
    *(
        Bad(f"reason-{name}", "AbandonDeadLetter", partial(abandon, reason=value), "reason")
        for name, value in INVISIBLE_REASONS.items()
    ),
    Bad(
        "message_id-unknown",
        "AbandonDeadLetter",
        abandon,
        "message_id",
        ResponseCode.UNKNOWN_MESSAGE,
        grpc.StatusCode.NOT_FOUND,
    ),
    *bad_keys("AbandonDeadLetter", lambda k: abandon(key=k)),
    # the ledger (issue 9)
    *bad_keys("AmendAuthorization", lambda k: amend(key=k)),
    Bad("metric-non-ghg", "AmendAuthorization", lambda: amend(metric="non-GHG"), "authorization.metric"),
    Bad("revoked-set", "AmendAuthorization", lambda: amend(revoked=True), "authorization.revoked"),
    Bad(
        "first_transfer_definition-fit-for-ndc-and-oimp",
        "AmendAuthorization",
        lambda: amend(purposes=["NDC", "OIMP"], first_transfer_definition="First international transfer"),
        "authorization.first_transfer_definition",
    ),
    Bad(
        "version-reused",
        "AmendAuthorization",
        lambda: amend(version=DEMO_AUTHORIZATION.version),
        "authorization.version",
    ),
    Bad("note-bidi", "AmendAuthorization", lambda: amend(note="a\u202eb"), "authorization.note"),
    *bad_keys("RevokeAuthorization", lambda k: revoke(key=k)),
    *each_id("RevokeAuthorization", "authorization_id", lambda v: revoke(authorization_id=v)),
    Bad("date-month-13", "RevokeAuthorization", lambda: revoke(date="2026-13-01"), "date"),
    Bad("version-reused", "RevokeAuthorization", lambda: revoke(version=DEMO_AUTHORIZATION.version), "version"),
    Bad("date-before-the-latest-version", "RevokeAuthorization", lambda: revoke(date="2001-01-01"), "date"),
    Bad("reason-3mb", "RevokeAuthorization", lambda: revoke(reason=BIG), "reason"),
    # NA is how the AEF writes "does not apply": a revoking version spelled so made every later report fail.
    Bad("version-na", "RevokeAuthorization", lambda: revoke(version="NA"), "version"),
    Bad("reason-na", "RevokeAuthorization", lambda: revoke(reason="NA"), "reason"),
    *(
        Bad(f"reason-{name}", "RevokeAuthorization", partial(revoke, reason=value), "reason")
        for name, value in INVISIBLE_REASONS.items()
    ),
    *(
        case
        for case in each_id(
            "ListAuthorizations",
            "authorization_id",
            lambda v: operator_pb2.ListAuthorizationsRequest(authorization_id=v),
        )
        if case.name != "authorization_id-blank"
    ),
    *bad_keys("UseUnits", lambda k: use(key=k)),
    Bad("action-unknown", "UseUnits", lambda: use(action="use"), "action"),
    Bad("action-cancel", "UseUnits", lambda: use(action="cancellation"), "action"),
    Bad("year_of_use-missing", "UseUnits", lambda: use(year_of_use=0), "year_of_use"),
    Bad("year_of_use-99999", "UseUnits", lambda: use(year_of_use=99999), "year_of_use"),
    Bad(
        "purpose-ndc-for-oimp",
        "UseUnits",
        lambda: use(action="use for other international mitigation purposes", year_of_use=0, purpose="NDC"),
        "purpose",
    ),
    Bad("selection-backwards", "UseUnits", lambda: _backwards(use()), "selections[0].end"),
    *each_id("UseUnits", "source_account", lambda v: use(source_account=v)),
    *bad_keys("CancelUnits", lambda k: cancel_units(key=k)),
    Bad("subtype-unknown", "CancelUnits", lambda: cancel_units(subtype="OMGE"), "subtype"),
    Bad("subtype-missing", "CancelUnits", lambda: cancel_units(subtype=""), "subtype"),
    Bad("subtype-voluntary", "CancelUnits", lambda: cancel_units(voluntary=True), "subtype"),
    Bad("note-3mb", "CancelUnits", lambda: cancel_units(note=BIG), "note"),
    Bad("note-na", "CancelUnits", lambda: cancel_units(note="NA"), "note"),
    Bad(
        "id-na", "RegisterAuthorization", lambda: authorization(authorization_id="NA"), "authorization.authorization_id"
    ),
    Bad(
        "activity-na",
        "RegisterAuthorization",
        lambda: authorization(activity_types=["NA"]),
        "authorization.activity_types[0]",
    ),
    Bad(
        "activity-holding-the-aef-list-separator",
        "RegisterAuthorization",
        lambda: authorization(activity_types=["Afforestation", "Forestry; land use"]),
        "authorization.activity_types[1]",
    ),
    Bad(
        "entity-holding-the-aef-list-separator",
        "RegisterAuthorization",
        lambda: authorization(authorized_entities=["E; F"]),
        "authorization.authorized_entities[0]",
    ),
    *each_id("CancelUnits", "cancellation_account", lambda v: cancel_units(cancellation_account=v)),
    *bad_keys("SetReportedEmissions", lambda k: operator_pb2.SetReportedEmissionsRequest(idempotency_key=k, year=2025)),
    Bad(
        "year-0",
        "SetReportedEmissions",
        lambda: operator_pb2.SetReportedEmissionsRequest(idempotency_key=KEY, year=0, quantity=1),
        "year",
    ),
    Bad(
        "quantity-minus-2^63",
        "SetReportedEmissions",
        lambda: operator_pb2.SetReportedEmissionsRequest(idempotency_key=KEY, year=2025, quantity=-(2**63)),
        "quantity",
    ),
    *bad_keys(
        "LockPeriod",
        lambda k: operator_pb2.LockPeriodRequest(idempotency_key=k, first_year=2020, last_year=2020, reason="r"),
    ),
    Bad(
        "last_year-not-ended",
        "LockPeriod",
        lambda: operator_pb2.LockPeriodRequest(idempotency_key=KEY, first_year=2020, last_year=2099, reason="r"),
        "last_year",
    ),
    Bad(
        "reason-empty",
        "LockPeriod",
        lambda: operator_pb2.LockPeriodRequest(idempotency_key=KEY, first_year=2020, last_year=2020, reason=""),
        "reason",
    ),
    *(
        Bad(
            f"reason-{name}",
            "LockPeriod",
            partial(operator_pb2.LockPeriodRequest, idempotency_key=KEY, first_year=2020, last_year=2020, reason=value),
            "reason",
        )
        for name, value in INVISIBLE_REASONS.items()
    ),
    # reconciliation (issue 10)
    *bad_keys("RunReconciliation", lambda k: operator_pb2.RunReconciliationRequest(idempotency_key=k, partner="CHE")),
    *bad_parties(
        "RunReconciliation", lambda v: operator_pb2.RunReconciliationRequest(idempotency_key=KEY, partner=v), "partner"
    ),
    Bad(
        "partner-blank",
        "RunReconciliation",
        lambda: operator_pb2.RunReconciliationRequest(idempotency_key=KEY, partner=""),
        "partner",
    ),
    Bad(
        "partner-unknown",
        "RunReconciliation",
        lambda: operator_pb2.RunReconciliationRequest(idempotency_key=KEY, partner="FRA"),
        "partner",
        ResponseCode.UNKNOWN_PARTNER,
        grpc.StatusCode.NOT_FOUND,
    ),
    *each_id("GetReconciliation", "run_id", lambda v: operator_pb2.GetReconciliationRequest(run_id=v)),
    Bad(
        "run_id-unknown",
        "GetReconciliation",
        lambda: operator_pb2.GetReconciliationRequest(run_id="no-such-run"),
        "run_id",
        ResponseCode.UNKNOWN_RECONCILIATION_RUN,
        grpc.StatusCode.NOT_FOUND,
    ),
    *bad_parties("ListReconciliations", lambda v: operator_pb2.ListReconciliationsRequest(partner=v), "partner"),
    Bad(
        "limit-above-1000",
        "ListReconciliations",
        lambda: operator_pb2.ListReconciliationsRequest(limit=1001),
        "limit",
    ),
    *bad_keys(
        "ResolveReconciliation",
        lambda k: operator_pb2.ResolveReconciliationRequest(idempotency_key=k, run_id="r-1", reason="checked"),
    ),
    *each_id(
        "ResolveReconciliation",
        "run_id",
        lambda v: operator_pb2.ResolveReconciliationRequest(idempotency_key=KEY, run_id=v, reason="checked"),
    ),
    Bad(
        "reason-empty",
        "ResolveReconciliation",
        lambda: operator_pb2.ResolveReconciliationRequest(idempotency_key=KEY, run_id="r-1", reason=" "),
        "reason",
    ),
    Bad(
        "reason-3mb",
        "ResolveReconciliation",
        lambda: operator_pb2.ResolveReconciliationRequest(idempotency_key=KEY, run_id="r-1", reason=BIG),
        "reason",
    ),
    Bad(
        "reason-nul",
        "ResolveReconciliation",
        lambda: operator_pb2.ResolveReconciliationRequest(idempotency_key=KEY, run_id="r-1", reason="a\x00b"),
        "reason",
    ),
    *(
        Bad(
            f"reason-{name}",
            "ResolveReconciliation",
            partial(operator_pb2.ResolveReconciliationRequest, idempotency_key=KEY, run_id="r-1", reason=value),
            "reason",
        )
        for name, value in INVISIBLE_REASONS.items()
    ),
    Bad(
        "run_id-unknown",
        "ResolveReconciliation",
        lambda: operator_pb2.ResolveReconciliationRequest(idempotency_key=KEY, run_id="r-1", reason="checked"),
        "run_id",
        ResponseCode.UNKNOWN_RECONCILIATION_RUN,
        grpc.StatusCode.NOT_FOUND,
    ),
    # WatchChanges: the gateways have recorded no change yet, so every position but 0 is beyond the latest.
    *(
        Bad(f"after_position-{name}", "WatchChanges", partial(watch, after), "after_position")
        for name, after in (("negative", -1), ("lowest", -(2**63)), ("future", 1), ("highest", 2**63 - 1))
    ),
    Bad("kinds-unspecified", "WatchChanges", lambda: watch(kinds=[0]), "kinds[0]"),
    Bad("kinds-unknown", "WatchChanges", lambda: watch(kinds=[1, 99]), "kinds[1]"),
    Bad("kinds-negative", "WatchChanges", lambda: watch(kinds=[-1]), "kinds[0]"),
    Bad("kinds-too-many", "WatchChanges", lambda: watch(kinds=[1] * 5), "kinds"),
    Bad("after_digest-at-0", "WatchChanges", lambda: watch(digest=bytes(32)), "after_digest"),
    Bad("after_digest-short", "WatchChanges", lambda: watch(1, digest=b"\x01"), "after_digest"),
    Bad("after_digest-3mb", "WatchChanges", lambda: watch(1, digest=BIG.encode()), "after_digest"),
    # PruneChanges: no change recorded yet, so no position names one.
    *(
        Bad(f"through_position-{name}", "PruneChanges", partial(prune, through), "through_position")
        for name, through in (
            ("zero", 0),
            ("negative", -1),
            ("lowest", -(2**63)),
            ("future", 1),
            ("highest", 2**63 - 1),
        )
    ),
    *bad_keys("PruneChanges", lambda k: prune(1, key=k)),
]

TAKING_INPUT = {
    "AmendAuthorization",
    "RevokeAuthorization",
    "ListAuthorizations",
    "UseUnits",
    "CancelUnits",
    "SetReportedEmissions",
    "LockPeriod",
    "OpenAccount",
    "RegisterAuthorization",
    "RegisterIssuance",
    "ProposeTransfer",
    "CancelTransfer",
    "DecideTransfer",
    "GetTransfer",
    "ListHoldings",
    "ListTransfers",
    "ListLedgerEntries",
    "RotateTrustDocument",
    "RefreshPartnerTrust",
    "ListOutbox",
    "ListDeadLetters",
    "RetryDeadLetter",
    "AbandonDeadLetter",
    "RunReconciliation",
    "GetReconciliation",
    "ListReconciliations",
    "ResolveReconciliation",
    "WatchChanges",
    "PruneChanges",
}


def test_the_table_covers_every_operator_method_that_takes_input() -> None:
    methods = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].methods
    with_fields = {m.name for m in methods if m.input_type.fields}
    assert with_fields == TAKING_INPUT
    assert {case.method for case in TABLE} == TAKING_INPUT
    names = [f"{case.method}-{case.name}" for case in TABLE]
    assert len(names) == len(set(names)), "two cases share a name"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateways(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    """One CHN and one CHE gateway with the demo accounts, authorization and issuance: the bad requests change
    nothing, so every case of the table shares them."""
    started = await start_pair(tmp_path_factory.mktemp("operator"))
    try:
        await setup_accounts(started)
        await settle(started.chn, started.che)
        yield started
    finally:
        await started.stop()


async def recorded(node: GatewayNode) -> tuple[object, ...]:
    """Everything ``node`` has recorded, with what the table's requests would create and its trust."""
    async with node.store.read() as tx:
        probes = (
            await tx.get_account("CN-NEW-0001"),
            await tx.get_authorization("CHN-A-0100"),
            [await tx.get_idempotent("anonymous", method, KEY) for method in WRITES],
            [await tx.latest_trust_document(p) for p in ("CHN", "CHE")],
        )
    trust = (node.trust.own.version, {p: x.trusted.version for p, x in node.partners.parties().items()})
    return (await snapshot(node), probes, trust)


def stub_call(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/{OPERATOR_SERVICE}/{method}", request_serializer=None, response_deserializer=None)


@MODULE
@pytest.mark.parametrize("case", TABLE, ids=[f"{c.method}-{c.name}" for c in TABLE])
async def test_defect_14_a_bad_operator_request_is_refused_naming_the_field_and_changes_nothing(
    gateways: Pair, case: Bad
) -> None:
    node = gateways.chn if case.node == "CHN" else gateways.che
    before = (await recorded(gateways.chn), await recorded(gateways.che))
    async with grpc.aio.insecure_channel(node.operator_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub_call(channel, case.method)(case.request().SerializeToString(), timeout=10)
    status = caught.value.code()
    assert status not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), caught.value.details()
    detail = read_error_detail(caught.value.trailing_metadata())
    assert detail is not None, f"no ErrorDetail: {status.name}: {caught.value.details()}"
    assert (status, ResponseCode(detail.code), detail.field) == (case.status, case.code, case.field), detail.message
    # The message tells a person what is wrong, and stays short whatever the input's size.
    assert detail.message
    assert len(detail.message) <= text.MAX_TEXT_LENGTH
    assert len(caught.value.details() or "") <= text.MAX_TEXT_LENGTH + 200
    await settle(gateways.chn, gateways.che)
    assert (await recorded(gateways.chn), await recorded(gateways.che)) == before


# -- garbage request bytes -----------------------------------------------------------------------------

GARBAGE = {
    "ff-ff-ff": b"\xff\xff\xff",
    "truncated-varint": b"\x08\x80",
    "field-zero": b"\x00",
    "length-past-end": b"\x12\x05ab",
}


def unary_methods() -> Iterator[str]:
    for name, service in (("OperatorService", OPERATOR_SERVICE), ("MappingService", MAPPING_SERVICE)):
        module = operator_pb2 if name == "OperatorService" else mapping_pb2
        for method in module.DESCRIPTOR.services_by_name[name].methods:
            if not method.client_streaming and not method.server_streaming:
                yield f"/{service}/{method.name}"


def server_streaming_methods() -> Iterator[str]:
    for method in operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].methods:
        if method.server_streaming and not method.client_streaming:
            yield f"/{OPERATOR_SERVICE}/{method.name}"


def assert_malformed(error: grpc.aio.AioRpcError, method: str) -> None:
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert error_code(error) == ResponseCode.MALFORMED_PAYLOAD
    detail = read_error_detail(error.trailing_metadata())
    assert detail is not None and method in detail.message


@MODULE
@pytest.mark.parametrize("junk", list(GARBAGE.values()), ids=list(GARBAGE))
async def test_defect_14_garbage_request_bytes_to_every_method_get_invalid_argument(
    gateways: Pair, junk: bytes
) -> None:
    before = (await recorded(gateways.chn), await recorded(gateways.che))
    methods = list(unary_methods())
    assert len(methods) == 30 + 2
    assert list(server_streaming_methods()) == [f"/{OPERATOR_SERVICE}/WatchChanges"]
    async with grpc.aio.insecure_channel(gateways.chn.operator_address) as channel:
        for method in methods:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(method, None, None)(junk, timeout=10)
            assert_malformed(caught.value, method)
        # A string field that is not UTF-8 cannot be read either.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub_call(channel, "OpenAccount")(b"\x0a\x02\xff\xfe", timeout=10)
        assert_malformed(caught.value, "OpenAccount")
        # The server streams: garbage instead of the request.
        for method in server_streaming_methods():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in channel.unary_stream(method, None, None)(junk, timeout=10):
                    pass
            assert_malformed(caught.value, method)
        # The stream: garbage first, and garbage after a good batch.
        stream = f"/{MAPPING_SERVICE}/StreamMapRecords"
        good = mapping_pb2.MapRecordsRequest(
            source="cn-ccer", target="aef-actions", source_format="json", payload=b"[]"
        )
        for messages in ([junk], [good.SerializeToString(), junk]):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in channel.stream_stream(stream, None, None)(iter(messages), timeout=10):
                    pass
            assert_malformed(caught.value, stream)
    assert (await recorded(gateways.chn), await recorded(gateways.che)) == before


# -- a retry carrying a field this version does not know -----------------------------------------------

UNKNOWN_FIELD = b"\x98\x06\x01"
"""Field 99, varint 1: what a newer client might add."""


@pytest.mark.asyncio
async def test_defect_14_a_retry_with_an_unknown_field_returns_the_first_result(pair: Pair) -> None:
    await setup_accounts(pair)
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        opened = open_account(key="open-new")
        first = records_pb2.Account.FromString(await stub_call(channel, "OpenAccount")(opened.SerializeToString()))
        # The unknown field at the top, and inside the account message.
        nested = records_pb2.Account.FromString(opened.account.SerializeToString() + UNKNOWN_FIELD)
        with_unknown = operator_pb2.OpenAccountRequest(idempotency_key="open-new", account=nested)
        for raw in (opened.SerializeToString() + UNKNOWN_FIELD, with_unknown.SerializeToString()):
            again = records_pb2.Account.FromString(await stub_call(channel, "OpenAccount")(raw))
            assert again == first

        proposed = propose(key="propose-once")
        transfer_one = records_pb2.Transfer.FromString(
            await stub_call(channel, "ProposeTransfer")(proposed.SerializeToString())
        )
        before = await snapshot(pair.chn)
        retried = records_pb2.Transfer.FromString(
            await stub_call(channel, "ProposeTransfer")(proposed.SerializeToString() + UNKNOWN_FIELD)
        )
        assert retried.transfer_id == transfer_one.transfer_id
        assert len((await snapshot(pair.chn))[0]) == len(before[0])  # type: ignore[arg-type]

        # The same key with a different request is still refused.
        changed = open_account(key="open-new", holder_name="Someone else")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub_call(channel, "OpenAccount")(changed.SerializeToString() + UNKNOWN_FIELD)
        assert error_code(caught.value) == ResponseCode.IDEMPOTENCY_KEY_REUSED
        assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS


# -- the limits are limits, not less -------------------------------------------------------------------


@pytest.mark.sqlite_only(
    reason="a 1000-block transfer is tens of thousands of per-block statements on each side: on PostgreSQL as"
    " many round trips, minutes on a shared machine (the use cases do not batch them yet)"
)
@pytest.mark.asyncio
async def test_a_thousand_selections_and_the_largest_serial_are_accepted(pair: Pair) -> None:
    await setup_accounts(pair)
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        top = demo_block(MAX_SERIAL - 9, MAX_SERIAL)
        held = await chn.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(idempotency_key="top", account_id="CN-PO-0001", block=top)
        )
        assert (held.block.start, held.block.end) == (MAX_SERIAL - 9, MAX_SERIAL)
        selections = [(i, i) for i in range(1, text.MAX_BLOCKS_PER_TRANSFER + 1)]
        proposed = await chn.ProposeTransfer(propose(key="a-thousand", selections=selections))
        assert len(proposed.blocks) == text.MAX_BLOCKS_PER_TRANSFER
        done = await wait_for_state(che, proposed.transfer_id, TERMINAL)
        assert done.state == records_pb2.COMPLETED
        assert done.quantity == text.MAX_BLOCKS_PER_TRANSFER


# -- the published trust documents ---------------------------------------------------------------------


@dataclass
class Partners:
    """CHN and CHE with HTTP on, and a transfer both have completed."""

    network: Network
    transfer_id: str

    @property
    def che(self) -> GatewayNode:
        return self.network["CHE"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def partners(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Partners]:
    network = await start_network(tmp_path_factory.mktemp("partners"), ("CHN", "CHE"), http=True)
    try:
        pair = Pair(network["CHN"], network["CHE"])
        block = await setup_accounts(pair)
        transfer_id = await transfer(pair, block, 1, 10, "real")
        yield Partners(network, transfer_id)
    finally:
        await network.stop()


TRUST_PATHS = {
    "9" * 41: 404,
    "99999999999999999999999": 404,
    "9223372036854775808": 404,
    "9223372036854775807": 404,
    "١": 404,
    "１": 404,
    "0": 404,
    "01": 404,
    "-1": 404,
    "+1": 404,
    "2": 404,
    "1": 200,
}


@MODULE
async def test_defect_14_published_trust_versions_are_ascii_positive_and_within_64_bits(partners: Partners) -> None:
    base = partners.che.http_url + "/.well-known/carbon-gateway/trust/"
    answers, texts = {}, {}
    async with aiohttp.ClientSession() as session:
        for version in TRUST_PATHS:
            async with session.get(base + version + ".json") as response:
                answers[version] = response.status
                if response.status == 200:
                    published = Envelope.from_json(await response.read())
                    assert json.loads(published.payload)["version"] == 1
                else:
                    texts[version] = await response.text()
    assert answers == TRUST_PATHS
    # A version in ASCII digits is a version this gateway does not have, however large; anything else is not one.
    for version in ("99999999999999999999999", "9223372036854775808", "2"):
        assert texts[version] == f"no trust document version {version}"
    assert texts["9" * 41] == f"no trust document version {'9' * 40}… (41 digits)"
    for version in ("١", "0", "01", "-1"):
        assert texts[version] == "trust document versions are positive integers (ASCII digits)"


@MODULE
async def test_a_published_trust_version_asked_for_while_the_database_fails_gets_503_not_500(
    partners: Partners, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    che = partners.che

    @asynccontextmanager
    async def locked() -> AsyncIterator[None]:
        raise sqlite3.OperationalError("database is locked")
        yield

    monkeypatch.setattr(che.store, "read", locked)
    async with (
        aiohttp.ClientSession() as session,
        session.get(che.http_url + "/.well-known/carbon-gateway/trust/1.json") as response,
    ):
        # A passing failure of this gateway, which the partner's refresh tries again: not a 500.
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert "database" in await response.text()
    assert not [r for r in caplog.records if r.exc_info and r.name == "gateway.http.requests"]
    monkeypatch.undo()
    async with (
        aiohttp.ClientSession() as session,
        session.get(che.http_url + "/.well-known/carbon-gateway/trust/1.json") as response,
    ):
        assert response.status == 200


@MODULE
async def test_a_request_the_http_server_cannot_parse_gets_400_and_one_log_line_not_a_traceback(
    partners: Partners, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    from urllib.parse import urlsplit

    address = urlsplit(partners.che.http_url)
    requests = {
        "request line too long": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "header too long": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * 20_000 + b"\r\n\r\n",
        "not HTTP/1.1": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        "chunked body mis-framed": b"POST /v1/partner/deliver HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nnot a chunk\r\n0\r\n\r\n",
        "chunk size line of 100,000 characters": b"POST /v1/partner/deliver HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"z" * 100_000 + b"\r\n0\r\n\r\n",
    }
    caplog.set_level("DEBUG", logger="gateway.http.requests")
    for name, request in requests.items():
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        assert status_line.split()[1:2] == [b"400"], (name, status_line)
    records = [r for r in caplog.records if r.name == "gateway.http.requests"]
    assert len(records) == len(requests)
    for record in records:
        assert record.exc_info is None
        assert record.levelname == "WARNING"
        assert "refused a malformed HTTP request" in record.getMessage()
        assert len(record.getMessage()) < 1000  # aiohttp's reason may quote what the client sent
    envelope = b'{"payload": "e30", "payloadType": "application/json", "signatures": []}'
    for encoding, body in (
        ("gzip", b"\x1f\x8b not gzip at all"),
        ("deflate", b"xyz"),
        ("gzip", gzip.compress(envelope)[:-8]),  # the trailer cut off: not read as what decompressed
        ("gzip", gzip.compress(envelope)[:12]),  # cut inside the stream: not read as an empty body
        ("gzip", gzip.compress(envelope) + b"junk"),
        ("br", b"\x0b\x02\x80{}\x03"),
        ("gzip, gzip", gzip.compress(gzip.compress(envelope))),
        ("gzip\r\nContent-Encoding: br", gzip.compress(envelope)),  # two headers: one list, gzip then br
    ):
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        writer.write(
            b"POST /v1/partner/deliver HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        assert answer.split()[1:2] == [b"400"], (encoding, answer)
        receipt = partner_pb2.Receipt.FromString(Envelope.from_json(answer.partition(b"\r\n\r\n")[2]).payload)
        assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.MALFORMED_PAYLOAD, False)
        assert receipt.detail.startswith("the request body cannot be read: "), receipt.detail
    async with aiohttp.ClientSession() as session, session.get(partners.che.http_url + "/healthz") as response:
        assert response.status == 200
    assert not [r for r in caplog.records if r.exc_info is not None]
    # Every line says what was refused, and none reads as a crash.
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.http.requests"]
    assert len(lines) == len(requests)
    assert all(line.startswith("refused a malformed HTTP request") for line in lines), lines
    assert any(line.startswith("refused a malformed HTTP request from 127.0.0.1: ") for line in lines), lines


@MODULE
async def test_a_compressed_body_is_decompressed_off_the_event_loop(
    partners: Partners, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A few kilobytes of gzip unpack to the body limit: decompressed on the event loop, a crowd of them held
    # every call of the gateway up.
    import threading

    from gateway.http import app as http_app

    threads: list[int] = []
    decode = http_app.decoded_body

    def recorded(raw: bytes, content_encoding: str, limit: int) -> bytes:
        threads.append(threading.get_ident())
        return decode(raw, content_encoding, limit)

    monkeypatch.setattr(http_app, "decoded_body", recorded)
    body = gzip.compress(b"{" + b" " * 100_000 + b"}")
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(partners.che.http_url + DELIVER_PATH, data=body, headers=headers) as response,
    ):
        assert response.status == 400  # decompressed: JSON, but no envelope
    assert threads and threading.get_ident() not in threads


# -- poison statements on both partner transports ------------------------------------------------------


@dataclass
class Craft:
    """What a poison case builds with: the crafter on CHN's real channel, the transport, a transfer ID of its
    own for the proposals it makes, and the real transfer both sides know."""

    crafter: Crafter
    transport: str
    transfer_id: str
    known_transfer: str

    def encode(self, envelope: Envelope) -> bytes:
        return encode(envelope, self.transport)

    def next(self, **body: object) -> partner_pb2.Statement:
        """The crafter's next statement, as a message to tamper with before `signed`."""
        before = self.crafter.channel
        payload, _ = self.crafter.statement(**body)
        self.crafter.channel = before
        return partner_pb2.Statement.FromString(payload)

    def signed(self, statement: partner_pb2.Statement) -> bytes:
        """``statement`` signed by the crafter; the channel advances past the bytes actually sent."""
        payload = statement.SerializeToString()
        self.crafter.channel = self.crafter.channel.advance(payload)
        return self.encode(self.crafter.envelope(payload))


@dataclass(frozen=True)
class Poison:
    """A poison delivery and how it must be answered."""

    name: str
    build: Callable[[Craft], bytes]
    """The raw request body for the transport."""
    code: ResponseCode
    taken_in: bool
    http_status: int
    says: str
    """What the receipt's detail must say, on both transports."""
    answered: bool = False
    """A proposal taken in but refused whose transfer ID is readable: a rejection goes back."""
    says_over_http: str | None = None
    """What the receipt's detail must say over HTTP instead, where the JSON form can carry what protobuf cannot."""


def encode(envelope: Envelope, transport: str) -> bytes:
    return wire.envelope_to_bytes(envelope) if transport == "grpc" else envelope.to_json()


def with_sequence(sequence: int) -> Callable[[Craft], bytes]:
    def build(craft: Craft) -> bytes:
        statement = craft.next(status_query=partner_pb2.StatusQuery(transfer_id="t-seq"))
        statement.header.sequence = sequence
        return craft.signed(statement)

    return build


def ccer(start: int, end: int, registry: str = "CN-CCER", kind: str = "CCER") -> records_pb2.UnitBlock:
    block = demo_block(start, end)
    block.space.issuing_registry = registry
    block.space.unit_kind = kind
    return block


def proposal(
    blocks: list[records_pb2.UnitBlock], account_id: str = "CH-PH-0001", transfer_id: str | None = None
) -> Callable[[Craft], bytes]:
    def build(craft: Craft) -> bytes:
        if transfer_id is not None:
            craft.transfer_id = transfer_id
        body = partner_pb2.Proposal(
            transfer_id=craft.transfer_id,
            blocks=blocks,
            source_account=records_pb2.AccountRef(party="CHN", account_id="CN-PO-0001"),
            acquiring_account=records_pb2.AccountRef(party="CHE", account_id=account_id),
            cooperative_approach="CA0001",
            authorization_id="CHN-A-0001",
            purpose="NDC",
            adjustment_method="single-year averaging",
        )
        return craft.signed(craft.next(proposal=body))

    return build


def spaced_transfer_id(craft: Craft) -> bytes:
    craft.transfer_id = craft.transfer_id.replace("-", "\u00a0")  # one per transport: each is answered
    return proposal([BLOCK])(craft)


def unknown_state(craft: Craft) -> bytes:
    # The real transfer is known on both sides, so the report's state is read.
    statement = craft.next(status_report=partner_pb2.StatusReport(transfer_id=craft.known_transfer, known=True))
    statement.status_report.state = 99  # type: ignore[assignment]
    return craft.signed(statement)


def naming(body: str, transfer_id: str) -> Callable[[Craft], bytes]:
    """A statement of kind ``body`` about ``transfer_id``, every other field as a partner would fill it."""

    def build(craft: Craft) -> bytes:
        message = {
            "status_query": partner_pb2.StatusQuery(transfer_id=transfer_id),
            "status_report": partner_pb2.StatusReport(transfer_id=transfer_id, known=True, state=records_pb2.COMPLETED),
            "completion": partner_pb2.Completion(transfer_id=transfer_id),
            "cancel": partner_pb2.Cancel(transfer_id=transfer_id),
            "decision": partner_pb2.Decision(transfer_id=transfer_id, accepted=True),
        }[body]
        return craft.signed(craft.next(**{body: message}))

    return build


def garbage(craft: Craft) -> bytes:
    return b"\xff\x00garbage\x01\x02" * 8


def empty(craft: Craft) -> bytes:
    return b""


def no_body(craft: Craft) -> bytes:
    statement = craft.next(status_query=partner_pb2.StatusQuery(transfer_id="t-none"))
    statement.ClearField("status_query")
    return craft.signed(statement)


def seventeen_signatures(craft: Craft) -> bytes:
    payload, _ = craft.crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id="t-17"))
    one = craft.crafter.envelope(payload).signatures[0]
    if craft.transport == "grpc":
        return envelope_pb2.Envelope(
            payload=payload,
            payload_type=wire.STATEMENT_PAYLOAD_TYPE,
            signatures=[envelope_pb2.Signature(sig=one.sig, keyid=one.keyid)] * 17,
        ).SerializeToString()
    document = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": wire.STATEMENT_PAYLOAD_TYPE,
        "signatures": [{"keyid": one.keyid, "sig": base64.b64encode(one.sig).decode()}] * 17,
    }
    return json.dumps(document).encode()


def odd_signature(keyid: bytes, sig: bytes) -> Callable[[Craft], bytes]:
    """A statement with its real signature and one more, with ``keyid`` (raw UTF-8 bytes, possibly invalid) and
    ``sig``: what no `Envelope` can be built with, written by hand in either form."""

    def build(craft: Craft) -> bytes:
        payload, _ = craft.crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id="t-odd-signature"))
        real = craft.crafter.envelope(payload).signatures[0]
        if craft.transport == "grpc":
            odd = envelope_pb2.Signature(sig=sig).SerializeToString() + b"\x12" + bytes([len(keyid)]) + keyid
            return (
                envelope_pb2.Envelope(
                    payload=payload,
                    payload_type=wire.STATEMENT_PAYLOAD_TYPE,
                    signatures=[envelope_pb2.Signature(sig=real.sig, keyid=real.keyid)],
                ).SerializeToString()
                + b"\x1a"
                + bytes([len(odd)])
                + odd
            )
        document = {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": wire.STATEMENT_PAYLOAD_TYPE,
            "signatures": [
                {"keyid": real.keyid, "sig": base64.b64encode(real.sig).decode()},
                {"keyid": keyid.decode("utf-8", "surrogatepass"), "sig": base64.b64encode(sig).decode()},
            ],
        }
        return json.dumps(document).encode()

    return build


def trust_bundle(payload: bytes) -> Callable[[Craft], bytes]:
    def build(craft: Craft) -> bytes:
        envelope = sign_envelope(TRUST_BUNDLE_PAYLOAD_TYPE, payload, [craft.crafter.signer])
        return craft.encode(envelope)

    return build


BLOCK = ccer(5001, 5010)

POISONS = [
    Poison(
        "trust-bundle-nested-too-deeply",
        trust_bundle(b"[" * 100_000 + b"]" * 100_000),
        ResponseCode.MALFORMED_PAYLOAD,
        False,
        400,
        "nested too deeply",
    ),
    Poison(
        "trust-bundle-not-an-object",
        trust_bundle(b'["documents"]'),
        ResponseCode.MALFORMED_PAYLOAD,
        False,
        400,
        "not a trust bundle",
    ),
    Poison(
        "header-sequence-2^63", with_sequence(2**63), ResponseCode.MALFORMED_PAYLOAD, False, 400, "exceeds 2^63 - 1"
    ),
    Poison(
        "header-sequence-2^64-1",
        with_sequence(2**64 - 1),
        ResponseCode.MALFORMED_PAYLOAD,
        False,
        400,
        "exceeds 2^63 - 1",
    ),
    Poison(
        "proposal-block-ending-2^63-1",
        proposal([ccer(2**63 - 100, 2**63 - 1)]),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "largest serial is 2^63 - 2",
        answered=True,
    ),
    Poison(
        "proposal-total-over-2^63-1",
        proposal([ccer(0, MAX_SERIAL), ccer(0, MAX_SERIAL, "CN-CEA", "CEA")]),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "total quantity 18446744073709551614 exceeds 2^63 - 1",
        answered=True,
    ),
    Poison(
        "proposal-1001-blocks",
        proposal([ccer(100_000 + i, 100_000 + i) for i in range(text.MAX_BLOCKS_PER_TRANSFER + 1)]),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "1001 blocks given; at most 1000",
        answered=True,
    ),
    Poison(
        "proposal-account-id-3mb-over-the-cap",
        proposal([BLOCK], account_id=BIG),
        ResponseCode.ENVELOPE_TOO_LARGE,
        False,
        413,
        "exceeds the cap of 1048576",
    ),
    Poison(
        "proposal-account-id-200kb",
        proposal([BLOCK], account_id="A" * 200_000),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "the account ID has 200000 characters; at most 128",
        answered=True,
    ),
    Poison(
        "proposal-account-id-nul",
        proposal([BLOCK], account_id=NUL),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "account ID contains U+0000",
        answered=True,
    ),
    Poison(
        "proposal-transfer-id-nul",
        proposal([BLOCK], transfer_id="poison\x00"),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "transfer ID contains U+0000",
    ),
    Poison(
        "status-query-transfer-id-200k",
        naming("status_query", "t" * 200_000),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "the transfer ID has 200000 characters; at most 128",
    ),
    Poison(
        "status-query-transfer-id-joiner",
        naming("status_query", "t\u200dx"),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "transfer ID contains U+200D ZERO WIDTH JOINER",
    ),
    Poison(
        "status-report-transfer-id-not-nfc",
        naming("status_report", "e\u0301"),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "is not in Unicode normal form NFC",
    ),
    Poison(
        "completion-transfer-id-nul",
        naming("completion", "t\x00"),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "transfer ID contains U+0000",
    ),
    Poison(
        "cancel-transfer-id-200k",
        naming("cancel", "t" * 200_000),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "the transfer ID has 200000 characters",
    ),
    Poison(
        "decision-transfer-id-private-use",
        naming("decision", "t\ue000"),
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "transfer ID contains U+E000 (a private-use character)",
    ),
    Poison(
        "proposal-transfer-id-no-break-space",
        spaced_transfer_id,
        ResponseCode.INVALID_ARGUMENT,
        True,
        200,
        "transfer ID contains U+00A0 NO-BREAK SPACE",
        answered=True,
    ),
    Poison("status-report-unknown-state", unknown_state, ResponseCode.MALFORMED_PAYLOAD, True, 200, "unknown state 99"),
    Poison("statement-without-body", no_body, ResponseCode.MALFORMED_PAYLOAD, False, 400, "no body"),
    Poison("garbage-bytes", garbage, ResponseCode.MALFORMED_PAYLOAD, False, 400, "the envelope is not"),
    Poison("empty-body", empty, ResponseCode.MALFORMED_PAYLOAD, False, 400, "the envelope"),
    Poison("17-signatures", seventeen_signatures, ResponseCode.MALFORMED_PAYLOAD, False, 400, "17 signatures"),
    Poison(
        "an-empty-signature-beside-the-real-one",
        odd_signature(b"k", b""),
        ResponseCode.MALFORMED_PAYLOAD,
        False,
        400,
        "empty 'sig'",
    ),
    Poison(
        "a-keyid-of-a-lone-surrogate",
        odd_signature("\udc00".encode("utf-8", "surrogatepass"), b"\x01" * 64),
        ResponseCode.MALFORMED_PAYLOAD,
        False,
        400,
        "not a valid protobuf Envelope",
        says_over_http="keyid '\\udc00' that UTF-8 cannot carry",
    ),
    Poison(
        "trust-bundle-documents-twice",
        trust_bundle(b'{"documents":[],"documents":["x"]}'),
        ResponseCode.MALFORMED_PAYLOAD,
        False,
        400,
        "the member 'documents' appears twice",
    ),
]


@dataclass(frozen=True)
class Answer:
    receipt: partner_pb2.Receipt
    http_status: int | None


async def deliver(network: Network, receiver: str, raw: bytes, transport: str) -> Answer:
    """Deliver ``raw`` to ``receiver`` and check that the answer is a receipt it signed."""
    node = network[receiver]
    status: int | None = None
    if transport == "grpc":
        options = [("grpc.max_send_message_length", -1)]
        async with grpc.aio.insecure_channel(node.partner_address, options=options) as channel:
            answer: bytes = await channel.unary_unary(DELIVER_METHOD, None, None)(raw, timeout=10)
        envelope = wire.envelope_from_bytes(answer)
    else:
        async with (
            aiohttp.ClientSession() as session,
            session.post(node.http_url + DELIVER_PATH, data=io.BytesIO(raw)) as response,
        ):
            status = response.status
            answer = await response.read()
        envelope = Envelope.from_json(answer)
    assert envelope.payload_type == wire.RECEIPT_PAYLOAD_TYPE
    key = network.signers[receiver].public_key
    assert any(key.verify(s.sig, pae(envelope.payload_type, envelope.payload)) for s in envelope.signatures)
    return Answer(partner_pb2.Receipt.FromString(envelope.payload), status)


async def queued(node: GatewayNode) -> int:
    """The statements ``node`` has queued for its partners, whatever became of them."""
    async with node.store.read() as tx:
        return len(await tx.list_outbox())


async def held_at(node: GatewayNode) -> tuple[object, ...]:
    """What a gateway holds: transfers, blocks, ledger entries and statements held behind a gap."""
    async with node.store.read() as tx:
        return (await tx.list_transfers(), await tx.list_blocks(), await tx.list_ledger(), await tx.count_held())


async def decisions_sent(node: GatewayNode, transfer_id: str | None = None) -> list[partner_pb2.Decision]:
    """The Decisions (about ``transfer_id``, if given) that ``node`` has sent, from its message log: each statement
    once, however many times it was sent (a send that timed out on a loaded machine is sent again, and logged
    again, with the same message ID)."""
    async with node.store.read() as tx:
        entries = await tx.list_log()
    found = []
    seen: set[str] = set()
    for entry in entries:
        if entry.direction != "out" or entry.kind is not LogKind.STATEMENT or entry.message_id in seen:
            continue
        seen.add(entry.message_id)
        statement = partner_pb2.Statement.FromString(wire.envelope_from_bytes(entry.envelope).payload)
        if statement.WhichOneof("body") == "decision" and transfer_id in (None, statement.decision.transfer_id):
            found.append(statement.decision)
    return found


async def follow_up(network: Network, crafter: Crafter, receiver: str, transport: str) -> None:
    """A normal statement continuing the channel is taken in."""
    payload, _ = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id="after-poison"))
    answer = await deliver(network, receiver, encode(crafter.envelope(payload), transport), transport)
    receipt = answer.receipt
    assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.OK, True), receipt.detail
    assert answer.http_status in (None, 200)


@MODULE
@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize("poison", POISONS, ids=[p.name for p in POISONS])
async def test_a_poison_statement_gets_a_signed_receipt_and_the_channel_keeps_working(
    partners: Partners, poison: Poison, transport: str
) -> None:
    network, che = partners.network, partners.che
    await settle(*network.nodes.values())
    held_before = await held_at(che)
    decided_before = len(await decisions_sent(che))
    queued_before = await queued(che)
    async with che.store.read() as tx:
        channel_before = await tx.incoming_channel("CHN")
    # The crafter plays CHN on its real channel, from where CHE stands.
    crafter = Crafter(signer=network.signers["CHN"], sender="CHN", receiver="CHE", channel=channel_before)
    craft = Craft(crafter, transport, f"poison-{poison.name}-{transport}", partners.transfer_id)
    answer = await deliver(network, "CHE", poison.build(craft), transport)
    receipt = answer.receipt
    assert (ResponseCode(receipt.code), receipt.taken_in) == (poison.code, poison.taken_in), receipt.detail
    says = poison.says_over_http if transport == "http" and poison.says_over_http else poison.says
    assert says in receipt.detail
    assert len(receipt.detail) <= text.MAX_TEXT_LENGTH
    if transport == "http":
        assert answer.http_status == poison.http_status
    async with che.store.read() as tx:
        channel_after = await tx.incoming_channel("CHN")
    if poison.taken_in:
        assert channel_after.last_sequence == channel_before.last_sequence + 1
    else:
        assert channel_after == channel_before
        crafter.channel = channel_before  # the statement did not consume its sequence number
    await settle(*network.nodes.values())
    # Nothing is recorded at the receiver: no transfer, block or ledger entry, nothing held behind a gap.
    assert await held_at(che) == held_before
    sent = await decisions_sent(che, craft.transfer_id)
    if poison.answered:
        # The initiating side hears a rejection by transfer ID, so that it can release its units.
        assert [(d.accepted, [ResponseCode(r.code) for r in d.rejections]) for d in sent] == [(False, [poison.code])]
    else:
        assert sent == []
    assert len(await decisions_sent(che)) == decided_before + len(sent)
    # Nothing else is queued: no answer to a statement refused.
    assert await queued(che) == queued_before + len(sent)
    await follow_up(network, crafter, "CHE", transport)
    await settle(*network.nodes.values())
    assert await held_at(che) == held_before


@MODULE
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_a_body_too_large_to_read_gets_413_with_a_signed_receipt_and_the_channel_keeps_working(
    partners: Partners, encoding: str
) -> None:
    network, che = partners.network, partners.che
    await settle(*network.nodes.values())
    async with che.store.read() as tx:
        channel = await tx.incoming_channel("CHN")
    cap = che.exchange.settings.max_envelope_bytes
    body = b"{" + b" " * (4 * cap + 8192) + b"}"  # beyond what the HTTP server reads at all, four times the cap
    headers = {"Content-Type": "application/json"}
    if encoding == "gzip":
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"  # small on the wire, large unpacked
    async with (
        aiohttp.ClientSession() as session,
        session.post(che.http_url + DELIVER_PATH, data=io.BytesIO(body), headers=headers) as response,
    ):
        status, answer = response.status, await response.read()
    envelope = Envelope.from_json(answer)
    assert envelope.payload_type == wire.RECEIPT_PAYLOAD_TYPE
    key = network.signers["CHE"].public_key
    assert any(key.verify(s.sig, pae(envelope.payload_type, envelope.payload)) for s in envelope.signatures)
    receipt = partner_pb2.Receipt.FromString(envelope.payload)
    assert (status, ResponseCode(receipt.code), receipt.taken_in) == (413, ResponseCode.ENVELOPE_TOO_LARGE, False)
    assert f"a body of more than {4 * cap + 4096} bytes exceeds the cap of {cap}" == receipt.detail
    assert (receipt.in_reply_to, receipt.envelope_sha256) == ("", b"")
    crafter = Crafter(signer=network.signers["CHN"], sender="CHN", receiver="CHE", channel=channel)
    await follow_up(network, crafter, "CHE", "http")


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_decision_with_ten_thousand_rejections_is_refused_and_the_transfer_waits(
    tmp_path: Path, transport: str
) -> None:
    # CHE holds every proposal for its operator, so CHN's transfer waits for a Decision.
    network = await start_network(tmp_path, ("CHN", "CHE"), http=True, policy=DecisionPolicy())
    try:
        pair = Pair(network["CHN"], network["CHE"])
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "held"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
        await settle(pair.chn, pair.che)
        async with pair.che.store.read() as tx:
            channel = await tx.outgoing_channel("CHN")
        crafter = Crafter(signer=network.signers["CHE"], sender="CHE", receiver="CHN", channel=channel)
        before = await held_at(pair.chn)
        rejections = [records_pb2.Rejection(code=records_pb2.UNKNOWN_ACCOUNT, message="no")] * 10_000
        decision = partner_pb2.Decision(transfer_id=proposed.transfer_id, accepted=False, rejections=rejections)
        payload, _ = crafter.statement(decision=decision)
        answer = await deliver(network, "CHN", encode(crafter.envelope(payload), transport), transport)
        assert (ResponseCode(answer.receipt.code), answer.receipt.taken_in) == (ResponseCode.INVALID_ARGUMENT, True)
        assert "rejections" in answer.receipt.detail
        assert answer.http_status in (None, 200)
        await settle(pair.chn, pair.che)
        assert await held_at(pair.chn) == before  # still CHECKED, its units still reserved
        await follow_up(network, crafter, "CHN", transport)
    finally:
        await network.stop()


class RefusingToken:
    """A signer whose token refuses to sign, as an HSM that is busy or being reset does."""

    def __init__(self, signer: Signer) -> None:
        self.public_key = signer.public_key
        self.keyid = signer.keyid

    def sign(self, data: bytes) -> bytes:
        raise SignerError("the PKCS#11 token refused to sign: CKR_DEVICE_ERROR")


@MODULE
@pytest.mark.parametrize("transport", ["grpc", "grpc-batch", "http"])
async def test_a_receiver_that_cannot_sign_receipts_asks_for_the_statement_again_and_takes_it_in_later(
    partners: Partners, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    network, che = partners.network, partners.che
    await settle(*network.nodes.values())
    async with che.store.read() as tx:
        channel = await tx.incoming_channel("CHN")
    crafter = Crafter(signer=network.signers["CHN"], sender="CHN", receiver="CHE", channel=channel)
    payload, _ = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id="while-the-token-is-down"))
    form = "http" if transport == "http" else "grpc"
    raw = encode(crafter.envelope(payload), form)
    signer = che.exchange.signer
    monkeypatch.setattr(che.exchange, "signer", RefusingToken(signer))
    if transport.startswith("grpc"):
        method, request = DELIVER_METHOD, raw
        if transport == "grpc-batch":
            method, request = DELIVER_BATCH_METHOD, partner_pb2.DeliveryBatch(envelopes=[raw]).SerializeToString()
        async with grpc.aio.insecure_channel(che.partner_address) as channel_to_che:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel_to_che.unary_unary(method, None, None)(request, timeout=10)
        # Not UNKNOWN: a status the sender retries, and the response code with it.
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_code(refused.value) == ResponseCode.INTERNAL_ERROR
        assert "cannot sign" in (refused.value.details() or "")
    else:
        async with (
            aiohttp.ClientSession() as session,
            session.post(che.http_url + DELIVER_PATH, data=raw) as response,
        ):
            # Not 500: nothing was judged, as for a 503 for want of a place, and the sender sends it again.
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert "cannot sign" in await response.text()
    async with che.store.read() as tx:
        assert await tx.incoming_channel("CHN") == channel  # nothing was taken in without a receipt
    monkeypatch.setattr(che.exchange, "signer", signer)
    answer = await deliver(network, "CHE", raw, form)
    assert (ResponseCode(answer.receipt.code), answer.receipt.taken_in) == (ResponseCode.OK, True)
