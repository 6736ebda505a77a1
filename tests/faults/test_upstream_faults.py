"""Upstream faults: each gives the client a status in the provider's format and
exactly one call event with the error type."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from tests.faults.traffic import MODEL
from tests.support.stack import RunningStack

pytestmark = pytest.mark.fault

BODY = {
    "model": MODEL,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "x"}],
}

# fault, extra headers, stream, expected status, expected event error_type
ANTHROPIC_CASES = [
    ("server_error", {}, False, 500, "api_error"),
    ("overloaded", {}, False, 529, "overloaded_error"),
    ("stream_error", {}, True, 200, "overloaded_error"),
    ("slow", {}, False, 200, ""),
    ("none", {"x-sim-chunk-ms": "60", "x-sim-chunks": "6"}, True, 200, ""),
]
OPENAI_CASES = [
    ("timeout", {"cf-aig-request-timeout": "400"}, False, 504, "upstream_timeout"),
    ("reset", {}, False, 502, "upstream_connect_error"),
    ("reset_mid_stream", {}, True, 200, "upstream_disconnected"),
]


async def _send(
    url: str, headers: dict[str, str], body: dict[str, object]
) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as response:
            try:
                data = await response.read()
            except aiohttp.ClientPayloadError:
                data = b""
            return response.status, data, response.headers["tollgate-request-id"]


def _rows(stack: RunningStack, request_id: str) -> list[dict[str, object]]:
    return stack.wait_rows("request_id = {r:String}", {"r": request_id}, 1)


@pytest.mark.parametrize(
    ("fault", "extra", "stream", "status", "error_type"), ANTHROPIC_CASES
)
async def test_anthropic_upstream_fault(
    fault_stack: RunningStack,
    fault: str,
    extra: dict[str, str],
    stream: bool,
    status: int,
    error_type: str,
) -> None:
    url = fault_stack.anthropic_base_url("faults", "upstream") + "/v1/messages"
    headers = {"x-api-key": "sk-fault", "anthropic-version": "2023-06-01"}
    headers.update({"x-sim-fault": fault, **extra})
    got_status, data, request_id = await _send(url, headers, {**BODY, "stream": stream})

    assert got_status == status
    if status >= 400:
        error = orjson.loads(data)
        assert error["type"] == "error"
        assert error["error"]["type"] == error_type
    rows = _rows(fault_stack, request_id)
    assert len(rows) == 1
    assert rows[0]["status"] == status
    assert rows[0]["error_type"] == error_type


@pytest.mark.parametrize(
    ("fault", "extra", "stream", "status", "error_type"), OPENAI_CASES
)
async def test_openai_upstream_fault(
    fault_stack: RunningStack,
    fault: str,
    extra: dict[str, str],
    stream: bool,
    status: int,
    error_type: str,
) -> None:
    url = fault_stack.openai_base_url("faults", "upstream") + "/chat/completions"
    headers = {"authorization": "Bearer sk-fault", "x-sim-fault": fault, **extra}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    got_status, data, request_id = await _send(url, headers, {**body, "stream": stream})

    assert got_status == status
    if status >= 400:
        error = orjson.loads(data)["error"]
        assert error["code"] == error_type
    rows = _rows(fault_stack, request_id)
    assert len(rows) == 1
    assert rows[0]["status"] == status
    assert rows[0]["error_type"] == error_type
