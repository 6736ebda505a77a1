"""Start-up and shutdown of the analytics service, shared by main and tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health

from services.analytics.errors import StorageUnavailableError
from services.analytics.ingest import IngestBuffer
from services.analytics.local_buffer import LocalBuffer
from services.analytics.metrics import analytics_metrics, start_analytics_metrics
from services.analytics.schema import apply_migrations, apply_retention
from services.analytics.server import build_server, set_serving
from services.analytics.settings import Settings
from services.analytics.sink import ClickHouseSink
from services.common.metrics_http import MetricsServer
from services.common.pricing import load_price_table
from services.common.ready import write_ready_file
from services.common.spool import Spool

logger = logging.getLogger(__name__)

_CONNECT_RETRY_INITIAL_S = 0.2


@dataclass(slots=True)
class RunningService:
    settings: Settings
    sink: ClickHouseSink
    buffer: IngestBuffer
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    flusher: asyncio.Task[None]
    port: int
    local: LocalBuffer | None = None
    replayer: asyncio.Task[None] | None = None
    metrics_server: MetricsServer | None = None

    async def shutdown(self) -> None:
        """Stop serving, flush the buffer within the grace period, close all."""
        grace_s = self.settings.shutdown_grace_ms / 1000
        logger.info("stopping: flushing %d buffered events", self.buffer.held_events)
        await set_serving(self.health, False)
        self.buffer.close()
        # server.stop rejects new calls at once and cancels open ones after
        # the grace period. Ingest streams end earlier, once their acks are sent.
        stopping = asyncio.create_task(self.server.stop(grace_s))
        await self._wait_for_flush(grace_s)
        await stopping
        if self.replayer is not None:
            self.replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.replayer
        if self.local is not None:
            # Batches still in the local buffer are written after the next start.
            self.local.close()
        await self.sink.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        logger.info("stopped")

    async def _wait_for_flush(self, grace_s: float) -> None:
        done, _ = await asyncio.wait({self.flusher}, timeout=grace_s)
        if done:
            return
        logger.error(
            "shutdown grace period of %.1f s ended with %d events not stored; "
            "they were not acknowledged, so the senders will resend them",
            grace_s,
            self.buffer.held_events,
        )
        self.flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.flusher


async def connect_storage(
    settings: Settings, stop: asyncio.Event
) -> ClickHouseSink | None:
    """Connect to ClickHouse, retrying with backoff, or return None on stop."""
    delay = _CONNECT_RETRY_INITIAL_S
    retry_max_s = settings.retry_max_ms / 1000
    timeout_s = settings.clickhouse_timeout_ms / 1000
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            return await ClickHouseSink.connect(settings.clickhouse, timeout_s)
        except StorageUnavailableError as exc:
            wait_s = random.uniform(delay / 2, delay)
            logger.warning(
                "ClickHouse unavailable (attempt %d), retrying in %.2f s: %s",
                attempt,
                wait_s,
                exc,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait_s)
        delay = min(delay * 2, retry_max_s)
    return None


async def start_service(
    settings: Settings, stop: asyncio.Event
) -> RunningService | None:
    """Connect, migrate and start serving, or return None on ``stop``."""
    sink = await connect_storage(settings, stop)
    if sink is None:
        return None
    try:
        prices = load_price_table(settings.prices_file)
        applied = await apply_migrations(sink)
        await apply_retention(
            sink, settings.payload_retention_days, settings.call_retention_days
        )
    except BaseException:
        await sink.close()
        raise
    logger.info("schema ready, migrations applied now: %s", applied or "none")
    local = _open_local_buffer(settings)
    buffer = IngestBuffer(
        sink,
        batch_max_events=settings.batch_max_events,
        flush_interval_s=settings.flush_interval_ms / 1000,
        buffer_max_events=settings.buffer_max_events,
        retry_max_s=settings.retry_max_ms / 1000,
        prices=prices,
        local=local,
    )
    replayer = (
        asyncio.create_task(local.run(buffer.insert_once), name="analytics-replayer")
        if local is not None
        else None
    )
    analytics_metrics().buffer_events.set_function(lambda: buffer.held_events)
    flusher = asyncio.create_task(buffer.run(), name="analytics-flusher")
    server, health_servicer = build_server(sink, buffer, settings.raw_query_max_hours)
    port = server.add_insecure_port(_listen_address(settings.host, settings.port))
    await server.start()
    await set_serving(health_servicer, True)
    metrics_server = start_analytics_metrics(settings.host, settings.metrics_port)
    write_ready_file(settings.ready_file, port)
    logger.info("analytics service listening on %s port %d", settings.host, port)
    return RunningService(
        settings,
        sink,
        buffer,
        server,
        health_servicer,
        flusher,
        port,
        local=local,
        replayer=replayer,
        metrics_server=metrics_server,
    )


def _open_local_buffer(settings: Settings) -> LocalBuffer | None:
    if not settings.spool_dir:
        logger.warning("local buffer is off: ClickHouse outages hold events in memory")
        return None
    spool = Spool(Path(settings.spool_dir), max_bytes=settings.spool_max_bytes)
    local = LocalBuffer(spool, retry_max_s=settings.retry_max_ms / 1000)
    local.open()
    return local


def _listen_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"
