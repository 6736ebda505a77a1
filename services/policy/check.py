"""The Check decision: identity, then admission, then the cache lookup."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.policy.v1 import policy_pb2
from services.common.config import GatewayConfig
from services.policy import authn, identity
from services.policy.cache import BYPASS, ResponseCache
from services.policy.errors import (
    DeadlineExpiredError,
    PolicyError,
    UnknownGatewayError,
)
from services.policy.provider_keys import ProviderKeyCipher
from services.policy.store import RedisStore

if TYPE_CHECKING:
    from services.policy.limit_decisions import LimitEngine


# A decision that arrives this long after the ingress's deadline is skipped.
# The slack covers clock differences between hosts (NTP keeps them within
# milliseconds); a stalled policy process falls behind by far more.
DEADLINE_SLACK_MS = 1000


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """The configuration, Redis store and engines that every decision uses."""

    config: GatewayConfig
    store: RedisStore
    # Key of the HMAC that turns provider keys into user ids.
    identity_secret: bytes
    # Rate limits, budgets and the loop guard; None to apply none.
    limits: LimitEngine | None = None
    # None leaves every call uncached (BYPASS).
    cache: ResponseCache | None = None
    # Decrypts stored provider keys; None without TOLLGATE_KEY_ENCRYPTION_KEY.
    provider_key_cipher: ProviderKeyCipher | None = None


async def check(
    ctx: PolicyContext, request: policy_pb2.CheckRequest
) -> policy_pb2.CheckResponse:
    """Decide on one call. Raises a PolicyError subclass to deny it."""
    if request.deadline_ms and time.time_ns() // 1_000_000 > (
        request.deadline_ms + DEADLINE_SLACK_MS
    ):
        raise DeadlineExpiredError(
            "the ingress stopped waiting for this decision; nothing was reserved"
        )
    gateway = ctx.config.gateway(request.account_id, request.gateway_id)
    if gateway is None:
        raise UnknownGatewayError(
            f"gateway {request.account_id}/{request.gateway_id} not found"
        )

    metadata = identity.parse_metadata(request.headers.get("cf-aig-metadata", ""))
    caller = await authn.resolve_caller(
        ctx.store,
        ctx.provider_key_cipher,
        ctx.identity_secret,
        gateway,
        request,
        metadata,
    )

    collect_log = request.headers.get("cf-aig-collect-log", "").lower() != "false"
    collect_payload = (
        request.headers.get("cf-aig-collect-log-payload", "").lower() != "false"
    )
    response = policy_pb2.CheckResponse(
        identity=caller.identity,
        collect_log=collect_log,
        collect_payload=collect_payload,
        metadata=metadata,
    )

    # Limits and the loop guard run before the cache lookup, so that a loop
    # served from cache is still stopped. A denial carries the caller, so the
    # ingress records the denied call under its user.
    admission = None
    try:
        if ctx.limits is not None:
            admission = await ctx.limits.admit(request, caller.identity)
        cache = BYPASS
        if ctx.cache is not None:
            confirmed = admission.rules_version if admission else None
            cache = await ctx.cache.decide(request, caller.identity, confirmed)
    except PolicyError as exc:
        exc.caller = response
        raise
    response.cache.CopyFrom(cache)
    response.inject_provider_key = caller.inject_provider_key
    if admission is not None:
        if admission.tightest_limit is not None:
            response.tightest_limit.CopyFrom(admission.tightest_limit)
        response.reservation_id = admission.reservation_id
    return response
