"""The dashboard's JSON API through a real stack: sign-in, numbers, authorization."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from tests.dashboard.support import (
    expected_usage,
    http,
    new_user,
    send_calls,
    user_cookie,
)
from tests.support.stack import ADMIN_TOKEN, RunningStack


@dataclass
class Users:
    alice: str
    bob: str
    alice_calls: list[str]
    bob_calls: list[str]


@pytest.fixture(scope="module")
def users(stack: RunningStack) -> Iterator[Users]:
    alice, bob = new_user("alice"), new_user("bob")
    yield Users(
        alice,
        bob,
        send_calls(stack, alice, 3, "alice"),
        send_calls(stack, bob, 2, "bob"),
    )


def _event_ids(stack: RunningStack, user_id: str) -> list[str]:
    return expected_usage(stack, user_id)["event_ids"]


def test_operator_sign_in_sets_strict_cookie(stack: RunningStack) -> None:
    reply = http(
        stack,
        "POST",
        "/dashboard/api/v1/session",
        body={"admin_token": stack.stack.admin_token},
    )
    assert reply.status == 200
    assert reply.body == {"role": "operator", "user_id": ""}
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/dashboard/" in cookie
    assert stack.stack.admin_token not in cookie


def test_operator_sign_in_rejects_wrong_token(stack: RunningStack) -> None:
    reply = http(
        stack, "POST", "/dashboard/api/v1/session", body={"admin_token": "nope"}
    )
    assert reply.status == 401
    assert "Set-Cookie" not in reply.headers


def test_sign_in_rejects_foreign_origin(stack: RunningStack) -> None:
    reply = http(
        stack,
        "POST",
        "/dashboard/api/v1/session",
        body={"admin_token": stack.stack.admin_token},
        headers={"Origin": "https://evil.example"},
    )
    assert reply.status == 403
    assert "Set-Cookie" not in reply.headers


def test_api_requires_authentication(stack: RunningStack) -> None:
    assert http(stack, "GET", "/dashboard/api/v1/usage/summary").status == 401
    page = http(stack, "GET", "/dashboard/")
    assert page.status == 200  # redirected to the sign-in page
    assert "Sign in" in page.body


def test_forged_cookie_rejected(stack: RunningStack, users: Users) -> None:
    cookie = user_cookie(stack, users.alice)
    payload, signature = cookie.split(".")
    forged = user_cookie(stack, users.bob).split(".")[0] + "." + signature
    reply = http(stack, "GET", "/dashboard/api/v1/me", cookie=forged)
    assert reply.status == 401
    assert http(stack, "GET", "/dashboard/api/v1/me", cookie=cookie).body == {
        "role": "user",
        "user_id": users.alice,
    }


def test_user_summary_matches_clickhouse(stack: RunningStack, users: Users) -> None:
    expected = expected_usage(stack, users.alice)
    reply = http(
        stack,
        "GET",
        "/dashboard/api/v1/usage/summary?range=1h",
        cookie=user_cookie(stack, users.alice),
    )
    assert reply.status == 200
    total = reply.body["total"]
    assert reply.body["user_id"] == users.alice
    for name in (
        "calls",
        "errors",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
    ):
        assert total[name] == expected[name], name
    latency = total["latency"]
    assert [latency["p50_us"], latency["p95_us"], latency["p99_us"]] == expected[
        "latency"
    ]


def test_user_search_returns_only_own_calls(stack: RunningStack, users: Users) -> None:
    reply = http(
        stack,
        "GET",
        "/dashboard/api/v1/calls?range=1h",
        cookie=user_cookie(stack, users.alice),
    )
    assert reply.status == 200
    ids = sorted(call["event_id"] for call in reply.body["calls"])
    assert ids == _event_ids(stack, users.alice)


def test_user_cannot_read_other_user(stack: RunningStack, users: Users) -> None:
    cookie = user_cookie(stack, users.alice)
    bob_event = _event_ids(stack, users.bob)[0]
    for path in (
        f"/dashboard/api/v1/usage/summary?range=1h&user_id={users.bob}",
        f"/dashboard/api/v1/usage/timeseries?range=1h&user_id={users.bob}",
        f"/dashboard/api/v1/calls?range=1h&user_id={users.bob}",
        f"/dashboard/api/v1/limits?user_id={users.bob}",
        f"/dashboard/api/v1/cache-rules?user_id={users.bob}",
        f"/dashboard/api/v1/calls/{bob_event}?user_id={users.bob}",
    ):
        reply = http(stack, "GET", path, cookie=cookie)
        assert reply.status == 403, path
        assert reply.body["error"]["code"] == "forbidden", path
        assert "calls" not in reply.body, path
        assert "total" not in reply.body, path
    reply = http(stack, "GET", f"/dashboard/api/v1/calls/{bob_event}", cookie=cookie)
    assert reply.status == 404
    assert "request_body" not in reply.body
    assert (
        http(stack, "GET", "/dashboard/api/v1/anomalies", cookie=cookie).status == 403
    )


def test_user_reads_own_call_payloads(stack: RunningStack, users: Users) -> None:
    event_id = _event_ids(stack, users.alice)[0]
    reply = http(
        stack,
        "GET",
        f"/dashboard/api/v1/calls/{event_id}",
        cookie=user_cookie(stack, users.alice),
    )
    assert reply.status == 200
    assert reply.body["user_id"] == users.alice
    assert "alice question" in reply.body["request_body"]
    assert reply.body["timings"]["end_us"] >= reply.body["timings"]["start_us"]
    assert "sk-ant-test" not in str(reply.body)


def test_operator_bearer_sees_every_user(stack: RunningStack, users: Users) -> None:
    reply = http(
        stack,
        "GET",
        "/dashboard/api/v1/usage/summary?range=1h&group_by=user",
        headers={"Authorization": f"Bearer {stack.stack.admin_token}"},
    )
    assert reply.status == 200
    groups = {row["group"]: row["calls"] for row in reply.body["groups"]}
    assert groups[users.alice] == 3
    assert groups[users.bob] == 2
    reply = http(
        stack,
        "GET",
        f"/dashboard/api/v1/usage/summary?range=1h&user_id={users.bob}",
        headers={"Authorization": f"Bearer {stack.stack.admin_token}"},
    )
    assert reply.body["total"]["calls"] == 2


def test_limits_pinned_to_user(stack: RunningStack, users: Users) -> None:
    reply = http(
        stack, "GET", "/dashboard/api/v1/limits", cookie=user_cookie(stack, users.alice)
    )
    assert reply.status == 200
    assert reply.body["user_id"] == users.alice


def test_invalid_range_is_400(stack: RunningStack, users: Users) -> None:
    cookie = user_cookie(stack, users.alice)
    for query in ("range=2y", "start_ms=10&end_ms=5", "start_ms=abc&end_ms=5"):
        reply = http(
            stack, "GET", f"/dashboard/api/v1/usage/summary?{query}", cookie=cookie
        )
        assert reply.status == 400, query
        assert reply.body["error"]["code"] == "invalid_request"


def _create_key(stack: RunningStack, user_id: str) -> str:
    """Create a gateway key through PolicyAdminService and return its secret."""
    with grpc.insecure_channel(stack.stack.policy_address) as channel:
        stub = policy_pb2_grpc.PolicyAdminServiceStub(channel)
        response = stub.CreateKey(
            policy_pb2.CreateKeyRequest(user_id=user_id),
            timeout=5,
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
        )
    return response.secret


def test_gateway_key_sign_in(stack: RunningStack, users: Users) -> None:
    secret = _create_key(stack, users.alice)
    reply = http(
        stack, "POST", "/dashboard/api/v1/session", body={"gateway_key": secret}
    )
    assert reply.status == 200
    assert reply.body == {"role": "user", "user_id": users.alice}
    assert secret not in reply.headers["Set-Cookie"]
    bearer = http(
        stack,
        "GET",
        f"/dashboard/api/v1/usage/summary?range=1h&user_id={users.bob}",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert bearer.status == 403
