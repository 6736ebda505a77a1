"""CallEvent builders and Python reference computations for the tests."""

from __future__ import annotations

import functools
import math
import random
import time
import uuid
from collections.abc import Sequence
from fractions import Fraction

from gateway.analytics.v1 import analytics_pb2
from services.common.pricing import PriceTable, load_price_table

# Start of the previous UTC day, in microseconds. Events must be recent,
# because ClickHouse drops payloads past their TTL already at insert time.
_DAY_S = 86_400
BASE_US = (int(time.time()) // _DAY_S - 1) * _DAY_S * 1_000_000


def full_event(**overrides: object) -> analytics_pb2.CallEvent:
    """Return an event with every field set to a distinct non-default value."""
    start_us = BASE_US + 123_456
    fields: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "request_id": "req-1",
        "start_us": start_us,
        "first_byte_us": start_us + 40_001,
        "end_us": start_us + 250_002,
        "account_id": "acme",
        "gateway_id": "agents",
        "user_id": "alice",
        "team_id": "research",
        "key_id": "key-7",
        "provider": "anthropic",
        "endpoint": "/v1/messages",
        "method": "POST",
        "model": "claude-sonnet",
        "stream": True,
        "status": 200,
        "error_type": "",
        "error_message": "",
        "latency_us": 250_002,
        "ttft_us": 40_001,
        "gateway_overhead_us": 1_234,
        "input_tokens": 1_000,
        "output_tokens": 2_000,
        "cache_read_tokens": 300,
        "cache_write_tokens": 40,
        "cache_status": analytics_pb2.CACHE_STATUS_MISS,
        "metadata": {"env": "prod", "feature": "chat"},
        "request_body": b'{"messages": [{"role": "user", "content": "hi \xc3\xa9"}]}',
        "response_body": b"\x00\xffbinary tail",
        "stop_reason": "end_turn",
        "custom_cost_usd_micros": 4_321,
        "upstream_request_id": "up-99",
        "client_cancelled": True,
        "ingress_id": "ingress-a",
    }
    fields.update(overrides)
    return analytics_pb2.CallEvent(**fields)  # type: ignore[arg-type]


def random_events(count: int, seed: int) -> list[analytics_pb2.CallEvent]:
    """Return varied events over ten minutes from BASE_US, reproducible by seed."""
    rng = random.Random(seed)
    events = []
    for index in range(count):
        start_us = BASE_US + rng.randrange(0, 600_000_000)
        has_first_byte = rng.random() < 0.8
        ttft_us = rng.randrange(1_000, 900_000) if has_first_byte else 0
        latency_us = ttft_us + rng.randrange(1_000, 3_000_000)
        error_type = rng.choice(["", "", "", "rate_limit_error", "upstream_timeout"])
        status = 200 if not error_type else rng.choice([429, 504])
        if not error_type and rng.random() < 0.1:
            status = 500
        metadata = {"env": rng.choice(["prod", "dev"])}
        if rng.random() < 0.5:
            metadata["feature"] = rng.choice(["chat", "search"])
        events.append(
            full_event(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                request_id=f"req-{index}",
                start_us=start_us,
                first_byte_us=start_us + ttft_us if has_first_byte else 0,
                end_us=start_us + latency_us,
                user_id=rng.choice(["alice", "bob", "carol"]),
                model=rng.choice(["claude-sonnet", "gpt-4o"]),
                provider=rng.choice(["anthropic", "openai"]),
                status=status,
                error_type=error_type,
                latency_us=latency_us,
                ttft_us=ttft_us,
                input_tokens=rng.randrange(0, 5000),
                output_tokens=rng.randrange(0, 5000),
                cache_read_tokens=rng.randrange(0, 100),
                cache_write_tokens=rng.randrange(0, 100),
                cache_status=rng.choice(
                    [analytics_pb2.CACHE_STATUS_HIT, analytics_pb2.CACHE_STATUS_MISS]
                ),
                metadata=metadata,
                request_body=f"prompt {index} needle-{index % 7}".encode(),
                response_body=f"answer {index}".encode(),
                custom_cost_usd_micros=rng.choice([-1, rng.randrange(0, 10_000)]),
            )
        )
        if events[-1].cache_status == analytics_pb2.CACHE_STATUS_HIT:
            events[-1].saved_input_tokens = rng.randrange(0, 3000)
            events[-1].saved_output_tokens = rng.randrange(0, 3000)
            events[-1].saved_cache_read_tokens = rng.randrange(0, 50)
            events[-1].saved_cache_write_tokens = rng.randrange(0, 50)
    return events


