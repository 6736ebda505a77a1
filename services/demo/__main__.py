"""The demo: ``make demo`` (``python -m services.demo``).

Starts the stack with the provider simulator as the upstream of both
providers and sends a realistic mix of SDK calls for a handful of users. Then
it prints a per-user summary queried from ClickHouse and keeps the stack
running for the dashboard until Ctrl-C (or stops at once with ``--exit``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect

from services.demo.traffic import USERS, send_mix
from services.stack.__main__ import print_urls
from services.stack.launcher import Service, Stack, StackError, StackOptions

logger = logging.getLogger("services.demo")

ROWS_TIMEOUT_S = 30.0

DEMO_CONFIG = """\
# Written by the demo. One open gateway; users name themselves in
# cf-aig-metadata, as agents without gateway keys do.
[accounts.demo.gateways.agents]
authenticated = false

[ingress]
default_account = "demo"
default_gateway = "agents"
"""

SUMMARY_SQL = """
SELECT
    user_id,
    count() AS calls,
    sum(input_tokens + cache_read_tokens + cache_write_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    round(quantileExact(0.5)(latency_us) / 1000, 1) AS p50_ms,
    round(quantileExact(0.95)(latency_us) / 1000, 1) AS p95_ms,
    countIf(status >= 400 OR error_type != '') AS errors
FROM calls FINAL
WHERE account_id = 'demo' AND metadata['demo_run'] = {run:String}
GROUP BY user_id
ORDER BY user_id
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.demo")
    parser.add_argument(
        "--data-dir", default="var/demo", help="data and log folder (default: var/demo)"
    )
    parser.add_argument(
        "--calls-per-user", type=int, default=12, help="calls per user (default: 12)"
    )
    parser.add_argument(
        "--ingress-port", type=int, default=8080, help="HTTP port (default: 8080)"
    )
    parser.add_argument(
        "--exit", action="store_true", help="stop the stack after the summary"
    )
    return parser.parse_args(argv)


def start_simulator(data_dir: Path) -> Service:
    run_dir = data_dir / "run"
    log_dir = data_dir / "logs"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    ready = run_dir / "simulator.port"
    simulator = Service(
        "simulator",
        [
            sys.executable,
            "-m",
            "services.simulator",
            "--port",
            "0",
            "--ttfb-ms",
            "120",
            "--chunk-ms",
            "15",
            "--ready-file",
            str(ready),
        ],
        {"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"},
        log_dir / "simulator.log",
        ready,
    )
    simulator.start()
    simulator.wait_ready()
    return simulator


def _clickhouse(clickhouse_url: str) -> Any:
    url = urlsplit(clickhouse_url)
    return clickhouse_connect.get_client(
        host=url.hostname,
        port=url.port or 8123,
        username=url.username or "default",
        password=url.password or "",
        database=url.path.strip("/") or "default",
    )


def wait_for_rows(clickhouse_url: str, run_id: str, expected: int) -> None:
    """Wait until the analytics service has stored every call of this run."""
    client = _clickhouse(clickhouse_url)
    deadline = time.monotonic() + ROWS_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            stored = client.command(
                "SELECT count() FROM calls FINAL "
                "WHERE metadata['demo_run'] = {run:String}",
                parameters={"run": run_id},
            )
            if int(stored) >= expected:
                return
            time.sleep(0.2)
    finally:
        client.close()
    logger.warning("not every call reached ClickHouse within %.0f s", ROWS_TIMEOUT_S)


def print_summary(clickhouse_url: str, run_id: str) -> None:
    client = _clickhouse(clickhouse_url)
    try:
        result = client.query(SUMMARY_SQL, parameters={"run": run_id})
    finally:
        client.close()
    header = f"{'user':<10}{'calls':>7}{'in tok':>9}{'out tok':>9}"
    header += f"{'p50 ms':>9}{'p95 ms':>9}{'errors':>8}"
    print("\nPer-user summary from ClickHouse (table calls):\n")
    print(header)
    print("-" * len(header))
    for user, calls, tokens_in, tokens_out, p50, p95, errors in result.result_rows:
        print(
            f"{user:<10}{calls:>7}{tokens_in:>9}{tokens_out:>9}"
            f"{p50:>9}{p95:>9}{errors:>8}"
        )
    print()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # The SDKs' HTTP clients log every request at INFO, which hides the summary.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = parse_args(argv)
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "tollgate.toml"
    config_path.write_text(DEMO_CONFIG, encoding="utf-8")

    simulator = start_simulator(data_dir)
    sim_url = f"http://127.0.0.1:{simulator.port}"
    stack = Stack(
        StackOptions(
            data_dir=data_dir,
            ingress_port=args.ingress_port,
            policy_port=0,
            analytics_port=0,
            clickhouse_port=0,
            config_path=config_path,
            env={
                "TOLLGATE_ANTHROPIC_BASE_URL": f"{sim_url}/anthropic",
                "TOLLGATE_OPENAI_BASE_URL": f"{sim_url}/openai",
                "TOLLGATE_REDIS_PREFIX": "demo",
            },
        )
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stack.start()
    except StackError as exc:
        logger.error("%s", exc)
        simulator.stop()
        return 1
    try:
        run_id = uuid.uuid4().hex[:8]
        print(
            f"\nSending {args.calls_per_user} calls for each of {len(USERS)} users "
            "through the gateway...",
            flush=True,
        )
        outcome = asyncio.run(send_mix(stack.ingress_url, run_id, args.calls_per_user))
        print(f"Done: {outcome.ok} answered, {outcome.failed} failed (on purpose).")
        wait_for_rows(stack.clickhouse_url, run_id, outcome.ok + outcome.failed)
        print_summary(stack.clickhouse_url, run_id)
        if not args.exit:
            print_urls(stack)
            while not stop.wait(1.0):
                pass
    finally:
        stack.stop()
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
