"""Steady SDK traffic through the stack, and the exactly-once check after a fault.

A few async Anthropic SDK clients send calls at a modest rate, half of them
streamed, and keep the ``tollgate-request-id`` of every call that completed
(status 200 and, for a stream, its last event). Failed calls are counted by
their exception class. ``check_exactly_once`` then waits until ClickHouse
contains the completed calls and compares them row by row.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from dataclasses import dataclass, field
from typing import Any

import anthropic

from tests.support.stack import RunningStack

# One gateway per fault, so that the checks count only that fault's calls.
FAULT_GATEWAYS = {
    "analytics": "open",
    "policy": "open",
    "policy_closed": "closed",
    "redis": "open",
    "clickhouse": "open",
    "ingress": "open",
    "upstream": "open",
    "disconnect": "open",
    "shutdown": "open",
    "soak": "open",
}
MODEL = "claude-sonnet-4-5"


def full_mode() -> bool:
    return os.environ.get("TOLLGATE_FAULTS", "") == "full"


@dataclass(frozen=True)
class Plan:
    """Timing of one kill-and-restart run, in seconds from the traffic start."""

    clients: int
    pause_s: float
    kill_at_s: float
    down_s: float
    total_s: float


def plan() -> Plan:
    if full_mode():
        return Plan(clients=4, pause_s=0.05, kill_at_s=4.0, down_s=4.0, total_s=16.0)
    return Plan(clients=3, pause_s=0.08, kill_at_s=1.5, down_s=1.5, total_s=5.5)


@dataclass
class Traffic:
    stack: RunningStack
    gateway: str
    clients: int
    pause_s: float
    completed: list[str] = field(default_factory=list)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(self.clients)))

    async def _client(self, number: int) -> None:
        base_url = self.stack.anthropic_base_url("faults", self.gateway)
        # No SDK retries: each attempt is one call the check can count.
        async with anthropic.AsyncAnthropic(
            base_url=base_url, api_key="sk-fault", max_retries=0, timeout=20
        ) as client:
            sequence = 0
            while not self.stopping.is_set():
                sequence += 1
                await self._call(client, stream=(number + sequence) % 2 == 0)
                await asyncio.sleep(self.pause_s)

    async def _call(self, client: anthropic.AsyncAnthropic, *, stream: bool) -> None:
        params: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "fault suite"}],
        }
        try:
            if stream:
                events = await client.messages.create(**params, stream=True)
                async with events:
                    request_id = events.response.headers["tollgate-request-id"]
                    async for _ in events:
                        pass
            else:
                raw = await client.messages.with_raw_response.create(**params)
                await raw.parse()
                request_id = raw.headers["tollgate-request-id"]
        except anthropic.APIStatusError as exc:
            self.statuses[exc.status_code] += 1
            self.failures[type(exc).__name__] += 1
            return
        except anthropic.APIError as exc:
            self.failures[type(exc).__name__] += 1
            return
        self.statuses[200] += 1
        self.completed.append(request_id)


async def run_with_fault(
    stack: RunningStack, gateway: str, kill: Any, restart: Any
) -> Traffic:
    """Run traffic, call ``kill`` at kill_at_s and ``restart`` down_s later."""
    timing = plan()
    traffic = Traffic(stack, gateway, timing.clients, timing.pause_s)
    runner = asyncio.create_task(traffic.run())
    started = time.monotonic()
    await asyncio.sleep(timing.kill_at_s)
    await asyncio.to_thread(kill)
    await asyncio.sleep(timing.down_s)
    await asyncio.to_thread(restart)
    await asyncio.sleep(max(0.0, timing.total_s - (time.monotonic() - started)))
    traffic.stopping.set()
    await runner
    return traffic


def check_exactly_once(stack: RunningStack, gateway: str, completed: list[str]) -> None:
    """Assert that every completed call of ``gateway`` is stored exactly once."""
    assert completed, "no call completed"
    assert len(set(completed)) == len(completed)
    client = stack.clickhouse()
    try:
        where = (
            "account_id = 'faults' AND gateway_id = {g:String} AND status = 200 "
            "AND error_type = ''"
        )
        params = {"g": gateway}
        deadline = time.monotonic() + 90
        stored: set[str] = set()
        while time.monotonic() < deadline:
            rows = client.query(
                f"SELECT request_id FROM calls FINAL WHERE {where}", parameters=params
            ).result_rows
            stored = {row[0] for row in rows}
            if stored >= set(completed):
                break
            time.sleep(0.3)
        missing = set(completed) - stored
        assert not missing, f"{len(missing)} of {len(completed)} completed calls lost"
        assert stored == set(completed), "calls stored that no client saw complete"

        client.command("OPTIMIZE TABLE calls FINAL")
        counts = client.query(
            f"SELECT request_id, count() FROM calls WHERE {where} GROUP BY request_id",
            parameters=params,
        ).result_rows
        duplicated = {request_id: n for request_id, n in counts if n != 1}
        assert not duplicated, f"calls stored more than once: {duplicated}"
        assert len(counts) == len(completed)
    finally:
        client.close()
