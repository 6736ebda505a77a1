"""The load generator: an asyncio HTTP client on aiohttp and uvloop.

Two schedules:

- open loop at a fixed rate (the latency cases): request ``i`` is due at
  ``start + i / rate``; its latency runs from that scheduled time, not from
  the moment the client got round to sending it, so a stalled gateway cannot
  hide its stall by slowing the client down (coordinated omission);
- closed loop with a fixed number of workers (the throughput cases): each
  worker sends its next request as soon as the previous one ends.

For streams the time to first byte is taken when the first body chunk
arrives (the first SSE event), not when the headers do, because a gateway
can send its headers early and still hold the first event back.

The generator reads its own CPU time from ``/proc/self/stat``, so that the
report can say whether the client, not the gateway, was the bottleneck.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import aiohttp

# A client that used more than this share of its core during a case may have
# limited the result.
CLIENT_BOTTLENECK_CPU_SHARE = 0.85
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Request:
    """One prepared request, sent unchanged many times."""

    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    # Bytes that a complete response must contain (the last SSE event).
    end_marker: bytes = b""


@dataclass(slots=True)
class Sample:
    # Seconds from the scheduled (open loop) or actual (closed loop) send
    # time to the last byte of the response.
    latency_s: float
    # Seconds to the first body chunk, streams only.
    ttfb_s: float | None
    ok: bool
    error: str = ""


@dataclass(slots=True)
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    # CPU seconds the load generator's own process used in the window.
    client_cpu_s: float = 0.0

    @property
    def client_cpu_share(self) -> float:
        return self.client_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def client_bound(self) -> bool:
        return self.client_cpu_share >= CLIENT_BOTTLENECK_CPU_SHARE


def process_cpu_s(pid: int | str = "self") -> float:
    """User plus system CPU seconds of one process, from ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        raw = stat.read()
    # The command name can contain spaces; the fields after it cannot.
    fields = raw[raw.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def send_one(
    session: aiohttp.ClientSession, request: Request, scheduled: float
) -> Sample:
    """Send ``request`` and time it from ``scheduled`` (a perf_counter value)."""
    ttfb: float | None = None
    tail = b""
    try:
        async with session.post(
            request.url, data=request.body, headers=request.headers
        ) as response:
            if not request.stream:
                await response.read()
                latency = time.perf_counter() - scheduled
                ok = response.status == 200
                return Sample(latency, None, ok, "" if ok else f"{response.status}")
            async for chunk in response.content.iter_any():
                if ttfb is None:
                    ttfb = time.perf_counter() - scheduled
                tail = (tail + chunk)[-256:]
            latency = time.perf_counter() - scheduled
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Sample(time.perf_counter() - scheduled, None, False, type(exc).__name__)
    if status != 200:
        return Sample(latency, ttfb, False, str(status))
    if request.end_marker and request.end_marker not in tail:
        return Sample(latency, ttfb, False, "stream ended early")
    return Sample(latency, ttfb, True)


def new_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency + 8, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


async def open_loop(
    request: Request, *, rate_per_s: float, duration_s: float, warmup_s: float
) -> LoadResult:
    """Send at ``rate_per_s`` for ``duration_s``, after an unrecorded warm-up."""
    async with new_session(64) as session:
        if warmup_s > 0:
            await _open_loop_window(session, request, rate_per_s, warmup_s)
        return await _open_loop_window(session, request, rate_per_s, duration_s)


async def _open_loop_window(
    session: aiohttp.ClientSession,
    request: Request,
    rate_per_s: float,
    duration_s: float,
) -> LoadResult:
    count = max(1, int(rate_per_s * duration_s))
    interval_s = 1.0 / rate_per_s
    tasks: list[asyncio.Task[Sample]] = []
    cpu_before = process_cpu_s()
    start = time.perf_counter()
    for index in range(count):
        due = start + index * interval_s
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send_one(session, request, due)))
    samples = list(await asyncio.gather(*tasks))
    wall = time.perf_counter() - start
    return LoadResult(samples, wall, process_cpu_s() - cpu_before)


async def closed_loop(
    request: Request, *, concurrency: int, duration_s: float, warmup_s: float
) -> LoadResult:
    """Run ``concurrency`` workers back to back; record after the warm-up."""
    async with new_session(concurrency) as session:
        if warmup_s > 0:
            await _closed_loop_window(session, request, concurrency, warmup_s)
        return await _closed_loop_window(session, request, concurrency, duration_s)


async def _closed_loop_window(
    session: aiohttp.ClientSession,
    request: Request,
    concurrency: int,
    duration_s: float,
) -> LoadResult:
    samples: list[Sample] = []
    cpu_before = process_cpu_s()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            samples.append(await send_one(session, request, time.perf_counter()))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    # Throughput counts the requests that ended inside the window only.
    wall = time.perf_counter() - start
    return LoadResult(samples, wall, process_cpu_s() - cpu_before)
