"""A whole Tollgate stack for end-to-end tests: simulator, Redis, ClickHouse,
policy, analytics and ingress, each a real process on a free port.

Tests reach it through :class:`RunningStack`: the ingress base URLs for the
SDKs, a ClickHouse client for the rows, and the simulator's request log.
"""

from __future__ import annotations

import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import grpc
import orjson

from services.stack.launcher import Service, Stack, StackOptions

ROW_WAIT_S = 15.0
# Settings the stack's services get, so that tests can call the admin RPCs
# and store provider keys. Fixed values, made for tests only.
ADMIN_TOKEN = "test-admin-token-0b7c5d"
KEY_ENCRYPTION_KEY = "dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM="


def start_simulator(data_dir: Path, *extra: str) -> Service:
    ready = data_dir / "run" / "simulator.port"
    ready.parent.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    service = Service(
        "simulator",
        [
            sys.executable,
            "-m",
            "services.simulator",
            "--port",
            "0",
            "--ttfb-ms",
            "5",
            "--chunk-ms",
            "1",
            "--ready-file",
            str(ready),
            *extra,
        ],
        {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        data_dir / "logs" / "simulator.log",
        ready,
    )
    service.start()
    service.wait_ready()
    return service


@dataclass
class RunningStack:
    stack: Stack
    simulator: Service
    data_dir: Path

    @property
    def ingress_url(self) -> str:
        return self.stack.ingress_url

    @property
    def policy_address(self) -> str:
        return self.stack.policy_address

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator.port}"

    def anthropic_base_url(self, account: str = "acme", gateway: str = "open") -> str:
        return f"{self.ingress_url}/v1/{account}/{gateway}/anthropic"

    def openai_base_url(self, account: str = "acme", gateway: str = "open") -> str:
        return f"{self.ingress_url}/v1/{account}/{gateway}/openai/v1"

    def clickhouse(self) -> Any:
        url = urlsplit(self.stack.clickhouse_url)
        return clickhouse_connect.get_client(
            host=url.hostname, port=url.port, database=url.path.strip("/") or "default"
        )

    def simulator_requests(self) -> dict[str, Any]:
        url = f"{self.simulator_url}/_sim/requests"
        with urllib.request.urlopen(url, timeout=5) as response:
            return orjson.loads(response.read())

    def simulator_total(self) -> int:
        return int(self.simulator_requests()["total"])

    def wait_rows(
        self, where: str, parameters: dict[str, Any], count: int
    ) -> list[dict[str, Any]]:
        """Poll the calls table until ``count`` rows match, and return them.

        Returns as soon as more than ``count`` rows match too, so that a test
        asserting an exact count sees the extra rows.
        """
        client = self.clickhouse()
        deadline = time.monotonic() + ROW_WAIT_S
        rows: list[dict[str, Any]] = []
        try:
            while time.monotonic() < deadline:
                result = client.query(
                    f"SELECT * FROM calls FINAL WHERE {where} ORDER BY start_time",
                    parameters=parameters,
                )
                rows = [
                    dict(zip(result.column_names, row, strict=True))
                    for row in result.result_rows
                ]
                if len(rows) >= count:
                    # Give a duplicate the time to show up before returning.
                    time.sleep(0.3)
                    result = client.query(
                        f"SELECT * FROM calls WHERE {where} ORDER BY start_time",
                        parameters=parameters,
                    )
                    return [
                        dict(zip(result.column_names, row, strict=True))
                        for row in result.result_rows
                    ]
                time.sleep(0.1)
        finally:
            client.close()
        return rows


CONFIG = """
[accounts.acme.gateways.open]
authenticated = false

[accounts.acme.gateways.closed]
authenticated = false
fail_mode = "closed"

[accounts.acme.gateways.cached]
authenticated = false

[accounts.acme.gateways.cached.cache]
enabled = true
ttl_s = 300
max_entry_bytes = 1048576
lock_wait_ms = 5000

# Every call needs a gateway key; tests store provider keys for it.
[accounts.acme.gateways.secure]
authenticated = true

[ingress]
default_account = "acme"
default_gateway = "open"
"""


def start_stack(
    data_dir: Path, config_text: str = CONFIG, *, own_redis: bool = False
) -> RunningStack:
    """Start a stack; ``own_redis`` starts a redis-server of its own on a free port."""
    simulator = start_simulator(data_dir)
    config_path = data_dir / "tollgate.toml"
    config_path.write_text(config_text, encoding="utf-8")
    sim_url = f"http://127.0.0.1:{simulator.port}"
    options = StackOptions(
        data_dir=data_dir,
        ingress_port=0,
        policy_port=0,
        analytics_port=0,
        clickhouse_port=0,
        redis_port=0 if own_redis else 6379,
        reuse_local_redis=not own_redis,
        config_path=config_path,
        env={
            "TOLLGATE_ANTHROPIC_BASE_URL": f"{sim_url}/anthropic",
            "TOLLGATE_OPENAI_BASE_URL": f"{sim_url}/openai",
            # A fresh key prefix per run keeps runs apart on a shared Redis.
            "TOLLGATE_REDIS_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
            "TOLLGATE_LOG_LEVEL": "INFO",
            "TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS": "50",
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOLLGATE_KEY_ENCRYPTION_KEY": KEY_ENCRYPTION_KEY,
        },
    )
    stack = Stack(options)
    try:
        stack.start()
    except BaseException:
        simulator.stop()
        raise
    return RunningStack(stack, simulator, data_dir)


def stop_stack(running: RunningStack) -> None:
    running.stack.stop()
    running.simulator.stop()


def _with_admin_token(metadata: Any) -> list[tuple[str, str]]:
    items = list(metadata or ())
    items.append(("authorization", f"Bearer {ADMIN_TOKEN}"))
    return items


class _SyncAdminToken(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        details = details._replace(metadata=_with_admin_token(details.metadata))
        return continuation(details, request)


class _AsyncAdminToken(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        details = details._replace(metadata=_with_admin_token(details.metadata))
        return await continuation(details, request)


def admin_channel(address: str) -> grpc.Channel:
    """Open a channel whose calls carry the test stack's admin token."""
    return grpc.intercept_channel(grpc.insecure_channel(address), _SyncAdminToken())


def async_admin_channel(address: str) -> grpc.aio.Channel:
    """Open an asyncio channel whose calls carry the test stack's admin token."""
    return grpc.aio.insecure_channel(address, interceptors=[_AsyncAdminToken()])
