"""The ingress's CheckStream client against the real policy service.

Decisions and denials must be the same on the stream as on the unary Check,
and the client must survive the policy service going away and coming back.
"""

from __future__ import annotations

import asyncio
import socket
import tomllib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import status_pb2
from grpc_status import rpc_status

from gateway.policy.v1 import policy_pb2
from services.common.config import parse_config
from services.ingress.calls import Call
from services.ingress.errors import RateLimited
from services.ingress.policy_client import PolicyClient
from services.ingress.policy_outcomes import handle_policy_error
from services.ingress.policy_stream import status_error
from services.ingress.routes import Route
from services.policy.server import PolicyServer
from services.policy.settings import PolicySettings

CONFIG = """
[accounts.acme.gateways.open]
authenticated = false

[[accounts.acme.gateways.tight.limits]]
scope = "user"
kind = "requests"
limit = 1
window_s = 60

[[accounts.acme.gateways.single.limits]]
scope = "user"
kind = "concurrent"
limit = 1
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Policy:
    """A real policy service on a fixed port, so that it can be restarted."""

    def __init__(self) -> None:
        self.config = parse_config(tomllib.loads(CONFIG), environ={})
        self.settings = PolicySettings(
            port=_free_port(),
            redis_prefix=f"stream-{uuid.uuid4().hex[:8]}",
            shutdown_grace_s=0.1,
        )
        self.server: PolicyServer | None = None

    async def start(self) -> None:
        self.server = PolicyServer(self.settings, self.config)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


@pytest.fixture
async def policy() -> AsyncIterator[Policy]:
    service = Policy()
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def client(policy: Policy) -> AsyncIterator[PolicyClient]:
    policy_client = PolicyClient(f"127.0.0.1:{policy.settings.port}", timeout_ms=2000)
    policy_client.start()
    yield policy_client
    await policy_client.close()


def _request(gateway: str, key: str = "sk-ant-user-1") -> policy_pb2.CheckRequest:
    return policy_pb2.CheckRequest(
        request_id=uuid.uuid4().hex,
        account_id="acme",
        gateway_id=gateway,
        provider="anthropic",
        endpoint="/v1/messages",
        method="POST",
        model="claude-x",
        presented_key=key,
        body=b"{}",
        body_bytes=2,
    )


async def _wait_open(client: PolicyClient) -> None:
    # The stream opens in the background; one check through it proves it.
    for _ in range(200):
        if client.stream.is_open:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the CheckStream did not open")


async def test_stream_decision_matches_unary(client: PolicyClient) -> None:
    await _wait_open(client)

    streamed = await client.stream.check(_request("open"))
    unary = await client.stub.Check(_request("open"))

    assert streamed.identity.user_id == unary.identity.user_id
    assert streamed.identity.user_id
    assert streamed.collect_log and not streamed.degraded


async def test_stream_denial_carries_the_unary_status(client: PolicyClient) -> None:
    await _wait_open(client)

    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await client.stream.check(_request("missing"))
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await client.stub.Check(_request("missing"))

    assert streamed.value.code() == unary.value.code() == grpc.StatusCode.NOT_FOUND
    assert streamed.value.details() == unary.value.details()


async def test_stream_limit_denial_keeps_quota_details(client: PolicyClient) -> None:
    await _wait_open(client)
    await client.stream.check(_request("tight", key="sk-ant-user-2"))

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await client.stream.check(_request("tight", key="sk-ant-user-2"))

    assert denied.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(denied.value)  # type: ignore[arg-type]
    assert status is not None and status.details
    config = parse_config(tomllib.loads(CONFIG), environ={})
    gateway = config.gateway("acme", "tight")
    call = Call.begin(
        Route("acme", "tight", "anthropic", "/v1/messages"),
        config.providers["anthropic"],
        "POST",
    )
    with pytest.raises(RateLimited) as mapped:
        handle_policy_error(denied.value, gateway, call)
    assert call.decision is not None
    assert call.decision.identity.user_id.startswith("key:")
    assert mapped.value.status == 429
    assert mapped.value.headers["ratelimit-remaining"] == "0"
    assert int(mapped.value.headers["retry-after"]) >= 1


def test_status_error_rebuilds_code_message_and_details() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.PERMISSION_DENIED.value[0])
    status.message = "not allowed"

    error = status_error(status.SerializeToString())

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "not allowed"
    assert rpc_status.from_call(error) == status  # type: ignore[arg-type]


async def test_stream_reconnects_after_the_service_restarts(
    policy: Policy, client: PolicyClient
) -> None:
    await _wait_open(client)
    await policy.stop()

    # While the service is down a check fails as a unary call would:
    # UNAVAILABLE, which the gateway's fail mode handles.
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await client.check(_request("open"))
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE

    await policy.start()
    for _ in range(400):
        try:
            await client.stream.check(_request("open"))
        except Exception:  # noqa: BLE001 - the stream may still be reconnecting
            await asyncio.sleep(0.02)
            continue
        break
    else:
        raise AssertionError("the CheckStream did not come back")
    response = await client.check(_request("open"))
    assert not response.degraded


async def test_settle_on_the_stream_frees_the_concurrency_slot(
    client: PolicyClient,
) -> None:
    await _wait_open(client)
    decision = await client.check(_request("single", key="sk-ant-user-3"))
    assert decision.reservation_id
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await client.check(_request("single", key="sk-ant-user-3"))
    assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    queued = client.stream.settle(
        policy_pb2.SettleRequest(
            request_id="r", reservation_id=decision.reservation_id, provider="anthropic"
        )
    )

    assert queued
    # Fire and forget: the slot is free once the service has run the settle.
    for _ in range(200):
        try:
            await client.check(_request("single", key="sk-ant-user-3"))
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.01)
            continue
        return
    raise AssertionError("the settle sent on the stream did not free the slot")
