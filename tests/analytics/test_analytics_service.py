"""The analytics service against a real chdev ClickHouse server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.analytics.v1 import analytics_pb2
from services.analytics import schema
from services.analytics.app import RunningService
from services.analytics.settings import load_settings
from services.analytics.sink import ClickHouseSink
from tests.analytics.conftest import (
    REPO,
    ChdevServer,
    ServiceFactory,
    open_stub,
    service_environ,
)
from tests.analytics.events import (
    BASE_US,
    actual_usage,
    expected_cost,
    expected_usage,
    full_event,
    random_events,
)

ACK_TIMEOUT_S = 15.0
WHOLE_RANGE = analytics_pb2.TimeRange(
    start_ms=BASE_US // 1000 - 3_600_000, end_ms=BASE_US // 1000 + 3_600_000
)


async def send_all(
    service: RunningService, requests: Sequence[analytics_pb2.IngestRequest]
) -> list[int]:
    """Send requests on one stream, close it, and return the acked sequences."""
    channel, stub = await open_stub(service)
    async with channel:
        call = stub.Ingest()
        for request in requests:
            await call.write(request)
        await call.done_writing()
        acks = []
        async with asyncio.timeout(ACK_TIMEOUT_S):
            async for ack in call:
                acks.append(ack.sequence)
        return acks


async def count_rows(service: RunningService, final: bool = True) -> int:
    suffix = " FINAL" if final else ""
    rows = await service.sink.query(f"SELECT count() FROM calls{suffix}")
    return int(rows[0][0])


RAW_ROW_SQL = """
SELECT toString(event_id), request_id, account_id, gateway_id, user_id, team_id,
    key_id, ingress_id, provider, endpoint, method, model, stream, status,
    error_type, error_message, stop_reason, toUnixTimestamp64Micro(start_time),
    ifNull(toUnixTimestamp64Micro(first_byte_time), 0),
    toUnixTimestamp64Micro(end_time), latency_us, ttft_us, gateway_overhead_us,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    cache_status, metadata, ifNull(custom_cost_usd_micros, -1), upstream_request_id,
    client_cancelled, request_body, response_body
