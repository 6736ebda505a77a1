"""Redis round trips per Check and Settle, and rules that change between calls.

The round trips are counted where redis-py sends bytes: each command, script
run or pipeline is one ``send_packed_command``. Rule writes go through a
second store, as another policy replica would make them, so that only the
rules version in Redis can tell the serving process that its rules changed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from redis.asyncio.connection import AbstractConnection

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services.common.config import parse_config
from services.common.limit_config import LimitSpec, LoopGuardSpec
from services.policy.cache_rules import CacheRuleStore
from services.policy.limit_store import LimitStore
from services.policy.server import PolicyServer
from services.policy.settings import PolicySettings
from services.policy.store import RedisStore

REDIS_URL = "redis://127.0.0.1:6379/0"
ACCOUNT = "trips"
CONFIG = {
    "accounts": {
        ACCOUNT: {
            "gateways": {
                # A limit that Settle corrects, and the response cache.
                "full": {
                    "limits": [
                        {
                            "scope": "user",
                            "kind": "total_tokens",
                            "limit": 1_000_000,
                            "window_s": 600,
                        }
                    ],
                    "cache": {"enabled": True},
                },
                # No limit and no cache unless set at runtime.
                "bare": {},
            }
        }
    }
}


class TripCounter:
    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[TripCounter]:
    counter = TripCounter()
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        counter.count += 1
        await original(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    yield counter


@pytest.fixture
def prefix() -> str:
    return f"trips-{uuid.uuid4().hex[:8]}"


async def _server(prefix: str) -> tuple[PolicyServer, grpc.aio.Channel]:
    settings = PolicySettings(port=0, redis_url=REDIS_URL, redis_prefix=prefix)
    server = PolicyServer(settings, parse_config(CONFIG, environ={}))
    port = await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


@pytest.fixture
async def channels(prefix: str) -> AsyncIterator[list[grpc.aio.Channel]]:
    """Channels to two policy processes on the same Redis keys."""
    started = [await _server(prefix), await _server(prefix)]
    yield [channel for _, channel in started]
    for server, channel in started:
        await channel.close()
        await server.stop()


@pytest.fixture
def replicas(
    channels: list[grpc.aio.Channel],
) -> list[policy_pb2_grpc.PolicyServiceStub]:
    return [policy_pb2_grpc.PolicyServiceStub(channel) for channel in channels]


@pytest.fixture
async def writer(prefix: str) -> AsyncIterator[RedisStore]:
    """A store of its own, as another policy replica's admin RPCs would use."""
    store = RedisStore(REDIS_URL, prefix=prefix, timeout_ms=1000)
    yield store
    await store.close()


def _check(gateway: str, user: str, body: bytes) -> policy_pb2.CheckRequest:
    return policy_pb2.CheckRequest(
        request_id=uuid.uuid4().hex,
        account_id=ACCOUNT,
        gateway_id=gateway,
        provider="anthropic",
        endpoint="/v1/messages",
        method="POST",
        model="claude-sonnet-4-5",
        body=body,
        body_bytes=len(body),
        body_sha256=hashlib.sha256(body).digest(),
        max_tokens=5,
        presented_key="sk-ant-trips",
        headers={"cf-aig-metadata": f'{{"user": "{user}"}}'},
    )


def _body(text: str) -> bytes:
    return (
        b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user",'
        b'"content":"' + text.encode() + b'"}]}'
    )


def _settle(reservation_id: str, tokens: int) -> policy_pb2.SettleRequest:
    return policy_pb2.SettleRequest(
        request_id=uuid.uuid4().hex,
        reservation_id=reservation_id,
        usage=policy_pb2.Usage(input_tokens=tokens, output_tokens=1),
        provider="anthropic",
        model="claude-sonnet-4-5",
        custom_cost_usd_micros=-1,
    )


