"""Delivery of call events to the analytics service over one long-lived stream.

The request path only appends to an in-memory queue (:meth:`EventSender.submit`
never waits). A background task batches the queue onto a bidirectional
``AnalyticsService.Ingest`` stream and keeps each batch until the service
acknowledges it, which it does once ClickHouse accepted the rows. When the
stream breaks, unacknowledged batches go back to the front of the queue in
their order and are sent again on the next stream; the analytics service
deduplicates them by event id.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator

import grpc

from gateway.analytics.v1 import analytics_pb2, analytics_pb2_grpc

logger = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0


class EventSender:
    def __init__(
        self,
        address: str,
        *,
        queue_max: int,
        batch_max: int,
        flush_interval_ms: int,
    ) -> None:
        self.address = address
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.flush_interval_s = flush_interval_ms / 1000
        self._queue: collections.deque[analytics_pb2.CallEvent] = collections.deque()
        self._has_events = asyncio.Event()
        self._pending: dict[int, list[analytics_pb2.CallEvent]] = {}
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._sequence = 0
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self.dropped = 0
        self.sent = 0
        self.acked = 0

    # ------------------------------------------------------------ public API

    def submit(self, event: analytics_pb2.CallEvent) -> bool:
        """Queue one event without waiting; False if the queue was full."""
        if len(self._queue) + self._pending_count() >= self.queue_max:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error(
                    "call event queue is full (%d events); %d events dropped so far",
                    self.queue_max,
                    self.dropped,
                )
            return False
        self._queue.append(event)
        self._all_acked.clear()
        self._has_events.set()
        return True

    def backlog(self) -> int:
        """Events not yet acknowledged by the analytics service."""
        return len(self._queue) + self._pending_count()

    async def start(self) -> None:
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
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._channel is not None:
            await self._channel.close()

    # ------------------------------------------------------------ internals

    def _pending_count(self) -> int:
        return sum(len(batch) for batch in self._pending.values())

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
            self._requeue_pending()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _stream_once(self, stub: analytics_pb2_grpc.AnalyticsServiceStub) -> None:
        call = stub.Ingest(self._requests())
        async for ack in call:
            self._acknowledge(ack.sequence)

    async def _requests(self) -> AsyncIterator[analytics_pb2.IngestRequest]:
        while True:
            if not self._queue:
                self._has_events.clear()
                await self._has_events.wait()
            if len(self._queue) < self.batch_max:
                # Let a batch fill up a little: fewer, larger inserts.
                await asyncio.sleep(self.flush_interval_s)
            batch = [
                self._queue.popleft()
                for _ in range(min(self.batch_max, len(self._queue)))
            ]
            if not batch:
                continue
            self._sequence += 1
            self._pending[self._sequence] = batch
            self.sent += len(batch)
            yield analytics_pb2.IngestRequest(sequence=self._sequence, events=batch)

    def _acknowledge(self, sequence: int) -> None:
        for done in [s for s in self._pending if s <= sequence]:
            self.acked += len(self._pending.pop(done))
        if not self._pending and not self._queue:
            self._all_acked.set()

    def _requeue_pending(self) -> None:
        """Put unacknowledged batches back at the front, oldest first."""
        for sequence in sorted(self._pending, reverse=True):
            self._queue.extendleft(reversed(self._pending.pop(sequence)))
        if self._queue:
            self._has_events.set()
