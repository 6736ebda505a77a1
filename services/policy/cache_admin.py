"""The cache rule RPCs of PolicyAdminService, as plain functions.

``CacheAdminServicer`` serves only these RPCs; the other admin RPCs answer
UNIMPLEMENTED from the generated base class.
"""

from __future__ import annotations

from gateway.policy.v1 import policy_pb2
from services.common.config import GatewayConfig
from services.policy.cache import ResponseCache
from services.policy.cache_rules import effective_rule, rule_message
from services.policy.errors import UnknownGatewayError


def _require_gateway(config: GatewayConfig, account_id: str, gateway_id: str) -> None:
    if config.gateway(account_id, gateway_id) is None:
        raise UnknownGatewayError(f"gateway {account_id}/{gateway_id} not found")


async def set_cache_rule(
    cache: ResponseCache,
    config: GatewayConfig,
    request: policy_pb2.SetCacheRuleRequest,
) -> policy_pb2.SetCacheRuleResponse:
    scope = request.rule.scope
    _require_gateway(config, scope.account_id, scope.gateway_id)
    await cache.rules.put(request.rule)
    return policy_pb2.SetCacheRuleResponse(rule=request.rule)


async def get_cache_rules(
    cache: ResponseCache,
    config: GatewayConfig,
    request: policy_pb2.GetCacheRulesRequest,
) -> policy_pb2.GetCacheRulesResponse:
    """List a gateway's rules, or those of one user, most specific first."""
    _require_gateway(config, request.account_id, request.gateway_id)
    defaults = cache.gateway_config(request.account_id, request.gateway_id).defaults
    if request.user_id or request.team_id:
        found = await cache.rules.applicable(
            request.account_id, request.gateway_id, request.team_id, request.user_id
        )
        rules = [rule for rule in found if rule is not None]
        effective = effective_rule(defaults, list(found))
    else:
        rules = await cache.rules.all(request.account_id, request.gateway_id)
        gateway_rules = [rule for rule in rules if not rule.scope.team_id]
        gateway_rules = [rule for rule in gateway_rules if not rule.scope.user_id]
        effective = effective_rule(defaults, list(gateway_rules))
    return policy_pb2.GetCacheRulesResponse(
        rules=rules,
        effective=rule_message(effective, request.account_id, request.gateway_id),
    )


async def delete_cache_rule(
    cache: ResponseCache,
    config: GatewayConfig,
    request: policy_pb2.DeleteCacheRuleRequest,
) -> policy_pb2.DeleteCacheRuleResponse:
    _require_gateway(config, request.scope.account_id, request.scope.gateway_id)
    deleted = await cache.rules.delete(request.scope)
    return policy_pb2.DeleteCacheRuleResponse(deleted=deleted)
