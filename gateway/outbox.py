"""The outbox worker: delivers statements and trust documents to partners, one at a time per partner.

A statement enters the outbox in the same transaction as the state change that caused it. For each partner
the worker takes the first pending message (trust documents first, then statements in the order they were
queued), seals it (`gateway.exchange.Exchange.seal`: next sequence number, fresh validity window, signature
by the current key), appends the signed envelope to the message log, sends it, verifies the partner's signed
receipt, and acts on it by `gateway.domain.delivery.classify`:

- taken in: the message is delivered and the channel advances to its payload;
- a gap below it: the partner lacks earlier statements, which are sent again from the first missing one;
- a passing failure (no answer, or the partner's ``INTERNAL_ERROR``): retried after an exponential backoff;
- a refusal no retry can cure: the message moves to the dead-letter list, where an operator retries or
  abandons it, and the partner's next message takes its place.

A crash between sending and recording the receipt is harmless: the message is sent again (resealed, with the
same message ID), and the partner answers a message ID it has seen with its stored receipt and no second
effect. Every failure is confined to its message: one message can never stop the worker or another channel.

Replicas. Several processes of one Party may share one PostgreSQL database, each with its own worker. A worker
claims the lane heads it will send in a short transaction (`Transaction.claim_lane_heads`: ``SELECT ... FOR
UPDATE SKIP LOCKED``, then a lease: this worker's replica ID and an expiry), seals and sends outside it, and
records the result only while it still holds the lease, releasing it in the same transaction. A lane's later
messages wait behind its leased head, so a channel's sequence numbers stay in order whichever replica sends.
A lease outlives a send (the transport's timeout), so it expires only when its holder died or stalled; then
another replica takes the message over and sends it again, which the partner answers from its stored receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from carbon_gateway.v1 import partner_pb2
from gateway import faults, wire
from gateway.domain.delivery import Outcome, classify
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.statements import GENESIS_HASH, ChannelState, payload_hash
from gateway.domain.text import escaped, truncate
from gateway.exchange import MAX_BUNDLE_DOCUMENTS, Exchange, Sealed
from gateway.partners import Partner
from gateway.store.base import (
    LogKind,
    OutboxKind,
    OutboxMessage,
    OutboxState,
    Store,
    Transaction,
    database_could_not,
    failure_line,
)
from signing import SignerError

log = logging.getLogger(__name__)


class PartnerTransport(Protocol):
    """Sends an envelope (protobuf form) to a partner and returns its receipt envelope (protobuf form)."""

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        """Deliver; raise `TransportError` when the partner cannot be reached."""
        ...


@runtime_checkable
class BatchTransport(PartnerTransport, Protocol):
    """A transport that also sends several envelopes in one call (``DeliverBatch``)."""

    async def deliver_batch(self, party: str, envelopes: list[bytes]) -> list[bytes]:
        """Deliver in order in one call; return the receipts in the same order. Raise `BatchesUnsupported` when
        the partner cannot take a batch, and `TransportError` when the call failed."""
        ...


class TransportError(Exception):
    """The partner could not be reached or did not answer: a failure of the transport, not of the data."""


class BatchesUnsupported(TransportError):
    """The partner runs a version without ``DeliverBatch``: send it one envelope per call."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff for redelivery."""

    initial: dt.timedelta = dt.timedelta(milliseconds=50)
    maximum: dt.timedelta = dt.timedelta(seconds=30)

    def after(self, attempts: int) -> dt.timedelta:
        """The wait before the next try, after ``attempts`` failed tries."""
        if attempts > 40:
            return self.maximum
        wait: dt.timedelta = self.initial * (2 ** max(attempts - 1, 0))
        return min(wait, self.maximum)


@dataclass(frozen=True)
class _Verdict:
    """What a partner's answer says about one message of a run, read before anything is recorded."""

    message: OutboxMessage
    sealed: Sealed
    channel: ChannelState
    """The outgoing channel the message was sealed on: where its predecessor left it."""
    raw: bytes
    receipt: partner_pb2.Receipt | None
    """None when the answer did not verify or did not answer this message."""
    outcome: Outcome
    code: ResponseCode
    detail: str
    theirs: ChannelState | None
    retry_error: str
    """The error recorded with the message if it is tried again."""


