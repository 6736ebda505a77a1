"""Build the ingress aiohttp application and its shared clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from services.common.config import GatewayConfig
from services.common.limit_config import load_gateway_limits
from services.common.spool import Spool
from services.dashboard.app import build_dashboard_app, mount_dashboard
from services.dashboard.settings import DashboardSettings
from services.ingress import cache_replay, proxy, settle
from services.ingress.events import EventSender
from services.ingress.fallback_limits import LocalLimiter
from services.ingress.metrics import METRICS_KEY, IngressMetrics, handle_metrics
from services.ingress.policy_client import PolicyClient
from services.ingress.settings import IngressSettings
from services.ingress.state import IngressState

logger = logging.getLogger(__name__)

# Largest header line, in bytes. aiohttp 3.14 answers a larger one, or more
# than 128 headers, with 400 Bad Request in plain text, not 431.
MAX_HEADER_BYTES = 64 * 1024


def build_app(
    settings: IngressSettings,
    config: GatewayConfig,
    dashboard_settings: DashboardSettings | None = None,
) -> web.Application:
    """Create the application; its clients open on startup and close on cleanup."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={
            "max_line_size": 8190,
            "max_field_size": MAX_HEADER_BYTES,
        },
    )

    fallback_limiter = LocalLimiter(load_gateway_limits(config))

    async def clients(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            # Requests keep the path exactly as the client encoded it.
            requote_redirect_url=False,
            skip_auto_headers=("User-Agent",),
        )
        policy = PolicyClient(
            settings.policy_address, timeout_ms=settings.policy_timeout_ms
        )
        policy.start()
        events = EventSender(
            settings.analytics_address,
            queue_max=settings.event_queue_max,
            batch_max=settings.event_batch_max,
            flush_interval_ms=settings.event_flush_interval_ms,
            spool=_spool(settings),
            spool_fsync_interval_ms=settings.event_spool_fsync_interval_ms,
        )
        await events.start()
        metrics.backlog.set_function(events.backlog)
        metrics.dropped.set_function(lambda: events.dropped)
        state = IngressState(
            settings, config, session, policy, events, fallback_limiter
        )
        app[IngressState.KEY] = state
        yield
        await settle.drain(state.settle_tasks, settings.shutdown_grace_s)
        await cache_replay.drain(app[IngressState.KEY])
        await events.stop(settings.shutdown_grace_s)
        await policy.close()
        await session.close()

    metrics = IngressMetrics()
    metrics.bind_providers(list(config.providers))
    app[METRICS_KEY] = metrics
    app.cleanup_ctx.append(clients)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", handle_metrics)
    if dashboard_settings is not None:
        dashboard = build_dashboard_app(
            dashboard_settings,
            config,
            analytics_address=settings.analytics_address,
            policy_address=settings.policy_address,
        )
        mount_dashboard(app, dashboard)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


def _spool(settings: IngressSettings) -> Spool | None:
    if not settings.event_spool_dir:
        logger.warning("call event spool is off: events in memory die with the process")
        return None
    return Spool(
        Path(settings.event_spool_dir), max_bytes=settings.event_spool_max_bytes
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")
