"""Response caching through the stack, driven by the official SDKs.

Every test sends prompts of its own, so entries of other tests never match.
The simulator's request count proves whether a call reached the provider.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import grpc
import openai
import orjson
import pytest

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from tests.support.stack import RunningStack, async_admin_channel

MODEL_A = "claude-sonnet-4-5"
MODEL_O = "gpt-4o-mini"
GATEWAY = "cached"

_open_clients: list[Any] = []


def _prompt() -> str:
    return f"Describe order {uuid.uuid4().hex[:10]} in one line."


def _anthropic(stack: RunningStack, **kwargs: Any) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        base_url=stack.anthropic_base_url(gateway=GATEWAY),
        api_key="sk-ant-test",
        max_retries=0,
        **kwargs,
    )
    _open_clients.append(client)
    return client


def _openai(stack: RunningStack, **kwargs: Any) -> openai.OpenAI:
    client = openai.OpenAI(
        base_url=stack.openai_base_url(gateway=GATEWAY),
        api_key="sk-openai-test",
        max_retries=0,
        **kwargs,
    )
    _open_clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()


@pytest.fixture
async def admin(stack: RunningStack) -> AsyncIterator[Any]:
    channel = async_admin_channel(stack.stack.policy_address)
    yield policy_pb2_grpc.PolicyAdminServiceStub(channel)
    await channel.close()


def _user(name: str) -> dict[str, str]:
    return {"cf-aig-metadata": orjson.dumps({"user": name}).decode()}


def _status(raw: Any) -> str:
    return raw.headers["cf-aig-cache-status"]


def _create(client: anthropic.Anthropic, prompt: str, **kwargs: Any) -> Any:
    kwargs.setdefault("max_tokens", 64)
    kwargs.setdefault("model", MODEL_A)
    return client.messages.with_raw_response.create(
        messages=[{"role": "user", "content": prompt}], **kwargs
    )


def _message_fields(message: anthropic.types.Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "model": message.model,
        "text": [block.text for block in message.content if block.type == "text"],
        "stop_reason": message.stop_reason,
        "usage": message.usage.model_dump(),
    }


def _one_row(stack: RunningStack, request_id: str) -> dict[str, Any]:
    rows = stack.wait_rows("request_id = {rid:String}", {"rid": request_id}, 1)
    assert len(rows) == 1, f"expected one row for {request_id}, got {len(rows)}"
    return rows[0]


def test_repeat_served_without_upstream_call(stack: RunningStack) -> None:
    client = _anthropic(stack)
    prompt = _prompt()
    before = stack.simulator_total()

    first = _create(client, prompt)
    second = _create(client, prompt)

    assert stack.simulator_total() == before + 1
    assert _status(first) == "MISS"
    assert _status(second) == "HIT"
    assert int(second.headers["age"]) >= 0
    assert "age" not in first.headers
    assert _message_fields(second.parse()) == _message_fields(first.parse())

    original = _one_row(stack, first.headers["tollgate-request-id"])
    hit = _one_row(stack, second.headers["tollgate-request-id"])
    assert original["cache_status"] == "miss"
    assert hit["cache_status"] == "hit"
    assert hit["model"] == MODEL_A
    assert hit["input_tokens"] == 0
    assert hit["output_tokens"] == 0
    assert hit["saved_input_tokens"] == original["input_tokens"]
    assert hit["saved_output_tokens"] == original["output_tokens"]
    assert hit["saved_input_tokens"] > 0
    assert original["saved_output_tokens"] == 0


def test_openai_repeat_hits_and_stays_json(stack: RunningStack) -> None:
    client = _openai(stack)
    messages = [{"role": "user", "content": _prompt()}]
    before = stack.simulator_total()

    first = client.chat.completions.with_raw_response.create(
        model=MODEL_O, messages=messages
    )
    second = client.chat.completions.with_raw_response.create(
        model=MODEL_O, messages=messages
    )

    assert stack.simulator_total() == before + 1
    assert (_status(first), _status(second)) == ("MISS", "HIT")
    assert second.headers["content-type"].startswith("application/json")
    assert second.parse().model_dump() == first.parse().model_dump()


def _anthropic_stream(client: anthropic.Anthropic, prompt: str) -> tuple[Any, str]:
    with client.messages.stream(
        model=MODEL_A, max_tokens=64, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        events = [event.type for event in stream]
        message = stream.get_final_message()
        status = stream.response.headers["cf-aig-cache-status"]
        assert stream.response.headers["content-type"].startswith("text/event-stream")
    return (_message_fields(message), events), status


def test_anthropic_streamed_hit_parses_like_original(stack: RunningStack) -> None:
    client = _anthropic(stack)
    prompt = _prompt()
    before = stack.simulator_total()

    original, first_status = _anthropic_stream(client, prompt)
    replayed, second_status = _anthropic_stream(client, prompt)

    assert stack.simulator_total() == before + 1
    assert (first_status, second_status) == ("MISS", "HIT")
    assert replayed == original
    assert original[0]["usage"]["output_tokens"] > 0


async def test_async_clients_stream_hit(stack: RunningStack) -> None:
    prompt = _prompt()
    messages = [{"role": "user", "content": prompt}]
    before = stack.simulator_total()
    async with (
        anthropic.AsyncAnthropic(
            base_url=stack.anthropic_base_url(gateway=GATEWAY),
            api_key="sk-ant-test",
            max_retries=0,
        ) as claude,
        openai.AsyncOpenAI(
            base_url=stack.openai_base_url(gateway=GATEWAY),
            api_key="sk-openai-test",
            max_retries=0,
        ) as gpt,
    ):
        results = []
        for _ in range(2):
            async with claude.messages.stream(
                model=MODEL_A, max_tokens=64, messages=messages
            ) as stream:
                message = await stream.get_final_message()
                results.append((_message_fields(message), stream.response.headers))
        chunks_seen = []
        for _ in range(2):
            response = await gpt.chat.completions.create(
                model=MODEL_O,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk.model_dump() async for chunk in response]
            chunks_seen.append((chunks, response.response.headers))
        non_stream = await claude.messages.with_raw_response.create(
            model=MODEL_A, max_tokens=64, messages=messages
        )

    assert stack.simulator_total() == before + 3
    assert results[0][0] == results[1][0]
    assert results[0][1]["cf-aig-cache-status"] == "MISS"
    assert results[1][1]["cf-aig-cache-status"] == "HIT"
    assert chunks_seen[0][0] == chunks_seen[1][0]
    assert chunks_seen[1][0][-1]["usage"]["completion_tokens"] > 0
    assert chunks_seen[1][1]["cf-aig-cache-status"] == "HIT"
    # The stream flag is part of the key: a JSON request never gets SSE.
    assert _status(non_stream) == "MISS"
    assert non_stream.headers["content-type"].startswith("application/json")


def test_each_key_field_alone_misses(stack: RunningStack) -> None:
    client = _anthropic(stack)
    prompt = _prompt()
    assert _status(_create(client, prompt)) == "MISS"
    assert _status(_create(client, prompt)) == "HIT"

    variants: dict[str, dict[str, Any]] = {
        "model": {"model": "claude-haiku-4-5"},
        "body field": {"max_tokens": 65},
        "temperature": {"extra_body": {"temperature": 0.5}},
        "anthropic-version": {"extra_headers": {"anthropic-version": "2023-06-01"}},
        "anthropic-beta": {"extra_headers": {"anthropic-beta": "tools-2024-04-04"}},
        "custom key": {"extra_headers": {"cf-aig-cache-key": "order-summary"}},
        "user": {"extra_headers": _user("someone-else")},
        "stream flag": {"stream": True},
    }
    for name, variant in variants.items():
        before = stack.simulator_total()
        raw = _create(client, prompt, **variant)
        if variant.get("stream"):
            for _ in raw.parse():
                pass
        assert _status(raw) == "MISS", name
        assert stack.simulator_total() == before + 1, name

    other_prompt = _create(client, prompt + " ")
    assert _status(other_prompt) == "MISS"


def test_key_order_does_not_matter(stack: RunningStack) -> None:
    prompt = _prompt()
    url = stack.anthropic_base_url(gateway=GATEWAY) + "/v1/messages"
    headers = {
        "x-api-key": "sk-ant-test",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    messages = [{"role": "user", "content": prompt}]
    one = orjson.dumps({"model": MODEL_A, "max_tokens": 32, "messages": messages})
    two = orjson.dumps({"messages": messages, "max_tokens": 32, "model": MODEL_A})
    answers = []
    for body in (one, two):
        request = urllib.request.Request(url, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            answers.append((response.headers["cf-aig-cache-status"], response.read()))
    assert [status for status, _ in answers] == ["MISS", "HIT"]
    assert orjson.loads(answers[1][1]) == orjson.loads(answers[0][1])


def test_users_never_share_entries(stack: RunningStack) -> None:
    client = _anthropic(stack)
    prompt = _prompt()
    before = stack.simulator_total()

    alice = [_create(client, prompt, extra_headers=_user("alice")) for _ in range(2)]
    bob = [_create(client, prompt, extra_headers=_user("bob")) for _ in range(2)]

    assert [_status(raw) for raw in alice] == ["MISS", "HIT"]
    assert [_status(raw) for raw in bob] == ["MISS", "HIT"]
    assert stack.simulator_total() == before + 2


def test_skip_cache_and_invalid_ttl(stack: RunningStack) -> None:
    client = _anthropic(stack)
    prompt = _prompt()
    skipped = _create(client, prompt, extra_headers={"cf-aig-skip-cache": "true"})
    assert _status(skipped) == "BYPASS"
    assert _status(_create(client, prompt)) == "MISS"

    for value in ("soon", "59", "2592001", "-5"):
        with pytest.raises(anthropic.BadRequestError) as caught:
            _create(client, prompt, extra_headers={"cf-aig-cache-ttl": value})
        assert "cf-aig-cache-ttl" in caught.value.message, value
    valid_ttl = _create(client, prompt, extra_headers={"cf-aig-cache-ttl": "60"})
    assert _status(valid_ttl) == "HIT"


@pytest.mark.parametrize(
    ("fault", "stream"),
    [
        ("server_error", False),
        ("overloaded", False),
        ("invalid_json", False),
        ("stream_error", True),
        ("reset_mid_stream", True),
        ("invalid_json", True),
    ],
)
def test_errors_and_cut_streams_not_cached(
    stack: RunningStack, fault: str, stream: bool
) -> None:
    client = _anthropic(stack)
    prompt = _prompt()
    try:
        raw = _create(
            client, prompt, stream=stream, extra_headers={"x-sim-fault": fault}
        )
        if stream:
            for _ in raw.parse():
                pass
        else:
            raw.parse()
    except (anthropic.APIError, ValueError):
        pass

    before = stack.simulator_total()
    after_fault = _create(client, prompt, stream=stream)
    if stream:
        events = [event.type for event in after_fault.parse()]
        assert events[-1] == "message_stop"
    assert _status(after_fault) == "MISS"
    assert stack.simulator_total() == before + 1


def test_client_closing_stream_early_not_cached(stack: RunningStack) -> None:
    client = _anthropic(stack)
    prompt = _prompt()
    slow = {"x-sim-chunk-ms": "50", "x-sim-output-tokens": "60"}
    raw = _create(client, prompt, stream=True, max_tokens=100, extra_headers=slow)
    stream = raw.parse()
    next(iter(stream))
    stream.close()
    time.sleep(0.3)

    before = stack.simulator_total()
    again = _create(client, prompt, stream=True, max_tokens=100)
    assert [event.type for event in again.parse()][-1] == "message_stop"
    assert _status(again) == "MISS"
    assert stack.simulator_total() == before + 1


async def test_rule_changes_apply_to_next_call(stack: RunningStack, admin: Any) -> None:
    user = f"rules-{uuid.uuid4().hex[:6]}"
    scope = policy_pb2.Scope(account_id="acme", gateway_id=GATEWAY, user_id=user)
    client = _anthropic(stack)
    prompt = _prompt()
    headers = _user(user)
    try:
        await admin.SetCacheRule(
            policy_pb2.SetCacheRuleRequest(
                rule=policy_pb2.CacheRule(scope=scope, enabled=False)
            )
        )
        assert _status(_create(client, prompt, extra_headers=headers)) == "BYPASS"

        await admin.SetCacheRule(
            policy_pb2.SetCacheRuleRequest(
                rule=policy_pb2.CacheRule(
                    scope=scope, enabled=True, ignore_fields=["temperature"]
                )
            )
        )
        first = _create(
            client, prompt, extra_body={"temperature": 0.1}, extra_headers=headers
        )
        second = _create(
            client, prompt, extra_body={"temperature": 0.9}, extra_headers=headers
        )
        assert (_status(first), _status(second)) == ("MISS", "HIT")

        listed = await admin.GetCacheRules(
            policy_pb2.GetCacheRulesRequest(
                account_id="acme", gateway_id=GATEWAY, user_id=user
            )
        )
        assert [rule.scope.user_id for rule in listed.rules] == [user]
        assert list(listed.effective.ignore_fields) == ["temperature"]
        assert listed.effective.ttl_s == 300

        await admin.SetCacheRule(
            policy_pb2.SetCacheRuleRequest(
                rule=policy_pb2.CacheRule(scope=scope, enabled=True, ttl_s=1)
            )
        )
        short_lived = _prompt()
        short = _create(client, short_lived, extra_headers=headers)
        assert _status(short) == "MISS"
        assert _status(_create(client, short_lived, extra_headers=headers)) == "HIT"
        await asyncio.sleep(2.2)
        expired = _create(client, short_lived, extra_headers=headers)
        assert _status(expired) == "MISS"

        await admin.SetCacheRule(
            policy_pb2.SetCacheRuleRequest(
                rule=policy_pb2.CacheRule(scope=scope, enabled=True, max_entry_bytes=64)
            )
        )
        big = prompt + " in detail"
        assert _status(_create(client, big, extra_headers=headers)) == "MISS"
        assert _status(_create(client, big, extra_headers=headers)) == "MISS"
    finally:
        deleted = await admin.DeleteCacheRule(
            policy_pb2.DeleteCacheRuleRequest(scope=scope)
        )
    assert deleted.deleted


async def test_invalid_rule_rejected(admin: Any) -> None:
    scope = policy_pb2.Scope(account_id="acme", gateway_id=GATEWAY, user_id="x")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.SetCacheRule(
            policy_pb2.SetCacheRuleRequest(
                rule=policy_pb2.CacheRule(scope=scope, ttl_s=-1)
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = policy_pb2.Scope(account_id="acme", gateway_id="nope")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.SetCacheRule(
            policy_pb2.SetCacheRuleRequest(rule=policy_pb2.CacheRule(scope=unknown))
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_misses_one_upstream_call(stack: RunningStack) -> None:
    messages = [{"role": "user", "content": _prompt()}]
    before = stack.simulator_total()
    async with anthropic.AsyncAnthropic(
        base_url=stack.anthropic_base_url(gateway=GATEWAY),
        api_key="sk-ant-test",
        max_retries=0,
        default_headers={"x-sim-ttfb-ms": "500"},
    ) as client:
        raws = await asyncio.gather(
            *(
                client.messages.with_raw_response.create(
                    model=MODEL_A, max_tokens=64, messages=messages
                )
                for _ in range(10)
            )
        )

    assert stack.simulator_total() == before + 1
    statuses = sorted(_status(raw) for raw in raws)
    assert statuses == ["HIT"] * 9 + ["MISS"]
    texts = {(await raw.parse()).content[0].text for raw in raws}
    assert len(texts) == 1
