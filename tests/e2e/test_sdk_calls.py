"""The official SDKs through the gateway: same results as direct, one row per call."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.support.stack import RunningStack

MODEL_A = "claude-sonnet-4-5"
MODEL_O = "gpt-4o-mini"


def _prompt() -> str:
    return f"Summarise ticket {uuid.uuid4().hex[:8]} in one line."


_open_clients: list[Any] = []


def _anthropic(base_url: str, **kwargs: Any) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        base_url=base_url, api_key="sk-ant-test", max_retries=0, **kwargs
    )
    _open_clients.append(client)
    return client


def _openai(base_url: str, **kwargs: Any) -> openai.OpenAI:
    client = openai.OpenAI(
        base_url=base_url, api_key="sk-openai-test", max_retries=0, **kwargs
    )
    _open_clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close every SDK client a test opened, so no socket is left to the GC."""
    yield
    while _open_clients:
        _open_clients.pop().close()


def _one_row(stack: RunningStack, request_id: str) -> dict[str, Any]:
    rows = stack.wait_rows("request_id = {rid:String}", {"rid": request_id}, 1)
    assert len(rows) == 1, f"expected one row for {request_id}, got {len(rows)}"
    return rows[0]


def _anthropic_fields(message: anthropic.types.Message) -> dict[str, Any]:
    return {
        "model": message.model,
        "text": [block.text for block in message.content if block.type == "text"],
        "stop_reason": message.stop_reason,
        "input_tokens": message.usage.input_tokens,
        "output_tokens": message.usage.output_tokens,
        "cache_read": message.usage.cache_read_input_tokens,
        "cache_write": message.usage.cache_creation_input_tokens,
    }


def test_anthropic_sync_matches_direct_and_lands_once(stack: RunningStack) -> None:
    messages = [{"role": "user", "content": _prompt()}]
    direct = _anthropic(f"{stack.simulator_url}/anthropic").messages.create(
        model=MODEL_A, max_tokens=64, messages=messages
    )
    raw = _anthropic(stack.anthropic_base_url()).messages.with_raw_response.create(
        model=MODEL_A, max_tokens=64, messages=messages
    )
    via = raw.parse()

    assert _anthropic_fields(via) == _anthropic_fields(direct)
    row = _one_row(stack, raw.headers["tollgate-request-id"])
    assert row["model"] == MODEL_A
    assert row["status"] == 200
    assert row["provider"] == "anthropic"
    assert row["endpoint"] == "/v1/messages"
    assert row["stream"] is False
    assert row["input_tokens"] == via.usage.input_tokens
    assert row["output_tokens"] == via.usage.output_tokens
    assert row["error_type"] == ""
    assert row["latency_us"] > 0
    assert row["ttft_us"] > 0
    assert row["ttft_us"] <= row["latency_us"]
    assert row["stop_reason"] == via.stop_reason
    assert messages[0]["content"] in row["request_body"]
    assert via.content[0].text in row["response_body"]


def test_anthropic_stream_matches_direct_with_usage(stack: RunningStack) -> None:
    messages = [{"role": "user", "content": _prompt()}]
    kwargs = {"model": MODEL_A, "max_tokens": 48, "messages": messages}
    with _anthropic(f"{stack.simulator_url}/anthropic").messages.stream(**kwargs) as s:
        direct = s.get_final_message()
    client = _anthropic(stack.anthropic_base_url())
    with client.messages.stream(**kwargs) as s:
        via = s.get_final_message()
        request_id = s.response.headers["tollgate-request-id"]

    assert _anthropic_fields(via) == _anthropic_fields(direct)
    row = _one_row(stack, request_id)
    assert row["stream"] is True
    assert row["status"] == 200
    assert row["input_tokens"] == via.usage.input_tokens
    assert row["output_tokens"] == via.usage.output_tokens
    assert row["output_tokens"] > 0
    assert row["stop_reason"] == via.stop_reason
    assert 0 < row["ttft_us"] <= row["latency_us"]
    assert "event: message_stop" in row["response_body"]


