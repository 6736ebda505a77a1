"""PolicyAdminService: the operators' RPCs, behind an optional admin token.

Each RPC is a thin method that calls one plain function and maps its
PolicyError to a gRPC status. RPCs not implemented here return UNIMPLEMENTED
from the generated base class.

When ``TOLLGATE_ADMIN_TOKEN`` is set, :class:`AdminTokenInterceptor` rejects
every PolicyAdminService call without the gRPC metadata
``authorization: Bearer <token>``. The token protects against a caller that
can reach the port by mistake. It is no substitute for keeping the policy
port off every network that user containers can reach.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services.policy import cache_admin, keys, limits_admin, provider_keys
from services.policy.check import PolicyContext
from services.policy.errors import AuthenticationError, PolicyError, status_code_for

logger = logging.getLogger(__name__)

ADMIN_METHOD_PREFIX = "/gateway.policy.v1.PolicyAdminService/"
Response = TypeVar("Response")


def token_matches(metadata: Any, token: str) -> bool:
    """Check the ``authorization: Bearer <token>`` metadata in constant time."""
    presented = ""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, presented = value.partition(" ")
            if scheme.lower() != "bearer":
                presented = ""
    return hmac.compare_digest(presented.strip().encode(), token.encode())


class AdminTokenInterceptor(grpc.aio.ServerInterceptor):
    """Reject admin calls that lack the admin token; other services pass."""

    def __init__(self, token: str) -> None:
        self.token = token

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid admin token: send it as gRPC metadata "
                "authorization: Bearer <TOLLGATE_ADMIN_TOKEN>",
            )

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        if not method.startswith(ADMIN_METHOD_PREFIX):
            return await continuation(handler_call_details)
        if token_matches(handler_call_details.invocation_metadata, self.token):
            return await continuation(handler_call_details)
        logger.warning("rejected %s without a valid admin token", method)
        return self._deny


async def _run(
    context: grpc.aio.ServicerContext, work: Awaitable[Response]
) -> Response:
    try:
        return await work
    except PolicyError as exc:
        await context.abort(status_code_for(exc), str(exc))
        raise  # unreachable: abort raises


async def _create(
    ctx: PolicyContext, request: policy_pb2.CreateKeyRequest
) -> policy_pb2.CreateKeyResponse:
    issued = await keys.create_key(ctx.store, request)
    logger.info(
        "created gateway key %s for user %s", issued.record.key_id, request.user_id
    )
    return policy_pb2.CreateKeyResponse(key=issued.record, secret=issued.secret)


async def _list(
    ctx: PolicyContext, request: policy_pb2.ListKeysRequest
) -> policy_pb2.ListKeysResponse:
    return policy_pb2.ListKeysResponse(keys=await keys.list_keys(ctx.store, request))


async def _revoke(
    ctx: PolicyContext, request: policy_pb2.RevokeKeyRequest
) -> policy_pb2.RevokeKeyResponse:
    record = await keys.revoke_key(ctx.store, request.key_id)
    logger.info("revoked gateway key %s", record.key_id)
    return policy_pb2.RevokeKeyResponse(key=record)


async def _rotate(
    ctx: PolicyContext, request: policy_pb2.RotateKeyRequest
) -> policy_pb2.RotateKeyResponse:
    issued = await keys.rotate_key(ctx.store, request.key_id)
    logger.info("rotated gateway key %s to %s", request.key_id, issued.record.key_id)
    return policy_pb2.RotateKeyResponse(key=issued.record, secret=issued.secret)


async def _authenticate(
    ctx: PolicyContext, request: policy_pb2.AuthenticateKeyRequest
) -> policy_pb2.AuthenticateKeyResponse:
    try:
        record = await keys.authenticate(ctx.store, request.secret)
    except AuthenticationError as exc:
        raise AuthenticationError("invalid gateway key") from exc
    return policy_pb2.AuthenticateKeyResponse(key=record)


async def _put_provider_key(
    ctx: PolicyContext, request: policy_pb2.PutProviderKeyRequest
) -> policy_pb2.PutProviderKeyResponse:
    record = await provider_keys.put_provider_key(
        ctx.store, ctx.provider_key_cipher, request
    )
    logger.info(
        "stored a %s key for %s",
        request.provider,
        provider_keys.scope_label(request.scope, request.provider),
    )
    return policy_pb2.PutProviderKeyResponse(key=record)


async def _delete_provider_key(
    ctx: PolicyContext, request: policy_pb2.DeleteProviderKeyRequest
) -> policy_pb2.DeleteProviderKeyResponse:
    deleted = await provider_keys.delete_provider_key(ctx.store, request)
    return policy_pb2.DeleteProviderKeyResponse(deleted=deleted)


async def _list_provider_keys(
    ctx: PolicyContext, request: policy_pb2.ListProviderKeysRequest
) -> policy_pb2.ListProviderKeysResponse:
    records = await provider_keys.list_provider_keys(ctx.store, request)
    return policy_pb2.ListProviderKeysResponse(keys=records)


class PolicyAdminServicer(policy_pb2_grpc.PolicyAdminServiceServicer):
    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    async def CreateKey(self, request: Any, context: Any) -> Any:
        return await _run(context, _create(self.ctx, request))

    async def ListKeys(self, request: Any, context: Any) -> Any:
        return await _run(context, _list(self.ctx, request))

    async def RevokeKey(self, request: Any, context: Any) -> Any:
        return await _run(context, _revoke(self.ctx, request))

    async def RotateKey(self, request: Any, context: Any) -> Any:
        return await _run(context, _rotate(self.ctx, request))

    async def AuthenticateKey(self, request: Any, context: Any) -> Any:
        return await _run(context, _authenticate(self.ctx, request))

    async def PutProviderKey(self, request: Any, context: Any) -> Any:
        return await _run(context, _put_provider_key(self.ctx, request))

    async def DeleteProviderKey(self, request: Any, context: Any) -> Any:
        return await _run(context, _delete_provider_key(self.ctx, request))

    async def ListProviderKeys(self, request: Any, context: Any) -> Any:
        return await _run(context, _list_provider_keys(self.ctx, request))

    # Limits and the loop guard: handlers take (engine, config, request).

    def _limits(self) -> Any:
        assert self.ctx.limits is not None
        return self.ctx.limits

    async def SetLimit(self, request: Any, context: Any) -> Any:
        work = limits_admin.set_limit(self._limits(), self.ctx.config, request)
        return await _run(context, work)

    async def ListLimits(self, request: Any, context: Any) -> Any:
        work = limits_admin.list_limits(self._limits(), self.ctx.config, request)
        return await _run(context, work)

    async def DeleteLimit(self, request: Any, context: Any) -> Any:
        work = limits_admin.delete_limit(self._limits(), self.ctx.config, request)
        return await _run(context, work)

    async def GetLimitStatus(self, request: Any, context: Any) -> Any:
        work = limits_admin.get_limit_status(self._limits(), self.ctx.config, request)
        return await _run(context, work)

    async def SetLoopGuard(self, request: Any, context: Any) -> Any:
        work = limits_admin.set_loop_guard(self._limits(), self.ctx.config, request)
        return await _run(context, work)

    # Cache rules: handlers take (cache, config, request).

    def _cache(self) -> Any:
        assert self.ctx.cache is not None
        return self.ctx.cache

    async def SetCacheRule(self, request: Any, context: Any) -> Any:
        work = cache_admin.set_cache_rule(self._cache(), self.ctx.config, request)
        return await _run(context, work)

    async def GetCacheRules(self, request: Any, context: Any) -> Any:
        work = cache_admin.get_cache_rules(self._cache(), self.ctx.config, request)
        return await _run(context, work)

    async def DeleteCacheRule(self, request: Any, context: Any) -> Any:
        work = cache_admin.delete_cache_rule(self._cache(), self.ctx.config, request)
        return await _run(context, work)
