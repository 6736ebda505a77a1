"""Run the ingress: ``python -m services.ingress``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from services.common.config import ConfigError, config_path_from_env, load_config
from services.common.logs import configure_logging
from services.common.ready import write_ready_file
from services.dashboard.settings import load_dashboard_settings
from services.ingress.app import build_app
from services.ingress.settings import load_settings

logger = logging.getLogger("services.ingress")


class MalformedRequestFilter(logging.Filter):
    """Log malformed HTTP requests from clients in one WARNING line each.

    aiohttp answers them itself (400 in plain text, before any handler runs)
    and logs each at ERROR with a traceback, so any client could fill the log
    with tracebacks. Repeats beyond the first hundred are counted, not logged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        self.count += 1
        if self.count > 100 and self.count % 1000:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "malformed HTTP request rejected (%d so far): %s"
        record.args = (
            self.count,
            str(error.message).splitlines()[0] if error.message else "",
        )
        record.exc_info = None
        record.exc_text = None
        return True


async def serve() -> None:
    settings = load_settings()
    config = load_config(config_path_from_env())
    app = build_app(settings, config, load_dashboard_settings())
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=settings.shutdown_grace_s
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    write_ready_file(settings.ready_file, port)
    logger.info("ingress listening on http://%s:%d", settings.host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("stopping ingress")
        await runner.cleanup()
        logger.info("ingress stopped")


def main() -> int:
    configure_logging("ingress")
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())
    try:
        uvloop.run(serve())
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
