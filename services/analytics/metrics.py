"""Prometheus metrics of the analytics service and its /metrics endpoint.

The endpoint is a small HTTP server on its own port
(``TOLLGATE_ANALYTICS_METRICS_PORT``; 0, the default, disables it), because the
service port speaks gRPC only.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics_http import MetricsServer, start_metrics_server

logger = logging.getLogger(__name__)

_INSERT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)
_RPC_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RPC_NAMES = ("Ingest", "UsageSummary", "UsageTimeSeries", "SearchCalls", "GetCall")


@dataclass(frozen=True, slots=True)
class AnalyticsMetrics:
    registry: CollectorRegistry
    inserted_events: Counter
    replayed_events: Counter
    insert_failures: Counter
    insert_seconds: Histogram
    batch_events: Histogram
    buffer_events: Gauge
    rpc_total: Counter
    rpc_seconds: Histogram


@functools.cache
def analytics_metrics() -> AnalyticsMetrics:
    """The metrics of this process, created on first use."""
    registry = CollectorRegistry()
    metrics = AnalyticsMetrics(
        registry=registry,
        inserted_events=Counter(
            "tollgate_analytics_inserted_events",
            "Call events inserted into ClickHouse.",
            registry=registry,
        ),
        replayed_events=Counter(
            "tollgate_analytics_replayed_events",
            "Received events dropped because their event id was already stored.",
            registry=registry,
        ),
        insert_failures=Counter(
            "tollgate_analytics_clickhouse_failures",
            "Failed ClickHouse inserts and id lookups (each retried).",
            registry=registry,
        ),
        insert_seconds=Histogram(
            "tollgate_analytics_insert_seconds",
            "Duration of one successful ClickHouse insert.",
            buckets=_INSERT_BUCKETS_S,
            registry=registry,
        ),
        batch_events=Histogram(
            "tollgate_analytics_batch_events",
            "Events per ClickHouse insert.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        ),
        buffer_events=Gauge(
            "tollgate_analytics_buffer_events",
            "Events held in memory, not yet stored.",
            registry=registry,
        ),
        rpc_total=Counter(
            "tollgate_analytics_rpc",
            "Analytics RPCs by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        ),
        rpc_seconds=Histogram(
            "tollgate_analytics_rpc_seconds",
            "Duration of query RPCs by method.",
            ["method"],
            buckets=_RPC_BUCKETS_S,
            registry=registry,
        ),
    )
    for name in RPC_NAMES:
        metrics.rpc_total.labels(name, "OK")
    return metrics


def start_analytics_metrics(host: str, port: int) -> MetricsServer | None:
    """Serve /metrics on ``port``, or return None when ``port`` is 0."""
    if port == 0:
        return None
    return start_metrics_server(analytics_metrics().registry, host, port)
