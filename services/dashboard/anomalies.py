"""Users whose spend or call rate today is far above their own usual level.

The rule follows Cloudflare AI Gateway's per-user flag (a session costing more
than twice the user's p95): a user is flagged when today's spend, or today's
call count, exceeds ``FACTOR`` times the p95 of that user's daily values over
the previous ``BASELINE_DAYS`` full UTC days. Days without calls count as 0.
A user with calls on fewer than ``MIN_ACTIVE_DAYS`` of those days has no
baseline yet and is never flagged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FACTOR = 2.0
BASELINE_DAYS = 14
MIN_ACTIVE_DAYS = 3
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class DailyUsage:
    user_id: str
    # Start of the UTC day, in milliseconds since the Unix epoch.
    day_start_ms: int
    calls: int
    cost_usd_micros: int


@dataclass(frozen=True, slots=True)
class Anomaly:
    user_id: str
    calls_today: int
    calls_p95: float
    cost_today_usd_micros: int
    cost_p95_usd_micros: float
    # "spend", "calls" or "spend,calls".
    reasons: str


def p95(values: Sequence[float]) -> float:
    """Return the nearest-rank 95th percentile of ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = math.ceil(0.95 * len(ordered))
    return float(ordered[rank - 1])


def find_anomalies(days: Iterable[DailyUsage], today_start_ms: int) -> list[Anomaly]:
    """Apply the rule to daily usage per user; the result is sorted by user id."""
    by_user: dict[str, dict[int, DailyUsage]] = {}
    for day in days:
        by_user.setdefault(day.user_id, {})[day.day_start_ms] = day
    baseline_starts = [
        today_start_ms - DAY_MS * offset for offset in range(1, BASELINE_DAYS + 1)
    ]
    anomalies = []
    for user_id in sorted(by_user):
        user_days = by_user[user_id]
        today = user_days.get(today_start_ms)
        if today is None:
            continue
        history = [user_days.get(start) for start in baseline_starts]
        if sum(1 for day in history if day is not None) < MIN_ACTIVE_DAYS:
            continue
        calls_p95 = p95([day.calls if day else 0 for day in history])
        cost_p95 = p95([day.cost_usd_micros if day else 0 for day in history])
        reasons = []
        if today.cost_usd_micros > FACTOR * cost_p95 and today.cost_usd_micros > 0:
            reasons.append("spend")
        if today.calls > FACTOR * calls_p95:
            reasons.append("calls")
        if reasons:
            anomalies.append(
                Anomaly(
                    user_id,
                    today.calls,
                    calls_p95,
                    today.cost_usd_micros,
                    cost_p95,
                    ",".join(reasons),
                )
            )
    return anomalies
