"""Settle admitted calls with the policy service, off the response path.

The ingress reports the usage the side parser saw once the response has
ended (a call the client cut off reports what was streamed until then), so
that token and spend reservations become real counts and concurrency slots
are released. Each settle runs in its own task, kept in a set until it ends.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from gateway.policy.v1 import policy_pb2
from services.ingress.calls import Call
from services.ingress.policy_client import PolicyClient

logger = logging.getLogger(__name__)


def settle_request(call: Call) -> policy_pb2.SettleRequest | None:
    """Build the Settle message of a finished call; None when nothing was reserved."""
    decision = call.decision
    if decision is None or not decision.reservation_id:
        return None
    outcome = call.outcome
    output_tokens = outcome.output_tokens
    if not outcome.complete:
        # A stream cut off before its final usage: count one token per
        # content event seen. NOTE: a lower bound, since providers often send
        # several tokens per event, and a cut non-streamed call counts none.
        output_tokens = max(output_tokens, outcome.delta_events)
    return policy_pb2.SettleRequest(
        request_id=call.request_id,
        reservation_id=decision.reservation_id,
        usage=policy_pb2.Usage(
            input_tokens=outcome.input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=outcome.cache_read_tokens,
            cache_write_tokens=outcome.cache_write_tokens,
        ),
        model=outcome.model or call.facts.model,
        provider=call.route.provider,
        custom_cost_usd_micros=call.custom_cost_usd_micros,
    )


async def _settle(policy: PolicyClient, request: policy_pb2.SettleRequest) -> None:
    try:
        await policy.settle(request)
    except grpc.aio.AioRpcError as exc:
        # NOTE: a lost Settle leaves the estimate counted until its window
        # ends and the concurrency slot taken until its lease expires.
        logger.warning(
            "settle of %s failed: %s: %s",
            request.reservation_id,
            exc.code().name,
            exc.details(),
        )


def schedule_settle(
    policy: PolicyClient, tasks: set[asyncio.Task[None]], call: Call
) -> None:
    request = settle_request(call)
    if request is None:
        return
    if policy.stream.settle(request):
        return  # queued on the open CheckStream, no task needed
    task = asyncio.create_task(_settle(policy, request))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def drain(tasks: set[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait for pending settles at shutdown, at most ``timeout_s``."""
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout_s)
