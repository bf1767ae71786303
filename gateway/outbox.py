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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from carbon_gateway.v1 import partner_pb2
from gateway import faults, wire
from gateway.domain.delivery import Outcome, classify
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.statements import GENESIS_HASH, ChannelState, payload_hash
from gateway.domain.text import truncate
from gateway.exchange import MAX_BUNDLE_DOCUMENTS, Exchange, Sealed
from gateway.store.base import LogKind, OutboxKind, OutboxMessage, OutboxState, Store, Transaction

log = logging.getLogger(__name__)


class PartnerTransport(Protocol):
    """Sends an envelope (protobuf form) to a partner and returns its receipt envelope (protobuf form)."""

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        """Deliver; raise `TransportError` when the partner cannot be reached."""
        ...


class TransportError(Exception):
    """The partner could not be reached or did not answer: a failure of the transport, not of the data."""


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


DEFAULT_LEASE = dt.timedelta(seconds=30)
"""How long a claimed message is this worker's alone: longer than a send may take (the transport's timeout)."""


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
        lease: dt.timedelta = DEFAULT_LEASE,
        replica: str | None = None,
    ) -> None:
        self.store = store
        self.exchange = exchange
        self.transport = transport
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.batch = batch
        self.lease = lease
        self.replica = replica or replica_id()
        """The owner this worker's leases name."""
        self.before_sending: Callable[[], Awaitable[object]] | None = None
        """Called before each batch it claimed is sealed: takes up a trust document another replica installed
        (`gateway.trust.TrustKeeper.take_up_stored`), so a statement is never signed with a retired key."""
        self._wake = asyncio.Event()
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
        """Stop the worker; a delivery in flight is abandoned and retried at the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.drain()
                wait = await self._next_due_in()
            except Exception:
                log.exception("the outbox worker failed; retrying")
                wait = self.backoff.maximum.total_seconds()
            # Not asyncio.wait_for: before Python 3.12 it can swallow a cancellation that arrives as the wake-up
            # does, and stop() would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _next_due_in(self) -> float:
        async with self.store.read() as tx:
            due = await tx.next_due_at()
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
        total = 0
        while True:
            async with self.store.read() as tx:
                due = await tx.lane_heads(self.clock(), self.batch)
            if not due:
                return total
            now = self.clock()
            async with self.store.transaction(durable=False) as tx:
                heads = await tx.claim_lane_heads(now, self.batch, owner=self.replica, until=now + self.lease)
            if not heads:
                return total  # another replica holds every due head; next_due_at says when its leases end
            faults.reach("outbox-claimed")  # this replica now holds the leases of ``heads``
            if self.before_sending is not None:
                await self.before_sending()
            results = await asyncio.gather(*(self._attempt(m) for m in heads))
            total += sum(1 for r in results if r is Outcome.DELIVERED)
            if not any(r in (Outcome.DELIVERED, Outcome.DEAD_LETTER, Outcome.CATCH_UP) for r in results):
                return total

    async def _attempt(self, message: OutboxMessage) -> Outcome:
        try:
            return await self._deliver(message)
        except Exception as exc:
            # A bug or a store failure while handling this one message: it waits its backoff, and the others go on.
            log.exception("delivering %s to %s failed", message.message_id, message.receiver)
            await self._retry(message, ResponseCode.INTERNAL_ERROR, f"this gateway failed: {exc!r}")
            return Outcome.RETRY

    async def _deliver(self, message: OutboxMessage) -> Outcome:
        partner = self.exchange.partners.get(message.receiver)
        if partner is None:
            await self._retry(message, ResponseCode.UNKNOWN_PARTNER, f"no partner {message.receiver!r} is configured")
            return Outcome.RETRY
        now = self.clock()
        async with self.store.transaction(durable=False) as tx:
            if not await tx.holds_lease(message.outbox_id, self.replica):
                return Outcome.RETRY  # taken over by another replica after this one's lease ran out
            channel = await tx.outgoing_channel(message.receiver)
            if message.kind is OutboxKind.TRUST:
                own = await tx.trust_documents(self.exchange.settings.self_party)
                sealed = self.exchange.seal_trust([envelope for _, envelope in own][-MAX_BUNDLE_DOCUMENTS:])
            else:
                sealed = self.exchange.seal(message, channel, now)
            reused = self.exchange.still_valid(message.sealed, sealed, now)
            if reused is not None:
                sealed = reused  # the same envelope again: nothing new travels, nothing new is logged
            else:
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
        try:
            raw = await self.transport.deliver(message.receiver, sealed.envelope)
        except TransportError as exc:
            await self._retry(message, ResponseCode.OK, str(exc))
            return Outcome.RETRY
        faults.reach("outbox-sent")
        try:
            receipt = self.exchange.read_receipt(partner, raw, sealed.envelope, message.message_id)
        except GatewayError as exc:
            # An answer that does not verify or does not answer this message is as good as no answer.
            await self._retry(message, ResponseCode.OK, f"unusable receipt from {message.receiver}: {exc}")
            return Outcome.RETRY
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
        detail = truncate(f"{name}: {receipt.detail}")
        if outcome is Outcome.RETRY:
            await self._retry(message, code, f"refused by {message.receiver} for now: {detail}")
            return outcome
        now = self.clock()
        async with self.store.transaction(durable=outcome is not Outcome.DELIVERED) as tx:
            if not await tx.holds_lease(message.outbox_id, self.replica):
                # Another replica took the message over and records its own attempt: this one's answer is
                # dropped (the partner took the message in once, whichever attempt it answered).
                log.warning(
                    "the lease on %s ran out while it was being sent; another replica has it", message.message_id
                )
                return Outcome.RETRY
            await tx.release_lease(message.outbox_id, self.replica)
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
            if outcome is Outcome.DELIVERED:
                digest = receipt.payload_sha256 or payload_hash(sealed.payload)
                taken_at = await self._taken_at(tx, message, sealed, digest, theirs)
                await tx.mark_delivered(message.outbox_id, digest, now, sequence=taken_at)
                if message.kind is OutboxKind.TRUST:
                    await tx.settle_superseded_trust(message.receiver, message.outbox_id, now)
                elif taken_at > channel.last_sequence:
                    # Taken in at this attempt, or at an earlier one whose receipt was lost. A message the partner
                    # took in before the channel caught up with it leaves the channel where it is.
                    await tx.set_outgoing_channel(message.receiver, ChannelState(taken_at, digest))
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
                await tx.set_outgoing_channel(message.receiver, theirs)
                await tx.reschedule(message.outbox_id, code=int(code), error=detail, next_attempt_at=now)
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
                    await tx.set_outgoing_channel(message.receiver, ChannelState(resend_from - 1, previous))
                    log.warning("%s lacks our statements from %d: resending %d", message.receiver, resend_from, count)
            if outcome is Outcome.DEAD_LETTER:
                await tx.settle(message.outbox_id, OutboxState.DEAD, code=receipt.code, error=detail, now=now)
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
        return outcome

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

    async def _retry(self, message: OutboxMessage, code: ResponseCode, error: str) -> None:
        wait = self.backoff.after(message.attempts + 1)
        log.info("delivery of %s to %s failed (%s); retrying in %s", message.message_id, message.receiver, error, wait)
        async with self.store.transaction(durable=False) as tx:
            if not await tx.holds_lease(message.outbox_id, self.replica):
                return  # another replica has the message now
            await tx.reschedule(message.outbox_id, code=int(code), error=error, next_attempt_at=self.clock() + wait)
            await tx.release_lease(message.outbox_id, self.replica)
