"""Trust over time between two real gateways: rotation through the operator API, refresh from the
published URL, persistence across a restart, and a SoftHSM2-backed signer."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import socket
import ssl
import threading
import uuid
from pathlib import Path

import aiohttp
import aiohttp.web
import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway import trust as trust_module
from gateway import wire
from gateway.config import ConfigError
from gateway.demo import Pair, wait_for_state
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.protocol import ACCEPT_ALL
from gateway.domain.statements import ChannelState
from gateway.exchange import Sealed
from gateway.harness import Network, self_signed_trust_document, start_network
from gateway.http.app import DELIVER_PATH
from gateway.node import GatewayNode, PartnerSpec
from gateway.partners import Partner
from gateway.rpc.errors import read_error_detail
from gateway.rpc.partner import DELIVER_BATCH_METHOD
from gateway.store.base import LogKind, OutboxKind, OutboxMessage
from gateway.store.sqlite import SQLiteStore
from signing import (
    Algorithm,
    CryptoSigner,
    Envelope,
    PublicKey,
    Role,
    Signer,
    SignerError,
    TrustDocument,
    TrustedParty,
    generate_key,
    pae,
    sign_trust_document,
    signer_from_uri,
)
from tests.integration.harness import (
    TERMINAL,
    Crafter,
    deliver_raw,
    operator,
    proposal_request,
    settle,
    setup_accounts,
    transfer,
)
from tests.signing.softhsm import create_softhsm_key, require_softhsm


def next_document(
    network: Network, party: str, version: int, new: Signer, *, keep: Signer | None = None
) -> TrustDocument:
    keys = [new] if keep is None else [keep, new]
    return TrustDocument(
        party=party,
        version=version,
        expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=90),
        keys={k.public_key.keyid: k.public_key for k in keys},
        roles={"trust": Role((new.keyid,), 1), "transfer": Role(tuple(k.keyid for k in keys), 1)},
    )


async def rotate(network: Network, party: str, version: int, *, keep_old: bool = False) -> Signer:
    """Rotate ``party`` to a new key through its operator API; return the new signer."""
    old = network.signers[party]
    prefix = network.workdir / f"{party.lower()}-v{version}"
    generate_key(prefix)
    new = signer_from_uri(f"file:{prefix}.key")
    document = next_document(network, party, version, new, keep=old if keep_old else None)
    envelope = sign_trust_document(document, [old, new])
    network.configure_signer(party, f"v{version}", new)
    async with operator(network[party]) as stub:
        status = await stub.RotateTrustDocument(
            operator_pb2.RotateTrustDocumentRequest(
                idempotency_key=f"rotate-{version}", envelope_json=envelope.to_json(), signer=f"v{version}"
            )
        )
    assert status.version == version
    assert [(p.party, ResponseCode(p.code)) for p in status.pushed] == [
        (other, ResponseCode.OK) for other in network.nodes if other != party
    ]
    network.signers[party] = new
    return new


@pytest.mark.asyncio
async def test_after_a_rotation_both_gateways_keep_exchanging_and_the_retired_key_is_refused(tmp_path: Path) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE"))
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        await transfer(pair, block, 1, 100, "before")
        retired = network.signers["CHN"]
        await rotate(network, "CHN", 2)
        await rotate(network, "CHE", 2)
        await settle(pair.chn, pair.che)  # the pushes are queued by the rotations, delivered after them
        async with operator(pair.che) as che:
            listed = await che.ListTrust(operator_pb2.ListTrustRequest())
        assert (listed.own.version, [(p.party, p.version) for p in listed.partners]) == (2, [("CHN", 2)])

        transfer_id = await transfer(pair, block, 101, 200, "after")
        async with operator(pair.chn) as chn:
            done = await chn.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
        assert done.state == records_pb2.COMPLETED

        async with pair.chn.store.read() as tx:
            channel = await tx.outgoing_channel("CHE")
        crafter = Crafter(signer=retired, sender="CHN", receiver="CHE", channel=channel)
        payload, _ = crafter.statement(
            status_query=__import__("carbon_gateway.v1.partner_pb2", fromlist=["x"]).StatusQuery(
                transfer_id=transfer_id
            )
        )
        receipt = await deliver_raw(pair.che, wire.envelope_to_bytes(crafter.envelope(payload)))
        assert ResponseCode(receipt.code) is ResponseCode.KEY_UNKNOWN_OR_REVOKED
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_run_claimed_before_a_rotation_waits_for_the_push_of_the_new_document(tmp_path: Path) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE"))
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        outbox = pair.chn.core.outbox
        seal = outbox._seal
        rotated: list[Signer] = []

        async def rotate_first(
            run: list[OutboxMessage], partner: Partner
        ) -> list[tuple[OutboxMessage, Sealed, ChannelState]]:
            # The Proposal is claimed under the old key; the rotation comes between its claim and its seal.
            if not rotated and run[0].kind is OutboxKind.PROPOSAL:
                rotated.append(await rotate(network, "CHN", 2))
            return await seal(run, partner)

        outbox._seal = rotate_first  # type: ignore[method-assign]
        transfer_id = await transfer(pair, block, 1, 100, "across-rotation")
        assert rotated, "the Proposal was never sealed"
        for node in (pair.chn, pair.che):
            async with operator(node) as stub:
                done = await stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
                dead = await stub.ListDeadLetters(operator_pb2.ListDeadLettersRequest())
            assert (done.state, list(dead.entries)) == (records_pb2.COMPLETED, []), node.party
        async with pair.che.store.read() as tx:
            taken = [e for e in await tx.list_log() if e.direction == "in" and e.peer == "CHN"]
        # CHE took the new document in before any statement signed with the new key, and took those in.
        keys = [
            (e.kind, wire.envelope_from_bytes(e.envelope).signatures[0].keyid) for e in taken if e.form == "protobuf"
        ]
        new_key = rotated[0].keyid
        signed_new = [i for i, (kind, keyid) in enumerate(keys) if kind is LogKind.STATEMENT and keyid == new_key]
        pushed = [i for i, (kind, _) in enumerate(keys) if kind is LogKind.TRUST]
        assert signed_new and pushed and pushed[0] < signed_new[0], keys
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_rotation_that_is_not_the_next_version_is_refused_by_the_operator_api(tmp_path: Path) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE"))
    try:
        old = network.signers["CHN"]
        new = CryptoSigner.generate()
        envelope = sign_trust_document(next_document(network, "CHN", 3, new), [old, new])
        async with operator(network["CHN"]) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RotateTrustDocument(
                    operator_pb2.RotateTrustDocumentRequest(
                        idempotency_key="k", envelope_json=envelope.to_json(), signer="default"
                    )
                )
        detail = read_error_detail(caught.value.trailing_metadata())
        assert detail is not None
        assert (ResponseCode(detail.code), detail.field) == (ResponseCode.TRUST_UPDATE_REFUSED, "envelope_json")
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_rotation_to_a_document_listing_a_partners_key_is_refused_by_the_operator_api(tmp_path: Path) -> None:
    # CHN's next document lists CHE's transfer key beside CHN's new one: CHE could then sign as CHN wherever a
    # receiver tells senders apart by their keys alone.
    network = await start_network(tmp_path, ("CHN", "CHE"))
    try:
        old, new, theirs = network.signers["CHN"], CryptoSigner.generate(), network.signers["CHE"]
        document = next_document(network, "CHN", 2, new)
        document = dataclasses.replace(
            document,
            keys={**document.keys, theirs.keyid: theirs.public_key},
            roles={**document.roles, "transfer": Role((new.keyid, theirs.keyid), 1)},
        )
        network.configure_signer("CHN", "v2", new)
        async with operator(network["CHN"]) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RotateTrustDocument(
                    operator_pb2.RotateTrustDocumentRequest(
                        idempotency_key="k",
                        envelope_json=sign_trust_document(document, [old, new]).to_json(),
                        signer="v2",
                    )
                )
            listed = await stub.ListTrust(operator_pb2.ListTrustRequest())
        detail = read_error_detail(caught.value.trailing_metadata())
        assert detail is not None
        assert (ResponseCode(detail.code), detail.field) == (ResponseCode.INVALID_ARGUMENT, "envelope_json")
        assert f"lists the key {theirs.keyid[:16]}..., which CHE's trust document version 1 lists" in detail.message
        assert network["CHN"].trust.own.version == 1
        assert listed.own.version == 1
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_partner_listing_this_gateways_key_does_not_keep_it_from_rotating(tmp_path: Path) -> None:
    # Any publisher may list any public key: CHE's next document lists CHN's current transfer key, and CHN trusts
    # it. CHN's rotation keeping that key beside its new one adds no key of CHE's, and must not be refused.
    network = await start_network(tmp_path, ("CHN", "CHE"))
    try:
        old_che, new_che, chn_key = network.signers["CHE"], CryptoSigner.generate(), network.signers["CHN"]
        document = next_document(network, "CHE", 2, new_che)
        document = dataclasses.replace(
            document,
            keys={**document.keys, chn_key.keyid: chn_key.public_key},
            roles={**document.roles, "transfer": Role((new_che.keyid, chn_key.keyid), 1)},
        )
        pushed = wire.envelope_to_bytes(sign_trust_document(document, [old_che, new_che]))
        receipt = await deliver_raw(network["CHN"], pushed)
        assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.OK, True), receipt.detail
        assert network["CHN"].partners.parties()["CHE"].trusted.version == 2

        await rotate(network, "CHN", 2, keep_old=True)
        assert network["CHN"].trust.own.version == 2
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_rotation_the_update_rules_refuse_names_the_document_and_is_no_credentials_failure(
    tmp_path: Path,
) -> None:
    """The administrator is authenticated: a next version that is expired, not signed by the current trust keys
    or needing two signatures per statement is a request to correct (FAILED_PRECONDITION, or INVALID_ARGUMENT
    for the threshold, as for any malformed field), never UNAUTHENTICATED, which a client takes for bad
    credentials. The response codes stay those a partner's push of the same document is refused with."""
    network = await start_network(tmp_path, ("CHN", "CHE"))
    try:
        old, new = network.signers["CHN"], CryptoSigner.generate()
        document = next_document(network, "CHN", 2, new)
        expired = dataclasses.replace(document, expires=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        two_to_sign = dataclasses.replace(
            document,
            keys={**document.keys, old.keyid: old.public_key},
            roles={**document.roles, "transfer": Role((old.keyid, new.keyid), 2)},
        )
        cases = (
            (
                sign_trust_document(expired, [old, new]),
                ResponseCode.TRUST_DOCUMENT_EXPIRED,
                grpc.StatusCode.FAILED_PRECONDITION,
            ),
            (
                sign_trust_document(document, [new]),
                ResponseCode.TRUST_UPDATE_REFUSED,
                grpc.StatusCode.FAILED_PRECONDITION,
            ),
            (
                sign_trust_document(document, [CryptoSigner.generate(), new]),
                ResponseCode.TRUST_UPDATE_REFUSED,
                grpc.StatusCode.FAILED_PRECONDITION,
            ),
            (
                sign_trust_document(two_to_sign, [old, new]),
                ResponseCode.INVALID_ARGUMENT,
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        )
        async with operator(network["CHN"]) as stub:
            for index, (envelope, code, status) in enumerate(cases):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.RotateTrustDocument(
                        operator_pb2.RotateTrustDocumentRequest(
                            idempotency_key=f"k{index}", envelope_json=envelope.to_json(), signer="default"
                        )
                    )
                detail = read_error_detail(caught.value.trailing_metadata())
                assert detail is not None
                got = (caught.value.code(), ResponseCode(detail.code), detail.field)
                assert got == (status, code, "envelope_json"), (index, detail.message)
            assert (await stub.ListTrust(operator_pb2.ListTrustRequest())).own.version == 1
    finally:
        await network.stop()


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "mtls"])
@pytest.mark.asyncio
async def test_a_partner_refreshes_trust_from_the_published_url_and_keeps_it_across_a_restart(
    tmp_path: Path, tls: bool
) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE"), http=True, tls=tls)
    try:
        che = network["CHE"]
        # CHN publishes versions 2 and 3 without pushing them (as if CHE had been down).
        old = network.signers["CHN"]
        mid, last = CryptoSigner.generate(), CryptoSigner.generate()
        v2 = sign_trust_document(next_document(network, "CHN", 2, mid), [old, mid])
        v3 = sign_trust_document(next_document(network, "CHN", 3, last), [mid, last])
        async with network["CHN"].store.transaction() as tx:
            await tx.put_trust_document("CHN", 2, v2.to_json(), dt.datetime.now(dt.UTC))
            await tx.put_trust_document("CHN", 3, v3.to_json(), dt.datetime.now(dt.UTC))
        async with operator(che) as stub:
            status = await stub.RefreshPartnerTrust(operator_pb2.RefreshPartnerTrustRequest(party="CHN"))
        assert status.version == 3
        assert list(status.transfer_keyids) == [last.keyid]
    finally:
        await network.stop()

    restarted = await start_network(tmp_path / "again", ("CHN", "CHE"))
    await restarted.stop()
    # The same database files, reopened: CHE still trusts version 3.

    node = GatewayNode(
        party="CHE",
        store=await SQLiteStore.open(tmp_path / "che.db"),
        signer=network.signers["CHE"],
        own_trust=network.trust["CHE"],
        partners=[PartnerSpec(party="CHN", address="127.0.0.1:9", trust_envelope=network.trust["CHN"])],
        policy=ACCEPT_ALL,
    )
    await node.start()
    try:
        assert node.partners.parties()["CHN"].trusted.version == 3
    finally:
        await node.stop()


