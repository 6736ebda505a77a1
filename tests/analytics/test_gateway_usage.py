"""Known calls through the whole gateway: every aggregate checked exactly."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import grpc
import openai
import orjson
import pytest

from gateway.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from tests.analytics.events import price_table, quantile_exact
from tests.support.stack import RunningStack

_clients: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def _reference_cost(row: dict[str, Any]) -> int | None:
    from fractions import Fraction

    price = price_table().lookup(row["provider"], row["model"])
    if price is None:
        return None
    usd = (
        Fraction(row["input_tokens"] * price.input)
        + row["output_tokens"] * price.output
        + row["cache_read_tokens"] * price.cache_read
        + row["cache_write_tokens"] * price.cache_write
    )
    return -(-usd.numerator // (usd.denominator * 1_000_000))


def _send_known_calls(stack: RunningStack, tag: str) -> int:
    meta = {"cf-aig-metadata": orjson.dumps({"run": tag}).decode()}
    ant = anthropic.Anthropic(
        base_url=stack.anthropic_base_url(),
        api_key="sk-ant-test",
        max_retries=0,
        default_headers=meta,
    )
    oai = openai.OpenAI(
        base_url=stack.openai_base_url(),
        api_key="sk-openai-test",
        max_retries=0,
        default_headers=meta,
    )
    _clients.extend([ant, oai])
    cached_system = [
        {
            "type": "text",
            "text": "policy " * 400,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    ant.messages.create(
        model="claude-sonnet-4-5-20250929",
        max_tokens=64,
        system=cached_system,
        messages=[{"role": "user", "content": f"read {tag}"}],
        extra_headers={"x-sim-cache": "read"},
    )
    with ant.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=64,
        system=cached_system,
        messages=[{"role": "user", "content": f"write {tag}"}],
        extra_headers={"x-sim-cache": "write", "x-sim-output-tokens": "40"},
    ) as stream:
        for _ in stream.text_stream:
            pass
    chunks = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"stream {tag} needle-{tag}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for _ in chunks:
        pass
    oai.chat.completions.create(
        model="mystery-model-7",
        messages=[{"role": "user", "content": f"unknown {tag}"}],
    )
    oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": f"custom {tag}"}],
        extra_headers={
            "cf-aig-custom-cost": '{"per_token_in": 0.000001, "per_token_out": 0.00001}'
        },
    )
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": f"[[sim:rate_limit]] {tag}"}],
        )
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": f"bad cost {tag}"}],
            extra_headers={"cf-aig-custom-cost": '{"per_token_in": "cheap"}'},
        )
    assert "cf-aig-custom-cost" in str(info.value)
    return 7


@pytest.fixture(scope="module")
def known_calls(stack: RunningStack) -> tuple[str, list[dict[str, Any]], int]:
    tag = uuid.uuid4().hex[:12]
    count = _send_known_calls(stack, tag)
    rows = stack.wait_rows("metadata['run'] = {tag:String}", {"tag": tag}, count)
    assert len(rows) == count
    return tag, rows, int(stack.stack.services["analytics"].port)


def test_costs_per_call(known_calls) -> None:
    _, rows, _ = known_calls
    by_model = {row["model"]: row for row in rows if row["status"] == 200}
    sonnet = by_model["claude-sonnet-4-5-20250929"]
    assert sonnet["cache_read_tokens"] > 0
    assert sonnet["cost_usd_micros"] == _reference_cost(sonnet)
    haiku = by_model["claude-haiku-4-5"]
    assert haiku["stream"] and haiku["cache_write_tokens"] > 0
    assert haiku["output_tokens"] == 40
    assert haiku["cost_usd_micros"] == _reference_cost(haiku)
    mini = by_model["gpt-4o-mini"]
    assert mini["stream"] and mini["output_tokens"] > 0
    assert mini["cost_usd_micros"] == _reference_cost(mini)
    assert by_model["mystery-model-7"]["cost_usd_micros"] is None
    custom = by_model["gpt-4o"]
    prompt = (
        custom["input_tokens"]
        + custom["cache_read_tokens"]
        + custom["cache_write_tokens"]
    )
    assert custom["custom_cost_usd_micros"] == prompt * 1 + custom["output_tokens"] * 10
    assert custom["cost_usd_micros"] == custom["custom_cost_usd_micros"]


def test_usage_summary_matches_raw_rows(known_calls) -> None:
    tag, rows, port = known_calls
    now_ms = int(time.time() * 1000)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        summary = stub.UsageSummary(
            analytics_pb2.UsageSummaryRequest(
                range=analytics_pb2.TimeRange(
                    start_ms=now_ms - 3_600_000, end_ms=now_ms + 60_000
                ),
                filter=analytics_pb2.CallFilter(metadata_key="run", metadata_value=tag),
                group_by=analytics_pb2.GROUP_BY_MODEL,
            )
        )
    total = summary.total
    assert summary.source == analytics_pb2.USAGE_SOURCE_RAW
    assert total.calls == len(rows)
    for kind in ("input", "output", "cache_read", "cache_write"):
        assert getattr(total, f"{kind}_tokens") == sum(
            r[f"{kind}_tokens"] for r in rows
        )
    known = [r["cost_usd_micros"] for r in rows if r["cost_usd_micros"] is not None]
    assert total.cost_usd_micros == sum(known)
    assert total.unknown_cost_calls == 1
    errors = [r for r in rows if r["status"] >= 400 or r["error_type"]]
    assert total.errors == len(errors) == 2
    assert sum(total.errors_by_type.values()) == 2
    assert total.error_rate == pytest.approx(2 / len(rows))
    latencies = [r["latency_us"] for r in rows]
    assert (total.latency.p50_us, total.latency.p95_us, total.latency.p99_us) == tuple(
        quantile_exact(latencies, q) for q in (0.5, 0.95, 0.99)
    )
    ttfts = [r["ttft_us"] for r in rows if r["first_byte_time"] is not None]
    assert (total.ttft.p50_us, total.ttft.p95_us, total.ttft.p99_us) == tuple(
        quantile_exact(ttfts, q) for q in (0.5, 0.95, 0.99)
    )
    groups = {row.group: row for row in summary.groups}
    assert groups["gpt-4o"].calls == 3


def test_search_by_each_filter(known_calls) -> None:
    tag, rows, port = known_calls
    now_ms = int(time.time() * 1000)
    time_range = analytics_pb2.TimeRange(
        start_ms=now_ms - 3_600_000, end_ms=now_ms + 60_000
    )
    run = {"metadata_key": "run", "metadata_value": tag}
    user = rows[0]["user_id"]
    cases = [
        ({**run}, len(rows)),
        ({**run, "model": "gpt-4o"}, 3),
        ({**run, "status": 429}, 1),
        ({**run, "status": 400}, 1),
        ({**run, "user_id": user}, sum(1 for r in rows if r["user_id"] == user)),
        ({"text": f"needle-{tag}"}, 1),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        for fields, expected in cases:
            seen, cursor = [], ""
            while True:
                page = stub.SearchCalls(
                    analytics_pb2.SearchCallsRequest(
                        range=time_range,
                        filter=analytics_pb2.CallFilter(**fields),
                        page_size=2,
                        cursor=cursor,
                    )
                )
                seen.extend(page.calls)
                cursor = page.next_cursor
                if not cursor:
                    break
            assert len(seen) == expected, fields
        one = stub.GetCall(analytics_pb2.GetCallRequest(event_id=seen[0].event_id))
        assert f"needle-{tag}".encode() in one.request_body
        assert one.response_body


def test_metrics_endpoint_counts_calls(stack: RunningStack, known_calls) -> None:
    with urllib.request.urlopen(f"{stack.ingress_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'tollgate_ingress_requests_total{provider="openai",status="429"}' in text
    assert "tollgate_ingress_overhead_seconds_bucket" in text
    assert "tollgate_ingress_ttft_seconds_count" in text
    assert 'tollgate_ingress_cache_total{provider="anthropic",result="bypass"}' in text
    assert "tollgate_ingress_event_backlog" in text
    assert "user" not in text.lower().replace("user_", "")
