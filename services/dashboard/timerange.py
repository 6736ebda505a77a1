"""Time ranges of the dashboard: presets, custom ranges and chart bucket widths."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.dashboard.errors import BadRequestError

PRESETS_S: dict[str, int] = {
    "1h": 3600,
    "24h": 86_400,
    "7d": 7 * 86_400,
    "30d": 30 * 86_400,
}
DEFAULT_PRESET = "24h"
# Charts aim at about this many points; bucket widths are whole minutes.
TARGET_POINTS = 120
# Longest custom range, in days, so one query stays bounded.
MAX_RANGE_DAYS = 400


@dataclass(frozen=True, slots=True)
class TimeWindow:
    # Inclusive start and exclusive end, in milliseconds since the Unix epoch.
    start_ms: int
    end_ms: int


def parse_window(query: Mapping[str, str], now_ms: int) -> TimeWindow:
    """Read ``range=1h|24h|7d|30d`` or ``start_ms`` and ``end_ms`` from a query."""
    if "start_ms" in query or "end_ms" in query:
        start_ms = _int_param(query, "start_ms")
        end_ms = _int_param(query, "end_ms")
        if start_ms < 0 or end_ms <= start_ms:
            raise BadRequestError(
                f"end_ms ({end_ms}) must be greater than start_ms ({start_ms}) "
                "and start_ms must not be negative"
            )
        if end_ms - start_ms > MAX_RANGE_DAYS * 86_400_000:
            raise BadRequestError(
                f"the time range must not exceed {MAX_RANGE_DAYS} days"
            )
        return TimeWindow(start_ms, end_ms)
    preset = query.get("range", DEFAULT_PRESET)
    span_s = PRESETS_S.get(preset)
    if span_s is None:
        raise BadRequestError(
            f"invalid range {preset!r}: expected one of {', '.join(PRESETS_S)}, "
            "or start_ms and end_ms"
        )
    # The end is one millisecond past now so that a call of this instant counts.
    return TimeWindow(now_ms + 1 - span_s * 1000, now_ms + 1)


def bucket_seconds(window: TimeWindow) -> int:
    """Return a bucket width (a multiple of 60 s) giving about TARGET_POINTS points."""
    span_s = (window.end_ms - window.start_ms) / 1000
    minutes = max(1, round(span_s / TARGET_POINTS / 60))
    return minutes * 60


def _int_param(query: Mapping[str, str], name: str) -> int:
    text = query.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise BadRequestError(
            f"invalid {name} {text!r}: expected milliseconds since the Unix epoch"
        ) from None
