"""The aiohttp application that serves both simulated providers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import anthropic, openai
from .context import CONTEXT_KEY, SimContext, get_context
from .recorder import SimState
from .settings import SimSettings
from .wire import json_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The Messages API accepts bodies up to 32 MB.
MAX_BODY_BYTES = 32 * 1024 * 1024
SIM_PREFIX = "/_sim/"


def is_anthropic_request(request: web.Request) -> bool:
    """Return whether the request carries Anthropic's headers or path prefix."""
    headers = request.headers
    return (
        request.path.startswith("/anthropic/")
        or "x-api-key" in headers
        or "anthropic-version" in headers
    )


async def list_models(request: web.Request) -> web.StreamResponse:
    """Serve bare ``GET /v1/models`` in the format of the provider the headers name."""
    if is_anthropic_request(request):
        return await anthropic.list_models(request)
    return await openai.list_models(request)


async def retrieve_model(request: web.Request) -> web.StreamResponse:
    if is_anthropic_request(request):
        return await anthropic.retrieve_model(request)
    return await openai.retrieve_model(request)


def not_found(request: web.Request, status: int) -> web.Response:
    ctx = get_context(request)
    request_id = ctx.new_id("req_")
    message = f"Not found: {request.method} {request.path}"
    if status == 405:
        message = f"Method not allowed: {request.method} {request.path}"
    if is_anthropic_request(request):
        error = anthropic.ApiError(status, "not_found_error", message)
        return anthropic.error_response(request_id, error)
    return openai.error_response(request_id, openai.ApiError(status, message))


@web.middleware
async def record_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every provider request and send JSON errors for unknown routes."""
    if request.path.startswith(SIM_PREFIX):
        return await handler(request)
    body = await request.read() if request.can_read_body else b""
    state = get_context(request).state
    # Lowercase str names: lookups stay case-insensitive and orjson accepts them.
    headers = {name.lower(): value for name, value in request.headers.items()}
    entry = state.record(
        request.method, request.path, request.query_string, headers, body
    )
    try:
        response = await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as error:
        response = not_found(request, error.status)
    transport = request.transport
    if transport is not None and not transport.is_closing():
        entry.status = response.status
    return response


async def sim_requests(request: web.Request) -> web.Response:
    """Handle ``GET /_sim/requests?path=...``."""
    state = get_context(request).state
    return json_response(state.snapshot(request.query.get("path")))


async def sim_reset(request: web.Request) -> web.Response:
    """Handle ``POST /_sim/reset``."""
    get_context(request).state.reset()
    return json_response({"ok": True})


async def sim_health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def add_anthropic_routes(app: web.Application, prefix: str) -> None:
    app.router.add_post(f"{prefix}/v1/messages", anthropic.create_message)
    app.router.add_post(
        f"{prefix}/v1/messages/count_tokens", anthropic.count_message_tokens
    )
    if prefix:
        app.router.add_get(f"{prefix}/v1/models", anthropic.list_models)
        app.router.add_get(f"{prefix}/v1/models/{{model_id}}", anthropic.retrieve_model)


def add_openai_routes(app: web.Application, prefix: str) -> None:
    app.router.add_post(f"{prefix}/v1/chat/completions", openai.create_chat_completion)
    app.router.add_post(f"{prefix}/v1/embeddings", openai.create_embeddings)
    if prefix:
        app.router.add_get(f"{prefix}/v1/models", openai.list_models)
        app.router.add_get(f"{prefix}/v1/models/{{model_id}}", openai.retrieve_model)


def build_app(
    settings: SimSettings | None = None, state: SimState | None = None
) -> web.Application:
    """Build the simulator app. Pass ``state`` to share counters between apps."""
    settings = settings or SimSettings()
    state = state or SimState(history_size=settings.history_size)
    app = web.Application(middlewares=[record_requests], client_max_size=MAX_BODY_BYTES)
    app[CONTEXT_KEY] = SimContext(settings=settings, state=state)
    for prefix in ("", "/anthropic"):
        add_anthropic_routes(app, prefix)
    for prefix in ("", "/openai"):
        add_openai_routes(app, prefix)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id}", retrieve_model)
    app.router.add_get("/_sim/requests", sim_requests)
    app.router.add_post("/_sim/reset", sim_reset)
    app.router.add_get("/_sim/health", sim_health)
    return app


def get_state(app: web.Application) -> SimState:
    """Return the request counters and history of an app from build_app."""
    return app[CONTEXT_KEY].state
