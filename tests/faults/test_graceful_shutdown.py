"""SIGTERM of an ingress replica finishes its in-flight streams, then exits 0."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.faults.traffic import MODEL
from tests.support.stack import RunningStack

pytestmark = pytest.mark.fault


async def test_sigterm_finishes_inflight_stream(fault_stack: RunningStack) -> None:
    replica = fault_stack.stack.start_extra_ingress("ingress-drain")
    url = f"http://127.0.0.1:{replica.port}/v1/faults/shutdown/anthropic/v1/messages"
    headers = {
        "x-api-key": "sk-fault",
        "anthropic-version": "2023-06-01",
        "x-sim-chunk-ms": "100",
        "x-sim-chunks": "15",
    }
    body = {
        "model": MODEL,
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "drain"}],
    }
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=body, headers=headers) as response:
                request_id = response.headers["tollgate-request-id"]
                first = await response.content.readany()
                assert first
                # SIGTERM while the stream is still 1.4 s from its end.
                assert replica.process is not None
                replica.process.send_signal(signal.SIGTERM)
                rest = await response.read()
        exit_code = await asyncio.to_thread(replica.process.wait, 20)
    finally:
        replica.kill()
        fault_stack.stack.services.pop("ingress-drain", None)

    assert b"message_stop" in first + rest
    assert exit_code == 0
    rows = fault_stack.wait_rows("request_id = {r:String}", {"r": request_id}, 1)
    assert len(rows) == 1
    assert rows[0]["status"] == 200
    assert rows[0]["error_type"] == ""
    assert rows[0]["ingress_id"] == "ingress-drain"
