"""Map PolicyService outcomes to what the ingress does and sends.

One table turns each gRPC status of ``Check`` into an HTTP error in the
provider's format; the dependency failures (UNAVAILABLE, DEADLINE_EXCEEDED
and the like) instead follow the gateway's fail mode.
"""

from __future__ import annotations

import logging

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from multidict import CIMultiDict

from gateway.analytics.v1 import analytics_pb2
from gateway.policy.v1 import policy_pb2
from services.common.config import Gateway
from services.ingress.calls import Call
from services.ingress.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)

logger = logging.getLogger(__name__)

DENIALS: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationFailed,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
}

CACHE_STATUS_HEADERS = {
    analytics_pb2.CACHE_STATUS_HIT: "HIT",
    analytics_pb2.CACHE_STATUS_MISS: "MISS",
    analytics_pb2.CACHE_STATUS_BYPASS: "BYPASS",
}

# Count of calls admitted without a policy decision, for logs and metrics.
fail_open_count = 0


def handle_policy_error(
    exc: grpc.aio.AioRpcError, gateway: Gateway | None, call: Call
) -> policy_pb2.CheckResponse:
    """Raise the denial that ``exc`` carries, or admit the call degraded."""
    denial = DENIALS.get(exc.code())
    if denial is not None:
        raise denial(exc.details() or "request denied", headers=_retry_headers(exc))

    global fail_open_count
    if gateway is not None and gateway.fail_mode == "closed":
        logger.error(
            "policy check failed (%s); gateway %s/%s fails closed",
            exc.code().name,
            gateway.account_id,
            gateway.gateway_id,
        )
        raise ServiceUnavailable(
            "the gateway cannot check this request right now; retry later",
            headers={"retry-after": "1"},
        )
    fail_open_count += 1
    logger.warning(
        "policy check failed (%s: %s); admitting the call (fail-open, %d so far)",
        exc.code().name,
        exc.details(),
        fail_open_count,
    )
    return policy_pb2.CheckResponse(
        identity=policy_pb2.Identity(
            user_id="unknown", source=policy_pb2.IDENTITY_SOURCE_UNSPECIFIED
        ),
        cache=policy_pb2.CacheDecision(status=policy_pb2.CACHE_STATUS_BYPASS),
        collect_log=True,
        collect_payload=True,
        degraded=True,
    )


def _retry_headers(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    """Read google.rpc.RetryInfo from the status details into Retry-After."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if status is None:
        return {}
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.seconds + (1 if info.retry_delay.nanos else 0)
            return {"retry-after": str(max(delay, 1))}
    return {}


def cache_status_header(cache_status: int) -> str:
    return CACHE_STATUS_HEADERS.get(cache_status, "BYPASS")


def add_limit_headers(
    headers: CIMultiDict[str], decision: policy_pb2.CheckResponse | None
) -> None:
    """Describe the tightest limit in the IETF RateLimit headers and the common ones."""
    if decision is None or not decision.HasField("tightest_limit"):
        return
    limit = decision.tightest_limit
    headers["ratelimit-limit"] = str(limit.limit)
    headers["ratelimit-remaining"] = str(max(limit.remaining, 0))
    headers["ratelimit-reset"] = str(limit.reset_s)
    window = f";w={limit.window_s}" if limit.window_s else ""
    headers["ratelimit-policy"] = f'"{limit.name}";q={limit.limit}{window}'
    headers["ratelimit"] = (
        f'"{limit.name}";r={max(limit.remaining, 0)};t={limit.reset_s}'
    )
