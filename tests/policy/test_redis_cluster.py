"""The policy service on a real three-node Redis Cluster.

Every decision touches only keys of one gateway, which share a hash tag, so
the same code and scripts run on a cluster as on one server.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    nodes = RedisCluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture
async def policy(
    cluster: RedisCluster,
) -> AsyncIterator[policy_pb2_grpc.PolicyServiceStub]:
    config = parse_config(
        {"accounts": {"acme": {"gateways": {name: {} for name in GATEWAYS}}}},
        environ={},
    )
    settings = PolicySettings(
        port=0,
        redis_url=cluster.url,
        redis_prefix=f"cluster-{uuid.uuid4().hex[:6]}",
        redis_cluster=True,
    )
    server = PolicyServer(settings, config)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield policy_pb2_grpc.PolicyServiceStub(channel)
    await channel.close()
    await server.stop()


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
    for name in GATEWAYS:
        response = await policy.Check(
            policy_pb2.CheckRequest(
                request_id=uuid.uuid4().hex,
                account_id="acme",
                gateway_id=name,
                provider="anthropic",
                endpoint="/v1/messages",
                method="POST",
                model="claude-sonnet-4-5",
                body=b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[]}',
                presented_key="sk-ant-cluster",
                headers={"cf-aig-metadata": '{"user": "ann"}'},
            ),
            timeout=5,
        )

        assert response.identity.user_id == "ann"