@pytest.mark.sqlite_only(reason="reopens the SQLite files of a stopped network")
@pytest.mark.asyncio
async def test_a_configured_document_is_taken_up_after_the_stored_ones_only_as_their_next_version(
    tmp_path: Path,
) -> None:
    """Once versions are stored, a trust document swapped into the configuration is an update like any other: a
    later version not signed by the stored one's trust keys, a version skipped to, or another document with a
    stored version's number stops the start, naming the setting; the real next version is taken up and kept."""
    network = await start_network(tmp_path, ("CHN", "CHE"))
    await network.stop()
    old = network.signers["CHN"]
    stranger, new = CryptoSigner.generate(), CryptoSigner.generate()

    async def start(chn: Envelope, che: Envelope | None = None) -> GatewayNode:
        node = GatewayNode(
            party="CHE",
            store=await SQLiteStore.open(tmp_path / "che.db"),
            signer=network.signers["CHE"],
            own_trust=che or network.trust["CHE"],
            partners=[PartnerSpec(party="CHN", address="127.0.0.1:9", trust_envelope=chn)],
            policy=ACCEPT_ALL,
        )
        try:
            await node.start()
        except BaseException:
            await node.stop()
            raise
        return node

    refused = {
        "a later version signed by another key": (
            sign_trust_document(next_document(network, "CHN", 2, stranger), [stranger]),
            None,
            "partners[0].trust_document: CHN's trust document version 2 does not follow on from the stored version 1",
        ),
        "a version skipped to": (
            self_signed_trust_document("CHN", stranger, version=5),
            None,
            "partners[0].trust_document: CHN's trust document is version 5, but the newest version this gateway"
            " trusts is 1",
        ),
        "another partner version 1": (
            self_signed_trust_document("CHN", stranger),
            None,
            "partners[0].trust_document: CHN's trust document version 1 differs from the version 1 this gateway stored",
        ),
        "another own version 1": (
            network.trust["CHN"],
            self_signed_trust_document("CHE", network.signers["CHE"], days=30),
            "trust_document: CHE's trust document version 1 differs from the version 1 this gateway stored",
        ),
    }
    for case, (chn, che, said) in refused.items():
        with pytest.raises(ConfigError) as caught:
            await start(chn, che)
        assert str(caught.value).startswith(said), (case, str(caught.value))

    following = sign_trust_document(next_document(network, "CHN", 2, new), [old, new])
    node = await start(following)
    try:
        assert node.partners.parties()["CHN"].trusted.version == 2
    finally:
        await node.stop()
    # Version 2 is stored: the configured version 1 is older, and the same as stored, so version 2 goes on.
    node = await start(network.trust["CHN"])
    try:
        assert node.partners.parties()["CHN"].trusted.version == 2
    finally:
        await node.stop()
    with pytest.raises(ConfigError) as caught:
        await start(self_signed_trust_document("CHN", stranger))
    assert "version 1 differs from the version 1 this gateway stored" in str(caught.value)

    # CHN's own next version, configured: taken up, and queued for CHE as a rotation would queue it, once; one
    # CHN could not sign under is refused before anything is stored or queued.
    chn_next = CryptoSigner.generate()

    async def own_node(own: Envelope) -> GatewayNode:
        return GatewayNode(
            party="CHN",
            store=await SQLiteStore.open(tmp_path / "chn.db"),
            signer=old,
            own_trust=own,
            partners=[PartnerSpec(party="CHE", address="127.0.0.1:9", trust_envelope=network.trust["CHE"])],
            policy=ACCEPT_ALL,
        )

    async def chn_state() -> tuple[int, list[int]]:
        store = await SQLiteStore.open(tmp_path / "chn.db")
        try:
            async with store.read() as tx:
                latest = await tx.latest_trust_document("CHN")
                pushed = [m for m in await tx.list_outbox("CHE") if m.kind is OutboxKind.TRUST]
        finally:
            await store.close()
        assert latest is not None
        return latest[0], [TrustedParty.restore(Envelope.from_json(m.body)).version for m in pushed]

    unusable = {
        "a transfer threshold of 2": TrustDocument(
            party="CHN",
            version=2,
            expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=90),
            keys={k.keyid: k.public_key for k in (old, chn_next)},
            roles={"trust": Role((chn_next.keyid,), 1), "transfer": Role((old.keyid, chn_next.keyid), 2)},
        ),
        "the configured signer dropped": next_document(network, "CHN", 2, chn_next),
    }
    for case, document in unusable.items():
        node = await own_node(sign_trust_document(document, [old, chn_next]))
        with pytest.raises(ConfigError):
            try:
                await node.start()
            finally:
                await node.stop()
        assert await chn_state() == (1, []), case
    own = sign_trust_document(next_document(network, "CHN", 2, chn_next, keep=old), [old, chn_next])
    for _ in range(2):  # and started again: nothing is queued twice
        node = await own_node(own)
        await node.start()
        try:
            assert node.trust.own.version == 2
        finally:
            await node.stop()
    assert await chn_state() == (2, [2])


