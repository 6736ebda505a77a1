"""The per-minute rollup, source selection, replays and payload retention."""

from __future__ import annotations

import time

import grpc
import pytest

from gateway.analytics.v1 import analytics_pb2
from tests.analytics.conftest import ChdevServer, ServiceFactory, open_stub
from tests.analytics.events import (
    BASE_US,
    actual_usage,
    expected_usage,
    full_event,
    random_events,
)
from tests.analytics.test_analytics_service import (  # noqa: F401 - fixture
    WHOLE_RANGE,
    loaded,
    send_all,
)

ROLLUP = analytics_pb2.USAGE_SOURCE_ROLLUP
RAW = analytics_pb2.USAGE_SOURCE_RAW
EXACT_KEYS = (
    "calls",
    "errors",
    "errors_by_type",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd_micros",
    "unknown_cost_calls",
    "cache_hits",
    "saved_cost_usd_micros",
)


def _exact_part(usage: dict[str, object]) -> dict[str, object]:
    return {key: usage[key] for key in EXACT_KEYS}


def _assert_close_percentiles(actual: dict, expected: dict) -> None:
    """t-digest percentiles: within 15 % of the exact value on small samples."""
    for name in ("latency", "ttft"):
        for got, want in zip(actual[name], expected[name], strict=True):
            assert abs(got - want) <= 0.15 * want + 1, (name, got, want)


async def test_rollup_totals_equal_raw_rows(loaded) -> None:  # noqa: F811
    service, events = loaded
    channel, stub = await open_stub(service)
    async with channel:
        for group_by, key in (
            (analytics_pb2.GROUP_BY_USER, "user_id"),
            (analytics_pb2.GROUP_BY_MODEL, "model"),
        ):
            summary = await stub.UsageSummary(
                analytics_pb2.UsageSummaryRequest(
                    range=WHOLE_RANGE, group_by=group_by, source=ROLLUP
                )
            )
            assert summary.source == ROLLUP
            expected = expected_usage(events)
            assert _exact_part(actual_usage(summary.total)) == _exact_part(expected)
            _assert_close_percentiles(actual_usage(summary.total), expected)
            for row in summary.groups:
                subset = [e for e in events if getattr(e, key) == row.group]
                assert _exact_part(actual_usage(row)) == _exact_part(
                    expected_usage(subset)
                ), row.group

        series = await stub.UsageTimeSeries(
            analytics_pb2.UsageTimeSeriesRequest(
                range=WHOLE_RANGE, bucket_s=120, source=ROLLUP
            )
        )
        assert series.source == ROLLUP
        for point in series.points:
            start_us = point.bucket_start_ms * 1000
            subset = [
                e for e in events if start_us <= e.start_us < start_us + 120_000_000
            ]
            assert _exact_part(actual_usage(point)) == _exact_part(
                expected_usage(subset)
            )


