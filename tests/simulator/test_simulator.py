"""Drive the provider simulator with the official anthropic and openai SDKs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import anthropic
import openai
import orjson
import pytest

from services.simulator import SimSettings, SimulatorServer, ThreadedSimulator
from services.simulator.text import count_tokens

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "claude-sonnet-4-5-20250929"
USER = [{"role": "user", "content": "Say something about tolls."}]


@pytest.fixture(scope="module")
async def sim():
    async with SimulatorServer(SimSettings(ttfb_ms=2, chunk_ms=1)) as server:
        yield server


@pytest.fixture(scope="module")
def threaded():
    with ThreadedSimulator(SimSettings(ttfb_ms=2, chunk_ms=1)) as server:
        yield server


@pytest.fixture
async def aclaude(sim):
    client = anthropic.AsyncAnthropic(
        base_url=sim.anthropic_base_url, api_key="sk-ant-test", max_retries=0
    )
    yield client
    await client.close()


@pytest.fixture
def claude(threaded):
    with anthropic.Anthropic(
        base_url=threaded.server.anthropic_base_url,
        api_key="sk-ant-test",
        max_retries=0,
    ) as client:
        yield client


@pytest.fixture
async def agpt(sim):
    client = openai.AsyncOpenAI(
        base_url=sim.openai_base_url, api_key="sk-test", max_retries=0
    )
    yield client
    await client.close()


@pytest.fixture
def gpt(threaded):
    with openai.OpenAI(
        base_url=threaded.server.openai_base_url, api_key="sk-test", max_retries=0
    ) as client:
        yield client


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# Anthropic, non-streaming


def test_anthropic_create_usage_and_text(claude):
    message = claude.messages.create(model=MODEL, max_tokens=1000, messages=USER)
    text = message.content[0].text
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 32
    assert message.usage.output_tokens == count_tokens(text)
    assert message.usage.input_tokens == count_tokens(USER[0]["content"])
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0


def test_anthropic_text_deterministic(claude):
    first = claude.messages.create(model=MODEL, max_tokens=100, messages=USER)
    second = claude.messages.create(model=MODEL, max_tokens=100, messages=USER)
    other = claude.messages.create(model=MODEL, max_tokens=100, messages=user("x"))
    warmer = claude.messages.create(
        model=MODEL, max_tokens=100, messages=USER, extra_body={"temperature": 0.5}
    )
    assert first.content[0].text == second.content[0].text
    assert first.usage == second.usage
    assert first.id != second.id
    assert other.content[0].text != first.content[0].text
    assert warmer.content[0].text != first.content[0].text


def test_anthropic_max_tokens_truncates(claude):
    full = claude.messages.create(model=MODEL, max_tokens=100, messages=USER)
    cut = claude.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 5
    assert full.content[0].text.startswith(cut.content[0].text)


def test_anthropic_stop_sequence(claude):
    full = claude.messages.create(model=MODEL, max_tokens=100, messages=USER)
    word = full.content[0].text.split()[3]
    stopped = claude.messages.create(
        model=MODEL, max_tokens=100, messages=USER, stop_sequences=[word]
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == word
    assert word not in stopped.content[0].text
    assert full.content[0].text.startswith(stopped.content[0].text)


def test_anthropic_output_tokens_header(claude):
    message = claude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=USER,
        extra_headers={"x-sim-output-tokens": "7"},
    )
    assert message.usage.output_tokens == 7
    assert message.stop_reason == "end_turn"


def test_anthropic_output_tokens_marker(claude):
    message = claude.messages.create(
        model=MODEL, max_tokens=100, messages=user("hi [[sim:output_tokens=3]]")
    )
    assert message.usage.output_tokens == 3


# Anthropic, streaming


async def test_anthropic_stream_events(aclaude):
    plain = await aclaude.messages.create(model=MODEL, max_tokens=100, messages=USER)
    stream = await aclaude.messages.create(
        model=MODEL, max_tokens=100, messages=USER, stream=True
    )
    events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert types.count("content_block_delta") == 8
    start = events[0].message
    assert start.usage.output_tokens == 1
    assert start.usage.input_tokens == plain.usage.input_tokens
    assert start.stop_reason is None
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == plain.content[0].text
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == plain.usage.output_tokens


def test_anthropic_stream_helper_final_message(claude):
    with claude.messages.stream(model=MODEL, max_tokens=6, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 6
    assert final.content[0].text == text


async def test_anthropic_chunks_header(aclaude):
    stream = await aclaude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=USER,
        stream=True,
        extra_headers={"x-sim-chunks": "3"},
    )
    deltas = [e async for e in stream if e.type == "content_block_delta"]
    assert len(deltas) == 3


# Anthropic, other endpoints and cache tokens


def test_anthropic_count_tokens(claude):
    counted = claude.messages.count_tokens(model=MODEL, messages=USER)
    message = claude.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert counted.input_tokens == message.usage.input_tokens


def test_anthropic_models_list_pages(claude):
    page = claude.models.list(limit=2)
    assert len(page.data) == 2
    assert page.has_more is True
    all_ids = [model.id for model in claude.models.list(limit=2)]
    assert len(all_ids) == 4
    assert len(set(all_ids)) == 4
    assert claude.models.retrieve(all_ids[1]).id == all_ids[1]


def cached_prompt() -> dict[str, object]:
    system = [
        {
            "type": "text",
            "text": "s" * 400,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    return {"model": MODEL, "max_tokens": 10, "system": system, "messages": USER}


def test_anthropic_cache_write_by_default(claude):
    message = claude.messages.create(**cached_prompt())
    assert message.usage.cache_creation_input_tokens == 100
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.input_tokens == count_tokens(USER[0]["content"])


def test_anthropic_cache_read_header(claude):
    message = claude.messages.create(
        **cached_prompt(), extra_headers={"x-sim-cache": "read"}
    )
    assert message.usage.cache_read_input_tokens == 100
    assert message.usage.cache_creation_input_tokens == 0


def test_anthropic_cache_auto_second_read(claude):
    prompt = cached_prompt()
    prompt["system"][0]["text"] = "auto " * 80
    headers = {"x-sim-cache": "auto"}
    first = claude.messages.create(**prompt, extra_headers=headers)
    second = claude.messages.create(**prompt, extra_headers=headers)
    assert first.usage.cache_creation_input_tokens == 100
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == 100
    assert second.usage.cache_creation_input_tokens == 0


# Anthropic faults and validation


def test_anthropic_rate_limit_retry_after(claude):
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=USER,
            extra_headers={"x-sim-fault": "rate_limit", "x-sim-retry-after": "7"},
        )
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["error"]["type"] == "rate_limit_error"


def test_anthropic_marker_rate_limit(claude):
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(
            model=MODEL, max_tokens=10, messages=user("go [[sim:rate_limit]]")
        )


def test_anthropic_overloaded_529(claude):
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=USER,
            extra_headers={"x-sim-fault": "overloaded"},
        )
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_anthropic_server_error_500(claude):
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=USER,
            extra_headers={"x-sim-fault": "server_error"},
        )
    assert caught.value.status_code == 500
    assert caught.value.body["error"]["type"] == "api_error"


async def test_anthropic_reset_before_headers(aclaude):
    with pytest.raises(anthropic.APIConnectionError):
        await aclaude.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=USER,
            extra_headers={"x-sim-fault": "reset"},
        )


async def test_anthropic_reset_mid_stream(aclaude):
    stream = await aclaude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=USER,
        stream=True,
        extra_headers={"x-sim-fault": "reset_mid_stream"},
    )
    seen = []
    with pytest.raises(anthropic.APIConnectionError):
        async for event in stream:
            seen.append(event.type)
    assert "content_block_delta" in seen


async def test_anthropic_stream_error_event(aclaude):
    stream = await aclaude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=USER,
        stream=True,
        extra_headers={"x-sim-fault": "stream_error"},
    )
    deltas = 0
    with pytest.raises(anthropic.APIStatusError) as caught:
        async for event in stream:
            deltas += event.type == "content_block_delta"
    assert deltas == 4
    assert caught.value.body["error"]["type"] == "overloaded_error"


async def test_anthropic_timeout_fault(aclaude):
    with pytest.raises(anthropic.APITimeoutError):
        await aclaude.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=USER,
            timeout=0.3,
            extra_headers={"x-sim-fault": "timeout"},
        )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": MODEL, "messages": USER}, "max_tokens: Field required"),
        ({"model": MODEL, "max_tokens": 5}, "messages: Field required"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": []},
            "messages: at least one message is required",
        ),
        ({"max_tokens": 5, "messages": USER}, "model: Field required"),
    ],
)
def test_anthropic_validation(claude, body, message):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.post("/v1/messages", body=body, cast_to=object)
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert caught.value.body["error"]["message"] == message


def test_anthropic_unknown_fault_rejected(claude):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=USER,
            extra_headers={"x-sim-fault": "nonsense"},
        )
    assert "invalid x-sim-fault" in caught.value.body["error"]["message"]


async def test_anthropic_missing_key(sim):
    body = {"model": MODEL, "max_tokens": 5, "messages": USER}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sim.url}/v1/messages",
            json=body,
            headers={"anthropic-version": "2023-06-01"},
        ) as response:
            status = response.status
            payload = await response.json()
    assert status == 401
    assert payload["error"]["type"] == "authentication_error"
    assert payload["error"]["message"] == "x-api-key header is required"


async def test_accepted_and_rejected_keys():
    settings = SimSettings(
        ttfb_ms=0,
        chunk_ms=0,
        api_keys=frozenset({"good", "revoked"}),
        rejected_keys=frozenset({"revoked"}),
    )
    async with SimulatorServer(settings) as server:
        for key, ok in (("good", True), ("other", False), ("revoked", False)):
            async with anthropic.AsyncAnthropic(
                base_url=server.anthropic_base_url, api_key=key, max_retries=0
            ) as client:
                create = client.messages.create(
                    model=MODEL, max_tokens=5, messages=USER
                )
                if ok:
                    await create
                    continue
                with pytest.raises(anthropic.AuthenticationError):
                    await create
        async with openai.AsyncOpenAI(
            base_url=server.openai_base_url, api_key="other", max_retries=0
        ) as gpt:
            with pytest.raises(openai.AuthenticationError) as caught:
                await gpt.chat.completions.create(model="gpt-4o", messages=USER)
        assert caught.value.code == "invalid_api_key"


# OpenAI


def test_openai_create_usage(gpt):
    completion = gpt.chat.completions.create(model="gpt-4o", messages=USER)
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert choice.finish_reason == "stop"
    assert choice.message.refusal is None
    usage = completion.usage
    assert usage.completion_tokens == count_tokens(choice.message.content) == 32
    assert usage.prompt_tokens == count_tokens(USER[0]["content"])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_openai_deterministic_and_length(gpt):
    first = gpt.chat.completions.create(model="gpt-4o", messages=USER, seed=1)
    again = gpt.chat.completions.create(model="gpt-4o", messages=USER, seed=1)
    other = gpt.chat.completions.create(model="gpt-4o", messages=USER, seed=2)
    cut = gpt.chat.completions.create(
        model="gpt-4o", messages=USER, seed=1, max_completion_tokens=4
    )
    text = first.choices[0].message.content
    assert again.choices[0].message.content == text
    assert other.choices[0].message.content != text
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 4
    assert text.startswith(cut.choices[0].message.content)


def test_openai_cached_tokens_read(gpt):
    messages = [
        {"role": "system", "content": "p" * 80},
        {"role": "user", "content": "hello"},
    ]
    completion = gpt.chat.completions.create(
        model="gpt-4o", messages=messages, extra_headers={"x-sim-cache": "read"}
    )
    assert completion.usage.prompt_tokens == 22
    assert completion.usage.prompt_tokens_details.cached_tokens == 20


async def test_openai_stream_include_usage(agpt):
    plain = await agpt.chat.completions.create(model="gpt-4o", messages=USER)
    stream = await agpt.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == plain.choices[0].message.content


async def test_openai_stream_without_usage(agpt):
    stream = await agpt.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)


def test_openai_embeddings(gpt):
    default = gpt.embeddings.create(model="text-embedding-3-small", input=["a", "bb"])
    floats = gpt.embeddings.create(
        model="text-embedding-3-small", input=["a", "bb"], encoding_format="float"
    )
    assert len(default.data) == 2
    assert len(default.data[0].embedding) == 16
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding)
    assert default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens == 2
    sized = gpt.embeddings.create(model="m", input="a", dimensions=8)
    assert len(sized.data[0].embedding) == 8


def test_openai_models_list(gpt):
    ids = [model.id for model in gpt.models.list()]
    assert "gpt-4o" in ids
    assert gpt.models.retrieve("gpt-4o").owned_by == "system"
    with pytest.raises(openai.NotFoundError):
        gpt.models.retrieve("no-such-model")


def test_openai_rate_limit(gpt):
    with pytest.raises(openai.RateLimitError) as caught:
        gpt.chat.completions.create(
            model="gpt-4o",
            messages=USER,
            extra_headers={
                "x-sim-fault": "rate_limit_tokens",
                "x-sim-retry-after": "3",
            },
        )
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "tokens"


def test_openai_overloaded_503(gpt):
    with pytest.raises(openai.InternalServerError) as caught:
        gpt.chat.completions.create(
            model="gpt-4o", messages=user("hi [[sim:overloaded]]")
        )
    assert caught.value.status_code == 503


def test_openai_validation(gpt):
    with pytest.raises(openai.BadRequestError) as caught:
        gpt.chat.completions.create(model="gpt-4o", messages=[])
    assert caught.value.code == "empty_array"
    assert caught.value.param == "messages"


def test_openai_missing_key(threaded):
    with openai.OpenAI(
        base_url=threaded.server.openai_base_url, api_key="x", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(
                model="gpt-4o", messages=USER, extra_headers={"Authorization": ""}
            )


async def test_openai_stream_error(agpt):
    stream = await agpt.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        stream=True,
        extra_headers={"x-sim-fault": "stream_error", "x-sim-fault-after": "2"},
    )
    contents = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            contents.append(chunk.choices[0].delta.content)
    assert len(contents) == 3
    assert caught.value.type == "server_error"


async def test_openai_reset(agpt):
    with pytest.raises(openai.APIConnectionError):
        await agpt.chat.completions.create(
            model="gpt-4o", messages=USER, extra_headers={"x-sim-fault": "reset"}
        )


# Raw wire format


async def test_anthropic_sse_bytes(sim):
    body = {"model": MODEL, "max_tokens": 8, "messages": USER, "stream": True}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sim.url}/v1/messages", json=body, headers=headers
        ) as response:
            raw = await response.read()
            content_type = response.headers["Content-Type"]
            request_id = response.headers["request-id"]
    assert content_type == "text/event-stream; charset=utf-8"
    assert request_id.startswith("req_")
    assert raw.endswith(b"\n\n")
    blocks = raw[:-2].split(b"\n\n")
    names = []
    for block in blocks:
        event_line, data_line = block.split(b"\n")
        assert event_line.startswith(b"event: ")
        assert data_line.startswith(b"data: ")
        name = event_line[len(b"event: ") :].decode()
        assert orjson.loads(data_line[len(b"data: ") :])["type"] == name
        names.append(name)
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_openai_sse_bytes(sim):
    body = {
        "model": "gpt-4o",
        "messages": USER,
        "stream": True,
        "max_tokens": 8,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": "Bearer k"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sim.url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            raw = await response.read()
            assert response.headers["x-request-id"]
    blocks = raw.split(b"\n\n")
    assert blocks[-1] == b""
    assert blocks[-2] == b"data: [DONE]"
    chunks = [orjson.loads(block[len(b"data: ") :]) for block in blocks[:-2]]
    assert all(block.startswith(b"data: {") for block in blocks[:-2])
    assert [len(chunk["choices"]) for chunk in chunks] == [1, 1, 1, 1, 0]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


async def test_invalid_json_body(sim):
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sim.url}/v1/messages", data=b"{not json", headers=headers
        ) as response:
            status = response.status
            payload = await response.json()
    assert status == 400
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["request_id"].startswith("req_")


async def test_bare_models_by_headers(sim):
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{sim.url}/v1/models",
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        ) as response:
            claude_models = await response.json()
        async with session.get(
            f"{sim.url}/v1/models", headers={"Authorization": "Bearer k"}
        ) as response:
            gpt_models = await response.json()
    assert "has_more" in claude_models
    assert gpt_models["object"] == "list"


# Timing


async def test_ttfb_header_delays(aclaude):
    started = time.monotonic()
    await aclaude.messages.create(
        model=MODEL,
        max_tokens=5,
        messages=USER,
        extra_headers={"x-sim-ttfb-ms": "200", "x-sim-chunk-ms": "0"},
    )
    assert time.monotonic() - started >= 0.18


async def test_chunk_ms_spaces_deltas(aclaude):
    stream = await aclaude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=USER,
        stream=True,
        extra_headers={"x-sim-chunks": "5", "x-sim-chunk-ms": "60"},
    )
    arrivals = []
    async for event in stream:
        if event.type == "content_block_delta":
            arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] >= 0.2


# Observability


async def test_sim_requests_and_reset(sim, aclaude):
    async with aiohttp.ClientSession() as session:
        await session.post(f"{sim.url}/_sim/reset")
        await aclaude.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=USER,
            extra_headers={"x-trace": "abc"},
        )
        async with session.get(f"{sim.url}/_sim/requests") as response:
            snapshot = await response.json()
        await session.post(f"{sim.url}/_sim/reset")
        async with session.get(f"{sim.url}/_sim/requests") as response:
            cleared = await response.json()
    assert snapshot["total"] == 1
    assert snapshot["by_path"] == {"/anthropic/v1/messages": 1}
    entry = snapshot["requests"][0]
    assert entry["method"] == "POST"
    assert entry["status"] == 200
    assert entry["headers"]["authorization"] == "Bearer sk-ant-test"
    assert entry["headers"]["x-trace"] == "abc"
    assert entry["body"]["messages"] == USER
    assert cleared["total"] == 0
    assert cleared["requests"] == []
    assert sim.state.total == 0


# Command line


def test_cli_ready_file_and_sigterm(tmp_path):
    ready = tmp_path / "sim.port"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.simulator", "--port", "0"]
        + ["--ttfb-ms", "0", "--ready-file", str(ready)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "simulator did not write the ready file"
        port = int(ready.read_text())
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0
        )
        completion = client.chat.completions.create(model="gpt-4o", messages=USER)
        assert completion.choices[0].message.content
        client.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0
    assert b"simulator listening on http://127.0.0.1:" in output
    assert b"stopped" in output


def test_threaded_state_counts(threaded, claude):
    before = threaded.state.by_path["/anthropic/v1/messages/count_tokens"]
    claude.messages.count_tokens(model=MODEL, messages=USER)
    after = threaded.state.by_path["/anthropic/v1/messages/count_tokens"]
    assert after == before + 1