FROM calls WHERE event_id = toUUID({event_id:String})
"""

RAW_FIELDS = (
    "event_id request_id account_id gateway_id user_id team_id key_id ingress_id "
    "provider endpoint method model stream status error_type error_message "
    "stop_reason start_us first_byte_us end_us latency_us ttft_us "
    "gateway_overhead_us input_tokens output_tokens cache_read_tokens "
    "cache_write_tokens cache_status metadata custom_cost_usd_micros "
    "upstream_request_id client_cancelled request_body response_body"
).split()


async def test_ingest_stores_every_field(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    service = await make_service(chdev.url(database))
    events = [
        full_event(),
        full_event(first_byte_us=0, ttft_us=0, custom_cost_usd_micros=-1, metadata={}),
        full_event(
            status=429, error_type="rate_limit_error", error_message="slow down"
        ),
    ]
    requests = [
        analytics_pb2.IngestRequest(sequence=1, events=events[:2]),
        analytics_pb2.IngestRequest(sequence=2, events=events[2:]),
    ]
    acks = await send_all(service, requests)
    assert acks[-1] == 2
    assert await count_rows(service, final=False) == 3
    for event in events:
        rows = await service.sink.query(
            RAW_ROW_SQL,
            {"event_id": event.event_id},
            column_formats={"request_body": "bytes", "response_body": "bytes"},
        )
        assert len(rows) == 1
        stored = dict(zip(RAW_FIELDS, rows[0], strict=True))
        for name in RAW_FIELDS:
            expected = getattr(event, name)
            if name == "cache_status":
                expected = "miss"
            if name == "metadata":
                expected = dict(expected)
            assert stored[name] == expected, name


async def test_ack_only_after_storage(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    service = await make_service(
        chdev.url(database),
        TOLLGATE_ANALYTICS_BATCH_MAX_EVENTS="5",
        TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS="600000",
    )
    channel, stub = await open_stub(service)
    async with channel:
        call = stub.Ingest()
        await call.write(
            analytics_pb2.IngestRequest(
                sequence=1, events=[full_event() for _ in range(4)]
            )
        )
        read = asyncio.ensure_future(call.read())
        await asyncio.sleep(0.5)
        assert not read.done()
        assert await count_rows(service) == 0
        await call.write(analytics_pb2.IngestRequest(sequence=2, events=[full_event()]))
        ack = await asyncio.wait_for(read, ACK_TIMEOUT_S)
        assert ack.sequence == 2
        assert await count_rows(service) == 5
        await call.done_writing()


async def test_replayed_batch_counts_once(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    service = await make_service(chdev.url(database))
    events = random_events(20, seed=3)
    batch = analytics_pb2.IngestRequest(sequence=1, events=events)
    assert await send_all(service, [batch]) == [1]
    assert await send_all(service, [batch]) == [1]
    # The same batch has the same deduplication token, so no row is added.
    assert await count_rows(service, final=False) == 20
    # Replayed in other batches, the rows are merged away by FINAL.
    split = [
        analytics_pb2.IngestRequest(sequence=7, events=events[:5]),
        analytics_pb2.IngestRequest(sequence=8, events=events[5:12]),
    ]
    assert (await send_all(service, split))[-1] == 8
    assert await count_rows(service) == 20
    channel, stub = await open_stub(service)
    async with channel:
        summary = await stub.UsageSummary(
            analytics_pb2.UsageSummaryRequest(range=WHOLE_RANGE)
        )
    assert summary.total.calls == 20
    assert summary.total.input_tokens == sum(e.input_tokens for e in events)


async def test_insert_retried_after_outage(
    own_chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    service = await make_service(own_chdev.url(database))
    own_chdev.stop()
    channel, stub = await open_stub(service)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UsageSummary(
                analytics_pb2.UsageSummaryRequest(range=WHOLE_RANGE)
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        events = random_events(10, seed=5)
        call = stub.Ingest()
        await call.write(analytics_pb2.IngestRequest(sequence=42, events=events))
        read = asyncio.ensure_future(call.read())
        await asyncio.sleep(1.0)
        assert not read.done()
        own_chdev.start()
        ack = await asyncio.wait_for(read, ACK_TIMEOUT_S)
        assert ack.sequence == 42
        await call.done_writing()
    assert await count_rows(service) == 10
    assert await count_rows(service, final=False) == 10


async def test_migrations_idempotent_across_restarts(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    first = await make_service(chdev.url(database))
    events = random_events(5, seed=9)
    await send_all(first, [analytics_pb2.IngestRequest(sequence=1, events=events)])
    await first.shutdown()
    second = await make_service(
        chdev.url(database),
        TOLLGATE_PAYLOAD_RETENTION_DAYS="7",
        TOLLGATE_CALL_RETENTION_DAYS="100",
    )
    versions = await second.sink.query("SELECT version FROM schema_migrations")
    expected = [m.version for m in schema.load_migrations()]
    assert sorted(int(row[0]) for row in versions) == expected
    assert await count_rows(second) == 5
    create = await second.sink.query(
        "SELECT create_table_query FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'calls'"
    )
    assert "toIntervalDay(7)" in create[0][0]
    assert "toIntervalDay(100)" in create[0][0]
    assert "toIntervalDay(30)" not in create[0][0]


@pytest.fixture
async def loaded(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> tuple[RunningService, list[analytics_pb2.CallEvent]]:
    service = await make_service(chdev.url(database))
    events = random_events(120, seed=11)
    requests = [
        analytics_pb2.IngestRequest(
            sequence=i + 1, events=events[i * 30 : (i + 1) * 30]
        )
        for i in range(4)
    ]
    assert (await send_all(service, requests))[-1] == 4
    return service, events


async def test_queries_return_exact_values(
    loaded: tuple[RunningService, list[analytics_pb2.CallEvent]],
) -> None:
    service, events = loaded
    channel, stub = await open_stub(service)
    async with channel:
        summary = await stub.UsageSummary(
            analytics_pb2.UsageSummaryRequest(
                range=WHOLE_RANGE, group_by=analytics_pb2.GROUP_BY_USER
            )
        )
        assert actual_usage(summary.total) == expected_usage(events)
        assert sorted(row.group for row in summary.groups) == ["alice", "bob", "carol"]
        for row in summary.groups:
            subset = [e for e in events if e.user_id == row.group]
            assert actual_usage(row) == expected_usage(subset), row.group

        by_key = await stub.UsageSummary(
            analytics_pb2.UsageSummaryRequest(
                range=WHOLE_RANGE,
                group_by=analytics_pb2.GROUP_BY_METADATA,
                group_metadata_key="feature",
                filter=analytics_pb2.CallFilter(model="gpt-4o"),
            )
        )
        gpt = [e for e in events if e.model == "gpt-4o"]
        assert actual_usage(by_key.total) == expected_usage(gpt)
        for row in by_key.groups:
            subset = [e for e in gpt if e.metadata.get("feature", "") == row.group]
            assert actual_usage(row) == expected_usage(subset), row.group

        series = await stub.UsageTimeSeries(
            analytics_pb2.UsageTimeSeriesRequest(range=WHOLE_RANGE, bucket_s=120)
        )
        assert sum(point.calls for point in series.points) == len(events)
        for point in series.points:
            start_us = point.bucket_start_ms * 1000
            subset = [
                e for e in events if start_us <= e.start_us < start_us + 120_000_000
            ]
            assert actual_usage(point) == expected_usage(subset), point.bucket_start_ms


async def test_search_pagination_covers_all(
    loaded: tuple[RunningService, list[analytics_pb2.CallEvent]],
) -> None:
    service, events = loaded
    seen: list[analytics_pb2.CallSummary] = []
    channel, stub = await open_stub(service)
    async with channel:
        cursor = ""
        for _ in range(50):
            page = await stub.SearchCalls(
                analytics_pb2.SearchCallsRequest(
                    range=WHOLE_RANGE, page_size=7, cursor=cursor
                )
            )
            seen.extend(page.calls)
            cursor = page.next_cursor
            if not cursor:
                break
    assert len(seen) == len(events)
    assert {call.event_id for call in seen} == {event.event_id for event in events}
    starts = [call.start_us for call in seen]
    assert starts == sorted(starts, reverse=True)
    by_id = {event.event_id: event for event in events}
    for call in seen:
        event = by_id[call.event_id]
        assert call.latency_us == event.latency_us
        assert call.metadata == event.metadata
        cost = expected_cost(event)
        assert call.cost_usd_micros == (-1 if cost is None else cost)


async def test_search_filters(
    loaded: tuple[RunningService, list[analytics_pb2.CallEvent]],
) -> None:
    service, events = loaded
    cases = [
        (analytics_pb2.CallFilter(user_id="bob"), lambda e: e.user_id == "bob"),
        (analytics_pb2.CallFilter(model="gpt-4o"), lambda e: e.model == "gpt-4o"),
        (analytics_pb2.CallFilter(status=429), lambda e: e.status == 429),
        (
            analytics_pb2.CallFilter(error_type="upstream_timeout"),
            lambda e: e.error_type == "upstream_timeout",
        ),
        (
            analytics_pb2.CallFilter(metadata_key="feature", metadata_value="chat"),
            lambda e: e.metadata.get("feature") == "chat",
        ),
        (
            analytics_pb2.CallFilter(metadata_key="feature"),
            lambda e: "feature" in e.metadata,
        ),
        (
            analytics_pb2.CallFilter(text="needle-3"),
            lambda e: b"needle-3" in e.request_body,
        ),
        (
            analytics_pb2.CallFilter(text="answer 1"),
            lambda e: b"answer 1" in e.response_body,
        ),
    ]
    channel, stub = await open_stub(service)
    async with channel:
        for call_filter, predicate in cases:
            page = await stub.SearchCalls(
                analytics_pb2.SearchCallsRequest(
                    range=WHOLE_RANGE, filter=call_filter, page_size=500
                )
            )
            expected = {e.event_id for e in events if predicate(e)}
            assert expected, call_filter
            assert {call.event_id for call in page.calls} == expected, call_filter
        narrow = analytics_pb2.TimeRange(
            start_ms=BASE_US // 1000, end_ms=BASE_US // 1000 + 60_000
        )
        page = await stub.SearchCalls(
            analytics_pb2.SearchCallsRequest(range=narrow, page_size=500)
        )
        expected = {e.event_id for e in events if e.start_us < BASE_US + 60_000_000}
        assert {call.event_id for call in page.calls} == expected


async def test_get_call_and_errors(
    loaded: tuple[RunningService, list[analytics_pb2.CallEvent]],
) -> None:
    service, events = loaded
    event = events[0]
    channel, stub = await open_stub(service)
    async with channel:
        found = await stub.GetCall(
            analytics_pb2.GetCallRequest(event_id=event.event_id, user_id=event.user_id)
        )
        assert found.call.event_id == event.event_id
        assert found.request_body == event.request_body
        assert found.response_body == event.response_body
        assert found.first_byte_us == event.first_byte_us
        assert found.end_us == event.end_us
        assert found.gateway_overhead_us == event.gateway_overhead_us
        assert found.stop_reason == event.stop_reason
        assert found.call.cache_status == event.cache_status
        failures = [
            (
                stub.GetCall(
                    analytics_pb2.GetCallRequest(
                        event_id=event.event_id, user_id="mallory"
                    )
                ),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                stub.GetCall(analytics_pb2.GetCallRequest(event_id=str(uuid.uuid4()))),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                stub.SearchCalls(
                    analytics_pb2.SearchCallsRequest(range=WHOLE_RANGE, page_size=501)
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.UsageSummary(
                    analytics_pb2.UsageSummaryRequest(
                        range=analytics_pb2.TimeRange(start_ms=10, end_ms=5)
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.SearchCalls(
                    analytics_pb2.SearchCallsRequest(
                        range=WHOLE_RANGE, cursor="garbage"
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
        for pending, code in failures:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pending
            assert caught.value.code() == code


async def test_ingest_rejects_invalid_event(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    service = await make_service(chdev.url(database))
    bad = analytics_pb2.IngestRequest(sequence=1, events=[full_event(event_id="nope")])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send_all(service, [bad])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event_id" in (caught.value.details() or "")


async def test_entry_point_stops_on_sigterm(
    chdev: ChdevServer, database: str, tmp_path: Path
) -> None:
    ready_file = tmp_path / "analytics.ready"
    environ = dict(os.environ)
    environ.update(service_environ(chdev.url(database)))
    environ["TOLLGATE_READY_FILE"] = str(ready_file)
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, polled below
        [sys.executable, "-m", "services.analytics"],
        cwd=REPO,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            while not ready_file.exists():
                assert process.poll() is None
                await asyncio.sleep(0.05)
        port = int(ready_file.read_text())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=20)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, stderr.decode()
    assert b"stopped" in stderr


def test_entry_point_reports_bad_settings() -> None:
    environ = dict(os.environ)
    environ["TOLLGATE_ANALYTICS_PORT"] = "-1"
    environ["TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS"] = "soon"
    result = subprocess.run(
        [sys.executable, "-m", "services.analytics"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"TOLLGATE_ANALYTICS_PORT" in result.stderr
    assert b"TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS" in result.stderr


async def test_concurrent_streams_ack_separately(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    service = await make_service(chdev.url(database))
    events = random_events(90, seed=21)
    streams = [
        [
            analytics_pb2.IngestRequest(
                sequence=100 * s + i,
                events=events[30 * s + 10 * i : 30 * s + 10 * i + 10],
            )
            for i in range(3)
        ]
        for s in range(3)
    ]
    results = await asyncio.gather(
        *(send_all(service, requests) for requests in streams)
    )
    assert [acks[-1] for acks in results] == [2, 102, 202]
    assert await count_rows(service) == 90


async def test_shutdown_flushes_open_stream(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    service = await make_service(
        chdev.url(database), TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS="600000"
    )
    channel, stub = await open_stub(service)
    async with channel:
        call = stub.Ingest()
        await call.write(
            analytics_pb2.IngestRequest(sequence=9, events=random_events(4, seed=2))
        )
        await asyncio.sleep(0.3)
        stopping = asyncio.create_task(service.shutdown())
        ack = await asyncio.wait_for(call.read(), ACK_TIMEOUT_S)
        assert ack.sequence == 9
        assert await call.code() == grpc.StatusCode.OK
        await stopping
    rows = await _count_with_new_sink(chdev, database)
    assert rows == 4


async def _count_with_new_sink(chdev: ChdevServer, database: str) -> int:
    settings = load_settings(service_environ(chdev.url(database)))
    sink = await ClickHouseSink.connect(settings.clickhouse, 5)
    try:
        rows = await sink.query("SELECT count() FROM calls FINAL")
    finally:
        await sink.close()
    return int(rows[0][0])
