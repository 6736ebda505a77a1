"""Fixtures: the chdev ClickHouse server as a subprocess, and the service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from gateway.analytics.v1 import analytics_pb2_grpc
from services.analytics.app import RunningService, start_service
from services.analytics.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


class ChdevServer:
    """One chdev subprocess; stop() and start() keep its data folder and port."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ready_file = self.data_dir.with_name(self.data_dir.name + ".ready")
        ready_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "services.chdev",
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ready-file",
            str(ready_file),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"chdev exited early, see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"chdev did not start in {START_TIMEOUT_S} s")
            time.sleep(0.05)
        self.port = int(ready_file.read_text().strip())

    def stop(self) -> None:
        if self.process is None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def url(self, database: str) -> str:
        return f"http://default:@127.0.0.1:{self.port}/{database}"


def _start_chdev(tmp_path: Path, name: str) -> ChdevServer:
    server = ChdevServer(tmp_path / name, tmp_path / f"{name}.log")
    server.start()
    return server


@pytest.fixture(scope="session")
def chdev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdevServer]:
    server = _start_chdev(tmp_path_factory.mktemp("chdev"), "data")
    yield server
    server.stop()


@pytest.fixture
def own_chdev(tmp_path: Path) -> Iterator[ChdevServer]:
    """A chdev server for one test, which may stop and restart it."""
    server = _start_chdev(tmp_path, "data")
    yield server
    server.stop()


ServiceFactory = Callable[..., Awaitable[RunningService]]


def service_environ(url: str, **overrides: str) -> dict[str, str]:
    environ = {
        "TOLLGATE_ANALYTICS_PORT": "0",
        "CLICKHOUSE_URL": url,
        "TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS": "50",
        "TOLLGATE_ANALYTICS_RETRY_MAX_MS": "300",
        "TOLLGATE_ANALYTICS_CLICKHOUSE_TIMEOUT_MS": "5000",
        "TOLLGATE_ANALYTICS_SHUTDOWN_GRACE_MS": "3000",
        # These tests check the in-memory path; tests/faults covers the spool.
        "TOLLGATE_ANALYTICS_SPOOL_DIR": "off",
    }
    environ.update(overrides)
    return environ


@pytest.fixture
async def make_service() -> AsyncIterator[ServiceFactory]:
    """Start in-process services; each is shut down after the test."""
    started: list[RunningService] = []

    async def factory(url: str, **overrides: str) -> RunningService:
        settings = load_settings(service_environ(url, **overrides))
        service = await asyncio.wait_for(start_service(settings, asyncio.Event()), 30)
        assert service is not None
        started.append(service)
        return service

    yield factory
    for service in started:
        if not service.flusher.done():
            await service.shutdown()


@pytest.fixture
def database() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


async def open_stub(
    service: RunningService,
) -> tuple[grpc.aio.Channel, analytics_pb2_grpc.AnalyticsServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    return channel, analytics_pb2_grpc.AnalyticsServiceStub(channel)
