"""The simulated world: gateways, a clock, a network that drops, duplicates, delays and reorders, and crashes.

Everything random comes from one `random.Random` seeded by the run, so a seed replays exactly: keys, IDs,
the network's faults and the operators' actions. The gateways are real `gateway.core.GatewayCore` objects with
real SQLite files; only the transport, the clock and the ID generator are the simulation's.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from carbon_gateway.v1 import operator_pb2
from gateway.core import GatewayCore, PartnerSpec
from gateway.demo import DEMO_LEDGER
from gateway.domain.errors import GatewayError
from gateway.domain.nomenclature import IssuingRegistry, Nomenclature
from gateway.domain.protocol import Deadlines, DecisionPolicy, DecisionRule, Verdict
from gateway.domain.reconciliation import DifferenceKind
from gateway.domain.records import Authorization
from gateway.domain.statements import TimeWindow
from gateway.exchange import EnvelopeForm, ExchangeSettings
from gateway.harness import self_signed_trust_document
from gateway.outbox import Backoff, TransportError
from gateway.partners import PartnerDirectory
from gateway.rpc.operator import OperatorService
from gateway.service import Gateway
from gateway.store.base import CommitSignal, Transaction
from gateway.store.sqlite import SQLiteStore
from signing import CryptoSigner, Envelope

PARTIES = ("CHN", "CHE", "SGP")
"""The honest gateways: three, so that units travel onward and come back."""
ADVERSARY = "EVL"
"""A partner every gateway trusts, played by the simulation, that sends only double counts and poison."""

NOMENCLATURE = Nomenclature.of(
    (
        IssuingRegistry(code="CN-CCER", unit_kinds=("CCER",), party="CHN"),
        IssuingRegistry(code="CN-CEA", unit_kinds=("CEA",), party="CHN"),
        IssuingRegistry(code="CH-SIM", unit_kinds=("CHU",), party="CHE"),
        IssuingRegistry(code="SG-SIM", unit_kinds=("SGU",), party="SGP"),
        IssuingRegistry(code="XX-SIM", unit_kinds=("XXU",), issuance_pattern=r"I[0-9]{1,3}"),
    )
)
"""Test codes: the simulation's own serial spaces, one per Party, and one outside the network whose serials
restart per issuance (its units are registered and held, but never enter the ledger: they are no ITMO serials)."""

OWN_SPACES: dict[str, tuple[tuple[str, str], ...]] = {
    "CHN": (("CCER", "CN-CCER"), ("CEA", "CN-CEA")),
    "CHE": (("CHU", "CH-SIM"),),
    "SGP": (("SGU", "SG-SIM"),),
}

AUTHORIZATIONS: dict[str, tuple[tuple[str, ...], str, int]] = {
    "AUTH": (("NDC",), "First international transfer", 6000),
    "AUTH-LATER": (("NDC",), "First international transfer", 6000),
    "AUTH-UC": (("OIMP",), "Use or Cancellation", 4000),
    "AUTH-ISS": (("NDC", "OIMP"), "Issuance", 4000),
}
"""Each issuing Party's authorizations, by ID suffix (``CHN-AUTH``, ...): purposes, first-transfer definition and
authorized quantity. Every gateway registers every Party's, so that onward transfers, uses and cancellations can
name them. ``AUTH-LATER`` is dated after the simulation's days: nothing may act under it. The first international
transfer is the definition for NDC use alone; authorizations for other purposes define another
(``AUTH-UC``, ``AUTH-ISS``)."""

START = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DEADLINES = Deadlines(hold=dt.timedelta(minutes=40), decision=dt.timedelta(minutes=90))
STATUS_QUERY_AFTER = dt.timedelta(minutes=8)
MESSAGE_LIFETIME = dt.timedelta(minutes=3)
WINDOW = TimeWindow(clock_skew=dt.timedelta(minutes=1), max_lifetime=dt.timedelta(hours=1))


class SimCrash(BaseException):
    """A simulated process death at a store commit: nothing catches it but the simulation."""


class SimAbort(Exception):
    """An operator call that ended with a gRPC status."""

    def __init__(self, code: Any, details: str, metadata: tuple[tuple[str, bytes], ...]) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        self.metadata = metadata


class SimContext:
    """The part of a gRPC servicer context the operator service uses."""

    def __init__(self) -> None:
        self.metadata: tuple[tuple[str, bytes], ...] = ()

    def set_trailing_metadata(self, metadata: tuple[tuple[str, bytes], ...]) -> None:
        self.metadata = metadata

    async def abort(self, code: Any, details: str = "") -> None:
        raise SimAbort(code, details, self.metadata)


class SimClock:
    """The one clock every simulated gateway reads."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Faults:
    """How often each fault happens, per delivery or per commit."""

    drop: float = 0.08
    lose_receipt: float = 0.06
    duplicate: float = 0.06
    delay: float = 0.06
    crash_before_commit: float = 0.004
    crash_after_commit: float = 0.004

    @classmethod
    def none(cls) -> Faults:
        return cls(0, 0, 0, 0, 0, 0)


