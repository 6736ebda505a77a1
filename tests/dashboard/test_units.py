"""Pure parts of the dashboard: session cookies, time ranges, anomalies, scope."""

from __future__ import annotations

import pytest

from services.dashboard.anomalies import DAY_MS, DailyUsage, find_anomalies, p95
from services.dashboard.auth import Principal, scoped_user_id
from services.dashboard.errors import BadRequestError, ForbiddenError
from services.dashboard.sessions import Session, sign_session, verify_session
from services.dashboard.settings import load_dashboard_settings, session_key_from
from services.dashboard.timerange import TimeWindow, bucket_seconds, parse_window

KEY = b"k" * 32


def test_session_round_trip() -> None:
    session = Session("user", "u1", "key1", 2_000)
    assert verify_session(sign_session(session, KEY), KEY, 1_000) == session


@pytest.mark.parametrize(
    "case", ["expired", "wrong_key", "tampered", "garbage", "no_key"]
)
def test_session_rejected(case: str) -> None:
    cookie = sign_session(Session("user", "u1", "key1", 2_000), KEY)
    other = sign_session(Session("operator", "", "", 2_000), KEY)
    value, key, now = cookie, KEY, 1_000.0
    if case == "expired":
        now = 2_000.0
    elif case == "wrong_key":
        key = b"x" * 32
    elif case == "tampered":
        value = other.split(".")[0] + "." + cookie.split(".")[1]
    elif case == "garbage":
        value = "not-a-cookie"
    elif case == "no_key":
        key = b""
    assert verify_session(value, key, now) is None


def test_session_key_prefers_secret() -> None:
    assert session_key_from("s", "t") == session_key_from("s", "other")
    assert session_key_from("", "t") != session_key_from("", "u")
    assert session_key_from("", "") == b""


def test_settings_secure_cookies_default() -> None:
    assert load_dashboard_settings({}).secure_cookies is True
    environ = {"TOLLGATE_DASHBOARD_SECURE_COOKIES": "false"}
    assert load_dashboard_settings(environ).secure_cookies is False


def test_window_presets_and_custom() -> None:
    assert parse_window({"range": "1h"}, 10_000_000) == TimeWindow(
        10_000_001 - 3_600_000, 10_000_001
    )
    assert parse_window({"start_ms": "5", "end_ms": "9"}, 0) == TimeWindow(5, 9)
    for query in ({"range": "2y"}, {"start_ms": "9", "end_ms": "5"}, {"end_ms": "x"}):
        with pytest.raises(BadRequestError):
            parse_window(query, 10_000_000)


def test_bucket_seconds_whole_minutes() -> None:
    assert bucket_seconds(TimeWindow(0, 3_600_000)) == 60
    assert bucket_seconds(TimeWindow(0, 86_400_000)) == 720
    assert bucket_seconds(TimeWindow(0, 30 * 86_400_000)) % 60 == 0


def test_scope_pins_user() -> None:
    user = Principal("user", "u1")
    assert scoped_user_id(user, {}) == "u1"
    assert scoped_user_id(user, {"user_id": "u1"}) == "u1"
    with pytest.raises(ForbiddenError):
        scoped_user_id(user, {"user_id": "u2"})
    operator = Principal("operator", "")
    assert scoped_user_id(operator, {"user_id": "u2"}) == "u2"
    assert scoped_user_id(operator, {}) == ""


def test_p95_nearest_rank() -> None:
    assert p95([]) == 0.0
    assert p95(list(range(1, 21))) == 19.0
    assert p95([5]) == 5.0


def _days(user: str, today: int, history: list[int], today_calls: int) -> list:
    days = [
        DailyUsage(user, today - DAY_MS * (offset + 1), calls, calls * 10)
        for offset, calls in enumerate(history)
        if calls
    ]
    days.append(DailyUsage(user, today, today_calls, today_calls * 10))
    return days


def test_anomaly_flags_spike_only() -> None:
    today = 100 * DAY_MS
    usual = [10] * 14
    days = (
        _days("steady", today, usual, 15)
        + _days("spike", today, usual, 21)
        + _days("new", today, [0] * 12 + [1, 1], 500)
    )
    found = find_anomalies(days, today)
    assert [a.user_id for a in found] == ["spike"]
    assert found[0].reasons == "spend,calls"
    assert found[0].calls_p95 == 10.0
