"""The query RPCs: SQL builders (pure) and the functions that run them.

Raw queries read ``calls FINAL``, so a call that was stored twice before a
merge counts once and the results are exact, percentiles included
(quantilesExact). Usage queries over ranges longer than the raw-read limit
(``TOLLGATE_ANALYTICS_RAW_QUERY_MAX_HOURS``, 24 by default) read the
per-minute rollup ``calls_by_minute`` instead: counts, tokens, costs and
errors stay exact, percentiles come from merged t-digest states and are
approximate (the tests allow 15 % on small samples). A query that
filters or groups by a column the rollup lacks (status, error type, metadata,
payload text) always reads the raw table. The rollup covers whole minutes: a
minute belongs to the range when it starts inside it. User input reaches ClickHouse
only as query parameters (``{name:Type}`` placeholders), never inside the SQL.
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.analytics.v1 import analytics_pb2
from services.analytics.errors import InvalidRequestError, NotFoundError
from services.analytics.rows import SUMMARY_SELECT, row_to_summary
from services.analytics.sink import ClickHouseSink

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_TIME_SERIES_POINTS = 10_000
_CURSOR_PREFIX = "v1:"

# SQL expression of each group dimension. GROUP_BY_UNSPECIFIED has none.
GROUP_EXPRESSIONS: dict[int, str] = {
    analytics_pb2.GROUP_BY_USER: "user_id",
    analytics_pb2.GROUP_BY_MODEL: "model",
    analytics_pb2.GROUP_BY_GATEWAY: "gateway_id",
    analytics_pb2.GROUP_BY_PROVIDER: "provider",
    analytics_pb2.GROUP_BY_METADATA: "metadata[{group_metadata_key:String}]",
}

# A call is an error when the client got an HTTP error status or the gateway
# recorded an error type; errors_by_type counts untyped errors as http_<status>.
ERROR_CONDITION = "(status >= 400 OR error_type != '')"
ERROR_KEY = "if(error_type != '', error_type, concat('http_', toString(status)))"

# Aggregates of one UsageRow, in the order that usage_row reads them. The
# aliases differ from the column names, because ClickHouse would otherwise
# read a later reference to the column as the aggregate.
# quantilesExact returns the element at index floor(level * count) of the
# sorted values. The ttft quantiles cover only calls with a first byte.
USAGE_AGGREGATES = f"""
    count() AS calls,
    countIf({ERROR_CONDITION}) AS errors,
    sumMapIf([{ERROR_KEY}], [toUInt64(1)], {ERROR_CONDITION}) AS errors_by_type,
    sum(input_tokens) AS sum_input_tokens,
    sum(output_tokens) AS sum_output_tokens,
    sum(cache_read_tokens) AS sum_cache_read_tokens,
    sum(cache_write_tokens) AS sum_cache_write_tokens,
    ifNull(sum(cost_usd_micros), 0) AS known_cost_usd_micros,
    countIf(cost_usd_micros IS NULL) AS unknown_cost_calls,
    quantilesExact(0.5, 0.95, 0.99)(latency_us) AS latency,
    quantilesExactIf(0.5, 0.95, 0.99)(ttft_us, first_byte_time IS NOT NULL) AS ttft,
    countIf(cache_status = 'hit') AS cache_hits,
    sum(saved_cost_usd_micros) AS sum_saved_cost_usd_micros
"""

# The same aggregates over the per-minute rollup, in the same order.
ROLLUP_AGGREGATES = """
    sum(calls) AS sum_calls,
    sum(errors) AS sum_errors,
    sumMapMerge(errors_by_type) AS merged_errors_by_type,
    sum(input_tokens) AS sum_input_tokens,
    sum(output_tokens) AS sum_output_tokens,
    sum(cache_read_tokens) AS sum_cache_read_tokens,
    sum(cache_write_tokens) AS sum_cache_write_tokens,
    sum(cost_usd_micros) AS sum_cost_usd_micros,
    sum(unknown_cost_calls) AS sum_unknown_cost_calls,
    quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_us) AS latency,
    quantilesTDigestMerge(0.5, 0.95, 0.99)(ttft_us) AS ttft,
    sum(cache_hits) AS sum_cache_hits,
    sum(saved_cost_usd_micros) AS sum_saved_cost_usd_micros
