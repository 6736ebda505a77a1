"""Fail-open and fail-closed with the stack's own Redis stopped and started again."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.stack import RunningStack, start_stack, stop_stack

CONFIG = """
[accounts.fm.gateways.open]
fail_mode = "open"
[[accounts.fm.gateways.open.limits]]
scope = "user"
kind = "requests"
limit = 3
window_s = 600

[accounts.fm.gateways.closed]
fail_mode = "closed"
[[accounts.fm.gateways.closed.limits]]
scope = "user"
kind = "requests"
limit = 100
window_s = 600
"""


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # Its own redis-server on a free port: this test stops it.
    running = start_stack(
        Path(tmp_path_factory.mktemp("failmodes")), CONFIG, own_redis=True
    )
    yield running
    stop_stack(running)


@dataclass
class Answer:
    status_code: int
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def _call(
    stack: RunningStack, gateway: str, user: str, api_key: str = "sk-ant-test"
) -> Answer:
    request = urllib.request.Request(
        f"{stack.anthropic_base_url('fm', gateway)}/v1/messages",
        data=orjson.dumps(
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}],
            }
        ),
        headers={
            "content-type": "application/json",
            "x-api-key": api_key,
            "anthropic-version": "2023-06-01",
            "cf-aig-metadata": orjson.dumps({"user": user}).decode(),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, exc.read())


def _wait_redis_back(stack: RunningStack) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _call(stack, "closed", "probe").status_code == 200:
            return
        time.sleep(0.2)
    pytest.fail("calls did not recover after Redis came back")


def test_fail_open_and_closed_with_redis_down(fstack: RunningStack) -> None:
    assert _call(fstack, "open", "before").status_code == 200
    redis = fstack.stack.services["redis"]
    redis.stop()
    try:
        closed = _call(fstack, "closed", "down")
        assert closed.status_code == 503
        assert closed.json()["error"]["type"] == "api_error"

        # Fail-open admits, within the local per-replica bound of 3 per user.
        statuses = [_call(fstack, "open", "down").status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]

        # A gateway key cannot be checked now and must not reach the provider.
        forwarded_before = fstack.simulator_total()
        gateway_key = "tg_" + "k" * 43
        with_key = _call(fstack, "open", "keyed", api_key=gateway_key)
        assert with_key.status_code == 503
        assert "gateway keys" in with_key.json()["error"]["message"]
        assert fstack.simulator_total() == forwarded_before
    finally:
        redis.start()
    _wait_redis_back(fstack)

    # Redis is the judge again: "before" used 1 of its 3 before the outage.
    statuses = [_call(fstack, "open", "before").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]

    # Calls the policy service never checked are still recorded under the
    # user their cf-aig-metadata names, with that metadata.
    where = "gateway_id = {gateway:String} AND user_id = 'down'"
    closed_rows = fstack.wait_rows(where, {"gateway": "closed"}, 1)
    open_rows = fstack.wait_rows(where, {"gateway": "open"}, 5)
    assert [row["status"] for row in closed_rows] == [503]
    assert sorted(row["status"] for row in open_rows) == [200, 200, 200, 429, 429]
    assert all(row["metadata"] == {"user": "down"} for row in open_rows + closed_rows)
