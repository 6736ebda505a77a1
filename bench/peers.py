"""The targets under load: direct, Tollgate (full and cached) and the peers.

Each target starts its processes, tells the URL and headers of a case, and
names the processes whose CPU and memory count as the gateway's. The peers
are installed on first use into ``.bench/peers`` (outside the project's
virtualenv) and reused afterwards; an install that fails makes the target
"not run" with the reason, and the other targets still run.

CPU pinning: when the machine has two or more cores, the gateway's processes
start with their affinity set to the gateway core and everything else
(the load generator, the simulator, Redis, ClickHouse) stays on the client
core. The affinity is set on the starting thread around ``Popen``, so every
thread a child creates later inherits it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

from bench import cases
from bench.cases import Case
from services.stack.launcher import (
    Service,
    Stack,
    StackError,
    StackOptions,
    _install_redis_server,
)

logger = logging.getLogger(__name__)

LITELLM_VERSION = "1.108.7"
PORTKEY_VERSION = "1.15.2"
SIMULATOR_TTFB_MS = 20
SIMULATOR_CHUNK_MS = 2
# The proxy refuses to start without a master key; clients send this one.
LITELLM_MASTER_KEY = "sk-bench-litellm-master-key-0123456789abcdef"
START_TIMEOUT_S = 120.0
INSTALL_TIMEOUT_S = 900.0


class TargetNotRun(Exception):
    """A target could not be installed or started; the message gives the reason."""


# ------------------------------------------------------------------ pinning


def cpu_layout() -> tuple[set[int], set[int]] | None:
    """(client cores, gateway cores), or None when there is only one core."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None
    return {available[0]}, {available[1]}


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """Run the block, and start its child processes, on ``cpus``."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                raw = stat.read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: Service, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until ``url`` answers with any HTTP status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.process is not None and process.process.poll() is not None:
            raise TargetNotRun(
                f"{process.name} exited with code {process.process.returncode} "
                f"during start-up; see {process.log_path}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TargetNotRun(f"{process.name} did not answer {url} in {timeout_s:.0f} s")


def python_service(name: str, args: list[str], work_dir: Path, **env: str) -> Service:
    ready = work_dir / "run" / f"{name}.port"
    ready.parent.mkdir(parents=True, exist_ok=True)
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    return Service(
        name,
        [sys.executable, "-m", *args, "--ready-file", str(ready)],
        {**os.environ, "PYTHONUNBUFFERED": "1", **env},
        work_dir / "logs" / f"{name}.log",
        ready,
    )


def start_simulator(work_dir: Path) -> Service:
    service = python_service(
        "simulator",
        [
            "services.simulator",
            "--port",
            "0",
            "--ttfb-ms",
            str(SIMULATOR_TTFB_MS),
            "--chunk-ms",
            str(SIMULATOR_CHUNK_MS),
            "--log-level",
            "WARNING",
        ],
        work_dir,
    )
    service.start()
    service.wait_ready()
    return service


def start_redis(work_dir: Path) -> Service:
    """A Redis of the benchmark's own, so that others' traffic stays out."""
    binary = shutil.which("redis-server")
    if binary is None:
        # The stack's own installer (Debian's package), as `make run` uses.
        try:
            binary = _install_redis_server()
        except (StackError, subprocess.CalledProcessError) as exc:
            raise TargetNotRun(f"redis-server is missing: {exc}") from exc
    port = free_port()
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    service = Service(
        "redis",
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        dict(os.environ),
        work_dir / "logs" / "redis.log",
    )
    service.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.3),
        ):
            service.port = port
            return service
        time.sleep(0.05)
    service.stop()
    raise TargetNotRun("redis-server did not open its port")


def start_clickhouse(work_dir: Path) -> Service:
    service = python_service(
        "clickhouse",
        [
            "services.chdev",
            "--data-dir",
            str(work_dir / "clickhouse"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        work_dir,
    )
    service.start()
    service.wait_ready()
    return service


# ------------------------------------------------------------------ targets


class Target:
    """Something the load is sent to."""

    name = ""
    version = ""

    def start(self) -> None:
        """Install if needed and start; raise TargetNotRun to skip the target."""

    def stop(self) -> None:
        """Stop every process this target started."""

    def url(self, case: Case) -> str:
        raise NotImplementedError

    def headers(self, case: Case) -> dict[str, str]:
        return cases.provider_headers(case)

    def gateway_processes(self) -> dict[str, int]:
        """Processes whose CPU and memory are the gateway's, by name."""
        return {}

    def support_processes(self) -> dict[str, int]:
        """Backing stores reported apart from the gateway (Redis, ClickHouse)."""
        return {}

    def prepare(self, case: Case) -> str:
        """Run before a case; return a reason to skip it, or ''."""
        return ""


