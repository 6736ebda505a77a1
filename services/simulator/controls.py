"""Per-request simulator controls, read from ``x-sim-*`` headers and prompt markers.

A marker is ``[[sim:NAME]]`` (the same as ``x-sim-fault: NAME``) or
``[[sim:KEY=VALUE]]`` (the same as the header ``x-sim-KEY``, with ``_`` read as
``-``) in the text of the last user message. A header wins over a marker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .settings import CACHE_MODES, SimSettings

FAULTS = frozenset(
    {
        "rate_limit",
        "rate_limit_tokens",
        "overloaded",
        "server_error",
        "stream_error",
        "reset",
        "reset_mid_stream",
        "slow",
        "invalid_json",
        "timeout",
        "not_found",
        "bad_request",
        "auth_error",
        "permission_error",
        "too_large",
    }
)

MARKER_PREFIX = "[[sim:"
MARKER_PATTERN = re.compile(r"\[\[sim:([a-z_]+)(?:=([^\]]*))?\]\]")

# Header name (without the ``x-sim-`` prefix) to the RequestControls field.
CONTROL_FIELDS = {
    "fault": "fault",
    "retry-after": "retry_after_s",
    "ttfb-ms": "ttfb_ms",
    "chunk-ms": "chunk_ms",
    "chunks": "chunks",
    "output-tokens": "output_tokens",
    "cache": "cache_mode",
    "fault-after": "fault_after",
}
HEADER_NAMES = tuple((f"x-sim-{key}", key) for key in CONTROL_FIELDS)


class ControlError(ValueError):
    """An ``x-sim-*`` header or marker with an invalid value."""


@dataclass(frozen=True, slots=True)
class RequestControls:
    """Timing, size, cache and fault choices for one request."""

    fault: str | None
    retry_after_s: int
    ttfb_ms: float
    chunk_ms: float
    chunks: int | None
    output_tokens: int
    cache_mode: str
    # Stream deltas sent before stream_error or reset_mid_stream; None is half.
    fault_after: int | None = None

    @classmethod
    def defaults(cls, settings: SimSettings) -> RequestControls:
        return cls(
            fault=None,
            retry_after_s=settings.retry_after_s,
            ttfb_ms=settings.ttfb_ms,
            chunk_ms=settings.chunk_ms,
            chunks=None,
            output_tokens=settings.output_tokens,
            cache_mode=settings.cache_mode,
        )


def read_controls(
    defaults: RequestControls, headers: Mapping[str, str], prompt: str
) -> RequestControls:
    """Apply prompt markers, then ``x-sim-*`` headers, to ``defaults``.

    Raises ControlError on an unknown key, fault name or a malformed number.
    """
    raw: dict[str, str] = {}
    if MARKER_PREFIX in prompt:
        raw.update(_read_markers(prompt))
    for header, key in HEADER_NAMES:
        value = headers.get(header)
        if value is not None:
            raw[key] = value.strip()
    if not raw:
        return defaults
    changes: dict[str, Any] = {
        CONTROL_FIELDS[key]: _parse_value(key, value) for key, value in raw.items()
    }
    return replace(defaults, **changes)


def _read_markers(prompt: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in MARKER_PATTERN.findall(prompt):
        if name in FAULTS and not value:
            found["fault"] = name
            continue
        key = name.replace("_", "-")
        if key not in CONTROL_FIELDS:
            raise ControlError(f"unknown simulator marker [[sim:{name}]]")
        found[key] = value
    return found


def _parse_value(key: str, value: str) -> object:
    if key == "fault":
        return _parse_fault(value)
    if key == "cache":
        return _parse_cache_mode(value)
    if key in ("ttfb-ms", "chunk-ms"):
        return _parse_number(key, value, float)
    return _parse_number(key, value, int)


def _parse_fault(value: str) -> str | None:
    if value in ("", "none"):
        return None
    if value not in FAULTS:
        names = ", ".join(sorted(FAULTS))
        raise ControlError(f"invalid x-sim-fault {value!r}: expected one of {names}")
    return value


def _parse_cache_mode(value: str) -> str:
    if value not in CACHE_MODES:
        raise ControlError(
            f"invalid x-sim-cache {value!r}: expected one of {', '.join(CACHE_MODES)}"
        )
    return value


def _parse_number(key: str, value: str, kind: type[int] | type[float]) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        raise ControlError(
            f"invalid x-sim-{key} {value!r}: expected a non-negative {kind.__name__}"
        ) from None
    if number < 0:
        raise ControlError(f"invalid x-sim-{key} {value!r}: must not be negative")
    return number


def last_user_text(messages: list[object]) -> str:
    """Return the text of the last ``user`` message (string or text blocks)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def content_text(content: object) -> str:
    """Join the text of a message ``content`` (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = [
        block.get("text", "")
        for block in content
        if isinstance(block, dict) and isinstance(block.get("text"), str)
    ]
    return "".join(parts)
