"""Query parameters of the JSON API turned into analytics requests (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.analytics.v1 import analytics_pb2
from services.dashboard.errors import BadRequestError
from services.dashboard.timerange import TimeWindow

GROUP_BY_NAMES = {
    "": analytics_pb2.GROUP_BY_UNSPECIFIED,
    "user": analytics_pb2.GROUP_BY_USER,
    "model": analytics_pb2.GROUP_BY_MODEL,
    "gateway": analytics_pb2.GROUP_BY_GATEWAY,
    "provider": analytics_pb2.GROUP_BY_PROVIDER,
    "metadata": analytics_pb2.GROUP_BY_METADATA,
}
_STRING_FILTERS = ("account_id", "gateway_id", "model", "provider", "error_type")
MAX_QUERY_CHARS = 256


def call_filter(query: Mapping[str, str], user_id: str) -> analytics_pb2.CallFilter:
    """Build the filter of a request; ``user_id`` is the already authorized user."""
    result = analytics_pb2.CallFilter(user_id=user_id)
    for name in _STRING_FILTERS:
        setattr(result, name, _bounded(query, name))
    status = query.get("status", "")
    if status:
        if not status.isdigit() or not 100 <= int(status) <= 599:
            raise BadRequestError(f"invalid status {status!r}: expected 100 to 599")
        result.status = int(status)
    result.text = _bounded(query, "q")
    result.metadata_key = _bounded(query, "metadata_key")
    result.metadata_value = _bounded(query, "metadata_value")
    return result


def group_by(query: Mapping[str, str]) -> int:
    name = query.get("group_by", "")
    value = GROUP_BY_NAMES.get(name)
    if value is None:
        raise BadRequestError(
            f"invalid group_by {name!r}: expected one of "
            f"{', '.join(n for n in GROUP_BY_NAMES if n)}"
        )
    return value


def time_range(window: TimeWindow) -> analytics_pb2.TimeRange:
    return analytics_pb2.TimeRange(start_ms=window.start_ms, end_ms=window.end_ms)


def page_size(query: Mapping[str, str]) -> int:
    text = query.get("page_size", "50")
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise BadRequestError(f"invalid page_size {text!r}: expected 1 to 500")
    return int(text)


def _bounded(query: Mapping[str, str], name: str) -> str:
    value = query.get(name, "")
    if len(value) > MAX_QUERY_CHARS:
        raise BadRequestError(f"{name} is longer than {MAX_QUERY_CHARS} characters")
    return value


def positive_int(query: Mapping[str, str], name: str) -> int:
    text = query.get(name, "")
    if not text.isdigit() or int(text) <= 0:
        raise BadRequestError(f"invalid {name} {text!r}: expected a positive integer")
    return int(text)
