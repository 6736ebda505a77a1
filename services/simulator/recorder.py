"""Request counters and the history of recent requests, for tests to inspect."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

import orjson

# The auto cache mode clears all stored prefixes at this count, to bound memory use.
MAX_SEEN_PREFIXES = 100_000


@dataclass(slots=True)
class RecordedRequest:
    """One request as the simulator received it, and the status it returned."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw_body: bytes
    received_at: float
    # None while the response is in progress or when the connection was aborted.
    status: int | None = None

    @property
    def body(self) -> object:
        """The body parsed as JSON, or as text when it is not valid JSON."""
        if not self.raw_body:
            return None
        try:
            return orjson.loads(self.raw_body)
        except orjson.JSONDecodeError:
            return self.raw_body.decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "status": self.status,
            "received_at": self.received_at,
        }


@dataclass(slots=True)
class SimState:
    """Counters and the last ``history_size`` requests of one simulator app."""

    history_size: int = 200
    total: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    history: deque[RecordedRequest] = field(init=False)
    seen_prefixes: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.history_size)

    def record(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> RecordedRequest:
        entry = RecordedRequest(method, path, query, headers, body, time.time())
        self.total += 1
        self.by_path[path] += 1
        self.history.append(entry)
        return entry

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        """Return the kept requests, oldest first, optionally for one path."""
        if path is None:
            return list(self.history)
        return [entry for entry in self.history if entry.path == path]

    def mark_prefix_seen(self, prefix_hash: int) -> bool:
        """Remember a cacheable prompt prefix and return whether it was seen before."""
        if prefix_hash in self.seen_prefixes:
            return True
        if len(self.seen_prefixes) >= MAX_SEEN_PREFIXES:
            self.seen_prefixes.clear()
        self.seen_prefixes.add(prefix_hash)
        return False

    def reset(self) -> None:
        """Clear the counters, the history and the prompt-cache memory."""
        self.total = 0
        self.by_path.clear()
        self.history.clear()
        self.seen_prefixes.clear()

    def snapshot(self, path: str | None = None) -> dict[str, object]:
        """Return the JSON shape that ``GET /_sim/requests`` sends."""
        return {
            "total": self.total,
            "by_path": dict(self.by_path),
            "requests": [entry.to_dict() for entry in self.requests(path)],
        }
