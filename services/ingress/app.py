"""Build the ingress aiohttp application and its shared clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from services.common.config import GatewayConfig
from services.common.spool import Spool
from services.ingress import proxy
from services.ingress.events import EventSender
from services.ingress.policy_client import PolicyClient
from services.ingress.settings import IngressSettings
from services.ingress.state import IngressState

logger = logging.getLogger(__name__)

# Request line plus headers; larger requests get 431 from aiohttp.
MAX_HEADER_BYTES = 64 * 1024


def build_app(settings: IngressSettings, config: GatewayConfig) -> web.Application:
    """Create the application; its clients open on startup and close on cleanup."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={
            "max_line_size": 8190,
            "max_field_size": MAX_HEADER_BYTES,
        },
    )

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
        events = EventSender(
            settings.analytics_address,
            queue_max=settings.event_queue_max,
            batch_max=settings.event_batch_max,
            flush_interval_ms=settings.event_flush_interval_ms,
            spool=_spool(settings),
            spool_fsync_interval_ms=settings.event_spool_fsync_interval_ms,
        )
        await events.start()
        app[IngressState.KEY] = IngressState(settings, config, session, policy, events)
        yield
        await events.stop(settings.shutdown_grace_s)
        await policy.close()
        await session.close()

    app.cleanup_ctx.append(clients)
    app.router.add_get("/healthz", _healthz)
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
