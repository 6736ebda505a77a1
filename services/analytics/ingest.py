"""The ingest buffer: batches events from all streams and acknowledges them.

Every Ingest stream puts its requests into one shared buffer. One flusher task
writes a batch to ClickHouse when the buffer contains ``batch_max_events`` or the
oldest buffered event has waited ``flush_interval_s``. A stream is sent
``IngestAck(sequence)`` only after every event of that request and of all
earlier requests on the stream was accepted by ClickHouse. A failed insert is
retried with the same batch and deduplication token until it succeeds or the
service stops, so no buffered event is dropped while the service runs.

Before a batch is inserted, events whose event_id is already stored are
dropped (a replay after an ingress crash or a lost ack). Together with the
deduplication token of a retried insert this keeps every event to one insert,
which the per-minute rollup needs: its materialized view counts every inserted
block, unlike the ReplacingMergeTree raw table that merges duplicates away.
NOTE: two analytics replicas that receive the same replayed event at the same
moment can both insert it. The raw table stays exact (read with FINAL), but
the rollup would count that event twice.

With a local buffer (:mod:`services.analytics.local_buffer`), a batch whose
insert failed is written to that durable buffer instead and acknowledged
once it is fsynced; the local buffer writes it to ClickHouse later. While the
local buffer holds batches, new batches go there too, so ClickHouse receives
them in order. Only when the local buffer is full does the flusher retry in
memory as described above.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from gateway.analytics.v1 import analytics_pb2
from services.analytics.errors import (
    InvalidRequestError,
    StorageError,
    StorageUnavailableError,
)
from services.analytics.local_buffer import LocalBuffer
from services.analytics.metrics import analytics_metrics
from services.analytics.rows import deduplication_token, event_problems, event_to_row
from services.analytics.sink import ClickHouseSink
from services.common.pricing import PriceTable, load_price_table

logger = logging.getLogger(__name__)

_RETRY_INITIAL_S = 0.1
_T = TypeVar("_T")
_stream_ids = itertools.count(1)


@dataclass(slots=True)
class PendingRequest:
    """An IngestRequest whose events are not all stored yet."""

    sequence: int
    remaining: int


@dataclass(slots=True)
class StreamState:
    """Acknowledgement state of one Ingest stream."""

    stream_id: int
    peer: str
    pending: deque[PendingRequest] = field(default_factory=deque)
    last_sequence: int | None = None
    # Highest sequence whose events, and all earlier ones, are stored.
    stored_sequence: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def advance(self) -> None:
        """Move stored_sequence past the leading requests that are complete."""
        while self.pending and self.pending[0].remaining == 0:
            self.stored_sequence = self.pending.popleft().sequence
            self.changed.set()


@dataclass(slots=True)
class _Chunk:
    stream: StreamState
    request: PendingRequest
    events: list[analytics_pb2.CallEvent]
    arrived_at: float


class IngestBuffer:
    """Buffers events from every stream and writes them in batches."""

    def __init__(
        self,
        sink: ClickHouseSink,
        batch_max_events: int,
        flush_interval_s: float,
        buffer_max_events: int,
        retry_max_s: float,
        prices: PriceTable | None = None,
        local: LocalBuffer | None = None,
    ) -> None:
        self._sink = sink
        self._prices = prices if prices is not None else load_price_table()
        self._metrics = analytics_metrics()
        self._local = local
        self._batch_max_events = batch_max_events
        self._flush_interval_s = flush_interval_s
        self._buffer_max_events = buffer_max_events
        self._retry_max_s = retry_max_s
        self._queue: deque[_Chunk] = deque()
        self._queued_events = 0
        # Queued events plus the events of the batch being written.
        self._held_events = 0
        self._wakeup = asyncio.Event()
        self._space = asyncio.Condition()
        self._full_logged = False
        self.closing = asyncio.Event()

    @property
    def held_events(self) -> int:
        return self._held_events

    def open_stream(self, peer: str) -> StreamState:
        stream = StreamState(next(_stream_ids), peer)
        logger.info("ingest stream %d opened by %s", stream.stream_id, peer)
        return stream

    async def put(
        self, stream: StreamState, request: analytics_pb2.IngestRequest
    ) -> None:
        """Validate and buffer a request, waiting while the buffer is full."""
        check_request(stream, request)
        count = len(request.events)
        await self._wait_for_space(stream, count)
        stream.last_sequence = request.sequence
        pending = PendingRequest(request.sequence, count)
        stream.pending.append(pending)
        if count == 0:
            stream.advance()
            return
        loop = asyncio.get_running_loop()
        self._queue.append(_Chunk(stream, pending, list(request.events), loop.time()))
        self._queued_events += count
        self._held_events += count
        self._wakeup.set()

    async def _wait_for_space(self, stream: StreamState, count: int) -> None:
        # A request larger than the whole buffer is still taken when the
        # buffer is empty, so that it cannot block its stream forever.
        def has_space() -> bool:
            held = self._held_events
            return held == 0 or held + count <= self._buffer_max_events

        async with self._space:
            if has_space():
                return
            if not self._full_logged:
                self._full_logged = True
                logger.warning(
                    "ingest buffer full with %d events; stream %d waits for "
                    "ClickHouse before reading more",
                    self._held_events,
                    stream.stream_id,
                )
            await self._space.wait_for(has_space)

    async def run(self) -> None:
        """Write batches until close() was called and the buffer is empty."""
        while True:
            if not self._queue:
                if self.closing.is_set():
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_for_batch()
            await self._write_batch(self._take_batch())

    def close(self) -> None:
        """Flush what is buffered without waiting for the interval, then stop."""
        self.closing.set()
        self._wakeup.set()

    async def _wait_for_batch(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].arrived_at + self._flush_interval_s
        while (
            self._queued_events < self._batch_max_events and not self.closing.is_set()
        ):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Chunk]:
        batch: list[_Chunk] = []
        room = self._batch_max_events
        while self._queue and room > 0:
            chunk = self._queue.popleft()
            if len(chunk.events) > room:
                rest = _Chunk(
                    chunk.stream, chunk.request, chunk.events[room:], chunk.arrived_at
                )
                self._queue.appendleft(rest)
                chunk = _Chunk(
                    chunk.stream, chunk.request, chunk.events[:room], chunk.arrived_at
                )
            batch.append(chunk)
            room -= len(chunk.events)
        self._queued_events -= self._batch_max_events - room
        return batch

    async def _write_batch(self, batch: list[_Chunk]) -> None:
        events = [event for chunk in batch for event in chunk.events]
        if self._local is None or not await self._store(events):
            fresh = await self._retrying(
                lambda: self._unstored(events), f"lookup of {len(events)} event ids"
            )
            await self._retrying(
                lambda: self._insert_fresh(events, fresh),
                f"insert of {len(fresh)} events",
            )
        for chunk in batch:
            chunk.request.remaining -= len(chunk.events)
            chunk.stream.advance()
        await self._release(len(events))

    async def insert_once(self, events: list[analytics_pb2.CallEvent]) -> None:
        """Insert the events not stored yet, once; raises the storage error."""
        fresh = await self._unstored(events)
        await self._insert_fresh(events, fresh)

    async def _insert_fresh(
        self,
        events: list[analytics_pb2.CallEvent],
        fresh: list[analytics_pb2.CallEvent],
    ) -> None:
        if fresh:
            inserted_at = datetime.now(UTC)
            rows = [event_to_row(event, inserted_at, self._prices) for event in fresh]
            token = deduplication_token(event.event_id for event in fresh)
            await self._insert(rows, token)
        replayed = len(events) - len(fresh)
        if replayed:
            self._metrics.replayed_events.inc(replayed)
            logger.info("dropped %d events that were already stored", replayed)

    async def _store(self, events: list[analytics_pb2.CallEvent]) -> bool:
        """Insert, or hand the batch to the local buffer when ClickHouse fails.

        Returns False when the local buffer is full, so the caller retries in
        memory and the senders keep their events.
        """
        assert self._local is not None
        if not self._local.has_backlog:
            try:
                await self.insert_once(events)
                return True
            except (StorageUnavailableError, StorageError) as exc:
                self._metrics.insert_failures.inc()
                logger.warning(
                    "insert of %d events failed, writing them to the local buffer: %s",
                    len(events),
                    exc,
                )
        return await self._local.put(events)

    async def _unstored(
        self, events: list[analytics_pb2.CallEvent]
    ) -> list[analytics_pb2.CallEvent]:
        """The events of a batch not stored yet, each event id once."""
        unique: dict[str, analytics_pb2.CallEvent] = {}
        for event in events:
            unique.setdefault(event.event_id, event)
        stored = await self._sink.stored_event_ids(
            list(unique),
            min(event.start_us for event in unique.values()),
            max(event.start_us for event in unique.values()),
        )
        return [event for event_id, event in unique.items() if event_id not in stored]

    async def _insert(self, rows: list[tuple[object, ...]], token: str) -> None:
        started = time.perf_counter()
        await self._sink.insert_calls(rows, token)
        self._metrics.insert_seconds.observe(time.perf_counter() - started)
        self._metrics.batch_events.observe(len(rows))
        self._metrics.inserted_events.inc(len(rows))

    async def _retrying(self, action: Callable[[], Awaitable[_T]], what: str) -> _T:
        delay = _RETRY_INITIAL_S
        for attempt in itertools.count(1):
            try:
                result = await action()
            except (StorageUnavailableError, StorageError) as exc:
                self._metrics.insert_failures.inc()
                wait_s = random.uniform(delay / 2, delay)
                logger.warning(
                    "%s failed (attempt %d), retrying in %.2f s: %s",
                    what,
                    attempt,
                    wait_s,
                    exc,
                )
                await asyncio.sleep(wait_s)
                delay = min(delay * 2, self._retry_max_s)
                continue
            if attempt > 1:
                logger.info("%s succeeded on attempt %d", what, attempt)
            return result
        raise AssertionError("unreachable")

    async def _release(self, count: int) -> None:
        async with self._space:
            self._held_events -= count
            if self._held_events < self._buffer_max_events:
                self._full_logged = False
            self._space.notify_all()


def check_request(stream: StreamState, request: analytics_pb2.IngestRequest) -> None:
    """Raise InvalidRequestError when a request cannot be buffered."""
    last = stream.last_sequence
    if last is not None and request.sequence <= last:
        raise InvalidRequestError(
            f"sequence {request.sequence} is not greater than the previous "
            f"sequence {last} on this stream"
        )
    for event in request.events:
        problems = event_problems(event)
        if problems:
            raise InvalidRequestError(
                f"invalid event {event.event_id!r} in sequence {request.sequence}: "
                + "; ".join(problems)
            )


async def serve_stream(
    buffer: IngestBuffer,
    requests: AsyncIterator[analytics_pb2.IngestRequest],
    peer: str,
) -> AsyncIterator[analytics_pb2.IngestAck]:
    """Buffer the requests of one stream and yield an ack as events are stored.

    The stream ends when the sender has closed its side and every request was
    acknowledged, or when the buffer closes for shutdown and the requests read
    so far were acknowledged. An invalid request raises InvalidRequestError.
    """
    stream = buffer.open_stream(peer)
    reader = asyncio.create_task(_read_requests(buffer, stream, requests))
    closing = asyncio.create_task(buffer.closing.wait())
    sent: int | None = None
    try:
        while True:
            if stream.stored_sequence is not None and stream.stored_sequence != sent:
                sent = stream.stored_sequence
                yield analytics_pb2.IngestAck(sequence=sent)
                continue
            if reader.done():
                if not reader.cancelled():
                    reader.result()
                if not stream.pending:
                    return
            if closing.done() and not reader.done():
                # Stop reading, so no new events arrive while the buffer drains.
                reader.cancel()
                await asyncio.wait({reader})
                continue
            await _wait_for_change(stream, reader, closing)
    finally:
        reader.cancel()
        closing.cancel()
        logger.info(
            "ingest stream %d from %s ended, last stored sequence %s",
            stream.stream_id,
            peer,
            stream.stored_sequence,
        )


async def _wait_for_change(
    stream: StreamState, reader: asyncio.Task[None], closing: asyncio.Task[bool]
) -> None:
    stream.changed.clear()
    changed = asyncio.create_task(stream.changed.wait())
    waiting = {changed} | {task for task in (reader, closing) if not task.done()}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        changed.cancel()


async def _read_requests(
    buffer: IngestBuffer,
    stream: StreamState,
    requests: AsyncIterator[analytics_pb2.IngestRequest],
) -> None:
    async for request in requests:
        if buffer.closing.is_set():
            return
        await buffer.put(stream, request)
    logger.debug("ingest stream %d: sender closed its side", stream.stream_id)
