"""A client that leaves in the middle of a stream."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.faults.traffic import MODEL
from tests.support.stack import RunningStack

pytestmark = pytest.mark.fault


async def test_client_disconnect_mid_stream(fault_stack: RunningStack) -> None:
    url = fault_stack.anthropic_base_url("faults", "disconnect") + "/v1/messages"
    marker = f"cut-off-{time.monotonic_ns()}"
    headers = {
        "x-api-key": "sk-fault",
        "anthropic-version": "2023-06-01",
        "x-sim-chunk-ms": "100",
        "x-sim-chunks": "25",
    }
    body = {
        "model": MODEL,
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": marker}],
    }
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        response = await session.post(url, json=body, headers=headers)
        request_id = response.headers["tollgate-request-id"]
        seen = b""
        while seen.count(b"content_block_delta") < 3:
            seen += await response.content.readany()
        # Leave without reading the rest: the connection is closed.
        response.close()

    rows = fault_stack.wait_rows("request_id = {r:String}", {"r": request_id}, 1)
    assert len(rows) == 1
    row = rows[0]
    assert row["client_cancelled"] is True
    assert row["error_type"] == "client_disconnected"
    assert row["input_tokens"] > 0
    # Output usage arrives only at the end; the estimate counts content events.
    assert 3 <= row["output_tokens"] < 25
    assert "estimate" in row["error_message"]

    # The ingress closed its upstream request: once the whole stream (25
    # deltas, 100 ms apart) would have ended, the simulator still records no
    # status, which it does for an aborted connection.
    await asyncio.sleep(max(0.0, started + 3.5 - time.monotonic()))
    recorded = [
        r
        for r in fault_stack.simulator_requests()["requests"]
        if marker in str(r.get("body"))
    ]
    assert len(recorded) == 1
    assert recorded[0]["status"] is None
