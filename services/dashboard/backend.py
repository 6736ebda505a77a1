"""The dashboard's only way to data: analytics query RPCs and policy admin RPCs.

gRPC errors are translated here, once, into dashboard errors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from gateway.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services.dashboard.errors import (
    BadRequestError,
    DashboardError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.max_receive_message_length", 64 << 20),
]


class FeatureMissingError(UnavailableError):
    """The peer service does not implement the RPC (UNIMPLEMENTED)."""


class Backend:
    """Long-lived channels to the analytics and policy services."""

    def __init__(
        self,
        analytics_address: str,
        policy_address: str,
        *,
        timeout_ms: int,
        admin_token: str = "",
    ) -> None:
        self._analytics_channel = grpc.aio.insecure_channel(
            analytics_address, options=_CHANNEL_OPTIONS
        )
        self._policy_channel = grpc.aio.insecure_channel(
            policy_address, options=_CHANNEL_OPTIONS
        )
        self.analytics = analytics_pb2_grpc.AnalyticsServiceStub(
            self._analytics_channel
        )
        self.admin = policy_pb2_grpc.PolicyAdminServiceStub(self._policy_channel)
        self.timeout_s = timeout_ms / 1000
        # PolicyAdminService requires the admin token when one is configured.
        self._admin_metadata = (
            (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        )

    async def close(self) -> None:
        await self._analytics_channel.close()
        await self._policy_channel.close()

    async def usage_summary(
        self, request: analytics_pb2.UsageSummaryRequest
    ) -> analytics_pb2.UsageSummaryResponse:
        return await _call(
            "UsageSummary", self.analytics.UsageSummary(request, timeout=self.timeout_s)
        )

    async def usage_time_series(
        self, request: analytics_pb2.UsageTimeSeriesRequest
    ) -> analytics_pb2.UsageTimeSeriesResponse:
        return await _call(
            "UsageTimeSeries",
            self.analytics.UsageTimeSeries(request, timeout=self.timeout_s),
        )

    async def search_calls(
        self, request: analytics_pb2.SearchCallsRequest
    ) -> analytics_pb2.SearchCallsResponse:
        return await _call(
            "SearchCalls", self.analytics.SearchCalls(request, timeout=self.timeout_s)
        )

    async def get_call(
        self, request: analytics_pb2.GetCallRequest
    ) -> analytics_pb2.GetCallResponse:
        return await _call(
            "GetCall", self.analytics.GetCall(request, timeout=self.timeout_s)
        )

    async def authenticate_key(self, secret: str) -> policy_pb2.KeyRecord:
        """Return the active key record of a gateway key, or raise UnauthorizedError."""
        try:
            response = await _call(
                "AuthenticateKey",
                self.admin.AuthenticateKey(
                    policy_pb2.AuthenticateKeyRequest(secret=secret),
                    timeout=self.timeout_s,
                    metadata=self._admin_metadata,
                ),
            )
        except (NotFoundError, BadRequestError) as exc:
            raise UnauthorizedError("invalid gateway key") from exc
        key = response.key
        if not key.user_id or key.revoked_at_ms:
            raise UnauthorizedError("invalid gateway key")
        return key

    async def limit_status(
        self, request: policy_pb2.GetLimitStatusRequest
    ) -> policy_pb2.GetLimitStatusResponse:
        return await _call(
            "GetLimitStatus",
            self.admin.GetLimitStatus(
                request, timeout=self.timeout_s, metadata=self._admin_metadata
            ),
        )

    async def cache_rules(
        self, request: policy_pb2.GetCacheRulesRequest
    ) -> policy_pb2.GetCacheRulesResponse:
        return await _call(
            "GetCacheRules",
            self.admin.GetCacheRules(
                request, timeout=self.timeout_s, metadata=self._admin_metadata
            ),
        )


async def _call(name: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise translate_rpc_error(name, exc) from exc


def translate_rpc_error(name: str, exc: grpc.aio.AioRpcError) -> DashboardError:
    """Map a failed RPC to the dashboard error that describes it to the client."""
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BadRequestError(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(details or "not found")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return UnauthorizedError(details or "not authorized")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return FeatureMissingError(f"{name} is not implemented by the service")
    logger.warning("%s failed: %s %s", name, code.name, details)
    return UnavailableError(f"{name} failed: {code.name.lower()}")
