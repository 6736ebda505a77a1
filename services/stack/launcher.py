"""Start and stop the local stack: Redis, ClickHouse, policy, analytics, ingress.

``make run``, ``make demo``, the tests and the benchmark all start the stack
through :class:`Stack`, so that they run the same processes the same way.
Each service is its own process; a service started on port 0 reports the
port it bound through a ready file.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class StackError(RuntimeError):
    """A part of the stack failed to start."""


@dataclass
class Service:
    """One child process of the stack."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_file: Path | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def start(self) -> None:
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> int:
        """Wait for the ready file and return the port it names."""
        assert self.process is not None and self.ready_file is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(
                    f"{self.name} exited with code {self.process.returncode} "
                    f"during start-up; see {self.log_path}"
                )
            if self.ready_file.exists():
                self.port = int(self.ready_file.read_text().strip())
                return self.port
            time.sleep(0.02)
        raise StackError(
            f"{self.name} was not ready after {timeout_s:.0f} s; see {self.log_path}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` and wait for the exit; SIGKILL after ``timeout_s``."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process is not None else 0
        process.send_signal(sig)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.error(
                "%s did not stop within %.0f s; killing it", self.name, timeout_s
            )
            process.kill()
            return process.wait()

    def kill(self) -> None:
        """SIGKILL the process, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class StackOptions:
    data_dir: Path
    # Fixed ports for `make run`; 0 everywhere for tests.
    ingress_port: int = 8080
    policy_port: int = 50051
    analytics_port: int = 50052
    clickhouse_port: int = 8123
    redis_port: int = 6379
    # REDIS_URL and CLICKHOUSE_URL; empty to decide as described in Stack.
    redis_url: str = ""
    clickhouse_url: str = ""
    config_path: Path | None = None
    # Extra environment for every Tollgate service (provider base URLs, ...).
    env: Mapping[str, str] = field(default_factory=dict)
    # Reuse a Redis already listening on 127.0.0.1:redis_port.
    reuse_local_redis: bool = True


class Stack:
    """The local stack, started in dependency order and stopped in reverse.

    Redis comes from ``redis_url`` if set, else a server already on
    127.0.0.1:6379, else a ``redis-server`` process started here (installing
    Debian's package if it is missing). ClickHouse comes from
    ``clickhouse_url`` if set, else the development server in
    ``services.chdev``.
    """

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir
        self.log_dir = self.data_dir / "logs"
        self.run_dir = self.data_dir / "run"
        self.services: dict[str, Service] = {}
        self.redis_url = options.redis_url
        self.clickhouse_url = options.clickhouse_url
        # Operators sign in to the dashboard with this token. The stack makes
        # one up when neither the options nor the environment set it.
        self.admin_token = (
            options.env.get("TOLLGATE_ADMIN_TOKEN")
            or os.environ.get("TOLLGATE_ADMIN_TOKEN")
            or secrets.token_urlsafe(24)
        )

    # ---------------------------------------------------------------- start

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            self._start_clickhouse()
            for name in ("policy", "analytics", "ingress"):
                self.start_service(name)
        except BaseException:
            self.stop()
            raise

    def _start_redis(self) -> None:
        if self.redis_url:
            return
        port = self.options.redis_port
        if self.options.reuse_local_redis and _port_open("127.0.0.1", port):
            self.redis_url = f"redis://127.0.0.1:{port}/0"
            return
        binary = shutil.which("redis-server") or _install_redis_server()
        port = port if port and not _port_open("127.0.0.1", port) else _free_port()
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        service = Service(
            "redis",
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(redis_dir),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            dict(os.environ),
            self.log_dir / "redis.log",
        )
        service.start()
        self.services["redis"] = service
        _wait_port("127.0.0.1", port, service)
        service.port = port
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def _start_clickhouse(self) -> None:
        if self.clickhouse_url:
            return
        port = self.options.clickhouse_port
        if port and _port_open("127.0.0.1", port):
            raise StackError(
                f"port {port} is taken; stop what listens there or set "
                "CLICKHOUSE_URL to use that ClickHouse server"
            )
        service = self._python_service(
            "clickhouse",
            [
                "services.chdev",
                "--data-dir",
                str(self.data_dir / "clickhouse"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
        )
        assert service.ready_file is not None
        service.argv += ["--ready-file", str(service.ready_file)]
        service.start()
        self.services["clickhouse"] = service
        port = service.wait_ready()
        # A restart through restart_backend binds the same port.
        service.argv[service.argv.index("--port") + 1] = str(port)
        self.clickhouse_url = f"http://127.0.0.1:{port}/tollgate"

    def start_service(self, name: str) -> Service:
        """Start (or restart) one Tollgate service and wait until it is ready."""
        env = self._service_env()
        options = self.options
        if name == "policy":
            env["TOLLGATE_POLICY_PORT"] = str(
                self.services["policy"].port
                if "policy" in self.services
                else options.policy_port
            )
        elif name == "analytics":
            env["TOLLGATE_ANALYTICS_PORT"] = str(
                self.services["analytics"].port
                if "analytics" in self.services
                else options.analytics_port
            )
            env.setdefault(
                "TOLLGATE_ANALYTICS_SPOOL_DIR",
                str(self.data_dir / "spool" / "analytics"),
            )
        elif name == "ingress":
            # A restart binds the port of the process it replaces.
            env["TOLLGATE_INGRESS_PORT"] = str(
                self.services["ingress"].port
                if "ingress" in self.services
                else options.ingress_port
            )
            env.setdefault(
                "TOLLGATE_EVENT_SPOOL_DIR", str(self.data_dir / "spool" / "ingress")
            )
            env["TOLLGATE_POLICY_ADDRESS"] = f"127.0.0.1:{self.services['policy'].port}"
            env["TOLLGATE_ANALYTICS_ADDRESS"] = (
                f"127.0.0.1:{self.services['analytics'].port}"
            )
        service = self._python_service(name, [f"services.{name}"], env)
        service.start()
        self.services[name] = service
        service.wait_ready()
        return service

    def start_extra_ingress(self, name: str) -> Service:
        """Start another ingress replica (for multi-replica tests).

        It binds a free port, or the port of the replica of the same name it
        replaces, and spools its events under its own directory.
        """
        env = self._service_env()
        env["TOLLGATE_INGRESS_PORT"] = str(
            self.services[name].port if name in self.services else 0
        )
        env["TOLLGATE_INGRESS_ID"] = name
        env.setdefault("TOLLGATE_EVENT_SPOOL_DIR", str(self.data_dir / "spool" / name))
        env["TOLLGATE_POLICY_ADDRESS"] = f"127.0.0.1:{self.services['policy'].port}"
        env["TOLLGATE_ANALYTICS_ADDRESS"] = (
            f"127.0.0.1:{self.services['analytics'].port}"
        )
        service = self._python_service(name, ["services.ingress"], env)
        service.start()
        self.services[name] = service
        service.wait_ready()
        return service

    def restart_backend(self, name: str) -> Service:
        """Start Redis or ClickHouse again on its port and data directory."""
        old = self.services[name]
        old.stop()
        old.start()
        if name == "redis":
            _wait_port("127.0.0.1", old.port, old)
        else:
            old.wait_ready()
        return old

    def _service_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.options.env)
        env["REDIS_URL"] = self.redis_url
        env["CLICKHOUSE_URL"] = self.clickhouse_url
        env["TOLLGATE_ADMIN_TOKEN"] = self.admin_token
        # The local stack serves the dashboard over plain HTTP on loopback,
        # where a Secure cookie would not be sent back.
        env.setdefault("TOLLGATE_DASHBOARD_SECURE_COOKIES", "false")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.options.config_path is not None:
            env["TOLLGATE_CONFIG"] = str(self.options.config_path)
        return env

    def _python_service(
        self, name: str, module_args: list[str], env: dict[str, str] | None = None
    ) -> Service:
        ready_file = self.run_dir / f"{name}.port"
        env = dict(env if env is not None else self._service_env())
        env["TOLLGATE_READY_FILE"] = str(ready_file)
        return Service(
            name,
            [sys.executable, "-m", *module_args],
            env,
            self.log_dir / f"{name}.log",
            ready_file,
        )

    # ---------------------------------------------------------------- urls

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.services['ingress'].port}"

    @property
    def policy_address(self) -> str:
        return f"127.0.0.1:{self.services['policy'].port}"

    @property
    def analytics_address(self) -> str:
        return f"127.0.0.1:{self.services['analytics'].port}"

    # ---------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop every service, newest first, each with SIGTERM then SIGKILL."""
        for name in reversed(list(self.services)):
            service = self.services[name]
            code = service.stop()
            if code not in (0, None, -signal.SIGTERM):
                logger.warning("%s exited with code %s", name, code)
        self.services.clear()


def _port_open(host: str, port: int) -> bool:
    if not port:
        return False
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(host: str, port: int, service: Service) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            raise StackError(
                f"{service.name} exited during start-up; see {service.log_path}"
            )
        if _port_open(host, port):
            return
        time.sleep(0.05)
    raise StackError(f"{service.name} did not open port {port}")


def _install_redis_server() -> str:
    """Install Debian's redis-server package; needs root and apt-get."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(
            "redis-server is not installed and cannot be installed here; "
            "install it or set REDIS_URL"
        )
    logger.info("installing Debian's redis-server package")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
        check=True,
        env=env,
    )
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server is still missing after apt-get install")
    return binary
