"""The outbox worker: delivers signed statements to partners in channel order, with retries and backoff.

A statement enters the outbox in the same transaction as the state change that caused it. The worker sends
the head of each channel, verifies the partner's signed receipt, and marks the message delivered in a
transaction of its own. A crash between sending and marking is harmless: the message is sent again, and the
partner answers a message ID it has seen with its stored receipt and no second effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.domain.errors import GatewayError, ResponseCode
from gateway.exchange import Exchange
from gateway.store.base import OutboxMessage, Store

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
        wait: dt.timedelta = self.initial * (2 ** max(attempts - 1, 0))
        return min(wait, self.maximum)


class OutboxWorker:
    """Delivers the outbox of one gateway."""

    def __init__(
        self,
        *,
        store: Store,
        exchange: Exchange,
        transport: PartnerTransport,
        clock: Callable[[], dt.datetime],
        backoff: Backoff | None = None,
        batch: int = 64,
    ) -> None:
        self.store = store
        self.exchange = exchange
        self.transport = transport
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _next_due_in(self) -> float:
        far = self.clock() + dt.timedelta(days=1)
        async with self.store.read() as tx:
            due = await tx.due_messages(far, 1)
        if not due:
            return 3600.0
        return max((due[0].next_attempt_at - self.clock()).total_seconds(), 0.0)

    async def drain(self) -> int:
        """Deliver every message due now, channel by channel in order; return how many were delivered."""
        total = 0
        while True:
            async with self.store.read() as tx:
                due = await tx.due_messages(self.clock(), self.batch)
            if not due:
                return total
            results = await asyncio.gather(*(self._deliver(m) for m in due))
            delivered = sum(results)
            total += delivered
            if delivered == 0:
                return total

    async def _deliver(self, message: OutboxMessage) -> int:
        partner = self.exchange.partners.get(message.receiver)
        if partner is None:
            await self._retry(message, f"no partner {message.receiver!r} is configured")
            return 0
        try:
            raw = await self.transport.deliver(message.receiver, message.envelope)
            receipt = self.exchange.read_receipt(partner, raw, message.envelope)
        except (TransportError, GatewayError) as exc:
            await self._retry(message, str(exc))
            return 0
        code = ResponseCode(receipt.code)
        if code is ResponseCode.SEQUENCE_GAP and receipt.resend_from:
            log.warning("%s lacks our messages from %d: resending", message.receiver, receipt.resend_from)
            async with self.store.transaction() as tx:
                await tx.requeue_from(message.receiver, receipt.resend_from, self.clock())
            return 0
        if code is ResponseCode.MESSAGE_EXPIRED and not receipt.taken_in:
            await self.exchange.reissue(message.receiver)
            await self._retry(message, f"{message.receiver} found it expired; re-dated and re-signed")
            return 0
        if not receipt.taken_in:
            await self._retry(message, f"refused by {message.receiver}: {code.name}: {receipt.detail}")
            return 0
        if code is not ResponseCode.OK:
            log.warning(
                "%s took in message %s but refused its effect: %s: %s",
                message.receiver,
                message.message_id,
                code.name,
                receipt.detail,
            )
        async with self.store.transaction(durable=False) as tx:
            await tx.mark_delivered(message.outbox_id, raw, self.clock())
        self.delivered += 1
        return 1

    async def _retry(self, message: OutboxMessage, error: str) -> None:
        wait = self.backoff.after(message.attempts + 1)
        log.info("delivery of %s to %s failed (%s); retrying in %s", message.message_id, message.receiver, error, wait)
        async with self.store.transaction(durable=False) as tx:
            await tx.reschedule(message.outbox_id, error=error, next_attempt_at=self.clock() + wait)
