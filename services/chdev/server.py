"""The aiohttp application: ClickHouse's HTTP interface over the chdb engine.

Routes: ``GET /ping`` and ``GET|POST /`` with the query in the ``query`` URL
parameter, in the body, or both. Authentication headers (HTTP basic auth,
``X-ClickHouse-User`` and ``X-ClickHouse-Key``) are accepted and ignored.
"""

from __future__ import annotations

import json
import logging
import uuid

from aiohttp import web

from services.chdev.compression import (
    choose_response_encoding,
    decode_body,
    encode_body,
)
from services.chdev.engine import Engine, Outcome
from services.chdev.errors import (
    NOT_IMPLEMENTED,
    QUERY_IS_TOO_LARGE,
    STD_EXCEPTION,
    ClickHouseError,
)
from services.chdev.request import build_statement, is_true

logger = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("engine", Engine)
MAX_BODY_SIZE_KEY = web.AppKey("max_body_size", int)
MAX_URI_SIZE = 1024 * 1024

_CONTENT_TYPES = {
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "RowBinaryWithNamesAndTypes": "application/octet-stream",
    "Arrow": "application/octet-stream",
    "ArrowStream": "application/octet-stream",
    "Parquet": "application/octet-stream",
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}


def build_app(engine: Engine, *, max_body_size: int) -> web.Application:
    """Build the application. ``max_body_size`` is in bytes, before decoding."""
    app = web.Application(client_max_size=max_body_size)
    app[ENGINE_KEY] = engine
    app[MAX_BODY_SIZE_KEY] = max_body_size
    app.router.add_get("/ping", handle_ping)
    app.router.add_get("/", handle_query)
    app.router.add_post("/", handle_query)
    return app


def build_runner(app: web.Application) -> web.AppRunner:
    """Wrap the application in a runner with ClickHouse-like HTTP limits.

    aiohttp would decompress gzip and deflate bodies by itself, so that is
    switched off and decode_body handles every Content-Encoding the same way.
    The request line may be as long as ClickHouse's default
    ``http_max_uri_size`` (1 MiB), because clients put queries and query
    parameters in the URL.
    """
    return web.AppRunner(
        app,
        access_log=None,
        auto_decompress=False,
        max_line_size=MAX_URI_SIZE,
    )


async def handle_ping(request: web.Request) -> web.Response:
    return web.Response(text="Ok.\n")


async def handle_query(request: web.Request) -> web.Response:
    """Run the request's statement and respond as clickhouse-server does."""
    engine = request.app[ENGINE_KEY]
    query_id = request.query.get("query_id") or str(uuid.uuid4())
    try:
        outcome = await _execute(request, engine)
    except ClickHouseError as error:
        logger.info("query %s failed: code %d: %s", query_id, error.code, error.message)
        return _error_response(error, engine, query_id)
    except Exception:
        logger.exception("query %s failed with an internal error", query_id)
        internal = ClickHouseError.from_code(
            STD_EXCEPTION,
            "Internal error in the development server, see its log for details",
        )
        return _error_response(internal, engine, query_id)
    if outcome is None:
        return web.Response(text="Ok.\n")
    return _result_response(request, outcome, engine, query_id)


async def _execute(request: web.Request, engine: Engine) -> Outcome | None:
    if request.content_type.startswith("multipart/"):
        raise ClickHouseError.from_code(
            NOT_IMPLEMENTED,
            "multipart/form-data requests (external data, form-encoded "
            "queries) are not supported by the development server",
        )
    raw_body = await _read_body(request)
    content_encoding = request.headers.get("Content-Encoding")
    logger.debug(
        "%s request with %d body bytes, Content-Encoding %s",
        request.method,
        len(raw_body),
        content_encoding,
    )
    body = decode_body(raw_body, content_encoding)
    statement = build_statement(request.query, body, request.method)
    if statement is None:
        return None
    return await engine.execute(statement)


async def _read_body(request: web.Request) -> bytes:
    # NOTE: the whole body is held in memory before the statement runs, so
    # an insert can use up to about twice its decompressed size in RAM.
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as error:
        raise ClickHouseError.from_code(
            QUERY_IS_TOO_LARGE,
            f"The request body is larger than {request.app[MAX_BODY_SIZE_KEY]} "
            "bytes: start the server with a larger --max-body-size",
        ) from error


def _base_headers(engine: Engine, query_id: str) -> dict[str, str]:
    return {
        "X-ClickHouse-Query-Id": query_id,
        "X-ClickHouse-Timezone": engine.info.timezone,
        "X-ClickHouse-Server-Display-Name": "chdev",
    }


def _result_response(
    request: web.Request, outcome: Outcome, engine: Engine, query_id: str
) -> web.Response:
    headers = _base_headers(engine, query_id)
    headers["X-ClickHouse-Summary"] = json.dumps(outcome.summary)
    headers["Content-Type"] = _CONTENT_TYPES.get(
        outcome.format_name or "", "text/plain; charset=UTF-8"
    )
    if outcome.format_name is not None:
        headers["X-ClickHouse-Format"] = outcome.format_name
    body = outcome.body
    encoding = _response_encoding(request)
    if encoding is not None and body:
        body = encode_body(body, encoding)
        headers["Content-Encoding"] = encoding
    logger.debug(
        "query %s responded with %d bytes, Content-Encoding %s",
        query_id,
        len(body),
        encoding,
    )
    return web.Response(body=body, headers=headers)


def _response_encoding(request: web.Request) -> str | None:
    # ClickHouse compresses a response only when the request sets
    # enable_http_compression=1, whatever Accept-Encoding lists.
    if not is_true(request.query.get("enable_http_compression")):
        return None
    return choose_response_encoding(request.headers.get("Accept-Encoding"))


def _error_response(
    error: ClickHouseError, engine: Engine, query_id: str
) -> web.Response:
    headers = _base_headers(engine, query_id)
    headers["X-ClickHouse-Exception-Code"] = str(error.code)
    headers["Content-Type"] = "text/plain; charset=UTF-8"
    return web.Response(
        status=error.http_status,
        text=error.body(engine.info.version),
        headers=headers,
    )