@pytest.mark.asyncio
async def test_a_softhsm_backed_gateway_signs_transfer_messages_its_partner_verifies(tmp_path: Path) -> None:
    require_softhsm()
    key = create_softhsm_key(
        tmp_path / "hsm", token_label="chn-token", key_label="chn-transfer", algorithm=Algorithm.ECDSA_P256_SHA256
    )
    signer = signer_from_uri(key.uri)
    network = await start_network(tmp_path / "net", ("CHN", "CHE"), signers={"CHN": signer})
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        transfer_id = await transfer(pair, block, 1, 50, "hsm")
        async with operator(pair.che) as che:
            done = await wait_for_state(che, transfer_id, TERMINAL)
        assert done.state == records_pb2.COMPLETED
        async with pair.che.store.read() as tx:
            received = [m for m in await tx.list_messages() if m.direction == "in"]
        assert received
        for message in received:
            envelope = wire.envelope_from_bytes(message.envelope)
            assert [s.keyid for s in envelope.signatures] == [signer.keyid]
            assert key.public_key.verify(envelope.signatures[0].sig, pae(envelope.payload_type, envelope.payload))
    finally:
        await network.stop()


@pytest.mark.sqlite_only(reason="holds the syncs of the SQLite write-ahead log")
@pytest.mark.asyncio
async def test_a_rotation_is_neither_published_nor_signed_under_before_its_commit_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE"))
    chn, old = network["CHN"], network.signers["CHN"]
    real, release, held = os.fsync, threading.Event(), threading.Event()

    try:
        await chn.core.stop_background()  # no periodic commit of its own: the rotation's is the one held...
        chn.core.outbox.start()  # ...with the outbox worker, which the rotation's commit wakes
        assert isinstance(chn.store, SQLiteStore) and chn.store._wal is not None
        log = chn.store._wal._fd

        def slow_disk(fd: int) -> None:
            if fd == log:
                held.set()
                release.wait(timeout=10)
            real(fd)

        monkeypatch.setattr(os, "fsync", slow_disk)
        rotating = asyncio.create_task(rotate(network, "CHN", 2))
        for _ in range(1000):  # not asyncio.to_thread: the held syncs may occupy every worker thread
            if held.is_set():
                break
            await asyncio.sleep(0.01)
        # The commit that installs version 2 and queues its pushes wakes the outbox worker, which claims the
        # pushes and reads the stored documents meanwhile; none of it may take effect before the disk has it.
        await asyncio.sleep(0.2)
        assert not rotating.done()
        assert chn.trust.own.version == 1 and chn.exchange.signer.keyid == old.keyid
        published = await chn.trust.published(None)
        assert published is not None and Envelope.from_json(published).payload == chn.trust.own.envelope.payload
        release.set()
        await asyncio.wait_for(rotating, 10)
        assert chn.trust.own.version == 2 and chn.exchange.signer.keyid != old.keyid
    finally:
        release.set()
        await network.stop()


