"""Unit tests of the pure parts of the analytics service; no network."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from gateway.analytics.v1 import analytics_pb2
from services.analytics import queries, rows, schema
from services.analytics.errors import (
    InvalidRequestError,
    NotFoundError,
    SettingsError,
    StorageError,
    StorageUnavailableError,
    status_code_for,
)
from services.analytics.ingest import IngestBuffer, StreamState
from services.analytics.settings import load_settings
from services.common.pricing import load_price_table
from tests.analytics.events import full_event

# ----------------------------------------------------------------- settings

PRICES = load_price_table()


def test_settings_defaults() -> None:
    settings = load_settings({})
    assert settings.host == "127.0.0.1"
    assert settings.port == 50052
    assert settings.batch_max_events == 1000
    assert settings.flush_interval_ms == 1000
    assert settings.payload_retention_days == 30
    assert settings.call_retention_days == 395
    assert settings.ready_file is None
    assert settings.clickhouse.host == "127.0.0.1"
    assert settings.clickhouse.port == 8123
    assert settings.clickhouse.database == "tollgate"
    assert settings.clickhouse.username == "default"


def test_settings_clickhouse_url_parts() -> None:
    settings = load_settings(
        {"CLICKHOUSE_URL": "https://bob:s%40cret@db.local:9443/stats"}
    )
    target = settings.clickhouse
    assert target.secure is True
    assert target.host == "db.local"
    assert target.port == 9443
    assert target.username == "bob"
    assert target.password == "s@cret"
    assert target.database == "stats"
    assert "s@cret" not in repr(settings)


def test_settings_report_every_problem() -> None:
    environ = {
        "TOLLGATE_ANALYTICS_PORT": "http",
        "TOLLGATE_ANALYTICS_BATCH_MAX_EVENTS": "0",
        "TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS": "-5",
        "CLICKHOUSE_URL": "ftp://x/db",
        "TOLLGATE_PAYLOAD_RETENTION_DAYS": "400",
    }
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    message = str(caught.value)
    for name in (
        "TOLLGATE_ANALYTICS_PORT",
        "TOLLGATE_ANALYTICS_BATCH_MAX_EVENTS",
        "TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS",
        "CLICKHOUSE_URL",
        "TOLLGATE_PAYLOAD_RETENTION_DAYS",
    ):
        assert name in message
    assert len(caught.value.problems) == 5


def test_settings_reject_bad_database_name() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"CLICKHOUSE_URL": "http://127.0.0.1:8123/a;drop"})
    assert "invalid database name" in str(caught.value)


# --------------------------------------------------------------------- rows


def test_event_to_row_maps_every_column() -> None:
    event = full_event()
    inserted_at = datetime(2026, 1, 1, tzinfo=UTC)
    row = dict(
        zip(
            rows.CALL_COLUMN_NAMES,
            rows.event_to_row(event, inserted_at, PRICES),
            strict=True,
        )
    )
    assert row["event_id"] == uuid.UUID(event.event_id)
    assert row["start_time"] == rows.timestamp_from_us(event.start_us)
    assert row["first_byte_time"] == rows.timestamp_from_us(event.first_byte_us)
    assert row["end_time"] == rows.timestamp_from_us(event.end_us)
    assert row["cache_status"] == "miss"
    assert row["metadata"] == {"env": "prod", "feature": "chat"}
    assert row["custom_cost_usd_micros"] == 4_321
    assert row["cost_usd_micros"] == 4_321
    assert row["request_body"] == event.request_body
    assert row["inserted_at"] == inserted_at
    for name in ("request_id", "user_id", "team_id", "key_id", "ingress_id", "status"):
        assert row[name] == getattr(event, name)


def test_event_to_row_unknown_values() -> None:
    event = full_event(first_byte_us=0, custom_cost_usd_micros=-1)
    row = dict(
        zip(
            rows.CALL_COLUMN_NAMES,
            rows.event_to_row(event, datetime.now(UTC), PRICES),
            strict=True,
        )
    )
    assert row["first_byte_time"] is None
    assert row["custom_cost_usd_micros"] is None
    assert row["cost_usd_micros"] is None


def test_timestamp_from_us_is_exact() -> None:
    value = rows.timestamp_from_us(1_767_571_200_123_457)
    assert value.microsecond == 123_457
    assert value.tzinfo is UTC


def test_event_problems_lists_each_field() -> None:
    event = full_event(
        event_id="not-a-uuid", start_us=0, status=70000, input_tokens=-1, cache_status=9
    )
    problems = rows.event_problems(event)
    assert len(problems) == 5
    assert any(p.startswith("event_id") for p in problems)
    assert any(p.startswith("start_us") for p in problems)
    assert any(p.startswith("status") for p in problems)
    assert any(p.startswith("input_tokens") for p in problems)
    assert any(p.startswith("cache_status") for p in problems)
    assert rows.event_problems(full_event()) == []


def test_deduplication_token_depends_on_ids() -> None:
    first = rows.deduplication_token(["a", "b"])
    assert first == rows.deduplication_token(["a", "b"])
    assert first != rows.deduplication_token(["b", "a"])
    assert first != rows.deduplication_token(["ab"])


def test_call_columns_match_migration() -> None:
    ddl = "\n".join(
        statement
        for migration in schema.load_migrations()
        for statement in migration.statements
        if "calls_by_minute" not in statement
    )
    for name in rows.CALL_COLUMN_NAMES:
        assert f"    {name} " in ddl or f"ADD COLUMN IF NOT EXISTS {name} " in ddl


# ------------------------------------------------------------------ queries


def test_cursor_round_trip() -> None:
    event_id = str(uuid.uuid4())
    cursor = queries.encode_cursor(1_767_571_200_000_001, event_id)
    assert queries.decode_cursor(cursor) == (1_767_571_200_000_001, event_id)


@pytest.mark.parametrize(
    "cursor", ["%%%", "djI6MTox", "eHl6", queries.encode_cursor(1, "x")]
)
def test_cursor_invalid(cursor: str) -> None:
    with pytest.raises(InvalidRequestError):
        queries.decode_cursor(cursor)


def test_where_clause_uses_parameters() -> None:
    hostile = "x' OR 1=1 --"
    call_filter = analytics_pb2.CallFilter(
        user_id=hostile,
        metadata_key="env",
        metadata_value=hostile,
        text=hostile,
        status=500,
    )
    where = queries.where_clause(
        analytics_pb2.TimeRange(start_ms=1, end_ms=2), call_filter
    )
    assert hostile not in where.sql
    assert where.parameters["user_id"] == hostile
    assert where.parameters["metadata_value"] == hostile
    assert where.parameters["text"] == hostile
    assert where.parameters["status"] == 500
    assert "{user_id:String}" in where.sql
    assert "model" not in where.parameters


@pytest.mark.parametrize(("start_ms", "end_ms"), [(5, 5), (10, 2), (-1, 10)])
def test_where_clause_bad_range(start_ms: int, end_ms: int) -> None:
    time_range = analytics_pb2.TimeRange(start_ms=start_ms, end_ms=end_ms)
    with pytest.raises(InvalidRequestError):
        queries.where_clause(time_range, analytics_pb2.CallFilter())


def test_metadata_value_needs_key() -> None:
    call_filter = analytics_pb2.CallFilter(metadata_value="prod")
    with pytest.raises(InvalidRequestError):
        queries.where_clause(analytics_pb2.TimeRange(start_ms=1, end_ms=2), call_filter)


def test_group_expression() -> None:
    assert queries.group_expression(analytics_pb2.GROUP_BY_UNSPECIFIED, "") is None
    assert queries.group_expression(analytics_pb2.GROUP_BY_USER, "") == "user_id"
    with pytest.raises(InvalidRequestError):
        queries.group_expression(analytics_pb2.GROUP_BY_METADATA, "")
    with pytest.raises(InvalidRequestError):
        queries.group_expression(99, "")


def test_usage_query_binds_metadata_key() -> None:
    where = queries.where_clause(
        analytics_pb2.TimeRange(start_ms=1, end_ms=2), analytics_pb2.CallFilter()
    )
    group = queries.group_expression(analytics_pb2.GROUP_BY_METADATA, "env")
    query = queries.usage_query(where, group, "env")
    assert query.parameters["group_metadata_key"] == "env"
    assert "FROM calls FINAL" in query.sql
    assert "GROUP BY grp" in query.sql


@pytest.mark.parametrize("bucket_s", [0, 30, 90, -60])
def test_check_bucket_rejects_width(bucket_s: int) -> None:
    with pytest.raises(InvalidRequestError):
        queries.check_bucket(
            analytics_pb2.TimeRange(start_ms=0, end_ms=60_000), bucket_s
        )


def test_check_bucket_rejects_too_many_points() -> None:
    time_range = analytics_pb2.TimeRange(start_ms=0, end_ms=60_000 * 10_001)
    with pytest.raises(InvalidRequestError):
        queries.check_bucket(time_range, 60)
    queries.check_bucket(
        analytics_pb2.TimeRange(start_ms=0, end_ms=60_000 * 10_000), 60
    )


def test_page_size_of() -> None:
    assert queries.page_size_of(0) == 50
    assert queries.page_size_of(500) == 500
    for bad in (-1, 501):
        with pytest.raises(InvalidRequestError):
            queries.page_size_of(bad)


def test_search_query_adds_cursor() -> None:
    where = queries.where_clause(
        analytics_pb2.TimeRange(start_ms=1, end_ms=2), analytics_pb2.CallFilter()
    )
    event_id = str(uuid.uuid4())
    query = queries.search_query(where, 10, queries.encode_cursor(77, event_id))
    assert query.parameters["cursor_start_us"] == 77
    assert query.parameters["cursor_event_id"] == event_id
    assert query.parameters["row_limit"] == 11
    assert "ORDER BY start_time DESC, event_id DESC" in query.sql


def test_get_call_query_rejects_bad_id() -> None:
    with pytest.raises(InvalidRequestError):
        queries.get_call_query("nope", "")
    query = queries.get_call_query(str(uuid.uuid4()), "alice")
    assert query.parameters["user_id"] == "alice"


def test_usage_row_mapping() -> None:
    row = (
        "alice",
        3,
        1,
        (["http_500"], [1]),
        10,
        20,
        3,
        4,
        99,
        2,
        [5, 6, 7],
        [1, 2, 3],
        1,
        250,
    )
    usage = queries.usage_row(row)
    assert usage.saved_cost_usd_micros == 250
    assert usage.error_rate == pytest.approx(1 / 3)
    assert usage.cache_hit_rate == pytest.approx(1 / 3)
    assert usage.group == "alice"
    assert usage.errors_by_type == {"http_500": 1}
    assert usage.latency.p99_us == 7
    assert usage.ttft.p50_us == 1
    assert usage.unknown_cost_calls == 2
    assert usage.bucket_start_ms == 0


# ------------------------------------------------------------------- schema


def test_split_statements() -> None:
    sql = "-- comment\nCREATE TABLE a (x String DEFAULT ';');\n\nSELECT 1;\n-- end\n"
    assert schema.split_statements(sql) == [
        "CREATE TABLE a (x String DEFAULT ';')",
        "SELECT 1",
    ]


def test_migrations_load_in_order() -> None:
    migrations = schema.load_migrations()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert migrations[0].version == 1
    assert migrations[0].name == "calls"


CREATE_QUERY = (
    "CREATE TABLE t.calls (`event_id` UUID, `request_body` String CODEC(ZSTD(3)) "
    "TTL toDateTime(start_time) + toIntervalDay(30), `response_body` String "
    "CODEC(ZSTD(3)) TTL toDateTime(start_time) + toIntervalDay(7)) ENGINE = "
    "ReplacingMergeTree(inserted_at) ORDER BY event_id TTL toDateTime(start_time) "
    "+ toIntervalDay(395) SETTINGS index_granularity = 8192"
)


def test_parse_retention() -> None:
    retention = schema.parse_retention(CREATE_QUERY)
    assert retention.call_days == 395
    assert retention.payload_days == {"request_body": 30, "response_body": 7}


def test_retention_statements_only_for_changes() -> None:
    retention = schema.parse_retention(CREATE_QUERY)
    statements = schema.retention_statements(retention, 30, 395)
    assert len(statements) == 1
    assert "MODIFY COLUMN response_body" in statements[0]
    assert "INTERVAL 30 DAY" in statements[0]
    assert schema.retention_statements(retention, 7, 395)[0].count("request_body") == 1
    assert "MODIFY TTL" in schema.retention_statements(retention, 30, 10)[-1]


def test_parse_retention_without_ttl() -> None:
    retention = schema.parse_retention("CREATE TABLE t (`x` UInt8) ENGINE = Memory")
    assert retention.call_days is None
    assert len(schema.retention_statements(retention, 30, 395)) == 3


# ------------------------------------------------------------------- errors


def test_status_codes() -> None:
    assert status_code_for(InvalidRequestError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code_for(NotFoundError("x")) == grpc.StatusCode.NOT_FOUND
    assert status_code_for(StorageUnavailableError("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_code_for(StorageError("x")) == grpc.StatusCode.INTERNAL


# ------------------------------------------------------------ ingest buffer


class FakeSink:
    """Records inserts; fails the first ``failures`` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[tuple[list[Any], str]] = []
        self.attempts = 0
        self.release = asyncio.Event()
        self.release.set()

    async def insert_calls(self, batch: list[Any], token: str) -> None:
        self.attempts += 1
        await self.release.wait()
        if self.failures:
            self.failures -= 1
            raise StorageUnavailableError("ClickHouse down")
        self.batches.append((batch, token))

    async def stored_event_ids(self, ids: list[str], lo: int, hi: int) -> set[str]:
        return set()


