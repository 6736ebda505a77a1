"""Percentiles, summaries, added latency, target checks and the Markdown
section of the benchmark report."""

from __future__ import annotations

import math

import pytest

from bench import report
from bench.load import LoadResult, Sample


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 0.50) == 50.0
    assert report.percentile(values, 0.90) == 90.0
    assert report.percentile(values, 0.99) == 99.0
    assert report.percentile(values, 1.0) == 100.0
    assert report.percentile(values, 0.0) == 1.0


def test_percentile_small_and_unsorted_inputs() -> None:
    assert report.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert report.percentile([7.0], 0.99) == 7.0
    assert math.isnan(report.percentile([], 0.5))


def test_percentile_rejects_a_share_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="outside"):
        report.percentile([1.0], 50)


def test_summarize_counts_only_successful_requests_in_latency_and_rps() -> None:
    samples = [Sample(0.010 * (i + 1), 0.005, True) for i in range(10)]
    samples += [Sample(5.0, None, False, "500"), Sample(5.0, None, False, "500")]
    result = LoadResult(samples, wall_s=2.0, client_cpu_s=1.8)

    summary = report.summarize(result)

    assert summary["requests"] == 12
    assert summary["ok"] == 10
    assert summary["errors"] == {"500": 2}
    assert summary["rps"] == pytest.approx(5.0)
    assert summary["p50_ms"] == pytest.approx(50.0)
    assert summary["max_ms"] == pytest.approx(100.0)
    assert summary["ttfb_p50_ms"] == pytest.approx(5.0)
    assert summary["client_cpu_share"] == pytest.approx(0.9)
    assert summary["client_bound"] is True


def test_cpu_ms_per_call_sums_processes() -> None:
    cpu_s = {"ingress": 0.6, "policy": 0.3, "analytics": 0.1}
    assert report.cpu_ms_per_call(cpu_s, 1000) == pytest.approx(1.0)
    assert math.isnan(report.cpu_ms_per_call(cpu_s, 0))


def _row(target: str, case: str, p50: float, p99: float, **extra: object) -> dict:
    row = {
        "target": target,
        "case": case,
        "p50_ms": p50,
        "p99_ms": p99,
        "ttfb_p50_ms": None,
        "load": "rate",
        "mode": "json",
        "rps": 20.0,
    }
    row.update(extra)
    return row


def test_attach_added_subtracts_the_direct_row_of_the_same_case() -> None:
    rows = [
        _row("direct", "a", 40.0, 50.0, ttfb_p50_ms=20.0),
        _row("tollgate", "a", 41.5, 52.0, ttfb_p50_ms=21.0),
        _row("tollgate", "b", 41.0, 52.0),
        {"target": "litellm", "case": "a", "not_run": "install failed"},
    ]

    report.attach_added(rows)

    assert rows[1]["added_p50_ms"] == pytest.approx(1.5)
    assert rows[1]["added_p99_ms"] == pytest.approx(2.0)
    assert rows[1]["added_ttfb_ms"] == pytest.approx(1.0)
    assert rows[2]["added_p50_ms"] is None
    assert "added_p50_ms" not in rows[3]


def test_target_checks_report_met_and_missed_with_the_margin() -> None:
    rows = [
        _row(
            "tollgate",
            "anthropic json 20 req/s",
            41.0,
            45.0,
            added_p50_ms=1.2,
            added_p99_ms=3.5,
        ),
        _row(
            "tollgate",
            "anthropic json c=32",
            60.0,
            80.0,
            load="concurrency",
            rps=900.0,
            cpu_ms_per_call=0.8,
            rss_start_mib={"ingress": 50.0},
            rss_end_mib={"ingress": 60.0},
        ),
        _row(
            "portkey", "anthropic json c=32", 90.0, 120.0, load="concurrency", rps=450.0
        ),
    ]

    checks = {
        name: (value, verdict) for name, value, verdict in report.target_checks(rows)
    }

    assert checks["added p50 <= 1.5 ms, anthropic json 20 req/s"] == ("1.20", "met")
    assert checks["added p99 <= 3.0 ms, anthropic json 20 req/s"] == (
        "3.50",
        "missed by 0.50",
    )
    assert checks["req/s >= 1.5x Portkey's, anthropic json c=32"] == (
        "2.00x (900 / 450)",
        "met",
    )
    assert checks["CPU ms per call <= 1.0 (worst c=32 case)"] == ("0.80", "met")
    assert checks["ingress RSS flat over the case, anthropic json c=32"][1] == "grew"


def test_replace_section_keeps_the_prose_around_the_marks() -> None:
    document = (
        "# Benchmarks\n\nintro\n\n"
        f"{report.BEGIN_MARK}\nold table\n{report.END_MARK}\n\n## Profile\n\nnotes\n"
    )
    section = f"{report.BEGIN_MARK}\nnew table\n{report.END_MARK}"

    updated = report.replace_section(document, section)

    assert "old table" not in updated
    assert "new table" in updated
    assert updated.startswith("# Benchmarks\n\nintro\n")
    assert updated.endswith("## Profile\n\nnotes\n")


def test_replace_section_appends_when_the_marks_are_missing() -> None:
    section = f"{report.BEGIN_MARK}\nt\n{report.END_MARK}"
    updated = report.replace_section("# Benchmarks\n", section)
    assert updated == f"# Benchmarks\n\n## Results\n\n{section}\n"


def test_results_table_shows_not_run_rows_with_their_reason() -> None:
    table = report.results_table(
        [
            {
                "target": "tollgate-cache",
                "case": "openai sse c=32",
                "not_run": "cache not available on this branch",
            }
        ]
    )
    assert "| tollgate-cache | openai sse c=32 | not run: cache not available" in table