def _next_of_chn(pair: Pair, new: Signer) -> bytes:
    """A valid next version of CHN's trust document with ``new`` as its only key, signed by the old and new."""
    trusted = pair.che.core.exchange.partners.get("CHN")
    assert trusted is not None
    document = TrustDocument(
        party="CHN",
        version=trusted.trusted.version + 1,
        expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=90),
        keys={new.public_key.keyid: new.public_key},
        roles={"trust": Role((new.keyid,), 1), "transfer": Role((new.keyid,), 1)},
    )
    return wire.envelope_to_bytes(sign_trust_document(document, [pair.chn.signer, new]))


async def _trusted_and_stored(pair: Pair) -> tuple[bytes, bytes]:
    """The payload of CHN's trust document as CHE trusts it now, and as CHE's store holds its newest."""
    partner = pair.che.core.exchange.partners.get("CHN")
    assert partner is not None
    async with pair.che.store.read() as tx:
        stored = await tx.latest_trust_document("CHN")
    assert stored is not None
    return partner.trusted.envelope.payload, Envelope.from_json(stored[1]).payload


@pytest.mark.asyncio
async def test_two_different_next_versions_pushed_at_once_one_is_trusted_and_the_other_refused(pair: Pair) -> None:
    first, second = _next_of_chn(pair, CryptoSigner.generate()), _next_of_chn(pair, CryptoSigner.generate())
    receipts = await asyncio.gather(deliver_raw(pair.che, first), deliver_raw(pair.che, second))
    verdicts = sorted((ResponseCode(r.code), r.taken_in) for r in receipts)
    assert verdicts == [(ResponseCode.OK, True), (ResponseCode.TRUST_UPDATE_REFUSED, False)], receipts
    trusted, stored = await _trusted_and_stored(pair)
    assert trusted == stored
    accepted = first if ResponseCode(receipts[0].code) is ResponseCode.OK else second
    assert trusted == wire.envelope_from_bytes(accepted).payload


