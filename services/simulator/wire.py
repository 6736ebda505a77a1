"""Byte-level helpers for JSON responses and server-sent events."""

from __future__ import annotations

import orjson
from aiohttp import web

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def json_response(
    payload: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def sse_event(event: str, payload: object) -> bytes:
    """Encode one named event: ``event: NAME``, ``data: JSON`` and a blank line."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def sse_data(payload: object) -> bytes:
    """Encode one unnamed event: ``data: JSON`` and a blank line."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def start_stream(
    request: web.Request, headers: dict[str, str]
) -> web.StreamResponse:
    """Send the status line and headers of a 200 event stream."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    return response
