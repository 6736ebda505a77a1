"""Serve cache hits and hand cacheable misses to the policy service.

A hit is served from the CheckResponse without any upstream call: a JSON
entry as one body, an SSE entry replayed event by event (the stored bytes cut
after each blank line), so an SDK's stream parser sees the original events.

The leader of a miss keeps the response bytes as they pass, in a buffer
bounded by the rule's maximum entry size. After the last byte went to the
client, it stores them with StoreCacheEntry in a background task, or, when the
response is not cacheable, releases its lock so that the requests waiting for
it go upstream at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping

import grpc
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gateway.analytics.v1 import analytics_pb2
from gateway.policy.v1 import policy_pb2
from services.ingress import policy_outcomes
from services.ingress.calls import Call
from services.ingress.state import IngressState
from services.ingress.usage import CallOutcome, StreamObserver, parse_json_response

logger = logging.getLogger(__name__)

# Response headers stored with an entry and replayed on a hit.
REPLAYED_HEADERS = ("content-type", "request-id", "x-request-id")
SSE_CONTENT_TYPE = "text/event-stream"
# An SSE event ends at a blank line: two line ends of the same kind.
_EVENT_END = re.compile(rb"(?<=\n\n)|(?<=\r\n\r\n)|(?<=\r\r)(?!\n)")


class CacheCapture:
    """The response of a cacheable miss, kept up to ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.headers: dict[str, str] = {}

    def begin(self, upstream_headers: Mapping[str, str]) -> None:
        """Keep the response headers that a hit replays."""
        for name in REPLAYED_HEADERS:
            value = upstream_headers.get(name)
            if value is not None:
                self.headers[name] = value

    def feed(self, chunk: bytes) -> None:
        if self.too_large:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.too_large = True
            self.chunks.clear()
            return
        self.chunks.append(chunk)

    @property
    def is_stream(self) -> bool:
        content_type = self.headers.get("content-type", "")
        return content_type.split(";")[0].strip().lower() == SSE_CONTENT_TYPE

    def body(self) -> bytes:
        return b"".join(self.chunks)


def split_events(body: bytes) -> list[bytes]:
    """Cut an SSE byte stream after each blank line, keeping every byte."""
    return [piece for piece in _EVENT_END.split(body) if piece]


def not_cacheable_reason(call: Call, capture: CacheCapture) -> str:
    """Return why the call's response must not be stored, or "" when it may."""
    if call.status != 200:
        return f"status {call.status}"
    if call.client_cancelled:
        return "client disconnected"
    if call.error_type or call.outcome.error_type:
        return f"error {call.error_type or call.outcome.error_type}"
    if capture.too_large:
        return f"larger than {capture.max_bytes} bytes"
    if capture.is_stream != call.facts.stream:
        return "response format differs from the request's stream flag"
    if capture.is_stream:
        return "" if call.outcome.complete else "stream did not complete"
    try:
        orjson.loads(capture.body())
    except orjson.JSONDecodeError:
        return "body is not valid JSON"
    return ""


def start_capture(call: Call) -> None:
    """Start keeping the response if this call leads a cacheable miss."""
    decision = call.decision
    if decision is None:
        return
    cache = decision.cache
    if cache.status == policy_pb2.CACHE_STATUS_MISS and cache.leader:
        call.cache_capture = CacheCapture(cache.max_entry_bytes)


async def cached_answer(
    state: IngressState, call: Call
) -> policy_pb2.CachedResponse | None:
    """Return the entry to serve: a hit, or one that a leader stored meanwhile."""
    decision = call.decision
    if decision is None:
        return None
    cache = decision.cache
    if cache.status == policy_pb2.CACHE_STATUS_HIT:
        return cache.response
    if cache.status != policy_pb2.CACHE_STATUS_MISS or cache.leader:
        return None
    if cache.wait_ms <= 0:
        return None
    wait = policy_pb2.WaitCacheEntryRequest(
        request_id=call.request_id, key=cache.key, wait_ms=cache.wait_ms
    )
    try:
        waited = await state.policy.wait_cache_entry(wait)
    except grpc.aio.AioRpcError as exc:
        logger.warning("waiting for a cache entry failed: %s", exc.code().name)
        return None
    if waited.status != policy_pb2.CACHE_STATUS_HIT:
        return None
    call.cache_status = analytics_pb2.CACHE_STATUS_HIT
    return waited.response