WITHOUT_SIGNER_RETRY = 2.0
"""Seconds between looks at the trust document while this gateway holds none of the signers it lists."""

SHARED_POLL_SECONDS = 1.0
"""The longest a worker on a database shared with replicas waits before it looks at the outbox again: a message
another replica queued wakes this worker only so, and must be sent even when that replica died before it could
send it."""

RELEASE_SECONDS = 5.0
"""The longest a stopping worker waits to end its leases."""

DATABASE_RETRY_SECONDS = 5.0
"""How long the worker waits after the database could not be reached before it tries again."""

SLOW_LANE_SECONDS = 2.0
"""How long a drain waits for the lanes it claimed together before it claims the others again without them: a
partner slower to answer than this holds up its own lane alone."""

MAX_RUN = 64
"""The most messages of one lane sealed and sent together, in one ``DeliverBatch`` call: the protocol's limit."""

DEFAULT_LEASE = dt.timedelta(seconds=30)
"""How long a claimed message is this worker's alone: longer than a send may take (the transport's timeout)."""

EVERY_HEAD = dt.timedelta(days=36525)
"""Ahead of every head's due time: `OutboxWorker._name_lanes_left` reads every lane's head, due or not."""

MAX_LANES_NAMED = 100
"""At most this many lanes of Parties the worker does not know are named at start."""


