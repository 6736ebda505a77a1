"""The JSON API behind the pages, also usable by products (docs/dashboard.md)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from gateway.analytics.v1 import analytics_pb2
from gateway.policy.v1 import policy_pb2
from services.dashboard import filters, serialize
from services.dashboard.anomalies import (
    BASELINE_DAYS,
    DAY_MS,
    DailyUsage,
    find_anomalies,
)
from services.dashboard.auth import (
    admin_token_matches,
    authenticate,
    check_origin,
    require_field,
    require_operator,
    scoped_user_id,
)
from services.dashboard.backend import FeatureMissingError
from services.dashboard.errors import BadRequestError, UnauthorizedError
from services.dashboard.sessions import (
    COOKIE_NAME,
    ROLE_OPERATOR,
    ROLE_USER,
    Session,
    sign_session,
)
from services.dashboard.state import state_of
from services.dashboard.timerange import bucket_seconds, parse_window

COOKIE_PATH = "/dashboard/"
# Gateways asked for limits and cache rules in one request, at most.
MAX_GATEWAYS_PER_REQUEST = 20


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------ session


async def create_session(request: web.Request) -> web.Response:
    """Sign in with ``{"gateway_key": ...}`` or ``{"admin_token": ...}``."""
    check_origin(request)
    state = state_of(request)
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError as exc:
        raise BadRequestError("invalid JSON body") from exc
    if not isinstance(body, dict):
        raise BadRequestError("expected a JSON object")
    if not state.settings.session_key:
        raise UnauthorizedError(
            "sign-in is disabled: set TOLLGATE_ADMIN_TOKEN or TOLLGATE_DASHBOARD_SECRET"
        )
    expires_at_s = int(time.time()) + state.settings.session_ttl_s
    if "admin_token" in body:
        if not admin_token_matches(require_field(body, "admin_token"), state.settings):
            raise UnauthorizedError("invalid admin token")
        session = Session(ROLE_OPERATOR, "", "", expires_at_s)
    else:
        key = await state.backend.authenticate_key(require_field(body, "gateway_key"))
        session = Session(ROLE_USER, key.user_id, key.key_id, expires_at_s)
    response = json_response({"role": session.role, "user_id": session.user_id})
    response.set_cookie(
        COOKIE_NAME,
        sign_session(session, state.settings.session_key),
        max_age=state.settings.session_ttl_s,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=state.settings.secure_cookies,
    )
    return response


async def delete_session(request: web.Request) -> web.Response:
    check_origin(request)
    response = json_response({"signed_out": True})
    response.del_cookie(COOKIE_NAME, path=COOKIE_PATH)
    return response


async def me(request: web.Request) -> web.Response:
    state = state_of(request)
    principal = await authenticate(request, state.settings, state.backend)
    return json_response({"role": principal.role, "user_id": principal.user_id})


# ------------------------------------------------------------------ usage


async def usage_summary(request: web.Request) -> web.Response:
    state = state_of(request)
    principal = await authenticate(request, state.settings, state.backend)
    query = request.query
    user_id = scoped_user_id(principal, query)
    window = parse_window(query, _now_ms())
    response = await state.backend.usage_summary(
        analytics_pb2.UsageSummaryRequest(
            range=filters.time_range(window),
            filter=filters.call_filter(query, user_id),
            group_by=filters.group_by(query),
            group_metadata_key=query.get("group_metadata_key", ""),
        )
    )
    return json_response(
        {
            "range": {"start_ms": window.start_ms, "end_ms": window.end_ms},
            "user_id": user_id,
            "total": serialize.usage_row(response.total),
            "groups": [serialize.usage_row(row) for row in response.groups],
        }
    )


async def usage_time_series(request: web.Request) -> web.Response:
    state = state_of(request)
    principal = await authenticate(request, state.settings, state.backend)
    query = request.query
    user_id = scoped_user_id(principal, query)
    window = parse_window(query, _now_ms())
    bucket_s = bucket_seconds(window)
    if "bucket_s" in query:
        bucket_s = filters.positive_int(query, "bucket_s")
    response = await state.backend.usage_time_series(
        analytics_pb2.UsageTimeSeriesRequest(
            range=filters.time_range(window),
            filter=filters.call_filter(query, user_id),
            bucket_s=bucket_s,
            group_by=filters.group_by(query),
            group_metadata_key=query.get("group_metadata_key", ""),
        )
    )
    return json_response(
        {
            "range": {"start_ms": window.start_ms, "end_ms": window.end_ms},
            "bucket_s": bucket_s,
            "user_id": user_id,
            "points": [serialize.usage_row(row) for row in response.points],
        }
    )


# ------------------------------------------------------------------ calls


async def search_calls(request: web.Request) -> web.Response:
    state = state_of(request)
    principal = await authenticate(request, state.settings, state.backend)
    query = request.query
    user_id = scoped_user_id(principal, query)
    window = parse_window(query, _now_ms())
    response = await state.backend.search_calls(
        analytics_pb2.SearchCallsRequest(
            range=filters.time_range(window),
            filter=filters.call_filter(query, user_id),
            page_size=filters.page_size(query),
            cursor=query.get("cursor", ""),
        )
    )
    return json_response(
        {
            "calls": [serialize.call_summary(call) for call in response.calls],
            "next_cursor": response.next_cursor,
        }
    )


async def get_call(request: web.Request) -> web.Response:
    """Return one call; a user asking for another user's call gets 404."""
    state = state_of(request)
    principal = await authenticate(request, state.settings, state.backend)
    user_id = scoped_user_id(principal, request.query)
    response = await state.backend.get_call(
        analytics_pb2.GetCallRequest(
            event_id=request.match_info["event_id"], user_id=user_id
        )
    )
    return json_response(serialize.call_detail(response))


