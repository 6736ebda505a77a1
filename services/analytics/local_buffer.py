"""The durable local buffer of the analytics service, for ClickHouse outages.

When an insert fails, the ingest buffer hands the batch to :class:`LocalBuffer`,
which appends it as one record (a serialized ``IngestRequest`` holding the
events) to a spool (:mod:`services.common.spool`) and fsyncs it before it
returns. Only then are the events acknowledged to their senders, which then
forget them, so from that point this service owns their delivery: the spool
survives a crash or restart of the service and :meth:`LocalBuffer.run` writes
the spooled batches to ClickHouse, oldest first, once it is back.

Exactly once: a spooled batch is inserted with the deduplication token of its
event ids, the same token as the failed attempt, so an insert that reached
ClickHouse before its reply was lost is dropped as a repeat. Any other replay
(a crash between the insert and the release of the record, a sender resending
after a broken stream) carries the same event ids, and the ReplacingMergeTree
table collapses rows with the same sorting key (which ends with event_id).

When the spool is full, :meth:`put` returns False: the ingest buffer then
retries the insert in memory, stops reading the streams once its memory buffer
is full, and the senders spool the events on their side.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from gateway.analytics.v1 import analytics_pb2
from services.analytics.errors import StorageError, StorageUnavailableError
from services.common.spool import Position, Spool, SpoolError

logger = logging.getLogger(__name__)

SPOOL_BYTES = Gauge(
    "tollgate_analytics_spool_bytes",
    "Bytes of event batches held in the local buffer while ClickHouse is down",
)
SPOOL_FULL = Counter(
    "tollgate_analytics_spool_full",
    "Batches not taken by the local buffer because it was full",
)

# Stores one batch in ClickHouse once, raising StorageError on failure.
InsertEvents = Callable[[list[analytics_pb2.CallEvent]], Awaitable[None]]

_RETRY_INITIAL_S = 0.1


class LocalBuffer:
    """Spooled batches waiting for ClickHouse."""

    def __init__(self, spool: Spool, retry_max_s: float) -> None:
        self._spool = spool
        self._retry_max_s = retry_max_s
        self._cursor: Position | None = None
        self._wakeup = asyncio.Event()
        self._full_logged = False

    def open(self) -> None:
        self._cursor = self._spool.open()
        if self._cursor is not None:
            logger.info(
                "local buffer holds %d batches from a previous run",
                self._spool.unreleased,
            )
            self._wakeup.set()
        SPOOL_BYTES.set(self._spool.size_bytes)

    def close(self) -> None:
        self._spool.close()

    @property
    def has_backlog(self) -> bool:
        return self._spool.unreleased > 0

    async def put(self, events: list[analytics_pb2.CallEvent]) -> bool:
        """Append and fsync one batch; False when the buffer is full."""
        payload = analytics_pb2.IngestRequest(events=events).SerializeToString()
        position = self._spool.append(payload)
        if position is None:
            SPOOL_FULL.inc()
            if not self._full_logged:
                self._full_logged = True
                logger.error(
                    "local buffer is full (%d bytes, limit %d); holding %d events "
                    "in memory until ClickHouse takes them",
                    self._spool.size_bytes,
                    self._spool.max_bytes,
                    len(events),
                )
            return False
        await self._spool.sync()
        self._full_logged = False
        if self._cursor is None:
            self._cursor = position
        SPOOL_BYTES.set(self._spool.size_bytes)
        self._wakeup.set()
        return True

    async def run(self, insert: InsertEvents) -> None:
        """Write the spooled batches to ClickHouse, oldest first, forever.

        ``insert`` stores one batch once (skipping events already stored) and
        raises the storage error when ClickHouse fails.
        """
        delay = _RETRY_INITIAL_S
        while True:
            if self._cursor is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                records, after = self._spool.read(self._cursor, 1)
            except SpoolError:
                logger.exception("reading the local buffer failed")
                await asyncio.sleep(self._retry_max_s)
                continue
            if not records:
                self._cursor = None
                continue
            segment, payload = records[0]
            if await self._insert(insert, payload):
                self._spool.release(segment, 1)
                self._cursor = None if after >= self._spool.end() else after
                SPOOL_BYTES.set(self._spool.size_bytes)
                delay = _RETRY_INITIAL_S
                continue
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self._retry_max_s)

    async def _insert(self, insert: InsertEvents, payload: bytes) -> bool:
        events = list(analytics_pb2.IngestRequest.FromString(payload).events)
        try:
            await insert(events)
        except (StorageUnavailableError, StorageError) as exc:
            logger.warning(
                "replay of %d buffered events failed, will retry: %s", len(events), exc
            )
            return False
        logger.info("replayed %d buffered events into ClickHouse", len(events))
        return True