@functools.cache
def price_table() -> PriceTable:
    return load_price_table()


def _list_price_cost(event: analytics_pb2.CallEvent, saved: bool) -> int | None:
    price = price_table().lookup(event.provider, event.model)
    if price is None:
        return None
    prefix = "saved_" if saved else ""
    usd = sum(
        Fraction(getattr(event, f"{prefix}{kind}_tokens") * getattr(price, kind))
        for kind in ("input", "output", "cache_read", "cache_write")
    )
    return math.ceil(usd / 1_000_000)


def expected_cost(event: analytics_pb2.CallEvent) -> int | None:
    """Reference cost of one call: custom cost, else list price rounded up."""
    if event.custom_cost_usd_micros >= 0:
        return event.custom_cost_usd_micros
    return _list_price_cost(event, saved=False)


def expected_saved_cost(event: analytics_pb2.CallEvent) -> int:
    if event.cache_status != analytics_pb2.CACHE_STATUS_HIT:
        return 0
    return _list_price_cost(event, saved=True) or 0


def quantile_exact(values: Sequence[int], level: float) -> int:
    """Compute ClickHouse's quantileExact: sorted[floor(level * n)], 0 if empty."""
    if not values:
        return 0
    ordered = sorted(values)
    index = int(level * len(ordered)) if level < 1 else len(ordered) - 1
    return ordered[min(index, len(ordered) - 1)]


def is_error(event: analytics_pb2.CallEvent) -> bool:
    return event.status >= 400 or event.error_type != ""


def error_key(event: analytics_pb2.CallEvent) -> str:
    return event.error_type or f"http_{event.status}"


def expected_usage(events: Sequence[analytics_pb2.CallEvent]) -> dict[str, object]:
    """Compute the UsageRow fields that the service must return for events."""
    errors_by_type: dict[str, int] = {}
    for event in events:
        if is_error(event):
            key = error_key(event)
            errors_by_type[key] = errors_by_type.get(key, 0) + 1
    latencies = [event.latency_us for event in events]
    ttfts = [event.ttft_us for event in events if event.first_byte_us]
    costs = [expected_cost(event) for event in events]
    known = [cost for cost in costs if cost is not None]
    return {
        "calls": len(events),
        "errors": sum(1 for event in events if is_error(event)),
        "errors_by_type": errors_by_type,
        "input_tokens": sum(event.input_tokens for event in events),
        "output_tokens": sum(event.output_tokens for event in events),
        "cache_read_tokens": sum(event.cache_read_tokens for event in events),
        "cache_write_tokens": sum(event.cache_write_tokens for event in events),
        "cost_usd_micros": sum(known),
        "unknown_cost_calls": len(events) - len(known),
        "latency": tuple(quantile_exact(latencies, q) for q in (0.5, 0.95, 0.99)),
        "ttft": tuple(quantile_exact(ttfts, q) for q in (0.5, 0.95, 0.99)),
        "cache_hits": sum(
            1 for e in events if e.cache_status == analytics_pb2.CACHE_STATUS_HIT
        ),
        "saved_cost_usd_micros": sum(expected_saved_cost(e) for e in events),
    }


def actual_usage(row: analytics_pb2.UsageRow) -> dict[str, object]:
    """Project a UsageRow onto the keys of expected_usage."""
    return {
        "calls": row.calls,
        "errors": row.errors,
        "errors_by_type": dict(row.errors_by_type),
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_read_tokens": row.cache_read_tokens,
        "cache_write_tokens": row.cache_write_tokens,
        "cost_usd_micros": row.cost_usd_micros,
        "unknown_cost_calls": row.unknown_cost_calls,
        "latency": (row.latency.p50_us, row.latency.p95_us, row.latency.p99_us),
        "ttft": (row.ttft.p50_us, row.ttft.p95_us, row.ttft.p99_us),
        "cache_hits": row.cache_hits,
        "saved_cost_usd_micros": row.saved_cost_usd_micros,
    }
