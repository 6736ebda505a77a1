"""An incremental server-sent events parser, fed with network chunks.

Follows the WHATWG HTML rules for event streams: lines end in LF, CRLF or CR;
``field:value`` and ``field: value`` are the same (one leading space is
dropped); an event ends at a blank line; lines starting with ``:`` are
comments. A chunk may end anywhere, also inside a line or inside a multi-byte
UTF-8 character, so the parser works on bytes and decodes whole lines only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SseEvent:
    event: str
    data: str


class SseParser:
    """Turn a byte stream into :class:`SseEvent` objects as they complete."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        # A chunk that ended in CR may be followed by the LF of a CRLF.
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse ``chunk`` and return the events it completed."""
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        data = self._buffer + chunk
        events: list[SseEvent] = []
        start = 0
        length = len(data)
        while start < length:
            end, next_start = _find_line_end(data, start)
            if end < 0:
                break
            if next_start > length:
                # The line ended in a CR at the very end of the buffer; the
                # next chunk may start with its LF.
                self._skip_lf = True
                next_start = length
            self._take_line(data[start:end], events)
            start = next_start
        self._buffer = data[start:]
        return events

    def close(self) -> list[SseEvent]:
        """Finish the stream; an event without its final blank line counts."""
        events: list[SseEvent] = []
        if self._buffer:
            self._take_line(self._buffer, events)
            self._buffer = b""
        self._take_line(b"", events)
        return events

    def _take_line(self, raw: bytes, events: list[SseEvent]) -> None:
        if not raw:
            if self._data or self._event:
                events.append(SseEvent(self._event or "message", "\n".join(self._data)))
            self._event = ""
            self._data = []
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


def _find_line_end(data: bytes, start: int) -> tuple[int, int]:
    """Return (end of line, start of the next) or (-1, -1) without a line end.

    The second value is one past the buffer when a CR ends the buffer.
    """
    lf = data.find(b"\n", start)
    cr = data.find(b"\r", start, lf if lf >= 0 else len(data))
    if cr >= 0:
        if cr + 1 < len(data):
            return cr, cr + 2 if data[cr + 1] == 0x0A else cr + 1
        return cr, cr + 2
    if lf >= 0:
        return lf, lf + 1
    return -1, -1