class Direct(Target):
    name = "direct"

    def __init__(self, simulator_url: str) -> None:
        self.simulator_url = simulator_url

    def url(self, case: Case) -> str:
        if case.provider == "anthropic":
            return f"{self.simulator_url}/anthropic/v1/messages"
        return f"{self.simulator_url}/openai/v1/chat/completions"


class Tollgate(Target):
    """Tollgate's three services on the gateway core; Redis and ClickHouse
    (started here, not shared) on the client core."""

    def __init__(
        self,
        name: str,
        gateway_id: str,
        simulator_url: str,
        work_dir: Path,
        layout: tuple[set[int], set[int]] | None,
        *,
        ingress_workers: int = 1,
    ) -> None:
        self.name = name
        self.gateway_id = gateway_id
        self.simulator_url = simulator_url
        self.work_dir = work_dir / name
        self.layout = layout
        self.ingress_workers = ingress_workers
        self.version = tollgate_version()
        self.redis: Service | None = None
        self.clickhouse: Service | None = None
        self.stack: Stack | None = None
        self.extra_ingress: list[Service] = []

    def start(self) -> None:
        client_cpus = self.layout[0] if self.layout else None
        gateway_cpus = self.layout[1] if self.layout else None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.work_dir / "tollgate.toml"
        config_path.write_text(cases.gateway_config(), encoding="utf-8")
        with affinity(client_cpus):
            self.redis = start_redis(self.work_dir)
            self.clickhouse = start_clickhouse(self.work_dir)
        options = StackOptions(
            data_dir=self.work_dir,
            ingress_port=free_port(),
            policy_port=0,
            analytics_port=0,
            clickhouse_port=0,
            redis_url=f"redis://127.0.0.1:{self.redis.port}/0",
            clickhouse_url=f"http://127.0.0.1:{self.clickhouse.port}/tollgate",
            config_path=config_path,
            env={
                "TOLLGATE_ANTHROPIC_BASE_URL": f"{self.simulator_url}/anthropic",
                "TOLLGATE_OPENAI_BASE_URL": f"{self.simulator_url}/openai",
                "TOLLGATE_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
                "TOLLGATE_LOG_LEVEL": "WARNING",
            },
            reuse_local_redis=False,
        )
        self.stack = Stack(options)
        with affinity(gateway_cpus):
            try:
                self.stack.start()
            except Exception as exc:
                raise TargetNotRun(f"Tollgate did not start: {exc}") from exc
            for index in range(1, self.ingress_workers):
                self.extra_ingress.append(self._start_worker(index))

    def _start_worker(self, index: int) -> Service:
        """Another ingress on the same port: the kernel spreads connections
        over the SO_REUSEPORT listeners."""
        assert self.stack is not None
        first = self.stack.services["ingress"]
        ready = self.work_dir / "run" / f"ingress-{index}.port"
        env = dict(first.env)
        env["TOLLGATE_READY_FILE"] = str(ready)
        env["TOLLGATE_INGRESS_ID"] = f"ingress-{index}"
        service = Service(
            f"ingress-{index}",
            list(first.argv),
            env,
            self.work_dir / "logs" / f"ingress-{index}.log",
            ready,
        )
        service.start()
        service.wait_ready()
        return service

    def stop(self) -> None:
        for worker in self.extra_ingress:
            worker.stop()
        if self.stack is not None:
            self.stack.stop()
        for store in (self.clickhouse, self.redis):
            if store is not None:
                store.stop()

    def url(self, case: Case) -> str:
        assert self.stack is not None
        base = f"{self.stack.ingress_url}/v1/{cases.ACCOUNT}/{self.gateway_id}"
        if case.provider == "anthropic":
            return f"{base}/anthropic/v1/messages"
        return f"{base}/openai/v1/chat/completions"

    def gateway_processes(self) -> dict[str, int]:
        assert self.stack is not None
        pids = {
            name: self.stack.services[name].pid
            for name in ("ingress", "policy", "analytics")
        }
        pids.update({s.name: s.pid for s in self.extra_ingress})
        return pids

    def support_processes(self) -> dict[str, int]:
        assert self.redis is not None and self.clickhouse is not None
        return {"redis": self.redis.pid, "clickhouse": self.clickhouse.pid}


