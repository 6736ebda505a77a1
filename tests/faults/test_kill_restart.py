"""SIGKILL and restart of each component in the middle of steady traffic.

After recovery, every call a client saw complete must be in ClickHouse exactly
once, and no other successful call of that gateway may be there.
"""

from __future__ import annotations

import pytest

from tests.faults.traffic import check_exactly_once, run_with_fault
from tests.support.stack import RunningStack

pytestmark = pytest.mark.fault


async def test_kill_analytics(fault_stack: RunningStack) -> None:
    stack = fault_stack.stack
    traffic = await run_with_fault(
        fault_stack,
        "analytics",
        lambda: stack.services["analytics"].kill(),
        lambda: stack.start_service("analytics"),
    )
    # The analytics service is off the request path: no call may fail.
    assert not traffic.failures
    check_exactly_once(fault_stack, "analytics", traffic.completed)


async def test_kill_policy_fails_open(fault_stack: RunningStack) -> None:
    stack = fault_stack.stack
    traffic = await run_with_fault(
        fault_stack,
        "policy",
        lambda: stack.services["policy"].kill(),
        lambda: stack.start_service("policy"),
    )
    assert not traffic.failures
    check_exactly_once(fault_stack, "policy", traffic.completed)


async def test_kill_policy_closed_gateway_503(fault_stack: RunningStack) -> None:
    stack = fault_stack.stack
    traffic = await run_with_fault(
        fault_stack,
        "policy_closed",
        lambda: stack.services["policy"].kill(),
        lambda: stack.start_service("policy"),
    )
    # While the policy service is down the closed gateway answers 503 only.
    assert traffic.statuses[503] > 0
    assert set(traffic.statuses) == {200, 503}
    assert set(traffic.failures) == {"ServiceUnavailableError"} or set(
        traffic.failures
    ) == {"InternalServerError"}
    check_exactly_once(fault_stack, "policy_closed", traffic.completed)


async def test_kill_redis(fault_stack: RunningStack) -> None:
    stack = fault_stack.stack
    traffic = await run_with_fault(
        fault_stack,
        "redis",
        lambda: stack.services["redis"].kill(),
        lambda: stack.restart_backend("redis"),
    )
    # The policy service fails, the open gateway lets the calls through.
    assert not traffic.failures
    check_exactly_once(fault_stack, "redis", traffic.completed)


async def test_kill_clickhouse(fault_stack: RunningStack) -> None:
    stack = fault_stack.stack
    traffic = await run_with_fault(
        fault_stack,
        "clickhouse",
        lambda: stack.services["clickhouse"].kill(),
        lambda: stack.restart_backend("clickhouse"),
    )
    assert not traffic.failures
    check_exactly_once(fault_stack, "clickhouse", traffic.completed)


async def test_kill_ingress(fault_stack: RunningStack) -> None:
    stack = fault_stack.stack
    traffic = await run_with_fault(
        fault_stack,
        "ingress",
        lambda: stack.services["ingress"].kill(),
        lambda: stack.start_service("ingress"),
    )
    # Calls sent while the ingress is down fail to connect; they are not
    # completed, and the client would retry them.
    assert traffic.failures
    assert set(traffic.failures) <= {"APIConnectionError", "APITimeoutError"}
    check_exactly_once(fault_stack, "ingress", traffic.completed)