async def test_check_and_settle_round_trips(
    replicas: list[policy_pb2_grpc.PolicyServiceStub], trips: TripCounter
) -> None:
    first, second = replicas
    # Warm up: scripts are loaded and the rules read once.
    await first.Check(_check("full", "ann", _body("warm")), timeout=5)
    await first.Check(_check("bare", "ann", _body("warm")), timeout=5)

    trips.count = 0
    full = await first.Check(_check("full", "ann", _body("one")), timeout=5)
    full_trips = trips.count
    trips.count = 0
    bare = await first.Check(_check("bare", "ann", _body("one")), timeout=5)
    bare_trips = trips.count
    trips.count = 0
    await first.Settle(_settle(full.reservation_id, 10), timeout=5)
    settle_trips = trips.count

    # The limit script and the cache lookup; only the version check without
    # a limit and a cache.
    assert (full_trips, bare_trips, settle_trips) == (2, 1, 1)
    assert full.cache.status == policy_pb2.CACHE_STATUS_MISS
    assert bare.cache.status == policy_pb2.CACHE_STATUS_BYPASS
    assert full.reservation_id

    # A Settle on a replica that did not admit the call reads the record first.
    other = await first.Check(_check("full", "ann", _body("two")), timeout=5)
    await second.Check(_check("full", "ann", _body("warm-2")), timeout=5)
    trips.count = 0
    await second.Settle(_settle(other.reservation_id, 20), timeout=5)
    assert trips.count == 2


async def test_settle_on_either_replica_counts_real_usage(
    channels: list[grpc.aio.Channel], replicas: list[policy_pb2_grpc.PolicyServiceStub]
) -> None:
    first, second = replicas
    admitted = [
        await first.Check(_check("full", "bob", _body(f"b{n}")), timeout=5)
        for n in range(3)
    ]
    await first.Settle(_settle(admitted[0].reservation_id, 100), timeout=5)
    await second.Settle(_settle(admitted[1].reservation_id, 200), timeout=5)
    # Settled twice: the second time finds no reservation left.
    await first.Settle(_settle(admitted[0].reservation_id, 999), timeout=5)
    await second.Settle(_settle(admitted[2].reservation_id, 300), timeout=5)

    admin = policy_pb2_grpc.PolicyAdminServiceStub(channels[0])
    status = await admin.GetLimitStatus(
        policy_pb2.GetLimitStatusRequest(
            account_id=ACCOUNT, gateway_id="full", user_id="bob"
        ),
        timeout=5,
    )
    (state,) = status.limits
    # input + output of each Settle, the reservations all replaced.
    assert state.limit - state.remaining == 101 + 201 + 301


async def test_rules_written_elsewhere_apply_to_next_check(
    replicas: list[policy_pb2_grpc.PolicyServiceStub], writer: RedisStore
) -> None:
    policy = replicas[0]
    first = await policy.Check(_check("bare", "cy", _body("x")), timeout=5)
    assert first.cache.status == policy_pb2.CACHE_STATUS_BYPASS
    assert not first.HasField("tightest_limit")

    limits = LimitStore(writer)
    await limits.set_limit(ACCOUNT, "bare", LimitSpec("user", "requests", 1, 600))
    limited = await policy.Check(_check("bare", "cy", _body("y")), timeout=5)
    assert limited.tightest_limit.name == "user:requests:600s"
    assert limited.tightest_limit.remaining == 0
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await policy.Check(_check("bare", "cy", _body("z")), timeout=5)
    assert denied.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    await limits.delete_limit(ACCOUNT, "bare", LimitSpec("user", "requests", 1, 600))
    await limits.set_loop_guard(ACCOUNT, "bare", "cy", LoopGuardSpec(1, 600))
    await policy.Check(_check("bare", "cy", _body("loop")), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as looped:
        await policy.Check(_check("bare", "cy", _body("loop")), timeout=5)
    assert "loop guard" in (looped.value.details() or "")

    await limits.set_loop_guard(ACCOUNT, "bare", "cy", None)
    await CacheRuleStore(writer).put(
        policy_pb2.CacheRule(
            scope=policy_pb2.Scope(account_id=ACCOUNT, gateway_id="bare"),
            enabled=True,
            ttl_s=60,
        )
    )
    cached = await policy.Check(_check("bare", "cy", _body("loop")), timeout=5)
    assert cached.cache.status == policy_pb2.CACHE_STATUS_MISS


async def test_cache_rule_disabled_elsewhere_applies_to_next_check(
    replicas: list[policy_pb2_grpc.PolicyServiceStub], writer: RedisStore
) -> None:
    policy = replicas[0]
    before = await policy.Check(_check("full", "dee", _body("c1")), timeout=5)
    assert before.cache.status == policy_pb2.CACHE_STATUS_MISS

    await CacheRuleStore(writer).put(
        policy_pb2.CacheRule(
            scope=policy_pb2.Scope(
                account_id=ACCOUNT, gateway_id="full", user_id="dee"
            ),
            enabled=False,
        )
    )
    after = await policy.Check(_check("full", "dee", _body("c2")), timeout=5)
    assert after.cache.status == policy_pb2.CACHE_STATUS_BYPASS