def _hit_headers(call: Call, cached: policy_pb2.CachedResponse) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(cached.headers)
    if cached.stream:
        headers["content-type"] = SSE_CONTENT_TYPE
        headers["cache-control"] = "no-cache"
    headers["tollgate-request-id"] = call.request_id
    headers["cf-aig-cache-status"] = "HIT"
    age_s = max(time.time_ns() // 1_000_000 - cached.stored_at_ms, 0) // 1000
    headers["age"] = str(age_s)
    policy_outcomes.add_limit_headers(headers, call.decision)
    return headers


def _hit_outcome(call: Call, cached: policy_pb2.CachedResponse) -> CallOutcome:
    """Read model and stop reason from the entry; a hit consumed no tokens."""
    wire_format = call.provider.format
    if cached.stream:
        observer = StreamObserver(wire_format)
        now = time.monotonic_ns()
        observer.feed(cached.body, now)
        observer.close(now)
        outcome = observer.outcome
    else:
        outcome = parse_json_response(wire_format, cached.body)
    return CallOutcome(
        model=cached.model or outcome.model,
        stop_reason=outcome.stop_reason,
        complete=outcome.complete,
    )


async def serve_hit(
    request: web.Request, call: Call, cached: policy_pb2.CachedResponse
) -> web.StreamResponse:
    """Serve the call from the cache entry, without an upstream call."""
    call.status = cached.status or 200
    call.cache_status = analytics_pb2.CACHE_STATUS_HIT
    call.outcome = _hit_outcome(call, cached)
    call.saved_usage = cached.usage
    call.keep_response_chunk(cached.body, 1 << 20)
    headers = _hit_headers(call, cached)

    if not cached.stream:
        call.first_byte_ns = call.end_ns = time.monotonic_ns()
        return web.Response(status=call.status, body=cached.body, headers=headers)

    response = web.StreamResponse(status=call.status, headers=headers)
    try:
        await response.prepare(request)
        for piece in split_events(cached.body):
            if not call.first_byte_ns:
                call.first_byte_ns = time.monotonic_ns()
            await response.write(piece)
        await response.write_eof()
    except ConnectionResetError:
        call.client_cancelled = True
        call.error_type = "client_disconnected"
        call.error_message = "client closed the connection before the response ended"
    call.end_ns = time.monotonic_ns()
    return response


def finish(state: IngressState, call: Call) -> None:
    """Store the leader's response, or release its lock, in a background task."""
    capture = call.cache_capture
    decision = call.decision
    if capture is None or decision is None:
        return
    call.cache_capture = None
    cache = decision.cache
    store = policy_pb2.StoreCacheEntryRequest(
        request_id=call.request_id, key=cache.key, ttl_s=cache.ttl_s
    )

    reason = not_cacheable_reason(call, capture)
    if reason:
        logger.debug("response not cached: %s", reason)
        store.release_only = True
    else:
        outcome = call.outcome
        store.response.CopyFrom(
            policy_pb2.CachedResponse(
                status=call.status,
                headers=capture.headers,
                body=capture.body(),
                stream=capture.is_stream,
                stored_at_ms=time.time_ns() // 1_000_000,
                usage=policy_pb2.Usage(
                    input_tokens=outcome.input_tokens,
                    output_tokens=outcome.output_tokens,
                    cache_read_tokens=outcome.cache_read_tokens,
                    cache_write_tokens=outcome.cache_write_tokens,
                ),
                model=outcome.model or call.facts.model,
            )
        )

    task = asyncio.get_running_loop().create_task(_store(state, store))
    state.cache_tasks.add(task)
    task.add_done_callback(state.cache_tasks.discard)


async def _store(
    state: IngressState, request: policy_pb2.StoreCacheEntryRequest
) -> None:
    try:
        await state.policy.store_cache_entry(request)
    except grpc.aio.AioRpcError as exc:
        logger.warning(
            "storing the cache entry of request %s failed: %s %s",
            request.request_id,
            exc.code().name,
            exc.details(),
        )


async def drain(state: IngressState) -> None:
    """Wait for the stores still in flight, at shutdown."""
    if state.cache_tasks:
        await asyncio.gather(*state.cache_tasks, return_exceptions=True)
