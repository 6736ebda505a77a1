"""The stack of the fault suite: its own Redis, so that the suite may kill it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack.launcher import Stack, StackOptions
from tests.faults.traffic import FAULT_GATEWAYS
from tests.support.stack import RunningStack, start_simulator, stop_stack

CONFIG_HEAD = """
[accounts.acme.gateways.open]
authenticated = false

[ingress]
default_account = "acme"
default_gateway = "open"
"""


def fault_config() -> str:
    tables = [CONFIG_HEAD]
    for name, fail_mode in FAULT_GATEWAYS.items():
        tables.append(
            f"[accounts.faults.gateways.{name}]\n"
            f'authenticated = false\nfail_mode = "{fail_mode}"\n'
        )
    return "\n".join(tables)


@pytest.fixture(scope="session")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack with its own redis-server on a free port, started once."""
    data_dir = Path(tmp_path_factory.mktemp("faults"))
    simulator = start_simulator(data_dir, "--slow-ms", "600")
    config_path = data_dir / "tollgate.toml"
    config_path.write_text(fault_config(), encoding="utf-8")
    sim_url = f"http://127.0.0.1:{simulator.port}"
    options = StackOptions(
        data_dir=data_dir,
        ingress_port=0,
        policy_port=0,
        analytics_port=0,
        clickhouse_port=0,
        redis_port=0,
        reuse_local_redis=False,
        config_path=config_path,
        env={
            "TOLLGATE_ANTHROPIC_BASE_URL": f"{sim_url}/anthropic",
            "TOLLGATE_OPENAI_BASE_URL": f"{sim_url}/openai",
            "TOLLGATE_REDIS_PREFIX": f"faults-{uuid.uuid4().hex[:8]}",
            "TOLLGATE_LOG_LEVEL": "INFO",
            "TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS": "50",
            "TOLLGATE_ANALYTICS_RETRY_MAX_MS": "500",
            "TOLLGATE_ANALYTICS_CLICKHOUSE_TIMEOUT_MS": "3000",
            "TOLLGATE_UPSTREAM_READ_TIMEOUT_S": "5",
            "TOLLGATE_SHUTDOWN_GRACE_S": "10",
        },
    )
    stack = Stack(options)
    try:
        stack.start()
    except BaseException:
        simulator.stop()
        raise
    running = RunningStack(stack, simulator, data_dir)
    yield running
    stop_stack(running)