def make_buffer(
    sink: FakeSink, batch: int = 3, interval_s: float = 60, size: int = 100
) -> IngestBuffer:
    return IngestBuffer(sink, batch, interval_s, size, retry_max_s=0.01)  # type: ignore[arg-type]


def request(sequence: int, count: int) -> analytics_pb2.IngestRequest:
    return analytics_pb2.IngestRequest(
        sequence=sequence, events=[full_event() for _ in range(count)]
    )


async def test_buffer_writes_at_batch_size() -> None:
    sink = FakeSink()
    buffer = make_buffer(sink, batch=3)
    flusher = asyncio.create_task(buffer.run())
    stream = buffer.open_stream("test")
    await buffer.put(stream, request(1, 2))
    await asyncio.sleep(0.05)
    assert sink.batches == []
    assert stream.stored_sequence is None
    await buffer.put(stream, request(2, 2))
    await asyncio.sleep(0.05)
    assert [len(batch) for batch, _ in sink.batches] == [3]
    # Request 2 is split: one event stored, one still queued.
    assert stream.stored_sequence == 1
    buffer.close()
    await flusher
    assert [len(batch) for batch, _ in sink.batches] == [3, 1]
    assert stream.stored_sequence == 2


async def test_buffer_flushes_after_interval() -> None:
    sink = FakeSink()
    buffer = make_buffer(sink, batch=100, interval_s=0.05)
    flusher = asyncio.create_task(buffer.run())
    stream = buffer.open_stream("test")
    await buffer.put(stream, request(5, 1))
    await asyncio.sleep(0.2)
    assert len(sink.batches) == 1
    assert stream.stored_sequence == 5
    buffer.close()
    await flusher