@pytest.mark.asyncio
async def test_a_next_version_differing_from_the_one_stored_but_not_yet_taken_up_is_refused(pair: Pair) -> None:
    """As when another replica took a version in and this one has not read it yet: the store decides."""
    stored_first, pushed = _next_of_chn(pair, CryptoSigner.generate()), _next_of_chn(pair, CryptoSigner.generate())
    envelope = wire.envelope_from_bytes(stored_first)
    async with pair.che.store.transaction() as tx:
        await tx.put_trust_document("CHN", 2, envelope.to_json(), dt.datetime.now(dt.UTC))
    receipt = await deliver_raw(pair.che, pushed)
    assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.TRUST_UPDATE_REFUSED, False), receipt
    trusted, stored = await _trusted_and_stored(pair)
    assert stored == envelope.payload
    assert trusted != wire.envelope_from_bytes(pushed).payload
    again = await deliver_raw(pair.che, stored_first)
    assert (ResponseCode(again.code), again.taken_in) == (ResponseCode.OK, True), again.detail
    assert "already trusted" in again.detail
    assert await _trusted_and_stored(pair) == (envelope.payload, envelope.payload)


@pytest.mark.sqlite_only(reason="the fetch is the subject, not the store")
@pytest.mark.asyncio
async def test_a_refresh_takes_a_few_versions_at_a_time_and_refuses_a_silent_or_endless_publisher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trust_module, "TRUST_VERSIONS_AT_ONCE", 4)
    monkeypatch.setattr(trust_module, "TRUST_FETCH_SECONDS", 1.0)
    network = await start_network(tmp_path, ("CHN", "CHE"), http=True)
    hostile = aiohttp.web.Application()
    cap = 4 * network["CHE"].exchange.settings.max_envelope_bytes + 4096

    released = asyncio.Event()

    async def silent(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        await released.wait()  # until the test ends: the refresh must give up first
        return aiohttp.web.Response(status=404)

    async def endless(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse()  # chunked: no length announced
        await response.prepare(request)
        for _ in range(cap // 65536 + 2):
            await response.write(b" " * 65536)
        return response

    a_document = network.trust["CHN"].to_json()  # well formed; checked only once all are fetched

    async def slow(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        await asyncio.sleep(0.4)  # each version in time, all of them not
        return aiohttp.web.Response(body=a_document)

    async def bulky(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.Response(body=b" " * (cap // 3) + a_document)  # each under the cap, not together

    for name, handler in (("silent", silent), ("endless", endless), ("slow", slow), ("bulky", bulky)):
        hostile.router.add_get(f"/{name}/{{path:.*}}", handler)
    runner = aiohttp.web.AppRunner(hostile)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        che = network["CHE"]
        for kind, code, said in (
            ("silent", ResponseCode.INTERNAL_ERROR, "did not arrive within 1 s"),
            ("endless", ResponseCode.ENVELOPE_TOO_LARGE, f"more than the {cap:,} bytes left"),
            ("slow", ResponseCode.INTERNAL_ERROR, "did not arrive within 1 s"),
            ("bulky", ResponseCode.ENVELOPE_TOO_LARGE, "bytes left of the trust documents one refresh reads"),
        ):
            with pytest.raises(GatewayError) as refused:
                await che.trust.refresh("CHN", f"http://127.0.0.1:{port}/{kind}")
            assert refused.value.code is code and said in refused.value.message, kind
            assert refused.value.field == "party", kind
        # Versions 2 to 6 published: four at a time, then the last.
        signers = [network.signers["CHN"], *(CryptoSigner.generate() for _ in range(5))]
        async with network["CHN"].store.transaction() as tx:
            for version in (2, 3, 4, 5, 6):
                document = next_document(network, "CHN", version, signers[version - 1])
                envelope = sign_trust_document(document, signers[version - 2 : version])
                await tx.put_trust_document("CHN", version, envelope.to_json(), dt.datetime.now(dt.UTC))
        assert (await che.trust.refresh("CHN", network["CHN"].http_url)).version == 5
        assert (await che.trust.refresh("CHN", network["CHN"].http_url)).version == 6
        assert (await che.trust.refresh("CHN", network["CHN"].http_url)).version == 6
    finally:
        released.set()
        await runner.cleanup()
        await network.stop()


@pytest.mark.sqlite_only(reason="the fetch is the subject, not the store")
@pytest.mark.asyncio
async def test_a_refresh_from_a_failing_or_hostile_publisher_names_the_party_and_says_what_failed(
    tmp_path: Path,
) -> None:
    """The partner is configured: a publisher that cannot be read (a refused connection, HTTP 500, endless
    redirects) is a transport failure to call again about later (UNAVAILABLE, INTERNAL_ERROR), and documents it
    serves that are refused are the partner's to correct (FAILED_PRECONDITION); every refusal names `party`,
    and its message the URL and the failure in words, never a Python object."""
    network = await start_network(tmp_path, ("CHN", "CHE"), http=True)
    che = network["CHE"]
    cap = 4 * che.exchange.settings.max_envelope_bytes + 4096
    old, new = network.signers["CHN"], CryptoSigner.generate()
    document = next_document(network, "CHN", 2, new)
    expired = dataclasses.replace(document, expires=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    served = {
        "garbled": b"\xff\xfe{}",
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "huge-number": b'{"payload": ' + b"9" * 100_000 + b"}",
        "bulky": b" " * (cap + 1),
        "forged": sign_trust_document(document, [CryptoSigner.generate(), new]).to_json(),
        "expired": sign_trust_document(expired, [old, new]).to_json(),
    }

    async def hostile(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        kind, version = request.match_info["kind"], request.match_info["version"]
        if kind == "failing":
            return aiohttp.web.Response(status=500, text="the publisher is down")
        if kind == "looping":
            raise aiohttp.web.HTTPFound(request.path)
        if version != "2":
            return aiohttp.web.Response(status=404)
        return aiohttp.web.Response(body=served[kind])

    app = aiohttp.web.Application()
    app.router.add_get("/{kind}/.well-known/carbon-gateway/trust/{version}.json", hostile)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    closed = socket.socket()  # bound and never listening: connections to it are refused
    closed.bind(("127.0.0.1", 0))
    unavailable, refused = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION
    cases = [
        (f"http://127.0.0.1:{closed.getsockname()[1]}", unavailable, ResponseCode.INTERNAL_ERROR, "refused"),
        (f"https://127.0.0.1:{closed.getsockname()[1]}", unavailable, ResponseCode.INTERNAL_ERROR, "refused"),
        (f"http://127.0.0.1:{port}/failing", unavailable, ResponseCode.INTERNAL_ERROR, "HTTP 500"),
        (f"http://127.0.0.1:{port}/looping", unavailable, ResponseCode.INTERNAL_ERROR, "redirect"),
        (f"http://127.0.0.1:{port}/garbled", refused, ResponseCode.MALFORMED_PAYLOAD, "UTF-8"),
        (f"http://127.0.0.1:{port}/deep", refused, ResponseCode.MALFORMED_PAYLOAD, "JSON"),
        (f"http://127.0.0.1:{port}/huge-number", refused, ResponseCode.MALFORMED_PAYLOAD, "digits"),
        (f"http://127.0.0.1:{port}/bulky", refused, ResponseCode.ENVELOPE_TOO_LARGE, "bytes"),
        (f"http://127.0.0.1:{port}/forged", refused, ResponseCode.TRUST_UPDATE_REFUSED, "not signed"),
        (f"http://127.0.0.1:{port}/expired", refused, ResponseCode.TRUST_DOCUMENT_EXPIRED, "expired"),
    ]
    partner = che.partners.get("CHN")
    assert partner is not None
    che.trust.ssl_context = ssl.create_default_context()  # as with [tls]: aiohttp's text then shows its repr
    try:
        async with operator(che) as stub:
            for url, status, code, said in cases:
                partner.http_url = url
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.RefreshPartnerTrust(operator_pb2.RefreshPartnerTrustRequest(party="CHN"))
                detail = read_error_detail(caught.value.trailing_metadata())
                assert detail is not None
                got = (caught.value.code(), ResponseCode(detail.code), detail.field)
                assert got == (status, code, "party"), (url, detail.message)
                assert url in detail.message and said in detail.message, (url, detail.message)
                assert " object at 0x" not in detail.message + str(caught.value.details()), detail.message
            assert (await stub.ListTrust(operator_pb2.ListTrustRequest())).partners[0].version == 1
    finally:
        closed.close()
        await runner.cleanup()
        await network.stop()


class _TokenOutOfReach:
    """A signer whose key is there (its keyid known) but that cannot sign while ``away``, as a PKCS#11 signer
    whose token is out of reach."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self.away = False

    @property
    def public_key(self) -> PublicKey:
        return self._signer.public_key

    @property
    def keyid(self) -> str:
        return self._signer.keyid

    def sign(self, data: bytes) -> bytes:
        if self.away:
            raise SignerError("the PKCS#11 session for token 'che-gw' was lost and cannot be reopened now")
        return self._signer.sign(data)


def _che_key(tmp_path: Path) -> Signer:
    """A new file key for CHE, to wrap in a signer that fails on demand."""
    generate_key(tmp_path / "che-key")
    return signer_from_uri(f"file:{tmp_path / 'che-key'}.key")


async def _status_query_to_che(network: Network) -> tuple[ChannelState, bytes]:
    """CHE's incoming channel from CHN, and the envelope of CHN's next statement on it (a status query)."""
    async with network["CHE"].store.read() as tx:
        channel = await tx.incoming_channel("CHN")
    crafter = Crafter(signer=network.signers["CHN"], sender="CHN", receiver="CHE", channel=channel)
    payload, _ = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id=str(uuid.uuid4())))
    return channel, wire.envelope_to_bytes(crafter.envelope(payload))


@pytest.mark.sqlite_only(reason="the transports' answers are the subject, not the store")
@pytest.mark.asyncio
async def test_a_receiver_whose_signer_cannot_sign_answers_unavailable_and_takes_the_statement_once_back(
    tmp_path: Path,
) -> None:
    # A receipt this gateway cannot sign used to escape as a gRPC UNKNOWN (with the token's name) and an HTTP 500.
    token = _TokenOutOfReach(_che_key(tmp_path))
    network = await start_network(tmp_path / "net", ("CHN", "CHE"), http=True, signers={"CHE": token})
    che = network["CHE"]
    try:
        channel, statement = await _status_query_to_che(network)
        token.away = True
        for envelope in (statement, b"not an envelope"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await deliver_raw(che, envelope)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
            assert "cannot sign receipts now" in str(caught.value.details())
            assert "che-gw" not in str(caught.value.details())  # the token's name stays in the log
        batch = partner_pb2.DeliveryBatch(envelopes=[statement]).SerializeToString()
        async with grpc.aio.insecure_channel(che.partner_address) as grpc_channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await grpc_channel.unary_unary(DELIVER_BATCH_METHOD, None, None)(batch, timeout=10)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
        async with (
            aiohttp.ClientSession() as session,
            session.post(che.http_url + DELIVER_PATH, data=b"{}") as response,
        ):
            assert response.status == 503, await response.text()
            assert response.headers["Retry-After"].isdigit()
        async with che.store.read() as tx:
            assert (await tx.incoming_channel("CHN")) == channel  # nothing was taken in without its receipt
        token.away = False
        receipt = await deliver_raw(che, statement)
        assert receipt.taken_in and ResponseCode(receipt.code) is not ResponseCode.INTERNAL_ERROR, receipt.detail
        async with che.store.read() as tx:
            assert (await tx.incoming_channel("CHN")).last_sequence == channel.last_sequence + 1
    finally:
        await network.stop()


class _SignerWithABug(_TokenOutOfReach):
    """A signer whose code fails with a bug, not a `SignerError`, while ``away``."""

    def sign(self, data: bytes) -> bytes:
        if self.away:
            raise TypeError("object of type 'NoneType' has no len()")
        return self._signer.sign(data)


@pytest.mark.sqlite_only(reason="the log of the receiver is the subject, not the store")
@pytest.mark.asyncio
async def test_a_bug_in_signing_a_receipt_is_logged_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A signer that cannot sign now (SignerError) is one line; any other exception is a bug, which must leave its
    # traceback in the log, or nobody can find it while every delivery is answered "send again later".
    signer = _SignerWithABug(_che_key(tmp_path))
    network = await start_network(tmp_path / "net", ("CHN", "CHE"), signers={"CHE": signer})
    che = network["CHE"]
    try:
        _, statement = await _status_query_to_che(network)
        signer.away = True
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await deliver_raw(che, statement)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
        said = [r for r in caplog.records if "could not sign a receipt" in r.getMessage()]
        assert said and all(r.exc_info is not None for r in said), [r.getMessage() for r in said]
    finally:
        await network.stop()


@pytest.mark.sqlite_only(reason="the operator API's answer is the subject, not the store")
@pytest.mark.asyncio
async def test_a_proposal_made_while_the_signer_cannot_sign_is_queued_and_sent_once_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Checking that a proposal fits the partner's cap signed a probe with the signer, so the first proposal after
    # a start failed INTERNAL while the token was out of reach, although the outbox would have sent it later. The
    # outbox then logged each attempt it could not sign with a traceback, as for a bug.
    prefix = tmp_path / "chn-key"
    generate_key(prefix, Algorithm.ECDSA_P256_SHA256)
    token = _TokenOutOfReach(signer_from_uri(f"file:{prefix}.key"))
    network = await start_network(tmp_path / "net", ("CHN", "CHE"), signers={"CHN": token})
    pair = Pair(chn=network["CHN"], che=network["CHE"])
    try:
        block = await setup_accounts(pair)
        token.away = True
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "while-away"))
            for _ in range(100):
                unsigned = [r for r in caplog.records if r.name == "gateway.outbox" and "cannot sign" in r.message]
                if unsigned:
                    break
                await asyncio.sleep(0.05)
            assert unsigned and unsigned[0].exc_info is None, [r.getMessage() for r in caplog.records]
            assert "token 'che-gw'" in unsigned[0].getMessage() and "retrying" in unsigned[0].getMessage()
            token.away = False
            assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
    finally:
        await network.stop()
