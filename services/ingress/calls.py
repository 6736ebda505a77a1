"""The state of one call through the ingress and the call event built from it."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.analytics.v1 import analytics_pb2
from gateway.policy.v1 import policy_pb2
from services.common.config import Provider
from services.common.redaction import redact_bytes, redact_text
from services.ingress.custom_cost import CustomCost
from services.ingress.errors import InvalidRequest
from services.ingress.routes import Route
from services.ingress.usage import CallOutcome

if TYPE_CHECKING:
    from services.ingress.cache_replay import CacheCapture
# Bytes past the payload limit scanned for secrets before a body is cut.
REDACTION_OVERLAP = 512


@dataclass(slots=True)
class RequestFacts:
    """Facts the ingress reads from a request body before asking the policy."""

    model: str = ""
    stream: bool = False
    max_tokens: int = 0
    parsed: dict[str, Any] | None = None


def read_request_facts(method: str, content_type: str, body: bytes) -> RequestFacts:
    """Parse a JSON body far enough to learn the model, stream flag and max_tokens.

    Raises InvalidRequest for a body that claims to be JSON, or is sent to a
    POST endpoint without a content type, and does not parse as a JSON object.
    """
    if not body:
        return RequestFacts()
    is_json = content_type in ("application/json", "") or content_type.endswith("+json")
    if not is_json:
        return RequestFacts()
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON in request body: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("invalid request body: expected a JSON object")
    model = value.get("model")
    stream = value.get("stream")
    max_tokens = value.get("max_tokens", value.get("max_completion_tokens"))
    return RequestFacts(
        model=model if isinstance(model, str) else "",
        stream=stream is True,
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0,
        parsed=value,
    )


@dataclass(slots=True)
class Call:
    """Everything known about one call, filled in as it proceeds."""

    request_id: str
    route: Route
    provider: Provider
    method: str
    start_wall_us: int
    start_ns: int
    facts: RequestFacts = field(default_factory=RequestFacts)
    request_body: bytes = b""
    decision: policy_pb2.CheckResponse | None = None
    forwarded_ns: int = 0
    first_byte_ns: int = 0
    end_ns: int = 0
    status: int = 0
    outcome: CallOutcome = field(default_factory=CallOutcome)
    error_type: str = ""
    error_message: str = ""
    cache_status: int = analytics_pb2.CACHE_STATUS_UNSPECIFIED
    client_cancelled: bool = False
    upstream_request_id: str = ""
    response_chunks: list[bytes] = field(default_factory=list)
    response_bytes: int = 0
    custom_cost_usd_micros: int = -1
    # Response bytes kept for the cache while this call leads a miss.
    cache_capture: CacheCapture | None = None
    # Usage of the original call whose stored response a cache hit replayed.
    saved_usage: policy_pb2.Usage | None = None
    # Key values this call presented or was given (gateway key, provider key,
    # injected stored key), removed from everything the event stores.
    secrets: tuple[str, ...] = ()
    # Prices from the cf-aig-custom-cost header (see custom_cost.py).
    custom_cost: CustomCost | None = None

    @classmethod
    def begin(cls, route: Route, provider: Provider, method: str) -> Call:
        return cls(
            request_id=uuid.uuid4().hex,
            route=route,
            provider=provider,
            method=method,
            start_wall_us=time.time_ns() // 1000,
            start_ns=time.monotonic_ns(),
        )

    def wall_us(self, monotonic_ns: int) -> int:
        """Convert a monotonic timestamp of this call to wall-clock microseconds."""
        if not monotonic_ns:
            return 0
        return self.start_wall_us + (monotonic_ns - self.start_ns) // 1000

    def keep_response_chunk(self, chunk: bytes, limit: int) -> None:
        """Keep a copy of response bytes for the call event, up to ``limit``."""
        if self.response_bytes >= limit:
            self.response_bytes += len(chunk)
            return
        room = limit - self.response_bytes
        self.response_chunks.append(chunk[:room])
        self.response_bytes += len(chunk)


def build_event(
    call: Call, *, ingress_id: str, max_payload_bytes: int
) -> analytics_pb2.CallEvent:
    """Build the call event sent to the analytics service."""
    decision = call.decision
    identity = decision.identity if decision is not None else None
    collect_payload = decision.collect_payload if decision is not None else True
    end_ns = call.end_ns or time.monotonic_ns()
    first_token_ns = call.outcome.first_token_ns or call.first_byte_ns
    outcome = call.outcome
    event = analytics_pb2.CallEvent(
        event_id=str(uuid.uuid4()),
        request_id=call.request_id,
        start_us=call.start_wall_us,
        first_byte_us=call.wall_us(call.first_byte_ns),
        end_us=call.wall_us(end_ns),
        account_id=call.route.account_id,
        gateway_id=call.route.gateway_id,
        user_id=identity.user_id if identity is not None else "",
        team_id=identity.team_id if identity is not None else "",
        key_id=identity.key_id if identity is not None else "",
        provider=call.route.provider,
        endpoint=call.route.path,
        method=call.method,
        model=outcome.model or call.facts.model,
        stream=call.facts.stream,
        status=call.status,
        error_type=call.error_type or outcome.error_type,
        error_message=redact_text(
            call.error_message or outcome.error_message, call.secrets
        ),
        latency_us=(end_ns - call.start_ns) // 1000,
        ttft_us=(first_token_ns - call.start_ns) // 1000 if first_token_ns else 0,
        gateway_overhead_us=(
            (call.forwarded_ns - call.start_ns) // 1000 if call.forwarded_ns else 0
        ),
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        cache_read_tokens=outcome.cache_read_tokens,
        cache_write_tokens=outcome.cache_write_tokens,
        cache_status=call.cache_status,
        stop_reason=outcome.stop_reason,
        custom_cost_usd_micros=call.custom_cost_usd_micros,
        upstream_request_id=call.upstream_request_id,
        client_cancelled=call.client_cancelled,
        ingress_id=ingress_id,
    )
    if call.saved_usage is not None:
        event.saved_input_tokens = call.saved_usage.input_tokens
        event.saved_output_tokens = call.saved_usage.output_tokens
        event.saved_cache_read_tokens = call.saved_usage.cache_read_tokens
        event.saved_cache_write_tokens = call.saved_usage.cache_write_tokens
    if decision is not None:
        for name, value in decision.metadata.items():
            event.metadata[name] = redact_text(value, call.secrets)
    if collect_payload:
        # Redact a little past the limit before cutting, so that a secret
        # that straddles the limit is still found whole.
        request_body = call.request_body[: max_payload_bytes + REDACTION_OVERLAP]
        event.request_body = redact_bytes(request_body, call.secrets)[
            :max_payload_bytes
        ]
        # NOTE: the response copy is already cut at the limit while streaming, so
        # a secret cut there is only caught by its pattern, not as a known value.
        event.response_body = redact_bytes(
            b"".join(call.response_chunks), call.secrets
        )[:max_payload_bytes]
    return event
