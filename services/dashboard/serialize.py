"""Protobuf messages of the analytics and policy services as JSON-ready dicts.

Integers stay numbers (protobuf's own JSON mapping turns int64 into strings),
and enum values become lowercase names.
"""

from __future__ import annotations

from typing import Any

from gateway.analytics.v1 import analytics_pb2
from gateway.policy.v1 import policy_pb2

CACHE_STATUS_NAMES = {
    analytics_pb2.CACHE_STATUS_UNSPECIFIED: "",
    analytics_pb2.CACHE_STATUS_HIT: "hit",
    analytics_pb2.CACHE_STATUS_MISS: "miss",
    analytics_pb2.CACHE_STATUS_BYPASS: "bypass",
}


def quantiles(value: analytics_pb2.Quantiles) -> dict[str, int]:
    return {"p50_us": value.p50_us, "p95_us": value.p95_us, "p99_us": value.p99_us}


def usage_row(row: analytics_pb2.UsageRow) -> dict[str, Any]:
    """Return a UsageRow with the rates the pages show computed once, here."""
    calls = row.calls
    return {
        "group": row.group,
        "bucket_start_ms": row.bucket_start_ms,
        "calls": calls,
        "errors": row.errors,
        "error_rate": row.errors / calls if calls else 0.0,
        "errors_by_type": dict(row.errors_by_type),
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_read_tokens": row.cache_read_tokens,
        "cache_write_tokens": row.cache_write_tokens,
        "total_tokens": row.input_tokens
        + row.output_tokens
        + row.cache_read_tokens
        + row.cache_write_tokens,
        "cost_usd_micros": row.cost_usd_micros,
        "unknown_cost_calls": row.unknown_cost_calls,
        "latency": quantiles(row.latency),
        "ttft": quantiles(row.ttft),
        "cache_hits": row.cache_hits,
        "cache_hit_rate": row.cache_hits / calls if calls else 0.0,
        "saved_cost_usd_micros": row.saved_cost_usd_micros,
    }


def call_summary(call: analytics_pb2.CallSummary) -> dict[str, Any]:
    return {
        "event_id": call.event_id,
        "request_id": call.request_id,
        "start_us": call.start_us,
        "account_id": call.account_id,
        "gateway_id": call.gateway_id,
        "user_id": call.user_id,
        "provider": call.provider,
        "endpoint": call.endpoint,
        "model": call.model,
        "stream": call.stream,
        "status": call.status,
        "error_type": call.error_type,
        "latency_us": call.latency_us,
        "ttft_us": call.ttft_us,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "cache_read_tokens": call.cache_read_tokens,
        "cache_write_tokens": call.cache_write_tokens,
        "cache_status": CACHE_STATUS_NAMES.get(call.cache_status, ""),
        # Negative means unknown; JSON says so with null.
        "cost_usd_micros": call.cost_usd_micros if call.cost_usd_micros >= 0 else None,
        "metadata": dict(call.metadata),
    }


def payload_text(body: bytes) -> str:
    """Decode a stored payload for display; invalid UTF-8 shows as U+FFFD."""
    return body.decode("utf-8", errors="replace")


def call_detail(response: analytics_pb2.GetCallResponse) -> dict[str, Any]:
    """Return one call with its timings and payloads.

    NOTE: payloads are shown as stored. The ingress redacts them before they
    are sent to analytics, so no secret reaches this point.
    """
    call = call_summary(response.call)
    start_us = response.call.start_us
    call["timings"] = {
        "start_us": start_us,
        "first_byte_us": response.first_byte_us,
        "end_us": response.end_us,
        "gateway_overhead_us": response.gateway_overhead_us,
        "time_to_first_byte_us": (
            response.first_byte_us - start_us if response.first_byte_us else None
        ),
    }
    call["stop_reason"] = response.stop_reason
    call["error_message"] = response.error_message
    call["request_body"] = payload_text(response.request_body)
    call["response_body"] = payload_text(response.response_body)
    return call


LIMIT_KIND_NAMES = {
    value: name.removeprefix("LIMIT_KIND_").lower()
    for name, value in policy_pb2.LimitKind.items()
}


def limit_state(state: policy_pb2.LimitState) -> dict[str, Any]:
    used = state.limit - state.remaining
    return {
        "name": state.name,
        "unit": state.unit,
        "limit": state.limit,
        "remaining": state.remaining,
        "used": used,
        "used_fraction": used / state.limit if state.limit > 0 else 0.0,
        "window_s": state.window_s,
        "reset_s": state.reset_s,
    }


def cache_rule(rule: policy_pb2.CacheRule) -> dict[str, Any]:
    scope = rule.scope
    if scope.user_id:
        level = "user"
    elif scope.team_id:
        level = "team"
    else:
        level = "gateway"
    return {
        "scope": level,
        "account_id": scope.account_id,
        "gateway_id": scope.gateway_id,
        "enabled": rule.enabled,
        "ttl_s": rule.ttl_s,
        "max_entry_bytes": rule.max_entry_bytes,
        "ignore_fields": list(rule.ignore_fields),
        "shared": rule.shared,
    }
