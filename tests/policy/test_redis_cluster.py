"""The policy service on a real three-node Redis Cluster.

Every decision touches only keys of one gateway, which share a hash tag, so
the same code and scripts run on a cluster as on one server. The gateways
have limits, a loop guard and the cache on, so that the limit, settle, rules
and cache scripts all run on the cluster, where Redis refuses a script whose
keys span slots or belong to another node.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services.common.config import parse_config
from services.policy.server import PolicyServer
from services.policy.settings import PolicySettings
from tests.support.redis_cluster import RedisCluster

pytestmark = pytest.mark.skipif(
    not RedisCluster.available(), reason="redis-server and redis-cli are required"
)

GATEWAYS = ("alpha", "beta", "gamma", "delta")
GATEWAY_CONFIG = {
    "limits": [
        {"scope": "user", "kind": "total_tokens", "limit": 100_000, "window_s": 600},
        {"scope": "user", "kind": "concurrent", "limit": 4},
    ],
    "loop_guard": {"max_repeats": 100, "window_s": 60},
    "cache": {"enabled": True},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    nodes = RedisCluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture
async def channel(cluster: RedisCluster) -> AsyncIterator[grpc.aio.Channel]:
    gateways = {name: GATEWAY_CONFIG for name in GATEWAYS}
    config = parse_config({"accounts": {"acme": {"gateways": gateways}}}, environ={})
    settings = PolicySettings(
        port=0,
        redis_url=cluster.url,
        redis_prefix=f"cluster-{uuid.uuid4().hex[:6]}",
        redis_cluster=True,
    )
    server = PolicyServer(settings, config)
    port = await server.start()
    opened = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield opened
    await opened.close()
    await server.stop()


@pytest.fixture
def policy(channel: grpc.aio.Channel) -> policy_pb2_grpc.PolicyServiceStub:
    return policy_pb2_grpc.PolicyServiceStub(channel)


def _check(gateway: str, user: str, body: bytes) -> policy_pb2.CheckRequest:
    return policy_pb2.CheckRequest(
        request_id=uuid.uuid4().hex,
        account_id="acme",
        gateway_id=gateway,
        provider="anthropic",
        endpoint="/v1/messages",
        method="POST",
        model="claude-sonnet-4-5",
        body=body,
        body_bytes=len(body),
        body_sha256=hashlib.sha256(body).digest(),
        max_tokens=5,
        presented_key="sk-ant-cluster",
        headers={"cf-aig-metadata": f'{{"user": "{user}"}}'},
    )


def test_gateway_keys_share_one_slot_each() -> None:
    from redis.crc import key_slot

    from services.policy.store import RedisStore

    store = RedisStore("redis://127.0.0.1:1/0", prefix="tg", timeout_ms=100)
    slots = {
        name: {
            key_slot(store.key("acme", name, kind).encode())
            for kind in ("cache:x", "limit:requests:60", "loop:abc")
        }
        for name in GATEWAYS
    }

    assert all(len(gateway_slots) == 1 for gateway_slots in slots.values())
    assert len({next(iter(s)) for s in slots.values()}) > 1


async def test_check_runs_on_cluster_for_every_gateway(
    policy: policy_pb2_grpc.PolicyServiceStub,
) -> None:
    body = b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[]}'
    for name in GATEWAYS:
        response = await policy.Check(_check(name, "ann", body), timeout=5)

        assert response.identity.user_id == "ann"
        assert response.reservation_id
        assert response.tightest_limit.name
        assert response.cache.status == policy_pb2.CACHE_STATUS_MISS


async def test_limits_settle_and_rules_run_on_cluster(
    channel: grpc.aio.Channel,
) -> None:
    policy = policy_pb2_grpc.PolicyServiceStub(channel)
    admin = policy_pb2_grpc.PolicyAdminServiceStub(channel)
    for name in GATEWAYS:
        admitted = await policy.Check(_check(name, "bo", b'{"n": 1}'), timeout=5)
        await policy.Settle(
            policy_pb2.SettleRequest(
                request_id=uuid.uuid4().hex,
                reservation_id=admitted.reservation_id,
                usage=policy_pb2.Usage(input_tokens=40, output_tokens=2),
                provider="anthropic",
                model="claude-sonnet-4-5",
                custom_cost_usd_micros=-1,
            ),
            timeout=5,
        )
        status = await admin.GetLimitStatus(
            policy_pb2.GetLimitStatusRequest(
                account_id="acme", gateway_id=name, user_id="bo"
            ),
            timeout=5,
        )
        used = {state.name: state.limit - state.remaining for state in status.limits}
        # The reservation was replaced by the real tokens, the slot released.
        assert used == {"user:total_tokens:600s": 42, "user:concurrent": 0}

        # Rules written at runtime (a rules script on the cluster) apply to
        # the next Check, checked inside the limit script.
        await admin.SetLimit(
            policy_pb2.SetLimitRequest(
                limit=policy_pb2.Limit(
                    scope=policy_pb2.Scope(
                        account_id="acme", gateway_id=name, user_id="bo"
                    ),
                    kind=policy_pb2.LIMIT_KIND_TOTAL_TOKENS,
                    limit=42,
                    window_s=600,
                    applies_to="user",
                )
            ),
            timeout=5,
        )
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await policy.Check(_check(name, "bo", b'{"n": 2}'), timeout=5)
        assert denied.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        await admin.SetLoopGuard(
            policy_pb2.SetLoopGuardRequest(
                account_id="acme",
                gateway_id=name,
                user_id="cy",
                max_repeats=1,
                window_s=60,
            ),
            timeout=5,
        )
        await policy.Check(_check(name, "cy", b'{"n": 3}'), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as looped:
            await policy.Check(_check(name, "cy", b'{"n": 3}'), timeout=5)
        assert "loop guard" in (looped.value.details() or "")
