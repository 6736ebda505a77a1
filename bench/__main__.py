"""``python -m bench``: run the benchmark and write BENCHMARKS.md.

Examples::

    python -m bench                       # every target and case (make bench)
    python -m bench --quick               # short windows (or BENCH_QUICK=1)
    python -m bench --peers direct,tollgate --cases "anthropic json"
    python -m bench --peers direct,tollgate --profile   # py-spy on the ingress
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import cases, load, peers, profile, report
from bench.cases import Case
from bench.peers import Target, TargetNotRun

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
ALL_TARGETS = ("direct", "tollgate", "tollgate-cache", "litellm", "portkey")
# Not in the default run: two SO_REUSEPORT ingress workers on the one
# gateway core show the mechanism, not a gain (see BENCHMARKS.md).
OPTIONAL_TARGETS = ("tollgate-2w",)
PEER_PACKAGES = {"litellm": "litellm[proxy]", "portkey": "@portkey-ai/gateway"}
# Seconds of no traffic over which each target's idle CPU is measured.
IDLE_WINDOW_S = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="short windows for a smoke run (also BENCH_QUICK=1)",
    )
    add(
        "--cases",
        default=os.environ.get("BENCH_CASES", "all"),
        help='comma-separated case filters, e.g. "anthropic json,openai sse" '
        'or "rate" (default all)',
    )
    add(
        "--peers",
        default=os.environ.get("BENCH_PEERS", ",".join(ALL_TARGETS)),
        help="comma-separated targets out of "
        + ", ".join(ALL_TARGETS + OPTIONAL_TARGETS)
        + " (direct always runs first, as the baseline)",
    )
    add(
        "--profile",
        action="store_true",
        help="also sample the ingress and policy service with py-spy",
    )
    add(
        "--output",
        type=Path,
        default=ROOT / "BENCHMARKS.md",
        help="Markdown file whose results section is replaced",
    )
    add("--no-write", action="store_true", help="do not touch the Markdown file")
    add(
        "--render",
        type=Path,
        metavar="RAW_JSON",
        help="rewrite the Markdown section from a saved raw result, run nothing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    if args.render is not None:
        saved = orjson.loads(args.render.read_bytes())
        saved.setdefault("raw_path", str(args.render))
        report.write_benchmarks(args.output, report.render_section(saved))
        logger.info("wrote %s from %s", args.output, args.render)
        return 0
    selected_cases = cases.select_cases(args.cases)
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = set(names) - set(ALL_TARGETS + OPTIONAL_TARGETS)
    if unknown:
        raise SystemExit(f"--peers: unknown targets {', '.join(sorted(unknown))}")
    names = ["direct"] + [n for n in names if n != "direct"]
    durations = cases.QUICK if args.quick else cases.FULL

    stamp = datetime.datetime.now(datetime.UTC)
    work_dir = BENCH_DIR / "run" / stamp.strftime("%Y%m%dT%H%M%SZ")
    work_dir.mkdir(parents=True, exist_ok=True)
    layout = peers.cpu_layout()
    if layout is not None:
        os.sched_setaffinity(0, layout[0])

    run: dict[str, Any] = {
        "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "command": command_line(argv),
        "machine": machine_info(),
        "versions": {
            "tollgate": peers.tollgate_version(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "peers": {},
        },
        "pinning": pinning_text(layout),
        "workload": workload_text(durations),
        "notes": [],
        "rows": [],
    }
    simulator = peers.start_simulator(work_dir)
    simulator_url = f"http://127.0.0.1:{simulator.port}"
    try:
        for name in names:
            target = build_target(name, simulator_url, work_dir, layout)
            rows, notes = run_target(target, selected_cases, durations, args, work_dir)
            run["rows"] += rows
            run["notes"] += notes
            if name in PEER_PACKAGES:
                run["versions"]["peers"][PEER_PACKAGES[name]] = target.version
    finally:
        simulator.stop()

    run["machine"]["loadavg_end"] = loadavg()
    report.attach_added(run["rows"])
    raw_path = BENCH_DIR / "results" / f"{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    run["raw_path"] = str(raw_path.relative_to(ROOT))
    write_raw(run, raw_path)
    print(report.results_table(run["rows"]))
    print()
    print(report.checks_table(report.target_checks(run["rows"])))
    if not args.no_write:
        report.write_benchmarks(args.output, report.render_section(run))
        logger.info("wrote %s and %s", args.output, raw_path)
    return 0


def build_target(
    name: str,
    simulator_url: str,
    work_dir: Path,
    layout: tuple[set[int], set[int]] | None,
) -> Target:
    peers_dir = BENCH_DIR / "peers"
    builders: dict[str, Callable[[], Target]] = {
        "direct": lambda: peers.Direct(simulator_url),
        "tollgate": lambda: peers.Tollgate(
            "tollgate", cases.FULL_GATEWAY, simulator_url, work_dir, layout
        ),
        "tollgate-cache": lambda: peers.CachedTollgate(
            "tollgate-cache", cases.CACHED_GATEWAY, simulator_url, work_dir, layout
        ),
        "tollgate-2w": lambda: peers.Tollgate(
            "tollgate-2w",
            cases.FULL_GATEWAY,
            simulator_url,
            work_dir,
            layout,
            ingress_workers=2,
        ),
        "litellm": lambda: peers.LiteLLM(simulator_url, peers_dir, layout),
        "portkey": lambda: peers.Portkey(simulator_url, peers_dir, layout),
    }
    return builders[name]()


def run_target(
    target: Target,
    selected: tuple[Case, ...],
    durations: cases.Durations,
    args: argparse.Namespace,
    work_dir: Path,
) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    logger.info("starting %s", target.name)
    try:
        target.start()
    except TargetNotRun as exc:
        target.stop()
        logger.warning("%s not run: %s", target.name, exc)
        return [not_run_row(target, case, str(exc)) for case in selected], notes
    try:
        idle = idle_cpu_ms_per_s(target.gateway_processes(), IDLE_WINDOW_S)
        for case in selected:
            reason = target.prepare(case)
            if reason:
                logger.warning("%s %s not run: %s", target.name, case.name, reason)
                rows.append(not_run_row(target, case, reason))
                continue
            sampler = None
            if (
                args.profile
                and target.name == "tollgate"
                and case.load == "concurrency"
            ):
                sampler = profile.Sampler(target.gateway_processes(), work_dir, case)
                sampler.start(durations.concurrency_s + durations.concurrency_warmup_s)
            row = run_case(target, case, durations)
            if sampler is not None:
                notes.append(sampler.finish())
            if idle is not None:
                row["idle_cpu_ms_per_s"] = idle
            rows.append(row)
            logger.info(
                "%s %s: %.0f req/s p50 %.2f ms p99 %.2f ms, CPU %.2f ms/call",
                target.name,
                case.name,
                row["rps"],
                row["p50_ms"],
                row["p99_ms"],
                row.get("cpu_ms_per_call") or float("nan"),
            )
    finally:
        target.stop()
    return rows, notes


def run_case(target: Target, case: Case, durations: cases.Durations) -> dict[str, Any]:
    request = load.Request(
        url=target.url(case),
        headers=target.headers(case),
        body=cases.body_for(case),
        stream=case.stream,
        end_marker=cases.end_marker(case),
    )
    gateway = target.gateway_processes()
    support = target.support_processes()
    rss_start = {name: rss_mib(pid) for name, pid in gateway.items()}
    if case.load == "rate":
        coroutine = load.open_loop(
            request,
            rate_per_s=cases.RATE_PER_S,
            duration_s=durations.rate_s,
            warmup_s=durations.rate_warmup_s,
        )
        warmup_s = durations.rate_warmup_s
    else:
        coroutine = load.closed_loop(
            request,
            concurrency=cases.CONCURRENCY,
            duration_s=durations.concurrency_s,
            warmup_s=durations.concurrency_warmup_s,
        )
        warmup_s = durations.concurrency_warmup_s
    # CPU counts from the end of the warm-up: the sampler waits for it.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        result, cpu = runner.run(_measured(coroutine, warmup_s, {**gateway, **support}))
    row: dict[str, Any] = {
        "target": target.name,
        "case": case.name,
        "provider": case.provider,
        "mode": case.mode,
        "load": case.load,
        **report.summarize(result),
    }
    calls = row["ok"]
    gateway_cpu = {name: cpu[name] for name in gateway}
    if gateway:
        row["cpu_ms_per_call"] = report.cpu_ms_per_call(gateway_cpu, calls)
        row["cpu_ms_by_process"] = {
            name: report.cpu_ms_per_call({name: value}, calls)
            for name, value in gateway_cpu.items()
        }
        row["rss_start_mib"] = rss_start
        row["rss_end_mib"] = {name: rss_mib(pid) for name, pid in gateway.items()}
        row["rss_peak_mib"] = {name: hwm_mib(pid) for name, pid in gateway.items()}
    for name in ("redis", "clickhouse"):
        if name in support:
            row[f"{name}_cpu_ms_per_call"] = report.cpu_ms_per_call(
                {name: cpu[name]}, calls
            )
    return row


async def _measured(
    coroutine: Any, warmup_s: float, pids: dict[str, int]
) -> tuple[load.LoadResult, dict[str, float]]:
    """Run the load and return it with each process tree's CPU seconds over
    the recorded window (after the warm-up)."""
    task = asyncio.ensure_future(coroutine)
    await asyncio.sleep(warmup_s)
    before = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    result = await task
    after = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    return result, {name: after[name] - before[name] for name in pids}


def idle_cpu_ms_per_s(pids: dict[str, int], window_s: float) -> float | None:
    """CPU ms per second the gateway burns with no traffic (timers, pollers)."""
    if not pids:
        return None
    before = sum(tree_cpu_s(pid) for pid in pids.values())
    time.sleep(window_s)
    after = sum(tree_cpu_s(pid) for pid in pids.values())
    return (after - before) * 1000.0 / window_s


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def tree_cpu_s(pid: int) -> float:
    total = 0.0
    for member in peers.descendants(pid):
        try:
            total += load.process_cpu_s(member)
        except (OSError, ValueError):
            continue
    return total


def _status_kib(pid: int, field: str) -> float:
    total = 0.0
    for member in peers.descendants(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        total += float(line.split()[1])
        except OSError:
            continue
    return total


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024.0


def hwm_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024.0


def not_run_row(target: Target, case: Case, reason: str) -> dict[str, Any]:
    return {
        "target": target.name,
        "case": case.name,
        "provider": case.provider,
        "mode": case.mode,
        "load": case.load,
        "not_run": reason,
    }


def write_raw(run: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2))


def command_line(argv: list[str] | None) -> str:
    words = sys.argv[1:] if argv is None else argv
    quick = " (BENCH_QUICK=1)" if os.environ.get("BENCH_QUICK") else ""
    return (
        "python -m bench " + shlex.join(words) + quick
        if words
        else ("make bench" + quick)
    )


def machine_info() -> dict[str, Any]:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        ram_kib = int(meminfo.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": ram_kib / 1024 / 1024,
        "loadavg_start": loadavg(),
        "node": node_version(),
    }


def node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return ""
    out = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def pinning_text(layout: tuple[set[int], set[int]] | None) -> str:
    if layout is None:
        return "none (one core available)"
    client, gateway = sorted(layout[0])[0], sorted(layout[1])[0]
    return (
        f"gateway processes (Tollgate's ingress, policy and analytics together, "
        f"or the peer) on core {gateway}; load generator, simulator, Redis and "
        f"ClickHouse on core {client}"
    )


def workload_text(durations: cases.Durations) -> str:
    body = len(cases.anthropic_body(False))
    return (
        f"simulator TTFB {peers.SIMULATOR_TTFB_MS} ms, {peers.SIMULATOR_CHUNK_MS} ms "
        f"between stream chunks, 32 output tokens in 8 chunks; request body "
        f"{body} bytes (system prompt {len(cases.SYSTEM_PROMPT)} bytes, "
        f"{len(cases.TURNS)} turns); {cases.RATE_PER_S:.0f} req/s open loop for "
        f"{durations.rate_s:.0f} s after {durations.rate_warmup_s:.1f} s warm-up; "
        f"{cases.CONCURRENCY} closed-loop workers for {durations.concurrency_s:.0f} s "
        f"after {durations.concurrency_warmup_s:.1f} s warm-up"
    )


if __name__ == "__main__":
    t0 = time.monotonic()
    code = main()
    logger.info("benchmark took %.0f s", time.monotonic() - t0)
    raise SystemExit(code)
