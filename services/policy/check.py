"""The Check decision: identity, then admission, then the cache lookup."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.v1 import policy_pb2
from services.common.config import GatewayConfig
from services.policy import authn, identity
from services.policy.errors import UnknownGatewayError
from services.policy.provider_keys import ProviderKeyCipher
from services.policy.store import RedisStore


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What every decision needs: the configuration and the Redis store."""

    config: GatewayConfig
    store: RedisStore
    # Key of the HMAC that turns provider keys into user ids.
    identity_secret: bytes
    # Decrypts stored provider keys; None without TOLLGATE_KEY_ENCRYPTION_KEY.
    provider_key_cipher: ProviderKeyCipher | None = None


async def check(
    ctx: PolicyContext, request: policy_pb2.CheckRequest
) -> policy_pb2.CheckResponse:
    """Decide on one call. Raises a PolicyError subclass to deny it."""
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
    return policy_pb2.CheckResponse(
        identity=caller.identity,
        inject_provider_key=caller.inject_provider_key,
        cache=policy_pb2.CacheDecision(status=policy_pb2.CACHE_STATUS_BYPASS),
        collect_log=collect_log,
        collect_payload=collect_payload,
        metadata=metadata,
    )
