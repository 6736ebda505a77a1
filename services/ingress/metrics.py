"""Prometheus metrics of the ingress and its ``/metrics`` route.

Labels are bounded: the provider name (from the configuration), the HTTP
status, the cache result and the limit decision. Never a user, key or model.
Label children are cached per (provider, status), so the hot path does one
dict lookup and a few observations per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.analytics.v1 import analytics_pb2
from services.ingress.calls import Call

# From 1 ms to 10 min: LLM calls range from cached hits to long generations.
_LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip
# The gateway's own overhead is expected in the sub-millisecond range.
_OVERHEAD_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1,
)  # fmt: skip
_CACHE_RESULTS = {
    analytics_pb2.CACHE_STATUS_HIT: "hit",
    analytics_pb2.CACHE_STATUS_MISS: "miss",
    analytics_pb2.CACHE_STATUS_BYPASS: "bypass",
    analytics_pb2.CACHE_STATUS_UNSPECIFIED: "bypass",
}

METRICS_KEY: web.AppKey[IngressMetrics] = web.AppKey("tollgate_metrics")


@dataclass(slots=True)
class _ProviderChildren:
    latency: object
    overhead: object
    upstream: object
    ttft: object
    cache: dict[str, object]
    limited: object


@dataclass
class IngressMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "tollgate_ingress_requests",
            "Proxied requests by provider and HTTP status.",
            ["provider", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tollgate_ingress_request_seconds",
            "Time from request arrival to the last byte sent to the client.",
            ["provider"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.overhead = Histogram(
            "tollgate_ingress_overhead_seconds",
            "Gateway overhead: arrival to forwarding upstream (body read, policy).",
            ["provider"],
            buckets=_OVERHEAD_BUCKETS_S,
            registry=r,
        )
        self.upstream = Histogram(
            "tollgate_ingress_upstream_seconds",
            "Time from forwarding upstream to the end of the response.",
            ["provider"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ttft = Histogram(
            "tollgate_ingress_ttft_seconds",
            "Time from request arrival to the first token.",
            ["provider"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.cache = Counter(
            "tollgate_ingress_cache",
            "Cache results by provider: hit, miss or bypass.",
            ["provider", "result"],
            registry=r,
        )
        self.limited = Counter(
            "tollgate_ingress_rate_limited",
            "Requests the policy service denied with 429 (limit decisions).",
            ["provider"],
            registry=r,
        )
        self.backlog = Gauge(
            "tollgate_ingress_event_backlog",
            "Call events not yet acknowledged by the analytics service.",
            registry=r,
        )
        self.dropped = Gauge(
            "tollgate_ingress_events_dropped",
            "Call events dropped because the event queue was full, since start.",
            registry=r,
        )
        self._status_children: dict[tuple[str, int], object] = {}
        self._providers: dict[str, _ProviderChildren] = {}

    def bind_providers(self, providers: list[str]) -> None:
        """Create the label children of every configured provider up front."""
        for name in providers:
            self._children(name)

    def _children(self, provider: str) -> _ProviderChildren:
        children = self._providers.get(provider)
        if children is None:
            children = _ProviderChildren(
                latency=self.latency.labels(provider),
                overhead=self.overhead.labels(provider),
                upstream=self.upstream.labels(provider),
                ttft=self.ttft.labels(provider),
                cache={
                    result: self.cache.labels(provider, result)
                    for result in ("hit", "miss", "bypass")
                },
                limited=self.limited.labels(provider),
            )
            self._providers[provider] = children
        return children

    def observe(self, call: Call) -> None:
        """Record one finished call."""
        provider = call.route.provider
        key = (provider, call.status)
        counter = self._status_children.get(key)
        if counter is None:
            counter = self.requests.labels(provider, str(call.status))
            self._status_children[key] = counter
        counter.inc()  # type: ignore[attr-defined]
        children = self._children(provider)
        end_ns = call.end_ns or call.start_ns
        children.latency.observe((end_ns - call.start_ns) / 1e9)  # type: ignore[attr-defined]
        if call.forwarded_ns:
            children.overhead.observe((call.forwarded_ns - call.start_ns) / 1e9)  # type: ignore[attr-defined]
            children.upstream.observe(max(end_ns - call.forwarded_ns, 0) / 1e9)  # type: ignore[attr-defined]
        first_token_ns = call.outcome.first_token_ns or call.first_byte_ns
        if first_token_ns:
            children.ttft.observe((first_token_ns - call.start_ns) / 1e9)  # type: ignore[attr-defined]
        result = _CACHE_RESULTS.get(call.cache_status, "bypass")
        children.cache[result].inc()  # type: ignore[attr-defined]
        if call.status == 429 and not call.forwarded_ns:
            children.limited.inc()  # type: ignore[attr-defined]


async def handle_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
