"""Run the ingress: ``python -m services.ingress``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop
from aiohttp import web

from services.common.config import ConfigError, config_path_from_env, load_config
from services.common.logs import configure_logging
from services.common.ready import write_ready_file
from services.dashboard.settings import load_dashboard_settings
from services.ingress.app import build_app
from services.ingress.settings import load_settings

logger = logging.getLogger("services.ingress")


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
    try:
        uvloop.run(serve())
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
