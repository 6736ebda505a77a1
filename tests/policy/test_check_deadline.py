"""Check skips a decision the ingress has stopped waiting for."""

from __future__ import annotations

import time

import pytest

from gateway.policy.v1 import policy_pb2
from services.common.config import parse_config
from services.policy.check import DEADLINE_SLACK_MS, PolicyContext, check
from services.policy.errors import DeadlineExpiredError, UnknownGatewayError
from services.policy.store import RedisStore


def _context() -> PolicyContext:
    config = parse_config({}, environ={})
    # Nothing reaches Redis in these cases: the deadline is checked first.
    store = RedisStore("redis://127.0.0.1:1/0", prefix="t", timeout_ms=50)
    return PolicyContext(config, store, b"secret")


async def test_expired_deadline_skips_decision() -> None:
    now_ms = time.time_ns() // 1_000_000
    request = policy_pb2.CheckRequest(
        account_id="default",
        gateway_id="default",
        deadline_ms=now_ms - DEADLINE_SLACK_MS - 50,
    )

    with pytest.raises(DeadlineExpiredError):
        await check(_context(), request)


async def test_deadline_within_slack_is_decided() -> None:
    now_ms = time.time_ns() // 1_000_000
    request = policy_pb2.CheckRequest(
        account_id="nope", gateway_id="nope", deadline_ms=now_ms - 10
    )

    # The unknown gateway error shows that the deadline let the check run.
    with pytest.raises(UnknownGatewayError):
        await check(_context(), request)