def replica_id() -> str:
    """An ID no other worker, in this process or another, shares: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class OutboxWorker:
    """Delivers the outbox of one gateway (one replica's share of it, when replicas share a database)."""

    def __init__(
        self,
        *,
        store: Store,
        exchange: Exchange,
        transport: PartnerTransport,
        clock: Callable[[], dt.datetime],
        backoff: Backoff | None = None,
        batch: int = 64,
        run: int = MAX_RUN,
        lease: dt.timedelta = DEFAULT_LEASE,
        replica: str | None = None,
    ) -> None:
        self.store = store
        self.exchange = exchange
        self.transport = transport
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.batch = batch
        self.run = max(1, min(run, MAX_RUN))
        """The most messages of one lane sent in one call."""
        self.lease = lease
        self.replica = replica or replica_id()
        """The owner this worker's leases name."""
        self.before_sending: Callable[[Transaction], Awaitable[Callable[[], object]]] | None = None
        """Called in the transaction that claims a batch: reads a trust document another replica installed
        (`gateway.trust.TrustKeeper.read_stored`), and returns what takes it up, which the worker calls once the
        claim has returned and before the batch is sealed, so that a statement is never signed with a retired
        key, nor with one whose document a crash could still take back."""
        self.may_sign: Callable[[], bool] | None = None
        """Whether this gateway holds a signer its current trust document lists
        (`gateway.trust.TrustKeeper.can_sign`). While it does not, this worker claims and sends nothing, and
        another replica, configured with that signer, sends the lanes."""
        self._wake = asyncio.Event()
        self._due_at: tuple[dt.datetime | None] | None = None
        """When the next message falls due, as the last drain found it; None when it has not looked."""
        self._draining = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.dead_lettered = 0

    def wake(self) -> None:
        """Look at the outbox now (called after a transaction that enqueued a message commits)."""
        self._wake.set()

    def start(self) -> None:
        """Run the worker in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox")

    async def stop(self) -> None:
        """Stop the worker; a delivery in flight is abandoned and retried at the next start, or by another
        replica: the leases this worker held end now, not when they run out."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            if self.store.shared:
                try:
                    # Bounded: a database cut off must not keep a stopping gateway.
                    async with asyncio.timeout(RELEASE_SECONDS), self.store.transaction(durable=False) as tx:
                        await tx.release_leases_of(self.replica)
                except Exception as exc:  # the database is gone too: the leases run out on their own
                    log.warning(
                        "the outbox worker could not end its leases as it stopped (%s); they run out",
                        type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                    )

    async def _run(self) -> None:
        # A transaction that queues a message wakes the worker as it commits, before its commit is synced: the
        # claim runs while the disk works, and the seal and the send wait for it (every transaction returns only
        # once what it could read is durable).
        with self.store.enqueued.subscribe() as self._wake:
            await self._name_lanes_left()
            await self._serve()

    async def _name_lanes_left(self) -> None:
        """Warn once, at start, of each Party with pending messages that this worker leaves alone (`_lanes`)."""
        try:
            async with self.store.read() as tx:
                heads = await tx.lane_heads(self.clock() + EVERY_HEAD, MAX_LANES_NAMED + len(self._lanes()))
        except Exception as exc:
            # A warning only: whatever stops it must not stop the worker, whose first claim says why if it lasts.
            if not database_could_not(self.store, exc):
                log.exception("could not look for messages to Parties this gateway does not know")
            return
        for head in heads:
            if head.receiver not in self._lanes():
                log.warning(
                    "messages to %s wait in the outbox, but this gateway's [[partners]] do not name that Party:"
                    " they wait for a gateway of this Party that does (ListOutbox shows them)",
                    escaped(head.receiver),
                )

    async def _serve(self) -> None:
        while True:
            self._wake.clear()
            try:
                if self.may_sign is not None and not self.may_sign():
                    wait = WITHOUT_SIGNER_RETRY  # the trust keeper takes up stored documents meanwhile
                else:
                    self._due_at = None
                    await self.drain()
                    wait = await self._next_due_in()
                    if self.store.shared:
                        wait = min(wait, SHARED_POLL_SECONDS)
            except Exception as exc:
                if database_could_not(self.store, exc):
                    # The database, not the worker: no traceback, and a look again soon.
                    log.warning(
                        "the outbox worker could not use the database (%s: %s); trying again in %g s",
                        type(exc).__name__,
                        " ".join(str(exc).split())[:300],
                        DATABASE_RETRY_SECONDS,
                    )
                    wait = DATABASE_RETRY_SECONDS
                else:
                    log.exception("the outbox worker failed; retrying")
                    wait = self.backoff.maximum.total_seconds()
            # Not asyncio.wait_for: before Python 3.12 it can swallow a cancellation that arrives as the wake-up
            # does, and stop() would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _next_due_in(self) -> float:
        if self._due_at is not None:
            # Read by the drain that just ended, in the transaction that found nothing to claim.
            (due,) = self._due_at
        else:
            async with self.store.read() as tx:
                due = await tx.next_due_at(only=self._lanes())
        if due is None:
            return 3600.0
        return max((due - self.clock()).total_seconds(), 0.0)

    async def drain(self) -> int:
        """Deliver every message due now, each partner's lane in order; return how many were delivered.

        Stops when no lane moves: every head is delivered, waiting for its backoff, or dead-lettered.
        """
        async with self._draining:
            return await self._drain()

    async def _drain(self) -> int:
        # Each lane is sent by a task of its own. The lanes claimed together are awaited together for up to
        # `SLOW_LANE_SECONDS`; then the lanes not being sent are claimed again whenever one returns, a wake-up
        # comes (a message was queued) or the earliest of their heads falls due: a partner that answers slowly
        # holds up its own lane, never another's for long. A lane whose send did not move it waits its backoff
        # (its head is not due, or another replica has it), so the drain ends once every lane is idle.
        total = 0
        sending: dict[str, asyncio.Task[list[Outcome]]] = {}
        look = False  # the first claim follows a wake-up or a due time: something is most likely due
        claiming = True
        try:
            while True:
                # Cleared before the claim: a message queued while the claim reads is claimed at its wake-up.
                self._wake.clear()
                runs: list[list[OutboxMessage]] = []
                due: dt.datetime | None = None
                if claiming:
                    try:
                        runs, due = await self._claim(exclude=set(sending), look=look, idle=not sending)
                    except Exception as exc:
                        if not sending:
                            raise
                        # The lanes being sent go on; the claim is tried again when one returns.
                        if database_could_not(self.store, exc):
                            log.warning("claiming the outbox's due messages failed; retrying (%s)", failure_line(exc))
                        else:
                            log.exception("claiming the outbox's due messages failed; retrying")
                        due = self.clock() + self.backoff.maximum
                    look = True
                if runs and self.may_sign is not None and not self.may_sign():
                    # Another replica installed a trust document whose signer this one lacks: it signs nothing.
                    log.error(
                        "the current trust document lists no signer of this gateway: sending nothing; configure its"
                        " signer under [signers] and restart"
                    )
                    async with self.store.transaction(durable=False) as tx:
                        for message in (m for run in runs for m in run):
                            await tx.release_lease(message.outbox_id, self.replica)
                    runs, due, claiming = [], None, False
                if runs:
                    faults.reach("outbox-claimed")  # this replica now holds the leases of ``runs``
                claimed = [asyncio.create_task(self._attempt(run), name=f"outbox-{run[0].receiver}") for run in runs]
                sending.update((run[0].receiver, task) for run, task in zip(runs, claimed, strict=True))
                if not sending:
                    return total
                if claimed:
                    # The lanes claimed together are awaited together while they answer promptly, so that a
                    # drain moves in rounds, the same each time for the same answers; one slower than that
                    # goes on alone, and the others are claimed again meanwhile.
                    await asyncio.wait(claimed, timeout=SLOW_LANE_SECONDS)
                else:
                    wait = None if due is None else max((due - self.clock()).total_seconds(), 0.0)
                    woken = asyncio.ensure_future(self._wake.wait())
                    try:
                        await asyncio.wait(
                            [*sending.values(), woken], timeout=wait, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        woken.cancel()
                for lane, task in list(sending.items()):
                    if task.done():
                        del sending[lane]
                        total += sum(1 for r in task.result() if r is Outcome.DELIVERED)
        finally:
            # Cancelled, or a lane failed beyond its own retry: the lanes still being sent stop, and their leases
            # run out (or this worker's next claim takes them up).
            for task in sending.values():
                task.cancel()
            await asyncio.gather(*sending.values(), return_exceptions=True)

    def _lanes(self) -> Collection[str]:
        """The receivers whose lanes this worker sends: its configured partners. A lane of a Party it does not
        know (a replica configured before a partner was added, or after one was removed) is left to the replicas
        that know it, unclaimed and untouched: claiming it here would only push its head back by a backoff."""
        return self.exchange.partners.parties().keys()

    async def _claim(
        self, *, exclude: set[str], look: bool, idle: bool
    ) -> tuple[list[list[OutboxMessage]], dt.datetime | None]:
        """Claim the due heads of lanes not in ``exclude``, each with the messages that may follow it in one call;
        return the runs, and when nothing was claimed, when the earliest head of those lanes falls due.

        With ``look``, a read first: finding nothing to claim takes no write lock (on PostgreSQL, the
        database's). With ``idle`` (no lane is being sent), finding nothing also records when the next message
        falls due, for the worker's wait."""
        if look:
            if exclude.issuperset(self.exchange.partners.parties()):
                return [], None  # every partner's lane is being sent; one's return claims again
            async with self.store.read() as tx:
                heads = await tx.lane_heads(self.clock(), len(exclude) + 1, only=self._lanes())
                if all(head.receiver in exclude for head in heads):
                    due = await tx.next_due_at(skip=exclude, only=self._lanes())
                    if idle:
                        self._due_at = (due,)
                    return [], due
        now = self.clock()
        until = now + self.lease
        take_up: Callable[[], object] | None = None
        due = None
        async with self.store.transaction(durable=False) as tx:
            heads = await tx.claim_lane_heads(
                now, self.batch, owner=self.replica, until=until, skip=exclude, only=self._lanes()
            )
            runs = [
                [head, *await tx.claim_followers(head, self.run - 1, now=now, owner=self.replica, until=until)]
                for head in heads
            ]
            if not runs:
                # Nothing is due, or another replica holds every due head: next_due_at says when that changes.
                due = await tx.next_due_at(skip=exclude, only=self._lanes())
                if idle:
                    self._due_at = (due,)
            elif self.before_sending is not None:
                take_up = await self.before_sending(tx)
        if take_up is not None:
            take_up()  # the claim has returned: what it read is on disk
        return runs, due

    async def _attempt(self, run: list[OutboxMessage]) -> list[Outcome]:
        try:
            return await self._deliver(run)
        except SignerError as exc:
            # Not a bug: the signer's backend (a PKCS#11 token) cannot sign now. One line says why; the lane waits
            # its backoff and is signed afresh when it comes round.
            head = run[0]
            log.error("cannot sign %s to %s: %s; retrying", head.message_id, head.receiver, exc)
            await self._retry(head, ResponseCode.INTERNAL_ERROR, f"this gateway cannot sign: {exc}", following=run[1:])
            return [Outcome.RETRY]
        except Exception as exc:
            # A bug or a store failure while handling this lane: its head waits its backoff, and the others go on.
            head = run[0]
            if database_could_not(self.store, exc):
                # The database went away mid-delivery (a restart, a failover, an ended session): a line, as for the
                # claim, not a traceback for a bug. The partner answers the message again from its receipt.
                log.warning(
                    "delivering %s to %s stopped: the database could not do it now (%s); it goes again",
                    head.message_id,
                    head.receiver,
                    failure_line(exc),
                )
            else:
                log.exception("delivering %s to %s failed", head.message_id, head.receiver)
            await self._retry(head, ResponseCode.INTERNAL_ERROR, f"this gateway failed: {exc!r}", following=run[1:])
            return [Outcome.RETRY]

    async def _exchange(
        self, partner: Partner, sealed_run: list[tuple[OutboxMessage, Sealed, ChannelState]]
    ) -> list[_Verdict]:
        """Send the run in order, in one call where the transport and the partner can; return a verdict per
        message answered. One call after another otherwise, stopping at the first message not delivered (the
        rest would only wait behind it), and once the calls have taken half the lease (the rest go next round)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if len(sealed_run) > 1 and isinstance(self.transport, BatchTransport):
            try:
                receipts = await self.transport.deliver_batch(partner.party, [s.envelope for _, s, _ in sealed_run])
            except BatchesUnsupported:
                pass
            else:
                return [
                    self._verdict(partner, message, sealed, channel, raw)
                    for (message, sealed, channel), raw in zip(sealed_run, receipts, strict=False)
                ]
        verdicts: list[_Verdict] = []
        for message, sealed, channel in sealed_run:
            if verdicts and loop.time() - started > self.lease.total_seconds() / 2:
                # The run is recorded only once its calls are done, while the lease holds: calls to a slow
                # partner must end well within it, or another replica takes the run over and this one's
                # answers are dropped, each replica's in turn. The rest goes in the next round.
                break
            try:
                raw = await self.transport.deliver(partner.party, sealed.envelope)
            except TransportError:
                if not verdicts:
                    raise
                break
            verdicts.append(self._verdict(partner, message, sealed, channel, raw))
            if verdicts[-1].outcome is not Outcome.DELIVERED:
                break
        return verdicts

    async def _seal(
        self, run: list[OutboxMessage], partner: Partner
    ) -> list[tuple[OutboxMessage, Sealed, ChannelState]]:
        """Seal the lane's next messages in one transaction, each on the channel its predecessor leaves: the
        run travels as one batch, no larger than the partner takes in one envelope. Messages that do not fit are
        left for the next round, their leases released."""
        now = self.clock()
        sealed_run: list[tuple[OutboxMessage, Sealed, ChannelState]] = []
        size = 0
        async with self.store.transaction(durable=False) as tx:
            channel = await tx.outgoing_channel(partner.party)
            # A rotation may have queued its document since this run was claimed: the statements would go out
            # signed by a key the partner learns of only from that document. It goes first, at the next claim.
            overtaken = run[0].kind is not OutboxKind.TRUST and await tx.trust_pending(partner.party)
            for message in [] if overtaken else run:
                if not await tx.holds_lease(message.outbox_id, self.replica):
                    break  # taken over by another replica after this one's lease ran out
                if message.kind is OutboxKind.TRUST:
                    own = await tx.trust_documents(self.exchange.settings.self_party)
                    sealed = self.exchange.seal_trust([envelope for _, envelope in own][-MAX_BUNDLE_DOCUMENTS:])
                else:
                    sealed = self.exchange.seal(message, channel, now)
                reused = self.exchange.still_valid(message.sealed, sealed, now)
                if reused is not None:
                    sealed = reused  # the same envelope again: nothing new travels, nothing new is logged
                if sealed_run and size + len(sealed.envelope) > partner.max_envelope_bytes:
                    break
                size += len(sealed.envelope)
                if reused is None:
                    await tx.append_log(
                        direction="out",
                        peer=message.receiver,
                        message_id=message.message_id,
                        kind=LogKind.TRUST if message.kind is OutboxKind.TRUST else LogKind.STATEMENT,
                        form="protobuf",
                        envelope=sealed.envelope,
                        now=now,
                        transfer_id=message.transfer_id,
                    )
                await tx.mark_attempt(message.outbox_id, sealed.sequence, sealed.envelope)
                sealed_run.append((message, sealed, channel))
                if message.kind is not OutboxKind.TRUST:
                    channel = channel.advance(sealed.payload)
            for message in run[len(sealed_run) :]:
                await tx.release_lease(message.outbox_id, self.replica)
        return sealed_run

    async def _deliver(self, run: list[OutboxMessage]) -> list[Outcome]:
        head = run[0]
        partner = self.exchange.partners.get(head.receiver)
        if partner is None:
            await self._retry(
                head, ResponseCode.UNKNOWN_PARTNER, f"no partner {head.receiver!r} is configured", following=run[1:]
            )
            return [Outcome.RETRY]
        sealed_run = await self._seal(run, partner)
        if not sealed_run:
            return [Outcome.RETRY]
        try:
            verdicts = await self._exchange(partner, sealed_run)
        except TransportError as exc:
            await self._retry(head, ResponseCode.OK, str(exc), following=[m for m, _, _ in sealed_run[1:]])
            return [Outcome.RETRY]
        faults.reach("outbox-sent")
        now = self.clock()
        settled: list[tuple[OutboxMessage, Outcome, ResponseCode, str]] = []
        durable = any(v.outcome is not Outcome.DELIVERED for v in verdicts)
        async with self.store.transaction(durable=durable) as tx:
            stored = await tx.outgoing_channel(partner.party)
            for verdict in verdicts:
                outcome, stored = await self._settle(tx, verdict, stored, now)
                settled.append((verdict.message, outcome, verdict.code, verdict.detail))
                if outcome is not Outcome.DELIVERED:
                    break
            # The rest of the run was sent behind a message that was not delivered: the partner has at most held
            # them behind the gap. Their receipts are kept; they go again, resealed, once their head is through.
            for verdict in verdicts[len(settled) :]:
                if verdict.receipt is not None:
                    await self._log_receipt(tx, verdict.message, verdict.raw, now)
            for message, _, _ in sealed_run[len(settled) :]:
                await tx.release_lease(message.outbox_id, self.replica)
        for message, outcome, code, detail in settled:
            self._report(message, outcome, code, detail)
        return [outcome for _, outcome, _, _ in settled]

    def _verdict(
        self, partner: Partner, message: OutboxMessage, sealed: Sealed, channel: ChannelState, raw: bytes
    ) -> _Verdict:
        """What the partner's answer to one message of the run says, before anything is recorded."""
        try:
            receipt = self.exchange.read_receipt(partner, raw, sealed.envelope, message.message_id)
        except GatewayError as exc:
            # An answer that does not verify or does not answer this message is as good as no answer.
            error = f"unusable receipt from {message.receiver}: {exc}"
            return _Verdict(message, sealed, channel, raw, None, Outcome.RETRY, ResponseCode.OK, error, None, error)
        known_code = receipt.code in ResponseCode._value2member_map_
        code = ResponseCode(receipt.code) if known_code else ResponseCode.MALFORMED_PAYLOAD
        theirs = ChannelState(receipt.last_sequence, receipt.last_hash) if len(receipt.last_hash) == 32 else None
        outcome = classify(
            code,
            taken_in=receipt.taken_in,
            resend_from=receipt.resend_from,
            sequence=sealed.sequence,
            behind=theirs is not None and theirs != channel,
        )
        name = code.name if known_code else f"response code {receipt.code}, unknown to this version"
        detail = truncate(f"{name}: {escaped(receipt.detail)}")
        retry_error = f"refused by {message.receiver} for now: {detail}"
        return _Verdict(message, sealed, channel, raw, receipt, outcome, code, detail, theirs, retry_error)

    async def _log_receipt(self, tx: Transaction, message: OutboxMessage, raw: bytes, now: dt.datetime) -> None:
        await tx.append_log(
            direction="in",
            peer=message.receiver,
            message_id=message.message_id,
            kind=LogKind.RECEIPT,
            form="protobuf",
            envelope=raw,
            now=now,
            transfer_id=message.transfer_id,
        )

    async def _settle(
        self, tx: Transaction, verdict: _Verdict, stored: ChannelState, now: dt.datetime
    ) -> tuple[Outcome, ChannelState]:
        """Record one message's outcome (`gateway.domain.delivery.classify`) inside the run's transaction, where
        the outgoing channel is at ``stored``; return the outcome and where the channel is after it."""
        message, sealed, channel, receipt = verdict.message, verdict.sealed, verdict.channel, verdict.receipt
        outcome, code, detail, theirs = verdict.outcome, verdict.code, verdict.detail, verdict.theirs
        if not await tx.holds_lease(message.outbox_id, self.replica):
            # Another replica took the message over and records its own attempt: this one's answer is dropped
            # (the partner took the message in once, whichever attempt it answered).
            log.warning("the lease on %s ran out while it was being sent; another replica has it", message.message_id)
            return Outcome.RETRY, stored
        if receipt is None or outcome is Outcome.RETRY:
            await self._reschedule(tx, message, code, verdict.retry_error, now)
            return Outcome.RETRY, stored
        await tx.release_lease(message.outbox_id, self.replica)
        await self._log_receipt(tx, message, verdict.raw, now)
        if outcome is Outcome.DELIVERED:
            digest = receipt.payload_sha256 or payload_hash(sealed.payload)
            taken_at = await self._taken_at(tx, message, sealed, digest, theirs)
            await tx.mark_delivered(message.outbox_id, digest, now, sequence=taken_at)
            if message.kind is OutboxKind.TRUST:
                await tx.settle_superseded_trust(message.receiver, message.outbox_id, now)
            elif taken_at > stored.last_sequence:
                # Taken in at this attempt, or at an earlier one whose receipt was lost. A message the partner
                # took in before the channel caught up with it leaves the channel where it is.
                stored = ChannelState(taken_at, digest)
                await tx.set_outgoing_channel(message.receiver, stored)
            if self.exchange.on_delivered is not None and code is ResponseCode.OK:
                await self.exchange.on_delivered(tx, message)
        elif outcome is Outcome.CATCH_UP:
            assert theirs is not None
            sent = await tx.highest_sequence_sent(message.receiver)
            if theirs.last_sequence > sent:
                log.critical(
                    "%s has taken in statements from us up to %d, but this gateway's store never sent one beyond"
                    " %d: the store was restored from a backup or replaced. Transfers made after that point"
                    " are unknown here, and units they sent may show as held again. Propose no transfer of"
                    " them until the books are reconciled with every partner",
                    message.receiver,
                    theirs.last_sequence,
                    sent,
                )
            stored = theirs
            await tx.set_outgoing_channel(message.receiver, theirs)
            # At once the first time; a partner that answers every attempt with another place goes at the pace of
            # the backoff, as one that keeps asking for resends does.
            again = message.last_code == ResponseCode.REPLAY
            wait = self.backoff.after(message.attempts + 1) if again else dt.timedelta(0)
            await tx.reschedule(message.outbox_id, code=int(code), error=detail, next_attempt_at=now + wait)
            log.warning(
                "%s has taken in our statements up to %d (we had %d): sending on from there",
                message.receiver,
                theirs.last_sequence,
                channel.last_sequence,
            )
        elif outcome is Outcome.RESEND_FROM:
            resend_from = receipt.resend_from
            previous = (
                GENESIS_HASH if resend_from == 1 else await tx.delivered_digest(message.receiver, resend_from - 1)
            )
            if previous is None:
                outcome = Outcome.DEAD_LETTER
                detail = truncate(
                    f"{detail}; statement {resend_from - 1}, which the resend would chain to, is not in this"
                    " gateway's outbox, so the channel cannot be rebuilt"
                )
            else:
                # At the pace of the backoff: a partner that keeps asking cannot keep this lane busy.
                wait = self.backoff.after(message.attempts + 1)
                count = await tx.requeue_from(message.receiver, resend_from, now + wait)
                await tx.reschedule(message.outbox_id, code=int(code), error=detail, next_attempt_at=now + wait)
                stored = ChannelState(resend_from - 1, previous)
                await tx.set_outgoing_channel(message.receiver, stored)
                log.warning("%s lacks our statements from %d: resending %d", message.receiver, resend_from, count)
        if outcome is Outcome.DEAD_LETTER:
            await tx.settle(message.outbox_id, OutboxState.DEAD, code=receipt.code, error=detail, now=now)
        return outcome, stored

    def _report(self, message: OutboxMessage, outcome: Outcome, code: ResponseCode, detail: str) -> None:
        if outcome is Outcome.DELIVERED:
            self.delivered += 1
            if code is not ResponseCode.OK:
                log.warning(
                    "%s took in %s %s but refused its effect: %s",
                    message.receiver,
                    message.kind,
                    message.message_id,
                    detail,
                )
        elif outcome is Outcome.DEAD_LETTER:
            self.dead_lettered += 1
            log.error(
                "%s refused %s %s for good (%s); it is on the dead-letter list for an operator to retry or abandon",
                message.receiver,
                message.kind,
                message.message_id,
                detail,
            )

    async def _taken_at(
        self, tx: Transaction, message: OutboxMessage, sealed: Sealed, digest: bytes, theirs: ChannelState | None
    ) -> int:
        """The channel sequence at which the partner took ``message`` in: this attempt's, unless the receipt is the
        one the partner kept from an earlier attempt (its digest names that attempt's payload).

        The sender's own log of what it sent is the authority. Where the log no longer holds that attempt (the
        store was restored from a backup), the receipt names the place itself (its ``last_hash`` is the payload's
        digest). Where neither says, 0: the channel stays where it is, and the partner's REPLAY of the next
        statement says where to go on from.
        """
        if message.kind is OutboxKind.TRUST or digest == payload_hash(sealed.payload):
            return sealed.sequence
        for entry in await tx.logged(message.receiver, message.message_id):
            if entry.direction != "out" or entry.kind is not LogKind.STATEMENT:
                continue
            envelope = wire.envelope_from_bytes(entry.envelope)
            if payload_hash(envelope.payload) == digest:
                statement = partner_pb2.Statement()
                statement.ParseFromString(envelope.payload)
                return int(statement.header.sequence)
        if theirs is not None and theirs.last_hash == digest and theirs.last_sequence > 0:
            return theirs.last_sequence
        return 0

    async def _retry(
        self, message: OutboxMessage, code: ResponseCode, error: str, *, following: Sequence[OutboxMessage] = ()
    ) -> None:
        """Reschedule ``message`` after its backoff, and release the leases of the ``following`` messages of its
        run, which wait behind it."""
        async with self.store.transaction(durable=False) as tx:
            for behind in following:
                await tx.release_lease(behind.outbox_id, self.replica)
            if not await tx.holds_lease(message.outbox_id, self.replica):
                return  # another replica has the message now
            await self._reschedule(tx, message, code, error, self.clock())

    async def _reschedule(
        self, tx: Transaction, message: OutboxMessage, code: ResponseCode, error: str, now: dt.datetime
    ) -> None:
        """Inside ``tx``, where this worker holds ``message``'s lease: try it again after its backoff."""
        wait = self.backoff.after(message.attempts + 1)
        log.info("delivery of %s to %s failed (%s); retrying in %s", message.message_id, message.receiver, error, wait)
        await tx.reschedule(message.outbox_id, code=int(code), error=error, next_attempt_at=now + wait)
        await tx.release_lease(message.outbox_id, self.replica)
