"""Command line: ``python -m services.simulator --port 0 --ready-file PATH``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import tempfile
from pathlib import Path

from .server import SimulatorServer
from .settings import CACHE_MODES, SimSettings

log = logging.getLogger("services.simulator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.simulator",
        description="Serve simulated Anthropic and OpenAI APIs on one port.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=0, help="TCP port; 0 picks a free port")
    add("--ttfb-ms", type=float, default=20.0, help="delay before the first byte, ms")
    add("--chunk-ms", type=float, default=5.0, help="delay between stream deltas, ms")
    add("--output-tokens", type=int, default=32, help="tokens per completion")
    add("--tokens-per-chunk", type=int, default=4, help="tokens per stream delta")
    add("--slow-ms", type=float, default=3000.0, help="first-byte delay of 'slow', ms")
    add("--hang-s", type=float, default=600.0, help="hang time of 'timeout', seconds")
    add("--retry-after", type=int, default=1, help="retry-after of 429s, seconds")
    add("--cache-mode", choices=CACHE_MODES, default="write", help="prompt-cache rule")
    add("--api-key", action="append", help="accept only these keys (repeatable)")
    add("--reject-key", action="append", default=[], help="reject this key")
    add("--history-size", type=int, default=200, help="requests kept for /_sim")
    add("--ready-file", type=Path, help="write the bound port here once listening")
    add("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    return SimSettings(
        host=args.host,
        port=args.port,
        ttfb_ms=args.ttfb_ms,
        chunk_ms=args.chunk_ms,
        output_tokens=args.output_tokens,
        tokens_per_chunk=args.tokens_per_chunk,
        slow_ms=args.slow_ms,
        hang_s=args.hang_s,
        retry_after_s=args.retry_after,
        cache_mode=args.cache_mode,
        api_keys=frozenset(args.api_key) if args.api_key else None,
        rejected_keys=frozenset(args.reject_key),
        history_size=args.history_size,
    )


def write_ready_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` by rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as tmp:
        tmp.write(f"{port}\n")
    os.replace(tmp_name, path)


async def serve(settings: SimSettings, ready_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = SimulatorServer(settings)
    await server.start()
    try:
        if ready_file is not None:
            write_ready_file(ready_file, server.port)
        log.info(
            "anthropic base_url %s, openai base_url %s",
            server.anthropic_base_url,
            server.openai_base_url,
        )
        await stop.wait()
        log.info("stop signal received")
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = settings_from_args(args)
    try:
        import uvloop
    except ImportError:
        log.info("uvloop is not installed, using the default asyncio loop")
        asyncio.run(serve(settings, args.ready_file))
        return
    uvloop.run(serve(settings, args.ready_file))


if __name__ == "__main__":
    main()