class CachedTollgate(Tollgate):
    """Tollgate's cache-hit path: one miss fills the entry, the rest hit."""

    def prepare(self, case: Case) -> str:
        url = self.url(case)
        headers = self.headers(case)
        body = cases.body_for(case)
        statuses = []
        before = simulator_total(self.simulator_url)
        for _ in range(3):
            statuses.append(_post_status(url, headers, body))
            time.sleep(0.2)
        after = simulator_total(self.simulator_url)
        if "HIT" not in statuses:
            return (
                "cache not available on this branch (a repeated request got "
                f"cf-aig-cache-status {statuses[-1] or 'none'})"
            )
        if after - before >= len(statuses):
            return "every repeated request still reached the simulator"
        return ""


def _post_status(url: str, headers: dict[str, str], body: bytes) -> str:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        return response.headers.get("cf-aig-cache-status", "")


def simulator_total(simulator_url: str) -> int:
    with urllib.request.urlopen(f"{simulator_url}/_sim/requests", timeout=5) as r:
        return int(orjson.loads(r.read())["total"])


def tollgate_version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


class LiteLLM(Target):
    """LiteLLM's proxy in its own virtualenv, one worker, routing both model
    names to the simulator."""

    name = "litellm"
    version = LITELLM_VERSION

    def __init__(
        self,
        simulator_url: str,
        peers_dir: Path,
        layout: tuple[set[int], set[int]] | None,
    ) -> None:
        self.simulator_url = simulator_url
        self.venv = peers_dir / "litellm-venv"
        self.work_dir = peers_dir / "litellm-run"
        self.layout = layout
        self.process: Service | None = None
        self.port = 0

    def install(self) -> Path:
        stamp = self.venv / f".installed-{LITELLM_VERSION}"
        binary = self.venv / "bin" / "litellm"
        if stamp.exists() and binary.exists():
            return binary
        logger.info("installing litellm[proxy]==%s into %s", LITELLM_VERSION, self.venv)
        log = self.venv.parent / "litellm-install.log"
        self.venv.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            steps = [
                [sys.executable, "-m", "venv", str(self.venv)],
                [
                    str(self.venv / "bin" / "pip"),
                    "install",
                    "-q",
                    f"litellm[proxy]=={LITELLM_VERSION}",
                ],
            ]
            for step in steps:
                result = subprocess.run(
                    step,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=INSTALL_TIMEOUT_S,
                    check=False,
                )
                if result.returncode != 0:
                    raise TargetNotRun(f"install failed, see {log}")
        stamp.touch()
        return binary

    def start(self) -> None:
        binary = self.install()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "config.yaml"
        config.write_text(litellm_config(self.simulator_url), encoding="utf-8")
        self.port = free_port()
        env = {
            **os.environ,
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "DISABLE_SCHEMA_UPDATE": "true",
            "NO_DOCS": "True",
            "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
        }
        env.pop("DATABASE_URL", None)
        (self.work_dir / "logs").mkdir(exist_ok=True)
        self.process = Service(
            "litellm",
            [
                str(binary),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--num_workers",
                "1",
            ],
            env,
            self.work_dir / "logs" / "litellm.log",
        )
        with affinity(self.layout[1] if self.layout else None):
            self.process.start()
        wait_http(f"http://127.0.0.1:{self.port}/health/liveliness", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def url(self, case: Case) -> str:
        if case.provider == "anthropic":
            return f"http://127.0.0.1:{self.port}/v1/messages"
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def headers(self, case: Case) -> dict[str, str]:
        """The proxy's own key replaces the provider key, which it holds."""
        headers = cases.provider_headers(case)
        if case.provider == "anthropic":
            headers["x-api-key"] = LITELLM_MASTER_KEY
        else:
            headers["authorization"] = f"Bearer {LITELLM_MASTER_KEY}"
        return headers

    def gateway_processes(self) -> dict[str, int]:
        assert self.process is not None
        return {"litellm": self.process.pid}


def litellm_config(simulator_url: str) -> str:
    """Route the benchmark's two model names to the simulator."""
    return f"""\
model_list:
  - model_name: {cases.ANTHROPIC_MODEL}
    litellm_params:
      model: anthropic/{cases.ANTHROPIC_MODEL}
      api_base: {simulator_url}/anthropic
      api_key: {cases.PROVIDER_KEY}
  - model_name: {cases.OPENAI_MODEL}
    litellm_params:
      model: openai/{cases.OPENAI_MODEL}
      api_base: {simulator_url}/openai/v1
      api_key: {cases.PROVIDER_KEY}
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  disable_spend_logs: true
"""


# Portkey's streamed responses fail with "TypeError: immutable" (its open
# issues about the header guard): the stream handler builds its Response with
# the upstream fetch Response as the init, so the new Response shares the
# upstream's immutable Headers and updateHeaders() throws on append. The
# workaround copies status and headers into a fresh Headers object, which is
# what Portkey's own proposed fix does; it costs one header copy per stream.
# Remove it when a Portkey release streams without it.
PORTKEY_STREAM_BUG = "new Response(p,e)}"
PORTKEY_STREAM_FIX = (
    "new Response(p,{status:e.status,statusText:e.statusText,"
    "headers:new Headers(e.headers)})}"
)


def patch_portkey_stream_headers(entry: Path) -> None:
    text = entry.read_text(encoding="utf-8")
    if PORTKEY_STREAM_FIX in text:
        return
    if text.count(PORTKEY_STREAM_BUG) != 1:
        raise TargetNotRun(
            "the stream header workaround does not match this Portkey build"
        )
    entry.write_text(text.replace(PORTKEY_STREAM_BUG, PORTKEY_STREAM_FIX))


def install_node() -> tuple[str, str]:
    """Install Debian's nodejs and npm packages; needs root and apt-get."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise TargetNotRun("node and npm are not installed and cannot be installed")
    logger.info("installing Debian's nodejs and npm packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nodejs", "npm"],
    ):
        result = subprocess.run(step, env=env, capture_output=True, check=False)
        if result.returncode != 0:
            raise TargetNotRun(f"apt-get failed to install nodejs and npm: {step}")
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise TargetNotRun("node and npm are still missing after apt-get install")
    return npm, node


class Portkey(Target):
    """Portkey's open-source gateway on Node, pointed at the simulator with
    its per-request headers."""

    name = "portkey"
    version = PORTKEY_VERSION

    def __init__(
        self,
        simulator_url: str,
        peers_dir: Path,
        layout: tuple[set[int], set[int]] | None,
    ) -> None:
        self.simulator_url = simulator_url
        self.dir = peers_dir / "portkey"
        self.layout = layout
        self.process: Service | None = None
        self.port = 0

    def install(self) -> Path:
        entry = (
            self.dir
            / "node_modules"
            / "@portkey-ai"
            / "gateway"
            / "build"
            / "start-server.js"
        )
        stamp = self.dir / f".installed-{PORTKEY_VERSION}"
        if stamp.exists() and entry.exists():
            return entry
        npm, node = shutil.which("npm"), shutil.which("node")
        if npm is None or node is None:
            npm, node = install_node()
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir.parent / "portkey-install.log"
        package = self.dir / "package.json"
        if not package.exists():
            package.write_text('{"name": "bench-portkey", "private": true}\n')
        with log.open("wb") as out:
            result = subprocess.run(
                [
                    npm,
                    "install",
                    "--no-audit",
                    "--no-fund",
                    f"@portkey-ai/gateway@{PORTKEY_VERSION}",
                ],
                cwd=self.dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        if result.returncode != 0 or not entry.exists():
            raise TargetNotRun(f"npm install failed, see {log}")
        patch_portkey_stream_headers(entry)
        stamp.touch()
        return entry

    def start(self) -> None:
        entry = self.install()
        node = shutil.which("node")
        assert node is not None
        self.port = free_port()
        (self.dir / "logs").mkdir(exist_ok=True)
        self.process = Service(
            "portkey",
            [node, str(entry), f"--port={self.port}", "--headless"],
            {**os.environ, "NODE_ENV": "production"},
            self.dir / "logs" / "portkey.log",
        )
        with affinity(self.layout[1] if self.layout else None):
            self.process.start()
        wait_http(f"http://127.0.0.1:{self.port}/", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def url(self, case: Case) -> str:
        if case.provider == "anthropic":
            return f"http://127.0.0.1:{self.port}/v1/messages"
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def headers(self, case: Case) -> dict[str, str]:
        headers = cases.provider_headers(case)
        if case.provider == "anthropic":
            headers["x-portkey-provider"] = "anthropic"
            headers["x-portkey-custom-host"] = f"{self.simulator_url}/anthropic/v1"
        else:
            headers["x-portkey-provider"] = "openai"
            headers["x-portkey-custom-host"] = f"{self.simulator_url}/openai/v1"
        return headers

    def gateway_processes(self) -> dict[str, int]:
        assert self.process is not None
        return {"portkey": self.process.pid}