def uuid_from(rng: random.Random) -> str:
    """A version-4 UUID drawn from ``rng``."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def signer_from(rng: random.Random) -> CryptoSigner:
    """An Ed25519 signer whose key is drawn from ``rng``."""
    return CryptoSigner(ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)))


class CrashingStore:
    """A store that dies at a commit, before or after it, when the world says so."""

    def __init__(self, inner: SQLiteStore, world: World, party: str) -> None:
        self.inner = inner
        self.world = world
        self.party = party

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[Transaction]:
        async with self.inner.transaction(durable=durable) as tx:
            yield tx
            if self.world.crash_now(self.party, self.world.faults.crash_before_commit):
                raise SimCrash(f"{self.party} died before a commit")
        if self.world.crash_now(self.party, self.world.faults.crash_after_commit):
            raise SimCrash(f"{self.party} died after a commit")

    def read(self) -> Any:
        return self.inner.read()

    def synced_once(self) -> Any:
        return self.inner.synced_once()

    @property
    def shared(self) -> bool:
        return self.inner.shared

    @property
    def commits(self) -> CommitSignal:
        return self.inner.commits

    @property
    def enqueued(self) -> CommitSignal:
        return self.inner.enqueued

    def is_transient(self, error: BaseException) -> bool:
        return self.inner.is_transient(error)

    async def close(self) -> None:
        await self.inner.close()


class SimTransport:
    """One gateway's view of the simulated network."""

    def __init__(self, world: World, sender: str, partners: PartnerDirectory) -> None:
        self.world = world
        self.sender = sender
        self.partners = partners

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        return await self.world.network_deliver(self.sender, party, envelope)


@dataclass
class Node:
    """One honest gateway as the simulation keeps it across restarts."""

    party: str
    folder: Path
    signers: dict[str, CryptoSigner]
    signer_name: str
    trust: Envelope
    policy: DecisionPolicy
    core: GatewayCore | None = None
    service: OperatorService | None = None
    crashed: bool = False

    @property
    def signer(self) -> CryptoSigner:
        return self.signers[self.signer_name]


CORRUPTING_SEEDS = 4
"""One seed in this many (those with ``seed % CORRUPTING_SEEDS == CORRUPTING_SEEDS - 1``: 3, 7, 11, ...) may
corrupt a gateway's ledger behind its back; every other seed keeps all gateways honest, so that most seeds test
that reconciliation between honest gateways finds nothing."""

Identity = tuple[str, str, str, int]
"""What names a reconciled block on both sides: serial space and first serial (with its transfer ID)."""


@dataclass
class Corruption:
    """One ledger entry the simulation changed behind a gateway's back, and what reconciliation must report."""

    number: int
    party: str
    partner: str
    transfer_id: str
    how: str
    """``end`` (the block's last serial), ``vintage``, ``delete`` (the row) or ``duplicate`` (the row)."""
    identity: Identity
    entry_id: int
    original: dict[str, Any]
    """The row as it was, every stored column (for the repair)."""
    injected: int
    """The world's event number when it was injected (`World.tick`)."""
    step: int
    duplicate_id: int = 0
    """The entry ID of the copy, for ``duplicate``."""
    repaired: int | None = None
    """The event number of its repair, once a resolved run found it and the operator put the row back."""

    def kind(self, requester: str) -> DifferenceKind:
        """The difference a run started by ``requester`` must report for this corruption."""
        if self.how == "end":
            return DifferenceKind.QUANTITY
        if self.how == "vintage":
            return DifferenceKind.VINTAGE
        if self.how == "duplicate":
            return DifferenceKind.ADJUSTED_TWICE
        return DifferenceKind.MISSING_AT_REQUESTER if self.party == requester else DifferenceKind.MISSING_AT_RESPONDER

    def describe(self) -> str:
        kind, registry, issuance, start = self.identity
        return (
            f"corruption {self.number} ({self.how}) of {self.party}'s entry {self.entry_id} for transfer"
            f" {self.transfer_id} with {self.partner}, {kind}/{registry}/{issuance} from {start}, at step {self.step}"
        )