async def test_source_selection(loaded) -> None:  # noqa: F811
    service, events = loaded
    long_range = analytics_pb2.TimeRange(
        start_ms=BASE_US // 1000 - 3 * 86_400_000, end_ms=BASE_US // 1000 + 3_600_000
    )
    channel, stub = await open_stub(service)
    async with channel:
        short = await stub.UsageSummary(
            analytics_pb2.UsageSummaryRequest(range=WHOLE_RANGE)
        )
        assert short.source == RAW
        # Raw reads give exact percentiles.
        assert actual_usage(short.total) == expected_usage(events)
        long = await stub.UsageSummary(
            analytics_pb2.UsageSummaryRequest(range=long_range)
        )
        assert long.source == ROLLUP
        assert long.total.calls == len(events)
        by_metadata = await stub.UsageSummary(
            analytics_pb2.UsageSummaryRequest(
                range=long_range,
                filter=analytics_pb2.CallFilter(metadata_key="env"),
            )
        )
        assert by_metadata.source == RAW
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.UsageSummary(
                analytics_pb2.UsageSummaryRequest(
                    range=long_range,
                    source=ROLLUP,
                    filter=analytics_pb2.CallFilter(status=500),
                )
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _counts(service) -> tuple[int, int, int]:
    raw = await service.sink.query("SELECT count() FROM calls")
    final = await service.sink.query("SELECT count() FROM calls FINAL")
    rollup = await service.sink.query("SELECT sum(calls) FROM calls_by_minute")
    return int(raw[0][0]), int(final[0][0]), int(rollup[0][0])


async def test_replayed_batches_change_no_count(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    service = await make_service(chdev.url(database))
    events = random_events(40, seed=5)
    first = analytics_pb2.IngestRequest(sequence=1, events=events[:20])
    assert await send_all(service, [first]) == [1]
    assert await _counts(service) == (20, 20, 20)
    before = await service.sink.query(
        "SELECT sum(input_tokens), sum(cost_usd_micros) FROM calls_by_minute"
    )
    # The same batch again (a lost ack), then a batch mixing replays and new
    # events, on a new stream as a restarted ingress would send them.
    replay = analytics_pb2.IngestRequest(sequence=1, events=events[:20])
    mixed = analytics_pb2.IngestRequest(sequence=2, events=events[10:40])
    assert (await send_all(service, [replay, mixed]))[-1] == 2
    assert await _counts(service) == (40, 40, 40)
    again = analytics_pb2.IngestRequest(sequence=1, events=events[:20])
    assert await send_all(service, [again]) == [1]
    assert await _counts(service) == (40, 40, 40)
    channel, stub = await open_stub(service)
    async with channel:
        for source in (RAW, ROLLUP):
            summary = await stub.UsageSummary(
                analytics_pb2.UsageSummaryRequest(range=WHOLE_RANGE, source=source)
            )
            assert _exact_part(actual_usage(summary.total)) == _exact_part(
                expected_usage(events)
            )
    assert before != await service.sink.query(
        "SELECT sum(input_tokens), sum(cost_usd_micros) FROM calls_by_minute"
    )


async def test_payload_ttl_drops_payloads_and_keeps_metrics(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    service = await make_service(
        chdev.url(database),
        TOLLGATE_PAYLOAD_RETENTION_DAYS="2",
        TOLLGATE_CALL_RETENTION_DAYS="30",
    )
    now_us = time.time_ns() // 1000
    old = full_event(
        start_us=now_us - 5 * 86_400_000_000,
        first_byte_us=0,
        end_us=now_us - 5 * 86_400_000_000 + 1000,
        request_body=b"old prompt",
        response_body=b"old answer",
        input_tokens=111,
        output_tokens=222,
    )
    new = full_event(
        start_us=now_us - 3_600_000_000,
        first_byte_us=0,
        end_us=now_us - 3_600_000_000 + 1000,
        request_body=b"new prompt",
        response_body=b"new answer",
        input_tokens=5,
        output_tokens=6,
    )
    request = analytics_pb2.IngestRequest(sequence=1, events=[old, new])
    assert await send_all(service, [request]) == [1]
    await service.sink.command("ALTER TABLE calls MATERIALIZE TTL")
    await service.sink.command("OPTIMIZE TABLE calls FINAL")
    rows = await service.sink.query(
        "SELECT toString(event_id), request_body, response_body, input_tokens, "
        "output_tokens, cost_usd_micros FROM calls FINAL ORDER BY start_time"
    )
    assert [tuple(row) for row in rows] == [
        (old.event_id, "", "", 111, 222, old.custom_cost_usd_micros),
        (new.event_id, "new prompt", "new answer", 5, 6, new.custom_cost_usd_micros),
    ]
    rollup = await service.sink.query(
        "SELECT sum(calls), sum(input_tokens) FROM calls_by_minute"
    )
    assert tuple(rollup[0]) == (2, 116)
