"""Limits, budgets and the loop guard through the whole stack, with the SDKs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import grpc
import openai
import orjson
import pytest

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services.common.pricing import cost_usd_micros, load_price_table
from tests.support.stack import RunningStack, admin_channel, start_stack, stop_stack

MODEL_A = "claude-sonnet-4-5"
MODEL_O = "gpt-4o-mini"

CONFIG = """
[accounts.lim.gateways.burst]
[[accounts.lim.gateways.burst.limits]]
scope = "gateway"
kind = "requests"
limit = 10
window_s = 600

[accounts.lim.gateways.window]
[[accounts.lim.gateways.window.limits]]
scope = "user"
kind = "requests"
limit = 3
window_s = 2

[accounts.lim.gateways.tokens]
[[accounts.lim.gateways.tokens.limits]]
scope = "user"
kind = "total_tokens"
limit = 1000000
window_s = 600
[[accounts.lim.gateways.tokens.limits]]
scope = "user"
kind = "output_tokens"
limit = 500000
window_s = 600

[accounts.lim.gateways.spend]
[[accounts.lim.gateways.spend.limits]]
scope = "user"
kind = "spend"
limit = 2000
window_s = 600

[accounts.lim.gateways.loop]
[accounts.lim.gateways.loop.loop_guard]
max_repeats = 2
window_s = 600

[accounts.lim.gateways.conc]
[[accounts.lim.gateways.conc.limits]]
scope = "user"
kind = "concurrent"
limit = 1

[accounts.lim.gateways.runtime]
[[accounts.lim.gateways.runtime.limits]]
scope = "user"
kind = "requests"
limit = 1
window_s = 600

