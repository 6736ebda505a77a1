"""Calls the gateway rejects are still recorded, under the right user."""

from __future__ import annotations

import http.client
import socket
import uuid
from urllib.parse import urlsplit

import anthropic
import orjson
import pytest

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from tests.support.stack import ADMIN_TOKEN, RunningStack, admin_channel


def test_rate_limited_call_keeps_its_user(stack: RunningStack) -> None:
    user = f"denied-{uuid.uuid4().hex[:6]}"
    limit = policy_pb2.Limit(
        scope=policy_pb2.Scope(account_id="acme", gateway_id="open", user_id=user),
        kind=policy_pb2.LIMIT_KIND_REQUESTS,
        limit=1,
        window_s=60,
        applies_to="user",
    )
    with admin_channel(stack.stack.policy_address) as channel:
        admin = policy_pb2_grpc.PolicyAdminServiceStub(channel)
        admin.SetLimit(policy_pb2.SetLimitRequest(limit=limit), timeout=5)
    client = anthropic.Anthropic(
        base_url=stack.anthropic_base_url(),
        api_key="sk-ant-denied",
        max_retries=0,
        default_headers={
            "cf-aig-metadata": f'{{"user": "{user}", "team_tag": "blue"}}'
        },
    )
    try:
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=8,
            messages=[{"role": "user", "content": "one"}],
        )
        with pytest.raises(anthropic.RateLimitError) as denied:
            client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=8,
                messages=[{"role": "user", "content": "two"}],
            )
    finally:
        client.close()

    request_id = denied.value.response.headers["tollgate-request-id"]
    rows = stack.wait_rows("request_id = {rid:String}", {"rid": request_id}, 1)
    assert len(rows) == 1
    assert rows[0]["status"] == 429
    assert rows[0]["user_id"] == user
    assert rows[0]["metadata"]["team_tag"] == "blue"
    assert rows[0]["error_type"] == "rate_limit_error"


def test_body_cut_off_recorded_as_disconnect(stack: RunningStack) -> None:
    endpoint = f"/v1/messages-cut-{uuid.uuid4().hex[:8]}"
    address = urlsplit(stack.ingress_url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(
            f"POST /anthropic{endpoint} HTTP/1.1\r\nHost: gateway\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}".encode()
        )
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1024)

    rows = stack.wait_rows("endpoint = {endpoint:String}", {"endpoint": endpoint}, 1)
    assert len(rows) == 1
    assert rows[0]["error_type"] == "client_disconnected"
    assert rows[0]["client_cancelled"] is True
    assert rows[0]["status"] == 499


@pytest.mark.parametrize("where", ["api-key", "x-goog-api-key", "query"])
def test_gateway_key_elsewhere_never_forwarded(stack: RunningStack, where: str) -> None:
    gateway_key = "tg_" + "Q" * 43
    headers = {"content-type": "application/json", "x-api-key": "sk-openai-byok"}
    path = "/openai/v1/chat/completions"
    if where == "query":
        path += f"?key={gateway_key}"
    else:
        headers[where] = gateway_key
    forwarded_before = stack.simulator_total()
    address = urlsplit(stack.ingress_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request(
            "POST", path, body=b'{"model":"gpt-4o-mini","messages":[]}', headers=headers
        )
        response = connection.getresponse()
        body = orjson.loads(response.read())
    finally:
        connection.close()

    assert response.status == 400
    assert "never forwarded" in body["error"]["message"]
    assert gateway_key not in body["error"]["message"]
    assert stack.simulator_total() == forwarded_before


def test_admin_token_redacted_from_payloads(stack: RunningStack) -> None:
    client = anthropic.Anthropic(
        base_url=stack.anthropic_base_url(), api_key="sk-ant-payload", max_retries=0
    )
    try:
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5",
            max_tokens=8,
            messages=[{"role": "user", "content": f"the token is {ADMIN_TOKEN}"}],
        )
    finally:
        client.close()

    request_id = raw.headers["tollgate-request-id"]
    rows = stack.wait_rows("request_id = {rid:String}", {"rid": request_id}, 1)
    assert len(rows) == 1
    assert ADMIN_TOKEN not in rows[0]["request_body"]
    assert "[REDACTED]" in rows[0]["request_body"]
