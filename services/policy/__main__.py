"""Run the policy service: ``python -m services.policy``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from services.common.config import ConfigError, config_path_from_env, load_config
from services.common.logs import configure_logging
from services.common.ready import write_ready_file
from services.policy.errors import PolicyError
from services.policy.server import PolicyServer
from services.policy.settings import load_settings

logger = logging.getLogger("services.policy")


async def serve() -> None:
    settings = load_settings()
    config = load_config(config_path_from_env())
    server = PolicyServer(settings, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    port = await server.start()
    write_ready_file(settings.ready_file, port)
    try:
        await stop.wait()
    finally:
        logger.info("stopping policy service")
        await server.stop()


def main() -> int:
    configure_logging("policy")
    try:
        uvloop.run(serve())
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    except PolicyError as exc:
        logger.error("policy service failed to start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