"""
ROLLUP_FILTER_FIELDS = ("account_id", "gateway_id", "user_id", "model", "provider")
ROLLUP_GROUPS = frozenset(
    {
        analytics_pb2.GROUP_BY_UNSPECIFIED,
        analytics_pb2.GROUP_BY_USER,
        analytics_pb2.GROUP_BY_MODEL,
        analytics_pb2.GROUP_BY_GATEWAY,
        analytics_pb2.GROUP_BY_PROVIDER,
    }
)


@dataclass(slots=True)
class SqlQuery:
    sql: str
    parameters: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------- SQL building


def where_clause(
    time_range: analytics_pb2.TimeRange, call_filter: analytics_pb2.CallFilter
) -> SqlQuery:
    """Build the WHERE conditions of a time range and filter, with parameters."""
    check_time_range(time_range)
    conditions = [
        "start_time >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')",
        "start_time < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')",
    ]
    parameters: dict[str, Any] = {
        "start_ms": time_range.start_ms,
        "end_ms": time_range.end_ms,
    }
    for name in (
        "account_id",
        "gateway_id",
        "user_id",
        "model",
        "provider",
        "error_type",
    ):
        value = getattr(call_filter, name)
        if value:
            conditions.append(f"{name} = {{{name}:String}}")
            parameters[name] = value
    if call_filter.status:
        conditions.append("status = {status:UInt16}")
        parameters["status"] = call_filter.status
    _add_metadata_condition(call_filter, conditions, parameters)
    if call_filter.text:
        conditions.append(
            "(position(request_body, {text:String}) > 0 "
            "OR position(response_body, {text:String}) > 0)"
        )
        parameters["text"] = call_filter.text
    return SqlQuery(" AND ".join(conditions), parameters)


def _add_metadata_condition(
    call_filter: analytics_pb2.CallFilter,
    conditions: list[str],
    parameters: dict[str, Any],
) -> None:
    key, value = call_filter.metadata_key, call_filter.metadata_value
    if value and not key:
        raise InvalidRequestError("filter.metadata_value needs filter.metadata_key")
    if not key:
        return
    parameters["metadata_key"] = key
    if not value:
        conditions.append("mapContains(metadata, {metadata_key:String})")
        return
    conditions.append(
        "mapContains(metadata, {metadata_key:String}) "
        "AND metadata[{metadata_key:String}] = {metadata_value:String}"
    )
    parameters["metadata_value"] = value


def check_time_range(time_range: analytics_pb2.TimeRange) -> None:
    if time_range.start_ms < 0:
        raise InvalidRequestError(
            f"range.start_ms must not be negative, got {time_range.start_ms}"
        )
    if time_range.end_ms <= time_range.start_ms:
        raise InvalidRequestError(
            f"range.end_ms ({time_range.end_ms}) must be greater than "
            f"range.start_ms ({time_range.start_ms})"
        )


def group_expression(group_by: int, metadata_key: str) -> str | None:
    """Return the SQL of a group dimension, or None to aggregate everything."""
    if group_by == analytics_pb2.GROUP_BY_UNSPECIFIED:
        return None
    expression = GROUP_EXPRESSIONS.get(group_by)
    if expression is None:
        raise InvalidRequestError(f"unknown group_by value {group_by}")
    if group_by == analytics_pb2.GROUP_BY_METADATA and not metadata_key:
        raise InvalidRequestError("group_by GROUP_BY_METADATA needs group_metadata_key")
    return expression


def usage_query(
    where: SqlQuery, group: str | None, metadata_key: str, rollup: bool = False
) -> SqlQuery:
    """Build the usage aggregate, per group when ``group`` is set."""
    parameters = dict(where.parameters)
    aggregates, table, calls = _source_sql(rollup)
    if group is None:
        sql = f"SELECT '' AS grp, {aggregates} FROM {table} WHERE {where.sql}"
        return SqlQuery(sql, parameters)
    if "group_metadata_key" in group:
        parameters["group_metadata_key"] = metadata_key
    sql = (
        f"SELECT {group} AS grp, {aggregates} FROM {table} "
        f"WHERE {where.sql} GROUP BY grp ORDER BY {calls} DESC, grp"
    )
    return SqlQuery(sql, parameters)


def _source_sql(rollup: bool) -> tuple[str, str, str]:
    """Aggregates, table and calls column of the raw table or the rollup."""
    if rollup:
        return ROLLUP_AGGREGATES, "calls_by_minute", "sum_calls"
    return USAGE_AGGREGATES, "calls FINAL", "calls"


def rollup_where_clause(
    time_range: analytics_pb2.TimeRange, call_filter: analytics_pb2.CallFilter
) -> SqlQuery:
    """Build the WHERE conditions over the rollup, whose rows are whole minutes."""
    check_time_range(time_range)
    conditions = [
        "minute >= toStartOfMinute(fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')"
        " + toIntervalSecond(59))",
        "minute < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')",
    ]
    parameters: dict[str, Any] = {
        "start_ms": time_range.start_ms,
        "end_ms": time_range.end_ms,
    }
    for name in ROLLUP_FILTER_FIELDS:
        value = getattr(call_filter, name)
        if value:
            conditions.append(f"{name} = {{{name}:String}}")
            parameters[name] = value
    return SqlQuery(" AND ".join(conditions), parameters)


def rollup_can_answer(call_filter: analytics_pb2.CallFilter, group_by: int) -> bool:
    """True when the filter and grouping use only columns the rollup has."""
    if group_by not in ROLLUP_GROUPS:
        return False
    return not (
        call_filter.status
        or call_filter.error_type
        or call_filter.metadata_key
        or call_filter.metadata_value
        or call_filter.text
    )


def choose_source(
    requested: int,
    time_range: analytics_pb2.TimeRange,
    call_filter: analytics_pb2.CallFilter,
    group_by: int,
    raw_max_ms: int,
) -> int:
    """Pick RAW or ROLLUP for a usage query (see the module docstring)."""
    if requested == analytics_pb2.USAGE_SOURCE_RAW:
        return requested
    if not rollup_can_answer(call_filter, group_by):
        if requested == analytics_pb2.USAGE_SOURCE_ROLLUP:
            raise InvalidRequestError(
                "source USAGE_SOURCE_ROLLUP cannot filter by status, error_type, "
                "metadata or text, nor group by metadata"
            )
        return analytics_pb2.USAGE_SOURCE_RAW
    if requested == analytics_pb2.USAGE_SOURCE_ROLLUP:
        return requested
    if requested != analytics_pb2.USAGE_SOURCE_AUTO:
        raise InvalidRequestError(f"unknown source value {requested}")
    span_ms = time_range.end_ms - time_range.start_ms
    if span_ms <= raw_max_ms:
        return analytics_pb2.USAGE_SOURCE_RAW
    return analytics_pb2.USAGE_SOURCE_ROLLUP


def time_series_query(
    where: SqlQuery,
    time_range: analytics_pb2.TimeRange,
    bucket_s: int,
    group: str | None,
    metadata_key: str,
    rollup: bool = False,
) -> SqlQuery:
    """Build the usage aggregate per time bucket (and group when set)."""
    check_bucket(time_range, bucket_s)
    parameters = dict(where.parameters)
    parameters["bucket_ms"] = bucket_s * 1000
    aggregates, table, _ = _source_sql(rollup)
    time_ms = (
        "toInt64(toUnixTimestamp(minute)) * 1000"
        if rollup
        else "toUnixTimestamp64Milli(start_time)"
    )
    bucket = f"intDiv({time_ms}, {{bucket_ms:Int64}}) * {{bucket_ms:Int64}}"
    group_sql = group if group is not None else "''"
    if group is not None and "group_metadata_key" in group:
        parameters["group_metadata_key"] = metadata_key
    sql = (
        f"SELECT {group_sql} AS grp, {aggregates}, {bucket} AS bucket_start_ms "
        f"FROM {table} WHERE {where.sql} "
        "GROUP BY bucket_start_ms, grp ORDER BY bucket_start_ms, grp"
    )
    return SqlQuery(sql, parameters)


def check_bucket(time_range: analytics_pb2.TimeRange, bucket_s: int) -> None:
    if bucket_s < 60 or bucket_s % 60 != 0:
        raise InvalidRequestError(
            f"bucket_s must be 60 or a multiple of 60, got {bucket_s}"
        )
    span_ms = time_range.end_ms - time_range.start_ms
    points = -(-span_ms // (bucket_s * 1000))
    if points > MAX_TIME_SERIES_POINTS:
        raise InvalidRequestError(
            f"range and bucket_s give {points} buckets, more than the maximum "
            f"{MAX_TIME_SERIES_POINTS}; use a larger bucket_s"
        )


def search_query(where: SqlQuery, page_size: int, cursor: str) -> SqlQuery:
    """Build one page of SearchCalls, newest first, one row beyond the page."""
    parameters = dict(where.parameters)
    conditions = where.sql
    if cursor:
        start_us, event_id = decode_cursor(cursor)
        conditions += (
            " AND (start_time, event_id) < "
            "(fromUnixTimestamp64Micro({cursor_start_us:Int64}, 'UTC'), "
            "toUUID({cursor_event_id:String}))"
        )
        parameters["cursor_start_us"] = start_us
        parameters["cursor_event_id"] = event_id
    parameters["row_limit"] = page_size + 1
    sql = (
        f"SELECT {SUMMARY_SELECT} FROM calls FINAL WHERE {conditions} "
        "ORDER BY start_time DESC, event_id DESC LIMIT {row_limit:UInt32}"
    )
    return SqlQuery(sql, parameters)


def page_size_of(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 0 < requested <= MAX_PAGE_SIZE:
        raise InvalidRequestError(
            f"page_size must be from 1 to {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE}), "
            f"got {requested}"
        )
    return requested


def get_call_query(event_id: str, user_id: str) -> SqlQuery:
    """Build the lookup of one call, restricted to ``user_id`` when set."""
    try:
        uuid.UUID(event_id)
    except ValueError as exc:
        raise InvalidRequestError(
            f"event_id: expected a UUID, got {event_id!r}"
        ) from exc
    conditions = "event_id = toUUID({event_id:String})"
    parameters: dict[str, Any] = {"event_id": event_id}
    if user_id:
        conditions += " AND user_id = {user_id:String}"
        parameters["user_id"] = user_id
    sql = (
        f"SELECT {SUMMARY_SELECT}, request_body, response_body, "
        "ifNull(toUnixTimestamp64Micro(first_byte_time), 0) AS first_byte_us, "
        "toUnixTimestamp64Micro(end_time) AS end_us, gateway_overhead_us, "
        f"stop_reason, error_message FROM calls FINAL WHERE {conditions} LIMIT 1"
    )
    return SqlQuery(sql, parameters)


def encode_cursor(start_us: int, event_id: str) -> str:
    """Encode the position after a call as an opaque page cursor."""
    raw = f"{_CURSOR_PREFIX}{start_us}:{event_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Decode a cursor from encode_cursor, or raise InvalidRequestError."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError("unknown cursor version")
        start_text, event_id = text[len(_CURSOR_PREFIX) :].split(":")
        start_us = int(start_text)
        uuid.UUID(event_id)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise InvalidRequestError(f"invalid cursor {cursor!r}") from exc
    return start_us, event_id


# ------------------------------------------------------------------ running


def _usage_where(
    request: analytics_pb2.UsageSummaryRequest | analytics_pb2.UsageTimeSeriesRequest,
    raw_max_ms: int,
) -> tuple[int, SqlQuery]:
    source = choose_source(
        request.source, request.range, request.filter, request.group_by, raw_max_ms
    )
    if source == analytics_pb2.USAGE_SOURCE_ROLLUP:
        return source, rollup_where_clause(request.range, request.filter)
    return source, where_clause(request.range, request.filter)


async def usage_summary(
    sink: ClickHouseSink,
    request: analytics_pb2.UsageSummaryRequest,
    raw_max_ms: int = 24 * 3_600_000,
) -> analytics_pb2.UsageSummaryResponse:
    group = group_expression(request.group_by, request.group_metadata_key)
    source, where = _usage_where(request, raw_max_ms)
    rollup = source == analytics_pb2.USAGE_SOURCE_ROLLUP
    total_rows = await _run(sink, usage_query(where, None, "", rollup))
    response = analytics_pb2.UsageSummaryResponse(
        total=usage_row(total_rows[0]), source=source
    )
    if group is None:
        return response
    group_rows = await _run(
        sink, usage_query(where, group, request.group_metadata_key, rollup)
    )
    response.groups.extend(usage_row(row) for row in group_rows)
    return response


async def usage_time_series(
    sink: ClickHouseSink,
    request: analytics_pb2.UsageTimeSeriesRequest,
    raw_max_ms: int = 24 * 3_600_000,
) -> analytics_pb2.UsageTimeSeriesResponse:
    group = group_expression(request.group_by, request.group_metadata_key)
    source, where = _usage_where(request, raw_max_ms)
    query = time_series_query(
        where,
        request.range,
        request.bucket_s,
        group,
        request.group_metadata_key,
        source == analytics_pb2.USAGE_SOURCE_ROLLUP,
    )
    rows = await _run(sink, query)
    return analytics_pb2.UsageTimeSeriesResponse(
        points=[usage_row(row) for row in rows], source=source
    )


async def search_calls(
    sink: ClickHouseSink, request: analytics_pb2.SearchCallsRequest
) -> analytics_pb2.SearchCallsResponse:
    page_size = page_size_of(request.page_size)
    where = where_clause(request.range, request.filter)
    rows = await _run(sink, search_query(where, page_size, request.cursor))
    calls = [row_to_summary(row) for row in rows[:page_size]]
    response = analytics_pb2.SearchCallsResponse(calls=calls)
    if len(rows) > page_size:
        last = calls[-1]
        response.next_cursor = encode_cursor(last.start_us, last.event_id)
    return response


async def get_call(
    sink: ClickHouseSink, request: analytics_pb2.GetCallRequest
) -> analytics_pb2.GetCallResponse:
    query = get_call_query(request.event_id, request.user_id)
    rows = await sink.query(
        query.sql,
        query.parameters,
        column_formats={"request_body": "bytes", "response_body": "bytes"},
    )
    if not rows:
        # A call of another user is reported exactly like a missing one.
        raise NotFoundError(f"call {request.event_id} not found")
    row = rows[0]
    summary_width = len(analytics_pb2.CallSummary.DESCRIPTOR.fields)
    rest = row[summary_width:]
    return analytics_pb2.GetCallResponse(
        call=row_to_summary(row[:summary_width]),
        request_body=bytes(rest[0]),
        response_body=bytes(rest[1]),
        first_byte_us=int(rest[2]),
        end_us=int(rest[3]),
        gateway_overhead_us=int(rest[4]),
        stop_reason=rest[5],
        error_message=rest[6],
    )


async def _run(sink: ClickHouseSink, query: SqlQuery) -> Sequence[Sequence[Any]]:
    return await sink.query(query.sql, query.parameters)


def usage_row(row: Sequence[Any]) -> analytics_pb2.UsageRow:
    """Build a UsageRow from a row of USAGE_AGGREGATES (after the group)."""
    error_keys, error_counts = row[3]
    usage = analytics_pb2.UsageRow(
        group=str(row[0]),
        calls=int(row[1]),
        errors=int(row[2]),
        errors_by_type={
            str(k): int(v) for k, v in zip(error_keys, error_counts, strict=True)
        },
        input_tokens=int(row[4]),
        output_tokens=int(row[5]),
        cache_read_tokens=int(row[6]),
        cache_write_tokens=int(row[7]),
        cost_usd_micros=int(row[8]),
        unknown_cost_calls=int(row[9]),
        latency=_quantiles(row[10]),
        ttft=_quantiles(row[11]),
        cache_hits=int(row[12]),
        saved_cost_usd_micros=int(row[13]),
    )
    if usage.calls:
        usage.error_rate = usage.errors / usage.calls
        usage.cache_hit_rate = usage.cache_hits / usage.calls
    if len(row) > 14:
        usage.bucket_start_ms = int(row[14])
    return usage


def _quantiles(values: Sequence[Any]) -> analytics_pb2.Quantiles:
    # t-digest states give floats, and NaN when they hold no value.
    p50, p95, p99 = (0 if math.isnan(v) else round(v) for v in map(float, values))
    return analytics_pb2.Quantiles(p50_us=p50, p95_us=p95, p99_us=p99)
