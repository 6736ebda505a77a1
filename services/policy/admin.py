"""The PolicyAdminService servicer: thin handlers over the admin functions.

Each method hands its request to a plain function of the module that owns
the topic (limits_admin, cache_admin) and maps PolicyError to a status.
"""

from __future__ import annotations

import grpc

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services.policy import cache_admin, limits_admin
from services.policy.check import PolicyContext
from services.policy.errors import PolicyError, status_code_for


class PolicyAdminServicer(policy_pb2_grpc.PolicyAdminServiceServicer):
    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    async def _run(self, handler, request, context):  # type: ignore[no-untyped-def]
        assert self.ctx.limits is not None
        return await self._call(handler, context, self.ctx.limits, request)

    async def _run_cache(self, handler, request, context):  # type: ignore[no-untyped-def]
        assert self.ctx.cache is not None
        return await self._call(handler, context, self.ctx.cache, request)

    async def _call(self, handler, context, backend, request):  # type: ignore[no-untyped-def]
        try:
            return await handler(backend, self.ctx.config, request)
        except PolicyError as exc:
            await context.abort(status_code_for(exc), str(exc))
            raise  # unreachable: abort raises

    async def SetCacheRule(
        self, request: policy_pb2.SetCacheRuleRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.SetCacheRuleResponse:
        return await self._run_cache(cache_admin.set_cache_rule, request, context)

    async def GetCacheRules(
        self,
        request: policy_pb2.GetCacheRulesRequest,
        context: grpc.aio.ServicerContext,
    ) -> policy_pb2.GetCacheRulesResponse:
        return await self._run_cache(cache_admin.get_cache_rules, request, context)

    async def DeleteCacheRule(
        self,
        request: policy_pb2.DeleteCacheRuleRequest,
        context: grpc.aio.ServicerContext,
    ) -> policy_pb2.DeleteCacheRuleResponse:
        return await self._run_cache(cache_admin.delete_cache_rule, request, context)

    async def SetLimit(
        self, request: policy_pb2.SetLimitRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.SetLimitResponse:
        return await self._run(limits_admin.set_limit, request, context)

    async def ListLimits(
        self, request: policy_pb2.ListLimitsRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.ListLimitsResponse:
        return await self._run(limits_admin.list_limits, request, context)

    async def DeleteLimit(
        self, request: policy_pb2.DeleteLimitRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.DeleteLimitResponse:
        return await self._run(limits_admin.delete_limit, request, context)

    async def GetLimitStatus(
        self,
        request: policy_pb2.GetLimitStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> policy_pb2.GetLimitStatusResponse:
        return await self._run(limits_admin.get_limit_status, request, context)

    async def SetLoopGuard(
        self,
        request: policy_pb2.SetLoopGuardRequest,
        context: grpc.aio.ServicerContext,
    ) -> policy_pb2.SetLoopGuardResponse:
        return await self._run(limits_admin.set_loop_guard, request, context)
