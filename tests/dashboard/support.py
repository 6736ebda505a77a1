"""Helpers of the dashboard tests: calls for one user, expected numbers, HTTP."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import anthropic
import orjson

from services.dashboard.sessions import ROLE_USER, Session, sign_session
from services.dashboard.settings import session_key_from
from tests.support.stack import RunningStack

MODEL = "claude-sonnet-4-5"


def send_calls(stack: RunningStack, user_id: str, count: int, tag: str) -> list[str]:
    """Send ``count`` calls as ``user_id`` on acme/open; return their request ids."""
    client = anthropic.Anthropic(
        base_url=stack.anthropic_base_url(),
        api_key="sk-ant-test",
        max_retries=0,
        default_headers={"cf-aig-metadata": orjson.dumps({"user": user_id}).decode()},
    )
    request_ids = []
    try:
        for index in range(count):
            raw = client.messages.with_raw_response.create(
                model=MODEL,
                max_tokens=32 + index,
                messages=[{"role": "user", "content": f"{tag} question {index}"}],
            )
            request_ids.append(raw.headers["tollgate-request-id"])
    finally:
        client.close()
    rows = stack.wait_rows("user_id = {u:String}", {"u": user_id}, count)
    assert len(rows) == count
    return request_ids


def expected_usage(stack: RunningStack, user_id: str) -> dict[str, Any]:
    """Compute the user's totals straight from ClickHouse."""
    client = stack.clickhouse()
    try:
        result = client.query(
            "SELECT count(), countIf(status >= 400 OR error_type != ''), "
            "sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), "
            "sum(cache_write_tokens), quantilesExact(0.5, 0.95, 0.99)(latency_us), "
            "groupArray(toString(event_id)) "
            "FROM calls FINAL WHERE user_id = {u:String}",
            parameters={"u": user_id},
        )
    finally:
        client.close()
    row = result.result_rows[0]
    return {
        "calls": int(row[0]),
        "errors": int(row[1]),
        "input_tokens": int(row[2]),
        "output_tokens": int(row[3]),
        "cache_read_tokens": int(row[4]),
        "cache_write_tokens": int(row[5]),
        "latency": [int(value) for value in row[6]],
        "event_ids": sorted(row[7]),
    }


def user_cookie(stack: RunningStack, user_id: str) -> str:
    """Sign a user session the way the dashboard does after a gateway-key sign-in."""
    key = session_key_from("", stack.stack.admin_token)
    session = Session(ROLE_USER, user_id, "key-test", int(time.time()) + 3600)
    return sign_session(session, key)


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any


def http(
    stack: RunningStack,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    cookie: str = "",
) -> Reply:
    """Send one request to the dashboard and decode the JSON reply."""
    all_headers = dict(headers or {})
    if cookie:
        all_headers["Cookie"] = f"tollgate_session={cookie}"
    data = None
    if body is not None:
        data = orjson.dumps(body)
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        stack.ingress_url + path, data=data, method=method, headers=all_headers
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return Reply(response.status, response.headers, _decode(response.read()))
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, _decode(exc.read()))


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace")


def new_user(label: str) -> str:
    return f"dash-{label}-{uuid.uuid4().hex[:8]}"
