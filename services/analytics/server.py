"""The gRPC servicer of AnalyticsService: a thin layer over ingest and queries."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from services.analytics import queries
from services.analytics.errors import AnalyticsError, status_code_for
from services.analytics.ingest import IngestBuffer, serve_stream
from services.analytics.metrics import analytics_metrics
from services.analytics.sink import ClickHouseSink
from services.common.grpc_options import SERVER_KEEPALIVE_OPTIONS

logger = logging.getLogger(__name__)

SERVICE_NAME = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(
        self, sink: ClickHouseSink, buffer: IngestBuffer, raw_query_max_hours: int
    ) -> None:
        self._sink = sink
        self._buffer = buffer
        raw_max_ms = raw_query_max_hours * 3_600_000
        self._usage_summary = functools.partial(
            queries.usage_summary, raw_max_ms=raw_max_ms
        )
        self._usage_time_series = functools.partial(
            queries.usage_time_series, raw_max_ms=raw_max_ms
        )

    async def Ingest(  # noqa: N802 - the name is fixed by the proto
        self,
        request_iterator: AsyncIterator[analytics_pb2.IngestRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[analytics_pb2.IngestAck]:
        try:
            async for ack in serve_stream(
                self._buffer, request_iterator, context.peer()
            ):
                yield ack
        except AnalyticsError as exc:
            await _abort(context, "Ingest", exc)

    async def UsageSummary(  # noqa: N802
        self,
        request: analytics_pb2.UsageSummaryRequest,
        context: grpc.aio.ServicerContext,
    ) -> analytics_pb2.UsageSummaryResponse:
        return await self._run("UsageSummary", self._usage_summary, request, context)

    async def UsageTimeSeries(  # noqa: N802
        self,
        request: analytics_pb2.UsageTimeSeriesRequest,
        context: grpc.aio.ServicerContext,
    ) -> analytics_pb2.UsageTimeSeriesResponse:
        return await self._run(
            "UsageTimeSeries", self._usage_time_series, request, context
        )

    async def SearchCalls(  # noqa: N802
        self,
        request: analytics_pb2.SearchCallsRequest,
        context: grpc.aio.ServicerContext,
    ) -> analytics_pb2.SearchCallsResponse:
        return await self._run("SearchCalls", queries.search_calls, request, context)

    async def GetCall(  # noqa: N802
        self, request: analytics_pb2.GetCallRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.GetCallResponse:
        return await self._run("GetCall", queries.get_call, request, context)

    async def _run(
        self,
        method: str,
        handler: Callable[[ClickHouseSink, RequestT], Awaitable[ResponseT]],
        request: RequestT,
        context: grpc.aio.ServicerContext,
    ) -> ResponseT:
        metrics = analytics_metrics()
        started = time.perf_counter()
        try:
            response = await handler(self._sink, request)
        except AnalyticsError as exc:
            metrics.rpc_total.labels(method, status_code_for(exc).name).inc()
            await _abort(context, method, exc)
            raise AssertionError("context.abort returned") from exc
        metrics.rpc_seconds.labels(method).observe(time.perf_counter() - started)
        metrics.rpc_total.labels(method, "OK").inc()
        return response


async def _abort(
    context: grpc.aio.ServicerContext, method: str, exc: AnalyticsError
) -> None:
    code = status_code_for(exc)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        logger.info(
            "%s from %s rejected with %s: %s", method, context.peer(), code.name, exc
        )
    else:
        logger.error(
            "%s from %s failed with %s: %s", method, context.peer(), code.name, exc
        )
    await context.abort(code, str(exc))


def build_server(
    sink: ClickHouseSink, buffer: IngestBuffer, raw_query_max_hours: int = 24
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """Create the gRPC server with the analytics and health services."""
    server = grpc.aio.server(options=list(SERVER_KEEPALIVE_OPTIONS))
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
        AnalyticsServicer(sink, buffer, raw_query_max_hours), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


async def set_serving(
    health_servicer: health.aio.HealthServicer, serving: bool
) -> None:
    """Report the overall and the AnalyticsService health status."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
