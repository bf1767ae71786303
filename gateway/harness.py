"""Starting several real gateways on loopback, for demos, integration tests and benchmarks.

Each gateway gets its own database (an SQLite file in the work folder, unless `use_databases` chose another
backend: the tests run the same networks on PostgreSQL that way) and key (written as PEM, loaded through a
signer URI), a self-signed trust document, and trusts every other gateway of the network. With ``tls=True`` a
small CA issues each gateway a certificate whose common name is its Party code, and the partner exchange (gRPC
and HTTP) runs over mutual TLS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import TLSConfig
from gateway.domain.nomenclature import DEFAULT_NOMENCLATURE, Nomenclature
from gateway.domain.protocol import ACCEPT_ALL, Deadlines, DecisionPolicy
from gateway.exchange import ExchangeSettings
from gateway.node import GatewayNode, PartnerSpec, utc_now
from gateway.rpc.auth import LOOPBACK_ADMINISTRATOR
from gateway.store import open_store
from gateway.usecases.base import DEFAULT_STATUS_QUERY_AFTER, LedgerOptions
from signing import Envelope, Role, Signer, TrustDocument, generate_key, sign_trust_document, signer_from_uri

DatabaseLocator = Callable[[Path, str], Awaitable["str | Path"]]
"""Where a Party's database lives, given the network's work folder: an SQLite path or a database URL."""


async def sqlite_database(workdir: Path, party: str) -> str | Path:
    """The default: ``<party>.db`` in the work folder."""
    return workdir / f"{party.lower()}.db"


_locator: DatabaseLocator = sqlite_database


def use_databases(locator: DatabaseLocator | None) -> None:
    """Make `start_network` and `database_location` place every database with ``locator`` (None: SQLite files)."""
    global _locator
    _locator = locator or sqlite_database


async def database_location(workdir: Path, party: str) -> str | Path:
    """Where ``party``'s database of the network in ``workdir`` lives (the same on every call)."""
    return await _locator(workdir, party)


def self_signed_trust_document(
    party: str, signer: Signer, *, version: int = 1, days: int = 365, now: dt.datetime | None = None
) -> Envelope:
    """A trust document in which one key holds both the ``trust`` and the ``transfer`` role, signed by it."""
    key = signer.public_key
    document = TrustDocument(
        party=party,
        version=version,
        expires=(now or utc_now()) + dt.timedelta(days=days),
        keys={key.keyid: key},
        roles={"trust": Role((key.keyid,), 1), "transfer": Role((key.keyid,), 1)},
    )
    return sign_trust_document(document, [signer])


@dataclass
class Network:
    """Running gateways that trust each other, by Party code."""

    workdir: Path
    nodes: dict[str, GatewayNode] = field(default_factory=dict)
    signers: dict[str, Signer] = field(default_factory=dict)
    trust: dict[str, Envelope] = field(default_factory=dict)
    replicas: dict[str, list[GatewayNode]] = field(default_factory=dict)
    """Further gateways of a Party that share its database (`add_replica`), by Party code."""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The arguments each Party's gateway was made with, for its replicas."""

    def __getitem__(self, party: str) -> GatewayNode:
        return self.nodes[party]

    def configure_signer(self, party: str, name: str, signer: Signer) -> None:
        """Make ``signer`` available to ``party``'s gateway under ``name``, as ``[signers]`` in a configuration
        does, so that `RotateTrustDocument` can switch to it."""
        self.nodes[party].core.signers[name] = signer

    def connect(self) -> None:
        """Point every gateway at every other gateway's bound addresses."""
        for node in self.nodes.values():
            for party, partner in node.partners.parties().items():
                other = self.nodes.get(party)
                if other is not None:
                    partner.address = other.partner_address
                    partner.http_url = other.http_url

    async def add_replica(self, party: str) -> GatewayNode:
        """Start another gateway of ``party`` on the same database (its location from `database_location`,
        which must be a server's: one SQLite file has one process) with the same key and trust."""
        location = await database_location(self.workdir, party)
        node = GatewayNode(store=await open_store(location), **self.options[party])
        try:
            await node.start()
        except BaseException:
            await node.stop()
            raise
        self.replicas.setdefault(party, []).append(node)
        for other in self.nodes.values():
            spec = node.partners.parties().get(other.party)
            if spec is not None:
                spec.address = other.partner_address
                spec.http_url = other.http_url
        return node

    async def stop(self) -> None:
        """Stop every gateway."""
        nodes = [*self.nodes.values(), *(n for replicas in self.replicas.values() for n in replicas)]
        await asyncio.gather(*(node.stop() for node in nodes))


def tls_config(workdir: Path, party: str) -> TLSConfig:
    """The certificate files `start_network` writes for ``party``."""
    folder = workdir / "tls"
    return TLSConfig(
        certificate=folder / f"{party.lower()}.crt",
        private_key=folder / f"{party.lower()}.key",
        ca_certificate=folder / "ca.crt",
    )


async def start_network(
    workdir: Path,
    parties: Sequence[str] = ("CHN", "CHE"),
    *,
    policy: DecisionPolicy = ACCEPT_ALL,
    tls: bool = False,
    http: bool = False,
    signers: Mapping[str, Signer] | None = None,
    trust: Mapping[str, Envelope] | None = None,
    settings: Callable[[str], ExchangeSettings] = lambda party: ExchangeSettings(self_party=party),
    deadlines: Deadlines | None = None,
    clock: Callable[[], dt.datetime] = utc_now,
    status_query_after: dt.timedelta = DEFAULT_STATUS_QUERY_AFTER,
    nomenclature: Nomenclature = DEFAULT_NOMENCLATURE,
    ledger: Callable[[str], LedgerOptions] = lambda party: LedgerOptions(),
) -> Network:
    """Start gateways for ``parties`` on loopback port 0; each trusts all the others."""
    workdir.mkdir(parents=True, exist_ok=True)
    network = Network(workdir)
    for party in parties:
        if signers and party in signers:
            network.signers[party] = signers[party]
        else:
            prefix = workdir / party.lower()
            generate_key(prefix)
            network.signers[party] = signer_from_uri(f"file:{prefix}.key")
        network.trust[party] = (trust or {}).get(party) or self_signed_trust_document(party, network.signers[party])
        (workdir / f"{party.lower()}.trust.json").write_bytes(network.trust[party].to_json())
    if tls:
        from gateway.tls import write_gateway_certificates

        write_gateway_certificates(workdir / "tls", list(parties), "carbon-gateway test CA", 30)
    for party in parties:
        network.options[party] = dict(
            party=party,
            signer=network.signers[party],
            own_trust=network.trust[party],
            partners=[
                PartnerSpec(party=other, address="127.0.0.1:0", trust_envelope=network.trust[other])
                for other in parties
                if other != party
            ],
            operator_access=LOOPBACK_ADMINISTRATOR,
            policy=policy,
            http_listen="127.0.0.1:0" if http else None,
            tls=tls_config(workdir, party) if tls else None,
            settings=settings(party),
            deadlines=deadlines,
            clock=clock,
            signers={"default": network.signers[party]},
            status_query_after=status_query_after,
            nomenclature=nomenclature,
            ledger_options=ledger(party),
        )
        network.nodes[party] = GatewayNode(
            store=await open_store(await database_location(workdir, party)), **network.options[party]
        )
    try:
        for node in network.nodes.values():
            await node.start()
    except BaseException:
        await network.stop()
        raise
    network.connect()
    return network
