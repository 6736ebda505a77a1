"""Transport-level faults: delays, connection resets and hangs."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from aiohttp import web

log = logging.getLogger(__name__)

# SO_LINGER with a zero timeout makes close() send a TCP RST instead of a FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


async def sleep_ms(milliseconds: float) -> None:
    if milliseconds > 0:
        await asyncio.sleep(milliseconds / 1000)


def abort_connection(request: web.Request) -> None:
    """Close the client connection at once, with a TCP reset where possible."""
    transport = request.transport
    if transport is None:
        return
    log.debug("aborting the connection of %s %s", request.method, request.path)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError as error:
            log.debug("could not set SO_LINGER before reset: %s", error)
    transport.abort()


async def hang(request: web.Request, seconds: float) -> None:
    """Send nothing for ``seconds``, then abort the connection.

    The server cancels this wait when the client disconnects first, because the
    simulator runs with handler cancellation on.
    """
    await asyncio.sleep(seconds)
    abort_connection(request)


def fault_index(chunk_count: int, fault_after: int | None) -> int:
    """Return how many stream deltas to send before a mid-stream fault."""
    if fault_after is None:
        return chunk_count // 2
    return min(fault_after, chunk_count)
