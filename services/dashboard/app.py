"""The dashboard sub-application, mounted by the ingress under /dashboard/."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from services.common.config import GatewayConfig
from services.dashboard import api
from services.dashboard.backend import Backend
from services.dashboard.errors import DashboardError
from services.dashboard.sessions import COOKIE_NAME, verify_session
from services.dashboard.settings import DashboardSettings
from services.dashboard.state import DashboardState, state_of

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MOUNT_PATH = "/dashboard/"

# Pages load only files shipped with the project: no CDN, no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except DashboardError as exc:
        response = api.json_response(
            {"error": {"code": exc.code, "message": exc.message}}, status=exc.status
        )
    response.headers.update(SECURITY_HEADERS)
    return response


def build_dashboard_app(
    settings: DashboardSettings,
    config: GatewayConfig,
    *,
    analytics_address: str,
    policy_address: str,
) -> web.Application:
    """Create the sub-application; its gRPC channels open on startup."""
    app = web.Application(middlewares=[errors_middleware])

    async def backend(app: web.Application) -> AsyncIterator[None]:
        client = Backend(
            analytics_address,
            policy_address,
            timeout_ms=settings.query_timeout_ms,
            admin_token=settings.admin_token,
        )
        app[DashboardState.KEY] = DashboardState(settings, config, client)
        yield
        await client.close()

    app.cleanup_ctx.append(backend)
    router = app.router
    router.add_get("/", index_page)
    router.add_get("/login", login_page)
    router.add_static("/static/", STATIC_DIR, show_index=False)
    router.add_post("/api/v1/session", api.create_session)
    router.add_delete("/api/v1/session", api.delete_session)
    router.add_get("/api/v1/me", api.me)
    router.add_get("/api/v1/usage/summary", api.usage_summary)
    router.add_get("/api/v1/usage/timeseries", api.usage_time_series)
    router.add_get("/api/v1/calls", api.search_calls)
    router.add_get("/api/v1/calls/{event_id}", api.get_call)
    router.add_get("/api/v1/limits", api.limits)
    router.add_get("/api/v1/cache-rules", api.cache_rules)
    router.add_get("/api/v1/anomalies", api.anomalies)
    return app


def mount_dashboard(app: web.Application, dashboard: web.Application) -> None:
    """Mount under /dashboard/; call before the ingress adds its catch-all route."""
    app.add_subapp(MOUNT_PATH, dashboard)
    app.router.add_get(MOUNT_PATH.rstrip("/"), _redirect_to_dashboard)


async def _redirect_to_dashboard(request: web.Request) -> web.Response:
    raise web.HTTPFound(MOUNT_PATH)


async def index_page(request: web.Request) -> web.StreamResponse:
    """Serve the dashboard to a signed-in browser, else send it to the sign-in page."""
    settings = state_of(request).settings
    session = verify_session(
        request.cookies.get(COOKIE_NAME, ""), settings.session_key, time.time()
    )
    if session is None:
        raise web.HTTPFound(f"{MOUNT_PATH}login")
    return _page("index.html")


async def login_page(request: web.Request) -> web.StreamResponse:
    return _page("login.html")


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-store"})
