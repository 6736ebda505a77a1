"""Authenticate a call: which user it is, and which provider key goes upstream.

Where the gateway key comes from, in order:

1. ``cf-aig-authorization: Bearer <key>`` (the ingress sends it as
   ``gateway_key``);
2. the SDK's own API key (``x-api-key`` or ``Authorization: Bearer``, sent as
   ``presented_key``) when it starts with ``tg_``. The gateway must then hold
   a stored provider key to send upstream in its place, because a gateway
   key is never forwarded to a provider.

Without a gateway key, an authenticated gateway rejects the call. Any other
gateway takes the user from ``cf-aig-metadata`` or from a keyed hash of the
provider key and forwards the provider key unchanged (bring your own key).
A provider key presented next to a valid gateway key also wins over a stored
one, so one user can bring their own key on a gateway that has a stored key.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.v1 import policy_pb2
from services.common.config import Gateway
from services.policy import identity, keys, provider_keys
from services.policy.errors import AuthenticationError
from services.policy.provider_keys import ProviderKeyCipher
from services.policy.store import RedisStore

HOW_TO_SEND = (
    "send it as cf-aig-authorization: Bearer <key>, or as the API key "
    "(x-api-key: <key> or Authorization: Bearer <key>) on a gateway that has a "
    "stored provider key"
)
MISSING_KEY = f"missing gateway key: {HOW_TO_SEND}"
INVALID_KEY = f"invalid gateway key: {HOW_TO_SEND}"


@dataclass(frozen=True, slots=True)
class Caller:
    identity: policy_pb2.Identity
    # Stored provider key to send upstream; "" to forward the presented one.
    inject_provider_key: str = ""


async def resolve_caller(
    store: RedisStore,
    cipher: ProviderKeyCipher | None,
    identity_secret: bytes,
    gateway: Gateway,
    request: policy_pb2.CheckRequest,
    metadata: dict[str, str],
) -> Caller:
    """Resolve the caller of one Check; raises AuthenticationError to deny it."""
    presented = request.presented_key
    presented_is_gateway_key = keys.looks_like_gateway_key(presented)
    secret = request.gateway_key or (presented if presented_is_gateway_key else "")
    if not secret:
        if gateway.authenticated:
            raise AuthenticationError(MISSING_KEY)
        return Caller(identity.resolve_anonymous(presented, metadata, identity_secret))

    try:
        record = await keys.authenticate(store, secret)
    except AuthenticationError as exc:
        raise AuthenticationError(INVALID_KEY) from exc
    if not keys.key_allows_gateway(record, gateway.account_id, gateway.gateway_id):
        raise AuthenticationError(
            f"gateway key {record.key_id} is not valid on gateway "
            f"{gateway.account_id}/{gateway.gateway_id}"
        )
    caller = policy_pb2.Identity(
        user_id=record.user_id,
        team_id=record.team_id,
        project_id=record.project_id,
        key_id=record.key_id,
        source=policy_pb2.IDENTITY_SOURCE_GATEWAY_KEY,
    )
    if presented and not presented_is_gateway_key:
        return Caller(caller)

    injected = await provider_keys.resolve_provider_key(
        store,
        cipher,
        caller,
        gateway.account_id,
        gateway.gateway_id,
        request.provider,
    )
    if presented_is_gateway_key and not injected:
        raise AuthenticationError(
            f"no {request.provider} key is stored for gateway "
            f"{gateway.account_id}/{gateway.gateway_id}, so the API key must be "
            "your provider key: send the gateway key as cf-aig-authorization: "
            "Bearer <key> instead"
        )
    return Caller(caller, injected)