def test_anthropic_cache_tokens_recorded(stack: RunningStack) -> None:
    system = [
        {
            "type": "text",
            "text": "You are a support agent. " * 40,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    client = _anthropic(stack.anthropic_base_url())
    raw = client.messages.with_raw_response.create(
        model=MODEL_A,
        max_tokens=16,
        system=system,
        messages=[{"role": "user", "content": _prompt()}],
        extra_headers={"x-sim-cache": "read"},
    )
    via = raw.parse()

    row = _one_row(stack, raw.headers["tollgate-request-id"])
    assert via.usage.cache_read_input_tokens > 0
    assert row["cache_read_tokens"] == via.usage.cache_read_input_tokens
    assert row["cache_write_tokens"] == via.usage.cache_creation_input_tokens
    assert row["input_tokens"] == via.usage.input_tokens


async def test_anthropic_async_stream_create(stack: RunningStack) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=stack.anthropic_base_url(), api_key="sk-ant-test", max_retries=0
    )
    response = await client.messages.with_raw_response.create(
        model=MODEL_A,
        max_tokens=32,
        stream=True,
        messages=[{"role": "user", "content": _prompt()}],
    )
    stream = await response.parse()
    kinds = []
    output_tokens = 0
    async for event in stream:
        kinds.append(event.type)
        if event.type == "message_delta":
            output_tokens = event.usage.output_tokens
    await client.close()

    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    row = _one_row(stack, response.headers["tollgate-request-id"])
    assert row["output_tokens"] == output_tokens
    assert row["stream"] is True


def test_openai_sync_matches_direct(stack: RunningStack) -> None:
    messages = [{"role": "user", "content": _prompt()}]
    direct = _openai(f"{stack.simulator_url}/openai/v1").chat.completions.create(
        model=MODEL_O, messages=messages
    )
    raw = _openai(stack.openai_base_url()).chat.completions.with_raw_response.create(
        model=MODEL_O, messages=messages
    )
    via = raw.parse()

    assert via.choices[0].message.content == direct.choices[0].message.content
    assert via.usage == direct.usage
    assert via.model == direct.model
    row = _one_row(stack, raw.headers["tollgate-request-id"])
    assert row["provider"] == "openai"
    assert row["endpoint"] == "/v1/chat/completions"
    assert row["model"] == MODEL_O
    assert row["input_tokens"] == via.usage.prompt_tokens
    assert row["output_tokens"] == via.usage.completion_tokens
    assert row["stop_reason"] == via.choices[0].finish_reason


def test_openai_stream_with_usage(stack: RunningStack) -> None:
    messages = [{"role": "user", "content": _prompt()}]
    kwargs = {
        "model": MODEL_O,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    direct_chunks = list(
        _openai(f"{stack.simulator_url}/openai/v1").chat.completions.create(**kwargs)
    )
    raw = _openai(stack.openai_base_url()).chat.completions.with_raw_response.create(
        **kwargs
    )
    chunks = list(raw.parse())

    def text(items: list[Any]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in items if c.choices)

    assert text(chunks) == text(direct_chunks)
    usage = chunks[-1].usage
    assert usage == direct_chunks[-1].usage
    row = _one_row(stack, raw.headers["tollgate-request-id"])
    assert row["stream"] is True
    assert row["input_tokens"] == usage.prompt_tokens
    assert row["output_tokens"] == usage.completion_tokens
    assert 0 < row["ttft_us"] <= row["latency_us"]


def test_openai_cached_tokens_not_counted_twice(stack: RunningStack) -> None:
    messages = [
        {"role": "system", "content": "Policy text. " * 50},
        {"role": "user", "content": _prompt()},
    ]
    raw = _openai(stack.openai_base_url()).chat.completions.with_raw_response.create(
        model=MODEL_O, messages=messages, extra_headers={"x-sim-cache": "read"}
    )
    via = raw.parse()
    cached = via.usage.prompt_tokens_details.cached_tokens

    row = _one_row(stack, raw.headers["tollgate-request-id"])
    assert cached > 0
    assert row["cache_read_tokens"] == cached
    assert row["input_tokens"] == via.usage.prompt_tokens - cached


async def test_openai_async_stream(stack: RunningStack) -> None:
    client = openai.AsyncOpenAI(
        base_url=stack.openai_base_url(), api_key="sk-openai-test", max_retries=0
    )
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL_O,
        messages=[{"role": "user", "content": _prompt()}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parsed = raw.parse()
    stream = await parsed if hasattr(parsed, "__await__") else parsed
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
    await client.close()

    assert usage is not None
    row = _one_row(stack, raw.headers["tollgate-request-id"])
    assert row["output_tokens"] == usage.completion_tokens


def test_short_route_uses_default_gateway(stack: RunningStack) -> None:
    client = _anthropic(f"{stack.ingress_url}/anthropic")
    raw = client.messages.with_raw_response.create(
        model=MODEL_A, max_tokens=8, messages=[{"role": "user", "content": _prompt()}]
    )

    row = _one_row(stack, raw.headers["tollgate-request-id"])
    assert row["account_id"] == "acme"
    assert row["gateway_id"] == "open"


def test_other_endpoints_forwarded(stack: RunningStack) -> None:
    client = _anthropic(stack.anthropic_base_url())
    count = client.messages.count_tokens(
        model=MODEL_A, messages=[{"role": "user", "content": "Hello there"}]
    )
    models = client.models.list()
    embedding = _openai(stack.openai_base_url()).embeddings.create(
        model="text-embedding-3-small", input="hello"
    )

    assert count.input_tokens > 0
    assert len(models.data) > 0
    assert len(embedding.data[0].embedding) > 0


@pytest.mark.parametrize(
    ("fault", "error_type", "status"),
    [
        ("rate_limit", anthropic.RateLimitError, 429),
        ("overloaded", anthropic.InternalServerError, 529),
        ("server_error", anthropic.InternalServerError, 500),
        ("bad_request", anthropic.BadRequestError, 400),
    ],
)
def test_anthropic_provider_errors_keep_sdk_types(
    stack: RunningStack, fault: str, error_type: type[Exception], status: int
) -> None:
    kwargs = {
        "model": MODEL_A,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": _prompt()}],
        "extra_headers": {"x-sim-fault": fault},
    }
    with pytest.raises(error_type) as direct:
        _anthropic(f"{stack.simulator_url}/anthropic").messages.create(**kwargs)
    with pytest.raises(error_type) as via:
        _anthropic(stack.anthropic_base_url()).messages.create(**kwargs)

    assert via.value.status_code == direct.value.status_code == status
    assert (
        via.value.body == direct.value.body
        or via.value.body["error"] == direct.value.body["error"]
    )
    if status == 429:
        assert (
            via.value.response.headers["retry-after"]
            == direct.value.response.headers["retry-after"]
        )
    row = _one_row(stack, via.value.response.headers["tollgate-request-id"])
    assert row["status"] == status
    assert row["error_type"] == direct.value.body["error"]["type"]


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        ("rate_limit", openai.RateLimitError),
        ("server_error", openai.InternalServerError),
        ("auth_error", openai.AuthenticationError),
    ],
)
def test_openai_provider_errors_keep_sdk_types(
    stack: RunningStack, fault: str, error_type: type[Exception]
) -> None:
    kwargs = {
        "model": MODEL_O,
        "messages": [{"role": "user", "content": _prompt()}],
        "extra_headers": {"x-sim-fault": fault},
    }
    with pytest.raises(error_type) as direct:
        _openai(f"{stack.simulator_url}/openai/v1").chat.completions.create(**kwargs)
    with pytest.raises(error_type) as via:
        _openai(stack.openai_base_url()).chat.completions.create(**kwargs)

    assert via.value.status_code == direct.value.status_code
    assert via.value.code == direct.value.code


def test_stream_error_event_reaches_sdk_and_row(stack: RunningStack) -> None:
    client = _anthropic(stack.anthropic_base_url())
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(
            model=MODEL_A,
            max_tokens=32,
            messages=[{"role": "user", "content": _prompt()}],
            extra_headers={"x-sim-fault": "stream_error"},
        ) as stream:
            request_id = stream.response.headers["tollgate-request-id"]
            stream.get_final_message()

    assert "overloaded" in str(raised.value).lower()
    row = _one_row(stack, request_id)
    assert row["status"] == 200
    assert row["error_type"] == "overloaded_error"
    assert row["output_tokens"] >= 0
