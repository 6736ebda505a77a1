"""Map PolicyService outcomes to what the ingress does and sends.

One table turns each gRPC status of ``Check`` into an HTTP error in the
provider's format. Dependency failures (UNAVAILABLE, DEADLINE_EXCEEDED and
the like) follow the gateway's fail mode instead.
"""

from __future__ import annotations

import logging
import time

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
from services.ingress.fallback_limits import LocalLimiter
from services.policy.errors import InvalidRequestError
from services.policy.identity import parse_metadata
from services.policy.keys import SECRET_PREFIX

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
# Fail-open admissions and fail-closed 503s are each logged at most once per
# this many seconds, with the count since the last line.
FAIL_OPEN_LOG_INTERVAL_S = 10.0
_fail_open_logged_at = -FAIL_OPEN_LOG_INTERVAL_S
_fail_closed_logged_at = -FAIL_OPEN_LOG_INTERVAL_S
_fail_closed_unlogged = 0
_fail_open_unlogged = 0
# Limit kinds an OpenAI error names as type "tokens"; every other is "requests".
TOKEN_METRICS = ("input_tokens", "output_tokens", "total_tokens")


def handle_policy_error(
    exc: grpc.aio.AioRpcError,
    gateway: Gateway | None,
    call: Call,
    limiter: LocalLimiter | None = None,
    request: policy_pb2.CheckRequest | None = None,
) -> policy_pb2.CheckResponse:
    """Raise the denial that ``exc`` carries, or admit the call degraded."""
    call.decision = _denied_caller(exc)
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        raise _rate_limited(exc)
    denial = DENIALS.get(exc.code())
    if denial is not None:
        raise denial(exc.details() or "request denied", headers=_retry_headers(exc))

    # The policy service failed: whatever happens next, the call's event
    # names the user from its own headers.
    unchecked = _unchecked_caller(request)
    call.decision = unchecked
    if request is not None and request.presented_key.startswith(SECRET_PREFIX):
        # Without the policy service the key cannot be checked or swapped for
        # the stored provider key, and it must never reach the provider.
        logger.error(
            "policy check failed (%s); a gateway key cannot be checked now",
            exc.code().name,
        )
        raise ServiceUnavailable(
            "the gateway cannot check gateway keys right now; retry later",
            headers={"retry-after": "1"},
        )

    global fail_open_count, _fail_open_logged_at, _fail_open_unlogged
    global _fail_closed_logged_at, _fail_closed_unlogged
    if gateway is not None and gateway.fail_mode == "closed":
        _fail_closed_unlogged += 1
        now = time.monotonic()
        if now - _fail_closed_logged_at >= FAIL_OPEN_LOG_INTERVAL_S:
            logger.error(
                "policy check failed (%s); gateway %s/%s fails closed: %d calls "
                "answered 503 since the last report",
                exc.code().name,
                gateway.account_id,
                gateway.gateway_id,
                _fail_closed_unlogged,
            )
            _fail_closed_logged_at = now
            _fail_closed_unlogged = 0
        raise ServiceUnavailable(
            "the gateway cannot check this request right now; retry later",
            headers={"retry-after": "1"},
        )
    if limiter is not None and request is not None:
        wait_s = limiter.admit(request)
        if wait_s:
            raise RateLimited(
                "rate limit exceeded (the gateway applies its local limits while "
                f"its policy service is unavailable); retry in {wait_s} s",
                headers={"retry-after": str(wait_s)},
            )
    fail_open_count += 1
    _fail_open_unlogged += 1
    now = time.monotonic()
    if now - _fail_open_logged_at >= FAIL_OPEN_LOG_INTERVAL_S:
        logger.warning(
            "policy check failed (%s: %s); admitted %d calls fail-open since the "
            "last report, %d in total",
            exc.code().name,
            exc.details(),
            _fail_open_unlogged,
            fail_open_count,
        )
        _fail_open_logged_at = now
        _fail_open_unlogged = 0
    return unchecked


def _unchecked_caller(
    request: policy_pb2.CheckRequest | None,
) -> policy_pb2.CheckResponse:
    """Describe a call the policy service could not check, from its headers.

    The user and metadata come from cf-aig-metadata, as the policy service
    would read them, so the call's event lands under its user.
    """
    headers = request.headers if request is not None else {}
    try:
        metadata = parse_metadata(headers.get("cf-aig-metadata", ""))
    except InvalidRequestError:
        metadata = {}
    user = metadata.get("user", "")
    source = (
        policy_pb2.IDENTITY_SOURCE_METADATA
        if user
        else policy_pb2.IDENTITY_SOURCE_UNSPECIFIED
    )
    return policy_pb2.CheckResponse(
        identity=policy_pb2.Identity(user_id=user or "unknown", source=source),
        cache=policy_pb2.CacheDecision(status=policy_pb2.CACHE_STATUS_BYPASS),
        collect_log=headers.get("cf-aig-collect-log", "").lower() != "false",
        collect_payload=(
            headers.get("cf-aig-collect-log-payload", "").lower() != "false"
        ),
        metadata=metadata,
        degraded=True,
    )


def _denied_caller(exc: grpc.aio.AioRpcError) -> policy_pb2.CheckResponse | None:
    """Read the caller a denial names (identity, metadata) from its details.

    The policy service attaches them once it has identified the caller, so that a
    denied call is still recorded under its user.
    """
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(policy_pb2.CheckResponse.DESCRIPTOR):
            caller = policy_pb2.CheckResponse()
            detail.Unpack(caller)
            return caller
    return None


class TokensRateLimited(RateLimited):
    openai_type = "tokens"


def _rate_limited(exc: grpc.aio.AioRpcError) -> RateLimited:
    """Build the 429 of a limit denial from its QuotaFailure and RetryInfo."""
    headers = _retry_headers(exc)
    violation = _quota_violation(exc)
    if violation is None:
        return RateLimited(exc.details() or "rate limit exceeded", headers=headers)
    retry_after = headers.get("retry-after", "1")
    headers["ratelimit-limit"] = str(violation.quota_value)
    headers["ratelimit-remaining"] = "0"
    headers["ratelimit-reset"] = retry_after
    headers["ratelimit"] = f'"{violation.quota_id}";r=0;t={retry_after}'
    error_type = (
        TokensRateLimited if violation.quota_metric in TOKEN_METRICS else (RateLimited)
    )
    return error_type(violation.description or exc.details(), headers=headers)


def _quota_violation(
    exc: grpc.aio.AioRpcError,
) -> error_details_pb2.QuotaFailure.Violation | None:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            if quota.violations:
                return quota.violations[0]
    return None


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
