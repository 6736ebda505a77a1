"""Run the simulator in-process: on the current event loop or in a thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from types import TracebackType

from aiohttp import web

from .app import build_app, get_state
from .recorder import SimState
from .settings import SimSettings

log = logging.getLogger(__name__)

# Handlers still running at shutdown (hangs, slow streams) are cancelled after this.
SHUTDOWN_TIMEOUT_S = 1.0


class SimulatorServer:
    """The simulator bound to a TCP port on the running event loop."""

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.settings = settings or SimSettings()
        self.app = build_app(self.settings)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def state(self) -> SimState:
        return get_state(self.app)

    @property
    def url(self) -> str:
        """Base URL without a path, for example ``http://127.0.0.1:PORT``."""
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` for ``anthropic.Anthropic``."""
        return f"{self.url}/anthropic"

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` for ``openai.OpenAI``."""
        return f"{self.url}/openai/v1"

    async def start(self) -> str:
        """Bind the port (0 picks a free one) and return the base URL."""
        runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("simulator listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await runner.cleanup()
        log.info("simulator on %s stopped", self.url)

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class ThreadedSimulator:
    """The simulator on its own event loop in a daemon thread, for sync callers."""

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.server = SimulatorServer(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def state(self) -> SimState:
        """Counters and history. Read them only while no request is in flight."""
        return self.server.state

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the thread and block until the port is bound."""
        self._thread = threading.Thread(
            target=self._run, name="provider-simulator", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"simulator did not start within {timeout_s} s")
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        return self.server.url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.server.start())
        except BaseException as error:  # reported to start() in the caller thread
            self._error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self.server.stop())
        loop.close()

    def stop(self) -> None:
        """Stop the server and join the thread."""
        if self._loop is None or self._thread is None:
            return
        if self._error is None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> ThreadedSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
