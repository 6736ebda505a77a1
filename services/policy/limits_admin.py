"""Admin handlers for limits and the loop guard, as plain async functions.

The PolicyAdminService servicer calls these; each takes the limit engine
and the request message and returns the response message, raising a
PolicyError subclass for invalid input or an unknown gateway.
"""

from __future__ import annotations

from gateway.policy.v1 import policy_pb2
from services.common.config import GatewayConfig
from services.common.limit_config import LimitSpec, LoopGuardSpec, validate_limit
from services.policy import limits
from services.policy.errors import InvalidRequestError, UnknownGatewayError
from services.policy.limit_decisions import LimitEngine


def _require_gateway(config: GatewayConfig, account_id: str, gateway_id: str) -> None:
    if config.gateway(account_id, gateway_id) is None:
        raise UnknownGatewayError(f"gateway {account_id}/{gateway_id} not found")


def spec_from_proto(limit: policy_pb2.Limit) -> LimitSpec:
    """Turn a Limit message into a LimitSpec; raises InvalidRequestError."""
    scope = limit.scope
    applies_to = limit.applies_to
    if not applies_to:
        if limit.key_id:
            applies_to = "key"
        elif scope.user_id:
            applies_to = "user"
        elif scope.team_id:
            applies_to = "team"
        else:
            applies_to = "gateway"
    subject = {
        "gateway": "",
        "team": scope.team_id,
        "user": scope.user_id,
        "key": limit.key_id,
    }.get(applies_to, "")
    kind = limits.PROTO_TO_KIND.get(limit.kind, "")
    spec = LimitSpec(
        scope=applies_to,
        kind=kind,
        limit=int(limit.limit),
        window_s=int(limit.window_s),
        subject=subject,
        source="runtime",
    )
    problems = validate_limit(spec)
    if not kind:
        problems = ["kind: missing or unknown limit kind", *problems[1:]]
    if "|" in subject:
        problems.append("the team, user or key id must not contain '|'")
    if problems:
        raise InvalidRequestError("invalid limit: " + "; ".join(problems))
    return spec


def spec_to_proto(
    account_id: str, gateway_id: str, spec: LimitSpec
) -> policy_pb2.Limit:
    scope = policy_pb2.Scope(account_id=account_id, gateway_id=gateway_id)
    key_id = ""
    if spec.scope == "team":
        scope.team_id = spec.subject
    elif spec.scope == "user":
        scope.user_id = spec.subject
    elif spec.scope == "key":
        key_id = spec.subject
    return policy_pb2.Limit(
        scope=scope,
        key_id=key_id,
        kind=limits.KIND_TO_PROTO[spec.kind],
        limit=spec.limit,
        window_s=spec.window_s,
        applies_to=spec.scope,
        source=spec.source,
    )


async def set_limit(
    engine: LimitEngine, config: GatewayConfig, request: policy_pb2.SetLimitRequest
) -> policy_pb2.SetLimitResponse:
    scope = request.limit.scope
    _require_gateway(config, scope.account_id, scope.gateway_id)
    spec = spec_from_proto(request.limit)
    await engine.store.set_limit(scope.account_id, scope.gateway_id, spec)
    return policy_pb2.SetLimitResponse(
        limit=spec_to_proto(scope.account_id, scope.gateway_id, spec)
    )


async def list_limits(
    engine: LimitEngine, config: GatewayConfig, request: policy_pb2.ListLimitsRequest
) -> policy_pb2.ListLimitsResponse:
    """List the file's limits and the runtime ones; a runtime twin hides its twin."""
    account_id, gateway_id = request.account_id, request.gateway_id
    _require_gateway(config, account_id, gateway_id)
    runtime = await engine.store.list_runtime_limits(account_id, gateway_id)
    merged = limits.merge_limits(engine.all_limits(account_id, gateway_id), runtime)
    return policy_pb2.ListLimitsResponse(
        limits=[spec_to_proto(account_id, gateway_id, spec) for spec in merged]
    )


async def delete_limit(
    engine: LimitEngine, config: GatewayConfig, request: policy_pb2.DeleteLimitRequest
) -> policy_pb2.DeleteLimitResponse:
    """Delete a runtime limit; limits of the configuration file stay."""
    scope = request.limit.scope
    _require_gateway(config, scope.account_id, scope.gateway_id)
    spec = spec_from_proto(request.limit)
    deleted = await engine.store.delete_limit(scope.account_id, scope.gateway_id, spec)
    return policy_pb2.DeleteLimitResponse(deleted=deleted)


async def get_limit_status(
    engine: LimitEngine,
    config: GatewayConfig,
    request: policy_pb2.GetLimitStatusRequest,
) -> policy_pb2.GetLimitStatusResponse:
    _require_gateway(config, request.account_id, request.gateway_id)
    if not request.user_id:
        raise InvalidRequestError("user_id is required")
    caller = policy_pb2.Identity(user_id=request.user_id)
    states = await engine.status(request.account_id, request.gateway_id, caller)
    return policy_pb2.GetLimitStatusResponse(limits=states)


async def set_loop_guard(
    engine: LimitEngine, config: GatewayConfig, request: policy_pb2.SetLoopGuardRequest
) -> policy_pb2.SetLoopGuardResponse:
    _require_gateway(config, request.account_id, request.gateway_id)
    if not request.user_id:
        raise InvalidRequestError("user_id is required")
    spec = None
    if request.max_repeats:
        if request.max_repeats < 0 or request.window_s < 1:
            raise InvalidRequestError(
                "invalid loop guard: max_repeats must be >= 1 (0 removes the "
                "override) and window_s >= 1"
            )
        spec = LoopGuardSpec(int(request.max_repeats), int(request.window_s))
    await engine.store.set_loop_guard(
        request.account_id, request.gateway_id, request.user_id, spec
    )
    return policy_pb2.SetLoopGuardResponse()