async def test_buffer_retries_same_batch() -> None:
    sink = FakeSink(failures=3)
    buffer = make_buffer(sink, batch=2)
    flusher = asyncio.create_task(buffer.run())
    stream = buffer.open_stream("test")
    await buffer.put(stream, request(1, 2))
    buffer.close()
    await flusher
    assert sink.attempts == 4
    assert len(sink.batches) == 1
    assert stream.stored_sequence == 1


async def test_buffer_waits_when_full() -> None:
    sink = FakeSink()
    sink.release.clear()
    buffer = make_buffer(sink, batch=2, interval_s=0.01, size=4)
    flusher = asyncio.create_task(buffer.run())
    stream = buffer.open_stream("test")
    await buffer.put(stream, request(1, 2))
    await buffer.put(stream, request(2, 2))
    blocked = asyncio.create_task(buffer.put(stream, request(3, 1)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert buffer.held_events == 4
    sink.release.set()
    await asyncio.wait_for(blocked, 1)
    buffer.close()
    await flusher
    assert stream.stored_sequence == 3


async def test_buffer_acks_in_order_per_stream() -> None:
    sink = FakeSink()
    buffer = make_buffer(sink, batch=2)
    flusher = asyncio.create_task(buffer.run())
    first = buffer.open_stream("a")
    second = buffer.open_stream("b")
    await buffer.put(first, request(10, 1))
    await buffer.put(second, request(1, 1))
    await buffer.put(first, request(11, 0))
    await asyncio.sleep(0.05)
    assert first.stored_sequence == 11
    assert second.stored_sequence == 1
    buffer.close()
    await flusher


async def test_buffer_rejects_old_sequence() -> None:
    buffer = make_buffer(FakeSink())
    stream: StreamState = buffer.open_stream("test")
    await buffer.put(stream, request(3, 0))
    with pytest.raises(InvalidRequestError):
        await buffer.put(stream, request(3, 0))
    with pytest.raises(InvalidRequestError):
        await buffer.put(
            stream,
            analytics_pb2.IngestRequest(sequence=4, events=[full_event(event_id="x")]),
        )