[accounts.lim.gateways.plain]
"""

_open_clients: list[Any] = []


@pytest.fixture(scope="module")
def lstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(Path(tmp_path_factory.mktemp("limits")), CONFIG)
    yield running
    stop_stack(running)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()


def _user_header(user: str) -> dict[str, str]:
    return {"cf-aig-metadata": orjson.dumps({"user": user}).decode()}


def _anthropic(base_url: str, user: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        base_url=base_url,
        api_key="sk-ant-test",
        max_retries=0,
        default_headers=_user_header(user),
    )
    _open_clients.append(client)
    return client


def _openai(base_url: str, user: str) -> openai.OpenAI:
    client = openai.OpenAI(
        base_url=base_url,
        api_key="sk-openai-test",
        max_retries=0,
        default_headers=_user_header(user),
    )
    _open_clients.append(client)
    return client


def _admin(stack: RunningStack) -> tuple[grpc.Channel, Any]:
    channel = admin_channel(stack.stack.policy_address)
    return channel, policy_pb2_grpc.PolicyAdminServiceStub(channel)


def _status(stack: RunningStack, gateway: str, user: str) -> dict[str, Any]:
    channel, admin = _admin(stack)
    with channel:
        response = admin.GetLimitStatus(
            policy_pb2.GetLimitStatusRequest(
                account_id="lim", gateway_id=gateway, user_id=user
            ),
            timeout=5,
        )
    return {state.name: state for state in response.limits}


def _ask(client: anthropic.Anthropic, text: str = "", **kwargs: Any) -> Any:
    text = text or f"Say hello {uuid.uuid4().hex[:8]}"
    return client.messages.with_raw_response.create(
        model=MODEL_A,
        max_tokens=64,
        messages=[{"role": "user", "content": text}],
        **kwargs,
    )


def _wait_status(
    stack: RunningStack, gateway: str, user: str, name: str, used: int
) -> int:
    """Poll until the limit shows ``used`` (Settle runs after the response)."""
    deadline = time.monotonic() + 5
    remaining = -1
    while time.monotonic() < deadline:
        state = _status(stack, gateway, user)[name]
        remaining = state.remaining
        if state.limit - state.remaining == used:
            return remaining
        time.sleep(0.05)
    return remaining


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with session.post(
        url,
        data=body,
        headers={
            "content-type": "application/json",
            "x-api-key": "sk-ant-test",
            "anthropic-version": "2023-06-01",
        },
    ) as response:
        await response.read()
        return response.status


async def test_burst_of_50_admits_exactly_10(lstack: RunningStack) -> None:
    extra = lstack.stack.start_extra_ingress("ingress-2")
    urls = [
        f"{lstack.ingress_url}/v1/lim/burst/anthropic/v1/messages",
        f"http://127.0.0.1:{extra.port}/v1/lim/burst/anthropic/v1/messages",
    ]
    body = orjson.dumps(
        {
            "model": MODEL_A,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "burst"}],
        }
    )
    try:
        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(
                *(_post(session, urls[i % 2], body) for i in range(50))
            )
    finally:
        extra.stop()
    assert statuses.count(200) == 10
    assert statuses.count(429) == 40


def test_sliding_window_at_its_boundary(lstack: RunningStack) -> None:
    client = _anthropic(lstack.anthropic_base_url("lim", "window"), "w-user")
    started = time.monotonic()
    first = _ask(client)
    assert first.headers["ratelimit-limit"] == "3"
    assert first.headers["ratelimit-remaining"] == "2"
    assert first.headers["ratelimit-policy"] == '"user:requests:2s";q=3;w=2'
    time.sleep(1.0)
    _ask(client)
    _ask(client)
    with pytest.raises(anthropic.RateLimitError) as denied:
        _ask(client)
    assert denied.value.response.headers["retry-after"] == "1"
    assert "user:requests:2s" in denied.value.message

    # Only the first call has left the window 2 s after it was admitted: a
    # sliding window frees one slot, where a fixed window would free three.
    time.sleep(max(started + 2.1 - time.monotonic(), 0))
    _ask(client)
    with pytest.raises(anthropic.RateLimitError):
        _ask(client)


def test_non_streamed_call_settles_real_tokens(lstack: RunningStack) -> None:
    client = _anthropic(lstack.anthropic_base_url("lim", "tokens"), "t-plain")
    raw = _ask(client)
    usage = raw.parse().usage
    used = usage.input_tokens + usage.output_tokens
    remaining = _wait_status(
        lstack, "tokens", "t-plain", "user:total_tokens:600s", used
    )
    assert remaining == 1_000_000 - used
    output = _status(lstack, "tokens", "t-plain")["user:output_tokens:600s"]
    assert output.limit - output.remaining == usage.output_tokens


def test_streamed_call_settles_real_tokens(lstack: RunningStack) -> None:
    client = _anthropic(lstack.anthropic_base_url("lim", "tokens"), "t-stream")
    with client.messages.stream(
        model=MODEL_A,
        max_tokens=400,
        messages=[{"role": "user", "content": "Tell a story"}],
    ) as stream:
        message = stream.get_final_message()
    used = message.usage.input_tokens + message.usage.output_tokens
    remaining = _wait_status(
        lstack, "tokens", "t-stream", "user:total_tokens:600s", used
    )
    assert remaining == 1_000_000 - used


def test_openai_stream_cut_off_settles_what_was_used(lstack: RunningStack) -> None:
    client = _openai(lstack.openai_base_url("lim", "tokens"), "t-cut")
    stream = client.chat.completions.create(
        model=MODEL_O,
        messages=[{"role": "user", "content": "Tell a long story"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-sim-output-tokens": "2000", "x-sim-chunk-ms": "5"},
    )
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    # The settled count is what streamed before the cut: not the reserved
    # estimate (1024 without max_tokens), more than nothing and far less than
    # the 2000 tokens of the full answer.
    deadline = time.monotonic() + 5
    used = 1024
    while time.monotonic() < deadline and used == 1024:
        state = _status(lstack, "tokens", "t-cut")["user:output_tokens:600s"]
        used = state.limit - state.remaining
        time.sleep(0.05)
    assert 0 < used < 1024


def test_spend_limit_denies_after_budget(lstack: RunningStack) -> None:
    client = _anthropic(lstack.anthropic_base_url("lim", "spend"), "s-user")
    raw = _ask(client)
    usage = raw.parse().usage
    price = load_price_table().lookup("anthropic", MODEL_A)
    assert price is not None
    cost = cost_usd_micros(
        price,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_input_tokens or 0,
        usage.cache_creation_input_tokens or 0,
    )
    remaining = _wait_status(lstack, "spend", "s-user", "user:spend:600s", cost)
    assert remaining == 2000 - cost

    # Spend the rest of the budget, then the next call is denied.
    for _ in range(2000 // cost + 1):
        try:
            _ask(client)
        except anthropic.RateLimitError as exc:
            assert "user:spend:600s" in exc.message
            break
        time.sleep(0.05)
    else:
        pytest.fail("the spend limit never denied a call")


def test_loop_guard_blocks_repeated_body(lstack: RunningStack) -> None:
    client = _anthropic(lstack.anthropic_base_url("lim", "loop"), "loop-user")
    _ask(client, "same question")
    _ask(client, "same question")
    with pytest.raises(anthropic.RateLimitError) as denied:
        _ask(client, "same question")
    assert "repeated identical request was blocked" in denied.value.message
    assert int(denied.value.response.headers["retry-after"]) >= 599
    # Another body, or another user with the same body, is admitted.
    _ask(client, "another question")
    _ask(_anthropic(lstack.anthropic_base_url("lim", "loop"), "other"), "same question")


def test_loop_guard_user_override(lstack: RunningStack) -> None:
    channel, admin = _admin(lstack)
    with channel:
        admin.SetLoopGuard(
            policy_pb2.SetLoopGuardRequest(
                account_id="lim",
                gateway_id="loop",
                user_id="strict",
                max_repeats=1,
                window_s=60,
            ),
            timeout=5,
        )
    client = _anthropic(lstack.anthropic_base_url("lim", "loop"), "strict")
    _ask(client, "strict question")
    with pytest.raises(anthropic.RateLimitError):
        _ask(client, "strict question")


def test_openai_sdk_rate_limit_error(lstack: RunningStack) -> None:
    client = _openai(lstack.openai_base_url("lim", "runtime"), "o-user")
    client.chat.completions.create(
        model=MODEL_O, messages=[{"role": "user", "content": "hi"}]
    )
    with pytest.raises(openai.RateLimitError) as denied:
        client.chat.completions.create(
            model=MODEL_O, messages=[{"role": "user", "content": "hi"}]
        )
    error = denied.value
    assert int(error.response.headers["retry-after"]) >= 599
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert "user:requests:600s" in error.message
    assert error.response.headers["ratelimit-remaining"] == "0"


def test_runtime_user_override_beats_default(lstack: RunningStack) -> None:
    channel, admin = _admin(lstack)
    limit = policy_pb2.Limit(
        scope=policy_pb2.Scope(account_id="lim", gateway_id="runtime", user_id="vip"),
        kind=policy_pb2.LIMIT_KIND_REQUESTS,
        limit=3,
        window_s=600,
    )
    with channel:
        admin.SetLimit(policy_pb2.SetLimitRequest(limit=limit), timeout=5)
        listed = admin.ListLimits(
            policy_pb2.ListLimitsRequest(account_id="lim", gateway_id="runtime"),
            timeout=5,
        )
        client = _anthropic(lstack.anthropic_base_url("lim", "runtime"), "vip")
        for _ in range(3):
            _ask(client)
        with pytest.raises(anthropic.RateLimitError):
            _ask(client)
        deleted = admin.DeleteLimit(
            policy_pb2.DeleteLimitRequest(limit=limit), timeout=5
        )
    sources = sorted(
        (item.applies_to, item.scope.user_id, item.source) for item in listed.limits
    )
    assert sources == [("user", "", "config"), ("user", "vip", "runtime")]
    assert deleted.deleted


def test_concurrency_slot_released_by_settle(lstack: RunningStack) -> None:
    url = lstack.anthropic_base_url("lim", "conc")
    slow = _anthropic(url, "c-user")
    fast = _anthropic(url, "c-user")

    async def both() -> list[Any]:
        loop = asyncio.get_running_loop()
        first = loop.run_in_executor(
            None, lambda: _ask(slow, extra_headers={"x-sim-ttfb-ms": "800"})
        )
        await asyncio.sleep(0.3)
        second = loop.run_in_executor(None, lambda: _ask(fast))
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(both())
    assert not isinstance(first, Exception)
    assert isinstance(second, anthropic.RateLimitError)
    time.sleep(0.3)
    _ask(fast)


def test_upstream_429_relayed_unchanged(lstack: RunningStack) -> None:
    client = _anthropic(lstack.anthropic_base_url("lim", "plain"), "u429")
    with pytest.raises(anthropic.RateLimitError) as denied:
        _ask(client, extra_headers={"x-sim-fault": "rate_limit"})
    headers = denied.value.response.headers
    assert headers["retry-after"] == "1"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
