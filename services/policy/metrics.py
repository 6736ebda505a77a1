"""Prometheus metrics of the policy service: RPCs and store errors.

A gRPC server interceptor counts every RPC by method and status code and
times it, so servicer methods need no metrics code. An RPC that ends in
UNAVAILABLE is a Redis failure (StoreUnavailableError) and is also counted in
``tollgate_policy_store_errors``. The endpoint listens on
``TOLLGATE_POLICY_METRICS_PORT`` (0, the default, disables it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

_RPC_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1,
)  # fmt: skip


class PolicyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_total = Counter(
            "tollgate_policy_rpc",
            "Policy RPCs by method and gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "tollgate_policy_rpc_seconds",
            "Duration of policy RPCs by method.",
            ["method"],
            buckets=_RPC_BUCKETS_S,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "tollgate_policy_store_errors",
            "RPCs that failed because Redis failed or timed out.",
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], Any] = {}

    def record(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        child = self._children.get(key)
        if child is None:
            child = (
                self.rpc_total.labels(method, code),
                self.rpc_seconds.labels(method),
            )
            self._children[key] = child
        child[0].inc()
        child[1].observe(seconds)
        if code == "UNAVAILABLE":
            self.store_errors.inc()


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times and counts unary RPCs; streaming RPCs pass through untouched."""

    def __init__(self, metrics: PolicyMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        behavior = handler.unary_unary
        metrics = self._metrics

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                metrics.record(method, _code_name(code), time.perf_counter() - started)
                raise
            metrics.record(method, "OK", time.perf_counter() - started)
            return response

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _code_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)
