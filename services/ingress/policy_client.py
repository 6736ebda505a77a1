"""The ingress side of PolicyService: one long-lived channel, calls under a deadline."""

from __future__ import annotations

import logging

import grpc

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc

logger = logging.getLogger(__name__)


class PolicyClient:
    def __init__(self, address: str, *, timeout_ms: int) -> None:
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self.stub = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.timeout_s = timeout_ms / 1000

    async def check(self, request: policy_pb2.CheckRequest) -> policy_pb2.CheckResponse:
        """Call Check; raises grpc.aio.AioRpcError on a denial or a failure."""
        return await self.stub.Check(request, timeout=self.timeout_s)

    async def settle(self, request: policy_pb2.SettleRequest) -> None:
        await self.stub.Settle(request, timeout=self.timeout_s * 4)

    async def store_cache_entry(
        self, request: policy_pb2.StoreCacheEntryRequest
    ) -> bool:
        response = await self.stub.StoreCacheEntry(request, timeout=self.timeout_s * 4)
        return response.stored

    async def wait_cache_entry(
        self, request: policy_pb2.WaitCacheEntryRequest
    ) -> policy_pb2.CacheDecision:
        timeout_s = request.wait_ms / 1000 + self.timeout_s
        response = await self.stub.WaitCacheEntry(request, timeout=timeout_s)
        return response.cache

    async def close(self) -> None:
        await self.channel.close()