# ------------------------------------------------------------------ policy


def _gateways(request: web.Request) -> list[tuple[str, str]]:
    """Return the configured gateways named by the query, or all of them."""
    config = state_of(request).config
    account = request.query.get("account_id", "")
    gateway = request.query.get("gateway_id", "")
    chosen = [
        pair
        for pair in sorted(config.gateways)
        if (not account or pair[0] == account) and (not gateway or pair[1] == gateway)
    ]
    # NOTE: with more gateways than this, name one with account_id/gateway_id.
    return chosen[:MAX_GATEWAYS_PER_REQUEST]


async def limits(request: web.Request) -> web.Response:
    """Return each limit that applies to the user and how much of it is used."""
    state = state_of(request)
    principal = await authenticate(request, state.settings, state.backend)
    user_id = scoped_user_id(principal, request.query)
    if not user_id:
        raise BadRequestError("user_id is required: limits are reported per user")
    results = []
    for account_id, gateway_id in _gateways(request):
        entry: dict[str, Any] = {"account_id": account_id, "gateway_id": gateway_id}
        try:
            status = await state.backend.limit_status(
                policy_pb2.GetLimitStatusRequest(
                    account_id=account_id, gateway_id=gateway_id, user_id=user_id
                )
            )
        except FeatureMissingError:
            return json_response(
                {"available": False, "user_id": user_id, "gateways": []}
            )
        entry["limits"] = [serialize.limit_state(state) for state in status.limits]
        results.append(entry)
    return json_response({"available": True, "user_id": user_id, "gateways": results})


async def cache_rules(request: web.Request) -> web.Response:
    """Return the cache rules that apply to the user and the effective rule."""
    state = state_of(request)
    principal = await authenticate(request, state.settings, state.backend)
    user_id = scoped_user_id(principal, request.query)
    results = []
    for account_id, gateway_id in _gateways(request):
        try:
            response = await state.backend.cache_rules(
                policy_pb2.GetCacheRulesRequest(
                    account_id=account_id, gateway_id=gateway_id, user_id=user_id
                )
            )
        except FeatureMissingError:
            return json_response(
                {"available": False, "user_id": user_id, "gateways": []}
            )
        results.append(
            {
                "account_id": account_id,
                "gateway_id": gateway_id,
                "rules": [serialize.cache_rule(rule) for rule in response.rules],
                "effective": (
                    serialize.cache_rule(response.effective)
                    if response.HasField("effective")
                    else None
                ),
            }
        )
    return json_response({"available": True, "user_id": user_id, "gateways": results})


# ------------------------------------------------------------------ operator


async def anomalies(request: web.Request) -> web.Response:
    """Return the users far above their usual daily spend or call count."""
    state = state_of(request)
    principal = await authenticate(request, state.settings, state.backend)
    require_operator(principal)
    now_ms = _now_ms()
    today_start_ms = now_ms - now_ms % DAY_MS
    response = await state.backend.usage_time_series(
        analytics_pb2.UsageTimeSeriesRequest(
            range=analytics_pb2.TimeRange(
                start_ms=today_start_ms - BASELINE_DAYS * DAY_MS, end_ms=now_ms + 1
            ),
            bucket_s=DAY_MS // 1000,
            group_by=analytics_pb2.GROUP_BY_USER,
        )
    )
    days = [
        DailyUsage(
            point.group, point.bucket_start_ms, point.calls, point.cost_usd_micros
        )
        for point in response.points
    ]
    return json_response(
        {
            "today_start_ms": today_start_ms,
            "users": [
                {
                    "user_id": found.user_id,
                    "calls_today": found.calls_today,
                    "calls_p95": found.calls_p95,
                    "cost_today_usd_micros": found.cost_today_usd_micros,
                    "cost_p95_usd_micros": found.cost_p95_usd_micros,
                    "reasons": found.reasons.split(","),
                }
                for found in find_anomalies(days, today_start_ms)
            ],
        }
    )
