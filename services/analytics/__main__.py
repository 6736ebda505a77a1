"""Entry point: ``python -m services.analytics``.

Exit status: 0 after a clean stop on SIGTERM or SIGINT, 1 when the service
failed, 2 when the settings are invalid.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from services.analytics.app import start_service
from services.analytics.errors import AnalyticsError, SettingsError
from services.analytics.settings import Settings, load_settings
from services.common.logs import configure_logging

logger = logging.getLogger("services.analytics")


async def serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = await start_service(settings, stop)
    if service is None:
        logger.info("stopped before ClickHouse was reachable")
        return 0
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({stopping, service.flusher}, return_when=asyncio.FIRST_COMPLETED)
    if service.flusher.done() and not stopping.done():
        stopping.cancel()
        logger.error(
            "the ingest flusher ended unexpectedly",
            exc_info=service.flusher.exception(),
        )
        await service.shutdown()
        return 1
    await service.shutdown()
    return 0


def main() -> int:
    configure_logging("analytics")
    try:
        settings = load_settings()
    except SettingsError as exc:
        logger.error("%s", exc)
        return 2
    logger.info(
        "starting analytics service with ClickHouse %s:%d database %s",
        settings.clickhouse.host,
        settings.clickhouse.port,
        settings.clickhouse.database,
    )
    try:
        return asyncio.run(serve(settings))
    except AnalyticsError as exc:
        logger.error("analytics service failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