@dataclass
class SimRun:
    """A reconciliation run the simulation started."""

    run_id: str
    requester: str
    partner: str
    started: int
    """The world's event number when it started (`World.tick`)."""
    step: int


@dataclass(frozen=True)
class Version:
    """One version of an authorization as an operator recorded it at one gateway: what it says, and when."""

    party: str
    authorization: Authorization
    recorded_at: dt.datetime
    """The world's clock when the gateway recorded it: from then on, it is in force from its date."""
    step: int


@dataclass
class World:
    """The simulated gateways, network, clock and adversary of one seed."""

    seed: int
    folder: Path
    rng: random.Random
    faults: Faults = field(default_factory=Faults)
    clock: SimClock = field(default_factory=SimClock)
    nodes: dict[str, Node] = field(default_factory=dict)
    adversary: CryptoSigner | None = None
    adversary_trust: Envelope | None = None
    down: set[str] = field(default_factory=set)
    cut: set[tuple[str, str]] = field(default_factory=set)
    late: list[tuple[str, str, bytes]] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    to_restart: list[str] = field(default_factory=list)
    issued: dict[tuple[str, str, str], list[tuple[int, int]]] = field(default_factory=dict)
    """The oracle: every range a registry of record issued, by spelling-insensitive serial space."""
    adversary_channels: dict[str, Any] = field(default_factory=dict)
    step: int = -1
    """The step being taken (-1 while setting up, the step count while settling, one more for the settled
    reconciliation round)."""
    events: int = 0
    """A counter that orders the runs started, corruptions injected and repairs made."""
    corrupting: bool = False
    """Whether this seed may corrupt ledgers (see `CORRUPTING_SEEDS`)."""
    corruptions: list[Corruption] = field(default_factory=list)
    runs: dict[str, SimRun] = field(default_factory=dict)
    """The reconciliation runs the simulation started, by run ID."""
    verified: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    """Finished runs the invariants checked: status, and the corruptions the run reported (by number)."""
    frozen_refusals: int = 0
    """Frozen ranges whose held units the operators tried to transfer and cancel (both refused as frozen)."""
    frozen_while_waiting: int = 0
    """Transfers whose units a run froze while they waited, cancelled when their partner accepted them."""
    frozen_seen: dict[str, frozenset[tuple[str, tuple[str, str, str], int, int]]] = field(default_factory=dict)
    """Per gateway, the ranges reconciliation runs kept frozen there at the last check (run, space, serials)."""
    departed_seen: dict[str, set[int]] = field(default_factory=dict)
    """Per gateway, the IDs of the blocks that had left it (debited, transferred, used, cancelled) at the last
    check."""
    versions: dict[tuple[str, str], list[Version]] = field(default_factory=dict)
    """Every version of every authorization each gateway recorded, by gateway and authorization ID, in the
    order recorded (`tests.simulation.actions.amend` adds amendments and revocations)."""

    def __post_init__(self) -> None:
        self.corrupting = self.seed % CORRUPTING_SEEDS == CORRUPTING_SEEDS - 1

    def note(self, line: str) -> None:
        self.trace.append(line)

    def tick(self) -> int:
        """The next event number."""
        self.events += 1
        return self.events

    def corrupted_parties(self) -> set[str]:
        """The gateways whose ledger the simulation ever changed behind their back."""
        return {c.party for c in self.corruptions}

    def record_version(self, party: str, authorization: Authorization) -> None:
        """Note that ``party``'s gateway recorded ``authorization`` (a first version, an amendment or a
        revocation) now."""
        version = Version(party, authorization, self.clock(), self.step)
        self.versions.setdefault((party, authorization.authorization_id), []).append(version)

    def version_on(
        self, party: str, authorization_id: str, on: dt.date, known_at: dt.datetime | None = None
    ) -> Authorization | None:
        """The version of an authorization in force at ``party`` on ``on``, among the versions it had recorded
        by ``known_at`` (all of them when None); None before its first version, or for an unknown one."""
        found = None
        for version in self.versions.get((party, authorization_id), []):
            if (known_at is None or version.recorded_at <= known_at) and version.authorization.date <= on:
                found = version.authorization
        return found

    def crash_now(self, party: str, probability: float) -> bool:
        return probability > 0 and self.rng.random() < probability

    # building and restarting gateways

    async def start(self) -> None:
        for party in PARTIES:
            signer = signer_from(self.rng)
            trust = self_signed_trust_document(party, signer, days=3650, now=self.clock())
            policy = _policy_for(party)
            self.nodes[party] = Node(party, self.folder / party.lower(), {"v1": signer}, "v1", trust, policy)
            self.nodes[party].folder.mkdir(parents=True, exist_ok=True)
        self.adversary = signer_from(self.rng)
        self.adversary_trust = self_signed_trust_document(ADVERSARY, self.adversary, days=3650, now=self.clock())
        for party in PARTIES:
            await self.open(party)

    async def open(self, party: str) -> None:
        node = self.nodes[party]
        store = CrashingStore(await SQLiteStore.open(node.folder / "gateway.db"), self, party)
        partners = [
            PartnerSpec(party=other, address=other, trust_envelope=self.nodes[other].trust)
            for other in PARTIES
            if other != party
        ]
        assert self.adversary_trust is not None
        partners.append(PartnerSpec(party=ADVERSARY, address=ADVERSARY, trust_envelope=self.adversary_trust))
        ids = random.Random(self.rng.getrandbits(64))
        core = GatewayCore(
            party=party,
            store=store,
            signer=node.signers["v1"],
            own_trust=node.trust,
            partners=partners,
            policy=node.policy,
            transport=lambda directory: SimTransport(self, party, directory),
            settings=ExchangeSettings(self_party=party, window=WINDOW, message_lifetime=MESSAGE_LIFETIME),
            deadlines=DEADLINES,
            clock=self.clock,
            nomenclature=NOMENCLATURE,
            status_query_after=STATUS_QUERY_AFTER,
            signers=dict(node.signers),
            new_id=lambda: uuid_from(ids),
            backoff=Backoff(initial=dt.timedelta(seconds=1), maximum=dt.timedelta(seconds=30)),
            outbox_batch=1,
            ledger_options=DEMO_LEDGER,  # the NDC period uses towards the NDC name a year of
        )
        try:
            await core.load()
        except SimCrash as crash:  # died while starting: it is started again, as a supervisor would
            self.note(f"crash while starting: {crash}")
            await store.close()
            await self.open(party)
            return
        node.core = core
        node.service = OperatorService(core.gateway, core.trust)
        node.crashed = False

    async def restart(self, party: str) -> None:
        node = self.nodes[party]
        if node.core is not None:
            await node.core.store.close()
        node.core = None
        await self.open(party)
        self.note(f"restarted {party}")

    async def restart_crashed(self) -> None:
        while self.to_restart:
            party = self.to_restart.pop(0)
            if self.nodes[party].crashed:
                await self.restart(party)

    def crashed(self, party: str, reason: BaseException) -> None:
        node = self.nodes[party]
        if not node.crashed:
            node.crashed = True
            self.to_restart.append(party)
            self.note(f"crash: {reason}")

    # the network

    async def network_deliver(self, sender: str, receiver: str, envelope: bytes) -> bytes:
        if receiver == ADVERSARY:
            return self.adversary_receipt(sender, envelope)
        if receiver not in self.nodes or self.nodes[receiver].crashed or receiver in self.down:
            raise TransportError(f"{receiver} is down")
        if (sender, receiver) in self.cut:
            raise TransportError(f"the link {sender}->{receiver} is cut")
        roll = self.rng.random()
        faults = self.faults
        if roll < faults.drop:
            raise TransportError("dropped on the way")
        roll -= faults.drop
        if roll < faults.delay:
            self.late.append((sender, receiver, envelope))
            raise TransportError("delayed past the sender's timeout")
        roll -= faults.delay
        receipt = await self.receive(receiver, envelope)
        if roll < faults.duplicate:
            receipt = await self.receive(receiver, envelope)
        elif roll - faults.duplicate < faults.lose_receipt:
            raise TransportError("the receipt was lost")
        return receipt

    async def receive(self, receiver: str, envelope: bytes) -> bytes:
        node = self.nodes[receiver]
        if node.crashed or node.core is None:
            raise TransportError(f"{receiver} is down")
        try:
            received = await node.core.exchange.receive(envelope, form=EnvelopeForm.PROTOBUF)
        except SimCrash as crash:
            self.crashed(receiver, crash)
            raise TransportError(f"{receiver} died while taking a message in") from None
        return received.receipt

    def adversary_receipt(self, sender: str, envelope: bytes) -> bytes:
        """The adversary takes in whatever it is sent, and signs a receipt for it."""
        import hashlib

        from carbon_gateway.v1 import partner_pb2, records_pb2
        from gateway import wire

        assert self.adversary is not None
        parsed = wire.envelope_from_bytes(envelope)
        message_id = ""
        if parsed.payload_type == wire.STATEMENT_PAYLOAD_TYPE:
            statement = partner_pb2.Statement()
            statement.ParseFromString(parsed.payload)
            message_id = statement.header.message_id
        receipt = partner_pb2.Receipt(
            message_id=uuid_from(self.rng),
            sender=ADVERSARY,
            receiver=sender,
            in_reply_to=message_id,
            payload_sha256=hashlib.sha256(parsed.payload).digest(),
            code=records_pb2.OK,
            taken_in=True,
            issued_at=wire.timestamp(self.clock()),
            envelope_sha256=hashlib.sha256(envelope).digest(),
        )
        from signing import sign_envelope

        signed = sign_envelope(wire.RECEIPT_PAYLOAD_TYPE, receipt.SerializeToString(), [self.adversary])
        return wire.envelope_to_bytes(signed)

    async def deliver_late(self, count: int) -> None:
        """Deliver some delayed envelopes now, out of order; their receipts go nowhere."""
        for _ in range(min(count, len(self.late))):
            _sender, receiver, envelope = self.late.pop(self.rng.randrange(len(self.late)))
            with suppress(TransportError):
                await self.receive(receiver, envelope)

    # operator calls

    async def call(self, party: str, method: str, request: Any) -> Any | SimAbort:
        """Call an OperatorService method on ``party`` as its operator would; a refusal is returned.

        When the gateway dies during the call, the operator does what the API asks of it: waits for the
        gateway to come back and retries with the same idempotency key, which returns the first outcome.
        """
        for _ in range(10):
            node = self.nodes[party]
            assert node.service is not None
            try:
                return await getattr(node.service, method)(request, SimContext())
            except SimAbort as refusal:
                return refusal
            except SimCrash as crash:
                self.crashed(party, crash)
                await self.restart_crashed()
        raise AssertionError(f"{party} died on every retry of {method}")

    async def gateway_call(self, party: str, what: str, method: Callable[[Gateway], Awaitable[Any]]) -> Any:
        """Call a use case of ``party``'s gateway directly, as `call` calls the operator service: a refusal
        (`GatewayError`) is returned, and a death during the call is retried once the gateway is back (the
        method must carry the same idempotency key each time)."""
        for _ in range(10):
            node = self.nodes[party]
            assert node.core is not None
            try:
                return await method(node.core.gateway)
            except GatewayError as refusal:
                return refusal
            except SimCrash as crash:
                self.crashed(party, crash)
                await self.restart_crashed()
        raise AssertionError(f"{party} died on every retry of {what}")


