"""Replay splitting, the capture buffer and what may be stored."""

from __future__ import annotations

from services.common.config import Provider
from services.ingress.cache_replay import (
    CacheCapture,
    not_cacheable_reason,
    split_events,
)
from services.ingress.calls import Call, RequestFacts
from services.ingress.routes import Route

SSE = (
    b"event: message_start\ndata: {}\n\nevent: ping\r\ndata: {}\r\n\r\ndata: [DONE]\n\n"
)


def test_split_events_keeps_bytes_and_events() -> None:
    pieces = split_events(SSE)
    assert b"".join(pieces) == SSE
    assert pieces == [
        b"event: message_start\ndata: {}\n\n",
        b"event: ping\r\ndata: {}\r\n\r\n",
        b"data: [DONE]\n\n",
    ]


def test_split_events_keeps_unterminated_tail() -> None:
    assert split_events(b"data: a\n\ndata: b") == [b"data: a\n\n", b"data: b"]
    assert split_events(b"") == []


def test_capture_drops_oversized_response() -> None:
    capture = CacheCapture(10)
    capture.feed(b"12345")
    capture.feed(b"67890")
    assert capture.body() == b"1234567890"
    capture.feed(b"x")
    assert capture.too_large
    assert capture.body() == b""


def _call(stream: bool) -> Call:
    route = Route(account_id="a", gateway_id="g", provider="anthropic", path="/v1/m")
    call = Call.begin(route, Provider("anthropic", "anthropic", "http://x"), "POST")
    call.facts = RequestFacts(model="m", stream=stream)
    call.status = 200
    return call


def _capture(content_type: str, body: bytes) -> CacheCapture:
    capture = CacheCapture(1 << 20)
    capture.begin({"content-type": content_type})
    capture.feed(body)
    return capture


def test_clean_responses_cacheable() -> None:
    call = _call(stream=False)
    assert not_cacheable_reason(call, _capture("application/json", b"{}")) == ""
    streamed = _call(stream=True)
    streamed.outcome.complete = True
    capture = _capture("text/event-stream; charset=utf-8", SSE)
    assert not_cacheable_reason(streamed, capture) == ""


def test_unclean_responses_not_cacheable() -> None:
    json_capture = _capture("application/json", b"{}")
    failed = _call(stream=False)
    failed.status = 500
    assert not_cacheable_reason(failed, json_capture)
    cancelled = _call(stream=False)
    cancelled.client_cancelled = True
    assert not_cacheable_reason(cancelled, json_capture)
    half = _call(stream=False)
    assert not_cacheable_reason(half, _capture("application/json", b'{"a"'))
    wrong_format = _call(stream=True)
    wrong_format.outcome.complete = True
    assert not_cacheable_reason(wrong_format, json_capture)

    incomplete = _call(stream=True)
    sse_capture = _capture("text/event-stream", SSE)
    assert not_cacheable_reason(incomplete, sse_capture) == "stream did not complete"
    errored = _call(stream=True)
    errored.outcome.complete = True
    errored.outcome.error_type = "overloaded_error"
    assert not_cacheable_reason(errored, sse_capture)
