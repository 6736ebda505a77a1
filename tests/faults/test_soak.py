"""Soak: steady traffic for TOLLGATE_SOAK_SECONDS, with the memory of each process.

Run with ``make soak`` (SOAK_SECONDS, default 600). The test prints the
resident set size (VmRSS) of every stack process at the start and the end,
and checks that every completed call is stored exactly once.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.faults.traffic import Traffic, check_exactly_once
from tests.support.stack import RunningStack

pytestmark = pytest.mark.soak


def rss_kib(pid: int) -> int:
    """Return the VmRSS of a process from /proc, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS line for pid {pid}")


def snapshot(stack: RunningStack) -> dict[str, int]:
    pids = {name: service.pid for name, service in stack.stack.services.items()}
    pids["simulator"] = stack.simulator.pid
    return {name: rss_kib(pid) for name, pid in pids.items() if pid}


async def test_soak_steady_load(fault_stack: RunningStack) -> None:
    seconds = float(os.environ.get("TOLLGATE_SOAK_SECONDS", "0"))
    if seconds <= 0:
        pytest.skip("set TOLLGATE_SOAK_SECONDS (make soak) to run the soak")
    traffic = Traffic(fault_stack, "soak", clients=4, pause_s=0.05)
    runner = asyncio.create_task(traffic.run())
    # Let the processes warm up before the first figure.
    await asyncio.sleep(min(10.0, seconds / 6))
    start = snapshot(fault_stack)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    end = snapshot(fault_stack)
    traffic.stopping.set()
    await runner
    elapsed = time.monotonic() - started

    print(f"\nsoak: {len(traffic.completed)} calls completed in {elapsed:.0f} s")
    print(f"{'process':<12}{'RSS start MiB':>15}{'RSS end MiB':>13}{'change':>9}")
    for name, before in start.items():
        after = end.get(name, 0)
        print(
            f"{name:<12}{before / 1024:>15.1f}{after / 1024:>13.1f}"
            f"{(after - before) / 1024:>+9.1f}"
        )
    assert not traffic.failures
    check_exactly_once(fault_stack, "soak", traffic.completed)
