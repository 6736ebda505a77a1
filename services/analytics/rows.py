"""Mapping between CallEvent messages and rows of the calls table."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.analytics.v1 import analytics_pb2
from services.common.pricing import PriceTable, cost_usd_micros

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# toDateTime(start_time) in the TTL clauses is a 32-bit unsigned Unix time, so
# timestamps must be before 2106-02-07.
MAX_TIMESTAMP_US = (2**32 - 1) * 1_000_000
MAX_STATUS = 65535

# Column names and ClickHouse types in insert order; they match the migrations.
CALL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "UUID"),
    ("request_id", "String"),
    ("account_id", "LowCardinality(String)"),
    ("gateway_id", "LowCardinality(String)"),
    ("user_id", "String"),
    ("team_id", "LowCardinality(String)"),
    ("key_id", "String"),
    ("ingress_id", "LowCardinality(String)"),
    ("provider", "LowCardinality(String)"),
    ("endpoint", "LowCardinality(String)"),
    ("method", "LowCardinality(String)"),
    ("model", "LowCardinality(String)"),
    ("stream", "Bool"),
    ("status", "UInt16"),
    ("error_type", "LowCardinality(String)"),
    ("error_message", "String"),
    ("stop_reason", "LowCardinality(String)"),
    ("start_time", "DateTime64(6, 'UTC')"),
    ("first_byte_time", "Nullable(DateTime64(6, 'UTC'))"),
    ("end_time", "DateTime64(6, 'UTC')"),
    ("latency_us", "UInt64"),
    ("ttft_us", "UInt64"),
    ("gateway_overhead_us", "UInt64"),
    ("input_tokens", "UInt64"),
    ("output_tokens", "UInt64"),
    ("cache_read_tokens", "UInt64"),
    ("cache_write_tokens", "UInt64"),
    ("cache_status", "LowCardinality(String)"),
    ("metadata", "Map(LowCardinality(String), String)"),
    ("custom_cost_usd_micros", "Nullable(Int64)"),
    ("cost_usd_micros", "Nullable(Int64)"),
    ("upstream_request_id", "String"),
    ("client_cancelled", "Bool"),
    ("request_body", "String"),
    ("response_body", "String"),
    ("inserted_at", "DateTime64(6, 'UTC')"),
    ("saved_input_tokens", "UInt64"),
    ("saved_output_tokens", "UInt64"),
    ("saved_cache_read_tokens", "UInt64"),
    ("saved_cache_write_tokens", "UInt64"),
    ("saved_cost_usd_micros", "Int64"),
)
CALL_COLUMN_NAMES = tuple(name for name, _ in CALL_COLUMNS)
CALL_COLUMN_TYPES = tuple(type_name for _, type_name in CALL_COLUMNS)

# Stored spelling of each CacheStatus; UNSPECIFIED is stored as "".
CACHE_STATUS_NAMES: dict[int, str] = {
    analytics_pb2.CACHE_STATUS_UNSPECIFIED: "",
    analytics_pb2.CACHE_STATUS_HIT: "hit",
    analytics_pb2.CACHE_STATUS_MISS: "miss",
    analytics_pb2.CACHE_STATUS_BYPASS: "bypass",
}
CACHE_STATUS_VALUES = {name: value for value, name in CACHE_STATUS_NAMES.items()}

_NON_NEGATIVE_FIELDS = (
    "latency_us",
    "ttft_us",
    "gateway_overhead_us",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "saved_input_tokens",
    "saved_output_tokens",
    "saved_cache_read_tokens",
    "saved_cache_write_tokens",
)


def event_problems(event: analytics_pb2.CallEvent) -> list[str]:
    """Return the reasons why ``event`` cannot be stored, or an empty list."""
    problems: list[str] = []
    try:
        uuid.UUID(event.event_id)
    except ValueError:
        problems.append(f"event_id: expected a UUID, got {event.event_id!r}")
    if not 0 < event.start_us <= MAX_TIMESTAMP_US:
        problems.append(
            f"start_us: expected 1 to {MAX_TIMESTAMP_US}, got {event.start_us}"
        )
    for name in ("first_byte_us", "end_us"):
        value = getattr(event, name)
        if not 0 <= value <= MAX_TIMESTAMP_US:
            problems.append(f"{name}: expected 0 to {MAX_TIMESTAMP_US}, got {value}")
    if not 0 <= event.status <= MAX_STATUS:
        problems.append(f"status: expected 0 to {MAX_STATUS}, got {event.status}")
    for name in _NON_NEGATIVE_FIELDS:
        value = getattr(event, name)
        if value < 0:
            problems.append(f"{name}: must not be negative, got {value}")
    if event.cache_status not in CACHE_STATUS_NAMES:
        problems.append(f"cache_status: unknown value {event.cache_status}")
    return problems


def timestamp_from_us(value_us: int) -> datetime:
    """Convert microseconds since the Unix epoch to an aware UTC datetime."""
    # timedelta arithmetic is exact, unlike datetime.fromtimestamp on floats.
    return _EPOCH + timedelta(microseconds=value_us)


def known_cost_us_micros(
    event: analytics_pb2.CallEvent, prices: PriceTable
) -> int | None:
    """Return the cost of the call in micro-USD, or None when it is unknown.

    A ``cf-aig-custom-cost`` value (custom_cost_usd_micros >= 0) wins over the
    price table. A model without a listed price has an unknown cost, never 0.
    The token counts are whatever usage the ingress saw, so streamed calls,
    calls cut off by the client and calls that ended in an error event are
    charged for exactly the usage they reported.
    """
    if event.custom_cost_usd_micros >= 0:
        return event.custom_cost_usd_micros
    price = prices.lookup(event.provider, event.model)
    if price is None:
        return None
    return cost_usd_micros(
        price,
        event.input_tokens,
        event.output_tokens,
        event.cache_read_tokens,
        event.cache_write_tokens,
    )


def saved_cost_us_micros(event: analytics_pb2.CallEvent, prices: PriceTable) -> int:
    """Return the list price of the tokens a cache hit did not spend upstream.

    0 for calls that were not cache hits and for models without a price.
    """
    if event.cache_status != analytics_pb2.CACHE_STATUS_HIT:
        return 0
    price = prices.lookup(event.provider, event.model)
    if price is None:
        return 0
    return cost_usd_micros(
        price,
        event.saved_input_tokens,
        event.saved_output_tokens,
        event.saved_cache_read_tokens,
        event.saved_cache_write_tokens,
    )


def event_to_row(
    event: analytics_pb2.CallEvent, inserted_at: datetime, prices: PriceTable
) -> tuple[Any, ...]:
    """Map a validated event to a row in CALL_COLUMNS order."""
    custom_cost = event.custom_cost_usd_micros
    first_byte = timestamp_from_us(event.first_byte_us) if event.first_byte_us else None
    return (
        uuid.UUID(event.event_id),
        event.request_id,
        event.account_id,
        event.gateway_id,
        event.user_id,
        event.team_id,
        event.key_id,
        event.ingress_id,
        event.provider,
        event.endpoint,
        event.method,
        event.model,
        event.stream,
        event.status,
        event.error_type,
        event.error_message,
        event.stop_reason,
        timestamp_from_us(event.start_us),
        first_byte,
        timestamp_from_us(event.end_us),
        event.latency_us,
        event.ttft_us,
        event.gateway_overhead_us,
        event.input_tokens,
        event.output_tokens,
        event.cache_read_tokens,
        event.cache_write_tokens,
        CACHE_STATUS_NAMES[event.cache_status],
        dict(event.metadata),
        custom_cost if custom_cost >= 0 else None,
        known_cost_us_micros(event, prices),
        event.upstream_request_id,
        event.client_cancelled,
        event.request_body,
        event.response_body,
        inserted_at,
        event.saved_input_tokens,
        event.saved_output_tokens,
        event.saved_cache_read_tokens,
        event.saved_cache_write_tokens,
        saved_cost_us_micros(event, prices),
    )


def deduplication_token(event_ids: Iterable[str]) -> str:
    """Return the insert_deduplication_token of a batch of event ids.

    A retried batch contains the same ids in the same order, so ClickHouse drops
    the repeated insert. Replays in other batches are merged away by the
    ReplacingMergeTree engine instead.
    """
    digest = hashlib.sha256()
    for event_id in event_ids:
        digest.update(event_id.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# Columns of a CallSummary, selected by the query RPCs in this order. Aliases
# of converted columns get new names, because ClickHouse would otherwise use
# the alias in the WHERE and ORDER BY clauses too.
SUMMARY_SELECT = """
    toString(event_id) AS event_id_text, request_id,
    toUnixTimestamp64Micro(start_time) AS start_us,
    account_id, gateway_id, user_id, provider, endpoint, model, stream, status,
    error_type, latency_us, ttft_us, input_tokens, output_tokens,
    cache_read_tokens, cache_write_tokens, cache_status,
    ifNull(cost_usd_micros, -1) AS cost_or_unknown, metadata
"""


def row_to_summary(row: Sequence[Any]) -> analytics_pb2.CallSummary:
    """Build a CallSummary from a row selected with SUMMARY_SELECT."""
    return analytics_pb2.CallSummary(
        event_id=row[0],
        request_id=row[1],
        start_us=int(row[2]),
        account_id=row[3],
        gateway_id=row[4],
        user_id=row[5],
        provider=row[6],
        endpoint=row[7],
        model=row[8],
        stream=bool(row[9]),
        status=int(row[10]),
        error_type=row[11],
        latency_us=int(row[12]),
        ttft_us=int(row[13]),
        input_tokens=int(row[14]),
        output_tokens=int(row[15]),
        cache_read_tokens=int(row[16]),
        cache_write_tokens=int(row[17]),
        cache_status=CACHE_STATUS_VALUES.get(row[18], 0),
        cost_usd_micros=int(row[19]),
        metadata=dict(row[20]),
    )
