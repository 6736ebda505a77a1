"""The proxy handler: read, ask the policy, forward, stream back, record.

One call goes through these phases, each a function below:

1. route and read the request (413 for a body over the limit, 400 for
   invalid JSON);
2. ``PolicyService.Check`` under its deadline, its denials mapped to the
   provider's error format;
3. forward to the provider and stream the response back chunk by chunk,
   while a side parser extracts model, usage and stop reason;
4. hand one call event to the event sender, which appends it to its spool
   and queue and returns without awaiting anything.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from urllib.parse import unquote

import aiohttp
import grpc
from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError
from multidict import CIMultiDict

from gateway.analytics.v1 import analytics_pb2
from gateway.policy.v1 import policy_pb2
from services.common.logs import request_id_var
from services.ingress import cache_replay, policy_outcomes, settle
from services.ingress.calls import Call, build_event, read_request_facts
from services.ingress.custom_cost import HEADER as COST_HEADER
from services.ingress.custom_cost import custom_cost_of, parse_custom_cost
from services.ingress.errors import (
    ClientDisconnected,
    GatewayError,
    InvalidRequest,
    RequestTooLarge,
    UpstreamConnectFailed,
    UpstreamTimeout,
    error_body,
    error_response,
    error_type_of,
)
from services.ingress.metrics import METRICS_KEY
from services.ingress.routes import parse_route, upstream_url
from services.ingress.state import IngressState
from services.ingress.usage import (
    StreamObserver,
    estimate_cut_off_output,
    parse_json_response,
)

logger = logging.getLogger(__name__)

# Connection-level headers (RFC 9110, section 7.6.1) are never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers the ingress sets itself or keeps from the provider.
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "cookie"}
# Request headers that change the provider's response. The policy service
# uses them for the cache key.
ANSWER_HEADERS = (
    "anthropic-version",
    "anthropic-beta",
    "openai-organization",
    "openai-project",
)
RESPONSE_NOT_FORWARDED = HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    "set-cookie",
}
# A gateway key: "tg_" and 43 URL-safe characters (32 random bytes).
GATEWAY_KEY_PATTERN = re.compile(r"tg_[A-Za-z0-9_-]{43}")
UPSTREAM_REQUEST_ID_HEADERS = ("request-id", "x-request-id")


def guess_format(request: web.Request) -> str:
    """Pick an error format before the provider is known, from SDK headers."""
    if "anthropic-version" in request.headers or "x-api-key" in request.headers:
        return "anthropic"
    return "openai"


async def handle(request: web.Request) -> web.StreamResponse:
    state: IngressState = request.app[IngressState.KEY]
    try:
        route = parse_route(request.raw_path, state.config)
    except GatewayError as exc:
        return error_response(guess_format(request), exc)

    call = Call.begin(route, state.config.providers[route.provider], request.method)
    request_id_var.set(call.request_id)
    try:
        return await _serve(request, state, call)
    finally:
        _record(state, call)
        settle.schedule_settle(state.policy, state.settle_tasks, call)
        request.app[METRICS_KEY].observe(call)


async def _serve(
    request: web.Request, state: IngressState, call: Call
) -> web.StreamResponse:
    wire_format = call.provider.format
    if state.settings.admin_token:
        call.secrets += (state.settings.admin_token,)
    try:
        call.request_body = await _read_body(request, state.settings.max_body_bytes)
        call.facts = read_request_facts(
            request.method, request.content_type, call.request_body
        )
        call.decision = await _check(request, state, call)
        call.custom_cost = parse_custom_cost(request.headers.get(COST_HEADER))
    except GatewayError as exc:
        return _answer_error(call, wire_format, exc)

    call.cache_status = int(call.decision.cache.status)
    cached = await cache_replay.cached_answer(state, call)
    if cached is not None:
        return await cache_replay.serve_hit(request, call, cached)

    cache_replay.start_capture(call)
    call.forwarded_ns = time.monotonic_ns()
    try:
        return await _forward(request, state, call)
    except GatewayError as exc:
        return _answer_error(call, wire_format, exc)
    finally:
        cache_replay.finish(state, call)


def _answer_error(call: Call, wire_format: str, exc: GatewayError) -> web.Response:
    call.client_cancelled = isinstance(exc, ClientDisconnected)
    call.status = exc.status
    call.error_type = error_type_of(exc, wire_format)
    call.error_message = exc.message
    call.end_ns = time.monotonic_ns()
    response = error_response(wire_format, exc, call.request_id)
    call.keep_response_chunk(error_body(wire_format, exc), 1 << 16)
    return response


async def _read_body(request: web.Request, limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(
                    f"request body exceeds the limit of {limit} bytes"
                )
            chunks.append(chunk)
    except (ConnectionResetError, PayloadEncodingError) as exc:
        raise ClientDisconnected(
            f"client closed the connection after {size} bytes of the request body"
        ) from exc
    return b"".join(chunks)


def _policy_headers(request: web.Request) -> dict[str, str]:
    headers = {}
    for name in ANSWER_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            headers[name] = value
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered.startswith("cf-aig-") and lowered != "cf-aig-authorization":
            headers[lowered] = value
    return headers


def _presented_key(request: web.Request) -> str:
    api_key = request.headers.get("x-api-key", "")
    if api_key:
        return api_key
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _gateway_key(request: web.Request) -> str:
    value = request.headers.get("cf-aig-authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else value.strip()


async def _check(
    request: web.Request, state: IngressState, call: Call
) -> policy_pb2.CheckResponse:
    gateway_key, presented_key = _gateway_key(request), _presented_key(request)
    call.secrets += (gateway_key, presented_key)
    check_request = policy_pb2.CheckRequest(
        request_id=call.request_id,
        account_id=call.route.account_id,
        gateway_id=call.route.gateway_id,
        provider=call.route.provider,
        endpoint=call.route.path,
        method=request.method,
        model=call.facts.model,
        stream=call.facts.stream,
        body_sha256=hashlib.sha256(call.request_body).digest(),
        body=call.request_body,
        headers=_policy_headers(request),
        gateway_key=gateway_key,
        presented_key=presented_key,
        max_tokens=call.facts.max_tokens,
        body_bytes=len(call.request_body),
        deadline_ms=time.time_ns() // 1_000_000 + state.settings.policy_timeout_ms,
    )
    try:
        decision = await state.policy.check(check_request)
    except grpc.aio.AioRpcError as exc:
        gateway = state.config.gateway(call.route.account_id, call.route.gateway_id)
        return policy_outcomes.handle_policy_error(
            exc, gateway, call, state.fallback_limiter, check_request
        )
    if decision.inject_provider_key:
        call.secrets += (decision.inject_provider_key,)
    return decision


def _upstream_headers(request: web.Request, call: Call) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered in NOT_FORWARDED or lowered.startswith("cf-aig-"):
            continue
        headers.add(name, value)
    # Ask for an uncompressed response: the side parser reads the bytes as they
    # pass, and the client receives exactly the bytes the provider sent.
    headers["Accept-Encoding"] = "identity"
    decision = call.decision
    if decision is not None and decision.inject_provider_key:
        key = decision.inject_provider_key
        if call.provider.format == "anthropic":
            headers.popall("authorization", None)
            headers["x-api-key"] = key
        else:
            headers.popall("x-api-key", None)
            headers["Authorization"] = f"Bearer {key}"
    _reject_gateway_keys(headers, request.query_string)
    return headers


def _reject_gateway_keys(headers: CIMultiDict[str], query: str) -> None:
    """Reject a request that carries a gateway key in a forwarded header or query.

    The policy service swaps or rejects a gateway key sent as the SDK's own
    key. A key anywhere else (Azure's ``api-key``, ``x-goog-api-key``,
    ``?key=``) would otherwise reach the provider.
    """
    for name, value in headers.items():
        if GATEWAY_KEY_PATTERN.search(value):
            raise InvalidRequest(
                f"a gateway key was sent in the {name} header; gateway keys "
                "are never forwarded to providers: send it as "
                "cf-aig-authorization: Bearer <key>"
            )
    if GATEWAY_KEY_PATTERN.search(unquote(query)):
        raise InvalidRequest(
            "a gateway key was sent in the query string; gateway keys are never "
            "forwarded to providers: send it as cf-aig-authorization: Bearer <key>"
        )


def _request_timeout(
    request: web.Request, state: IngressState
) -> aiohttp.ClientTimeout:
    settings = state.settings
    total = None
    header = request.headers.get("cf-aig-request-timeout", "")
    if header:
        try:
            total = int(header) / 1000
        except ValueError as exc:
            raise InvalidRequest(
                f"invalid cf-aig-request-timeout header {header!r}: expected "
                "milliseconds as a whole number"
            ) from exc
        if total <= 0:
            raise InvalidRequest("invalid cf-aig-request-timeout header: must be > 0")
    return aiohttp.ClientTimeout(
        total=total,
        sock_connect=settings.upstream_connect_timeout_s,
        sock_read=settings.upstream_read_timeout_s,
    )


async def _forward(
    request: web.Request, state: IngressState, call: Call
) -> web.StreamResponse:
    url = upstream_url(call.provider.base_url, call.route.path, request.query_string)
    try:
        upstream = await state.session.request(
            request.method,
            url,
            headers=_upstream_headers(request, call),
            data=call.request_body or None,
            allow_redirects=False,
            timeout=_request_timeout(request, state),
        )
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"timed out waiting for {call.route.provider}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectFailed(
            f"could not reach {call.route.provider}: {type(exc).__name__}"
        ) from exc

    async with upstream:
        return await _relay(request, state, call, upstream)


def _response_headers(upstream: aiohttp.ClientResponse, call: Call) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        if name.lower() not in RESPONSE_NOT_FORWARDED:
            headers.add(name, value)
    headers["tollgate-request-id"] = call.request_id
    headers["cf-aig-cache-status"] = policy_outcomes.cache_status_header(
        call.cache_status
    )
    policy_outcomes.add_limit_headers(headers, call.decision)
    return headers


async def _relay(
    request: web.Request,
    state: IngressState,
    call: Call,
    upstream: aiohttp.ClientResponse,
) -> web.StreamResponse:
    call.status = upstream.status
    for name in UPSTREAM_REQUEST_ID_HEADERS:
        if name in upstream.headers:
            call.upstream_request_id = upstream.headers[name]
            break
    is_stream = upstream.content_type == "text/event-stream"
    if call.cache_capture is not None:
        call.cache_capture.begin(upstream.headers)
    observer = StreamObserver(call.provider.format) if is_stream else None
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.update(_response_headers(upstream, call))
    if (
        upstream.content_length is not None
        and "content-encoding" not in upstream.headers
    ):
        response.content_length = upstream.content_length
    limit = state.settings.max_logged_payload_bytes

    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            now = time.monotonic_ns()
            if not call.first_byte_ns:
                call.first_byte_ns = now
            if observer is not None:
                observer.feed(chunk, now)
            call.keep_response_chunk(chunk, limit)
            if call.cache_capture is not None:
                call.cache_capture.feed(chunk)
            await response.write(chunk)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
        # The client went away: stop reading, which cancels the upstream call
        # when the `async with` closes the connection.
        call.client_cancelled = True
        call.error_type = "client_disconnected"
        call.error_message = "client closed the connection before the response ended"
        logger.info("client disconnected during the response: %s", exc)
    except (
        TimeoutError,
        aiohttp.ClientPayloadError,
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientOSError,
    ) as exc:
        call.error_type = (
            "upstream_timeout"
            if isinstance(exc, TimeoutError)
            else ("upstream_disconnected")
        )
        call.error_message = (
            f"{call.route.provider} response ended early: {type(exc).__name__}"
        )
        logger.warning("upstream response broke off: %s", call.error_message)
        _finish_outcome(call, observer, upstream)
        # Break the client connection as well, so that the SDK sees an
        # incomplete response instead of a clean end.
        if request.transport is not None:
            request.transport.close()
        return response
    _finish_outcome(call, observer, upstream)
    if call.client_cancelled and observer is not None:
        if estimate_cut_off_output(observer):
            call.error_message += (
                "; output_tokens is an estimate (a lower bound: content events "
                "seen before the cut-off)"
            )
    if not call.client_cancelled:
        try:
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            call.client_cancelled = True
    return response


def _finish_outcome(
    call: Call, observer: StreamObserver | None, upstream: aiohttp.ClientResponse
) -> None:
    call.end_ns = time.monotonic_ns()
    if observer is not None:
        observer.close(call.end_ns)
        call.outcome = observer.outcome
        if (
            not call.outcome.complete
            and not call.error_type
            and not call.outcome.error_type
        ):
            call.error_type = "stream_incomplete"
        return
    if upstream.content_type.endswith("json") and call.response_chunks:
        call.outcome = parse_json_response(
            call.provider.format, b"".join(call.response_chunks)
        )


def _record(state: IngressState, call: Call) -> None:
    if not call.end_ns:
        call.end_ns = time.monotonic_ns()
    # Settle charges the custom cost too, also for a call that is not logged.
    if call.custom_cost is not None:
        call.custom_cost_usd_micros = custom_cost_of(call.custom_cost, call.outcome)
    decision = call.decision
    if decision is not None and not decision.collect_log:
        return
    if call.cache_status == analytics_pb2.CACHE_STATUS_UNSPECIFIED:
        call.cache_status = analytics_pb2.CACHE_STATUS_BYPASS
    event = build_event(
        call,
        ingress_id=state.settings.ingress_id,
        max_payload_bytes=state.settings.max_logged_payload_bytes,
    )
    state.events.submit(event)
    logger.info(
        "%s %s/%s %s%s -> %d in %.1f ms",
        call.method,
        call.route.account_id,
        call.route.gateway_id,
        call.route.provider,
        call.route.path,
        call.status,
        (call.end_ns - call.start_ns) / 1e6,
    )
