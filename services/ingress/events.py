"""Delivery of call events to the analytics service over one long-lived stream.

The request path only appends to an in-memory queue (:meth:`EventSender.submit`
never waits). A background task batches the queue onto a bidirectional
``AnalyticsService.Ingest`` stream and keeps each batch until the service
acknowledges it, which it does once ClickHouse accepted the rows. When the
stream breaks, unacknowledged batches go back to the front of the queue in
their order and are sent again on the next stream; the analytics service
deduplicates them by event id.

With a spool (:mod:`services.common.spool`), every event is written ahead to
the spool file by ``submit`` before it is queued, and its record is released
once the analytics service acknowledged it. So a SIGKILL of the ingress loses
only the events of calls that had not completed yet, and a restart replays
what the previous process left, oldest first. While the in-memory queue is
full, new events go to the spool only and are read back from it in order once
the queue drains. When the spool is full too, the newest event is dropped,
logged and counted; ``submit`` never waits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator

import grpc
from prometheus_client import Counter, Gauge

from gateway.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from services.common.spool import Position, Spool, SpoolError

logger = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0

DROPPED = Counter(
    "tollgate_ingress_events_dropped",
    "Call events dropped because the event queue and the spool were full",
)
SPOOL_BYTES = Gauge(
    "tollgate_ingress_event_spool_bytes", "Bytes in the call event spool files"
)
BACKLOG = Gauge(
    "tollgate_ingress_event_backlog",
    "Call events not yet acknowledged by the analytics service",
)

# Spool segment of an event that is in memory only (spool segments start at 1).
NOT_SPOOLED = 0
_Entry = tuple[int, analytics_pb2.CallEvent]


class EventSender:
    def __init__(
        self,
        address: str,
        *,
        queue_max: int,
        batch_max: int,
        flush_interval_ms: int,
        spool: Spool | None = None,
        spool_fsync_interval_ms: int = 1000,
    ) -> None:
        self.address = address
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.flush_interval_s = flush_interval_ms / 1000
        self._queue: collections.deque[_Entry] = collections.deque()
        self._has_events = asyncio.Event()
        self._pending: dict[int, list[_Entry]] = {}
        self._spool = spool
        self.spool_fsync_interval_s = spool_fsync_interval_ms / 1000
        # First spooled event that is not in memory; None when all are.
        self._spool_cursor: Position | None = None
        self._spooled_only = 0
        self._sync_task: asyncio.Task[None] | None = None
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._sequence = 0
        # Number of the current stream; see _run.
        self._epoch = 0
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self.dropped = 0
        self.sent = 0
        self.acked = 0

    # ------------------------------------------------------------ public API

    def submit(self, event: analytics_pb2.CallEvent) -> bool:
        """Spool and queue one event without waiting; False if it was dropped."""
        memory_full = len(self._queue) + self._pending_count() >= self.queue_max
        if self._spool is None:
            if memory_full:
                return self._drop("call event queue is full")
            self._enqueue((NOT_SPOOLED, event))
            return True

        try:
            position = self._spool.append(event.SerializeToString())
        except SpoolError:
            logger.exception("writing a call event to the spool failed")
            position = None
        if position is None:
            if memory_full or self._spool_cursor is not None:
                return self._drop("call event queue and spool are full")
            # The event is kept in memory only: lost if the process dies.
            self._enqueue((NOT_SPOOLED, event))
            return True
        SPOOL_BYTES.set(self._spool.size_bytes)
        if memory_full or self._spool_cursor is not None:
            # Kept in order on disk only; read back once the queue drains.
            if self._spool_cursor is None:
                self._spool_cursor = position
            self._spooled_only += 1
            self._all_acked.clear()
            self._has_events.set()
            return True
        self._enqueue((position.segment, event))
        return True

    def backlog(self) -> int:
        """Events not yet acknowledged by the analytics service."""
        return len(self._queue) + self._pending_count() + self._spooled_only

    async def start(self) -> None:
        if self._spool is not None:
            self._spool_cursor = self._spool.open()
            self._spooled_only = self._spool.unreleased
            if self._spooled_only:
                logger.info(
                    "replaying %d call events spooled by a previous run",
                    self._spooled_only,
                )
                self._all_acked.clear()
                self._has_events.set()
            self._sync_task = asyncio.create_task(
                self._sync_spool(), name="event-spool-sync"
            )
        self._channel = grpc.aio.insecure_channel(
            self.address,
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self._task = asyncio.create_task(self._run(), name="event-sender")

    async def stop(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every event to be acknowledged, then stop."""
        try:
            await asyncio.wait_for(self._all_acked.wait(), timeout_s)
        except TimeoutError:
            logger.error(
                "stopping with %d call events not acknowledged by the analytics "
                "service",
                self.backlog(),
            )
        for task in (self._task, self._sync_task):
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._channel is not None:
            await self._channel.close()
        if self._spool is not None:
            # Unacknowledged events stay in the spool for the next start.
            self._spool.close()

    # ------------------------------------------------------------ internals

    def _pending_count(self) -> int:
        return sum(len(batch) for batch in self._pending.values())

    def _enqueue(self, entry: _Entry) -> None:
        self._queue.append(entry)
        self._all_acked.clear()
        self._has_events.set()

    def _drop(self, reason: str) -> bool:
        self.dropped += 1
        DROPPED.inc()
        if self.dropped == 1 or self.dropped % 1000 == 0:
            logger.error(
                "%s (queue %d events, spool %s bytes); %d call events dropped so far",
                reason,
                self.queue_max,
                self._spool.max_bytes if self._spool is not None else "off",
                self.dropped,
            )
        return False

    def _refill_from_spool(self) -> None:
        """Move spooled-only events back into memory, oldest first."""
        assert self._spool is not None and self._spool_cursor is not None
        room = max(self.batch_max, self.queue_max - self._pending_count())
        try:
            records, cursor = self._spool.read(self._spool_cursor, room)
        except SpoolError:
            logger.exception(
                "reading the call event spool failed; %d spooled events are "
                "skipped until the next start",
                self._spooled_only,
            )
            records, cursor = [], self._spool.end()
        for segment, record in records:
            event = analytics_pb2.CallEvent.FromString(record)
            self._queue.append((segment, event))
        self._spooled_only -= len(records)
        if cursor >= self._spool.end():
            self._spool_cursor = None
            self._spooled_only = 0
        else:
            self._spool_cursor = cursor

    async def _sync_spool(self) -> None:
        assert self._spool is not None
        while True:
            await asyncio.sleep(self.spool_fsync_interval_s)
            try:
                await self._spool.sync()
            except OSError:
                logger.exception("fsync of the call event spool failed")

    async def _run(self) -> None:
        assert self._channel is not None
        stub = analytics_pb2_grpc.AnalyticsServiceStub(self._channel)
        delay = RECONNECT_MIN_S
        while True:
            await self._has_events.wait()
            try:
                await self._stream_once(stub)
                delay = RECONNECT_MIN_S
            except grpc.aio.AioRpcError as exc:
                logger.warning(
                    "analytics stream failed (%s: %s); %d events waiting, "
                    "retrying in %.1f s",
                    exc.code().name,
                    exc.details(),
                    self.backlog(),
                    delay,
                )
            # The request generator of the broken stream may still be
            # scheduled by gRPC; the new epoch makes it stop before it takes
            # events that would then wait in _pending for an ack that never comes.
            self._epoch += 1
            self._requeue_pending()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _stream_once(self, stub: analytics_pb2_grpc.AnalyticsServiceStub) -> None:
        call = stub.Ingest(self._requests(self._epoch))
        async for ack in call:
            self._acknowledge(ack.sequence)

    async def _requests(self, epoch: int) -> AsyncIterator[analytics_pb2.IngestRequest]:
        while epoch == self._epoch:
            if not self._queue and self._spool_cursor is not None:
                self._refill_from_spool()
            if not self._queue:
                self._has_events.clear()
                await self._has_events.wait()
                continue
            if len(self._queue) < self.batch_max:
                # Let a batch fill up a little: fewer, larger inserts.
                await asyncio.sleep(self.flush_interval_s)
            if epoch != self._epoch:
                return
            batch = [
                self._queue.popleft()
                for _ in range(min(self.batch_max, len(self._queue)))
            ]
            if not batch:
                continue
            self._sequence += 1
            self._pending[self._sequence] = batch
            self.sent += len(batch)
            BACKLOG.set(self.backlog())
            yield analytics_pb2.IngestRequest(
                sequence=self._sequence, events=[event for _, event in batch]
            )

    def _acknowledge(self, sequence: int) -> None:
        for done in [s for s in self._pending if s <= sequence]:
            batch = self._pending.pop(done)
            self.acked += len(batch)
            self._release(batch)
        if not self._pending and not self._queue and self._spool_cursor is None:
            self._all_acked.set()
        BACKLOG.set(self.backlog())

    def _release(self, batch: list[_Entry]) -> None:
        if self._spool is None:
            return
        counts = collections.Counter(segment for segment, _ in batch)
        counts.pop(NOT_SPOOLED, None)
        for segment, count in sorted(counts.items()):
            self._spool.release(segment, count)
        SPOOL_BYTES.set(self._spool.size_bytes)

    def _requeue_pending(self) -> None:
        """Put unacknowledged batches back at the front, oldest first."""
        for sequence in sorted(self._pending, reverse=True):
            self._queue.extendleft(reversed(self._pending.pop(sequence)))
        if self._queue or self._spool_cursor is not None:
            self._has_events.set()