def _policy_for(party: str) -> DecisionPolicy:
    """Decision policies that exercise every verdict: SGP holds large proposals for its operator."""
    if party == "SGP":
        return DecisionPolicy(
            (
                DecisionRule(Verdict.REJECT, acquiring_account="SGP-CLOSED"),
                DecisionRule(Verdict.ACCEPT, max_quantity=300),
                DecisionRule(Verdict.HOLD),
            )
        )
    return DecisionPolicy((DecisionRule(Verdict.ACCEPT),))


def accounts_of(party: str) -> list[operator_pb2.OpenAccountRequest]:
    """The accounts each gateway opens: two holding accounts, one it refuses by policy, and the accounts units
    leave circulation into: a retirement, a cancellation and a use account."""
    from carbon_gateway.v1 import records_pb2

    kinds = [
        ("H1", "Party holding"),
        ("H2", "compliance entity"),
        ("CLOSED", "project owner"),
        ("RET", "retirement"),
        ("CAN", "cancellation"),
        ("USE", "use"),
    ]
    return [
        operator_pb2.OpenAccountRequest(
            idempotency_key=f"open-{suffix}",
            account=records_pb2.Account(
                account_id=f"{party}-{suffix}", holder_name=f"{party} {suffix}", account_type=kind
            ),
        )
        for suffix, kind in kinds
    ]


Setter = Callable[[Any], None]
