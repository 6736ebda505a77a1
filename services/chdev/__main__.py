"""Run the development ClickHouse server: ``python -m services.chdev``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from services.chdev.engine import Engine
from services.chdev.errors import ClickHouseError
from services.chdev.server import build_app, build_runner
from services.common.logs import configure_logging
from services.common.ready import write_ready_file

logger = logging.getLogger("services.chdev")

DEFAULT_MAX_BODY_SIZE = 1024 * 1024 * 1024


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.chdev",
        description="ClickHouse-compatible HTTP server on chdb, for development "
        "and tests only (no authentication, one query at a time).",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="folder for the databases, created if missing and kept between runs",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8123,
        help="TCP port to bind, or 0 for any free port (default: 8123)",
    )
    parser.add_argument(
        "--ready-file",
        help="file to write the bound port into once the server accepts requests",
    )
    parser.add_argument(
        "--max-body-size",
        type=int,
        default=DEFAULT_MAX_BODY_SIZE,
        help="largest request body in bytes, before decompression "
        f"(default: {DEFAULT_MAX_BODY_SIZE})",
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Open the engine, serve until SIGTERM or SIGINT, then close both."""
    engine = Engine(args.data_dir)
    await engine.open()
    try:
        await _serve_http(engine, args)
    finally:
        await engine.close()
        logger.info("closed data folder %s", args.data_dir)


async def _serve_http(engine: Engine, args: argparse.Namespace) -> None:
    # chdb installs its own signal handlers when it starts, so these are set
    # only after engine.open() and replace chdb's.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    runner = build_runner(build_app(engine, max_body_size=args.max_body_size))
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = _bound_port(runner)
        write_ready_file(args.ready_file, port)
        logger.info(
            "ClickHouse development server listening on http://%s:%d", args.host, port
        )
        await stop.wait()
        logger.info("stopping ClickHouse development server")
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("chdev")
    try:
        asyncio.run(serve(args))
    except ClickHouseError as error:
        # chdb prints the underlying cause, such as a folder locked by another
        # process, to stderr before it raises.
        logger.error(
            "failed to open the data folder %s (see the chdb message above): %s",
            args.data_dir,
            error,
        )
        return 1
    except OSError as error:
        logger.error("failed to start the server: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
