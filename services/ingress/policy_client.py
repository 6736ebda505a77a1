"""The ingress side of PolicyService: one long-lived channel, calls under a deadline.

Check and Settle go over one long-lived CheckStream (see
:mod:`services.ingress.policy_stream`) and fall back to the unary RPCs while
that stream is down.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services.ingress.policy_stream import PolicyStream, StreamDown

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
        self.stream = PolicyStream(
            self.stub, timeout_s=self.timeout_s, resend_settle=self._settle_unary
        )
        # Unary Settles of settles handed back by a broken stream.
        self._settle_tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Open the CheckStream (it reconnects by itself while the client lives)."""
        self.stream.start()

    async def check(self, request: policy_pb2.CheckRequest) -> policy_pb2.CheckResponse:
        """Check on the stream, or unary while the stream is down.

        Raises grpc.aio.AioRpcError on a denial or a failure, on both paths.
        """
        try:
            return await self.stream.check(request)
        except StreamDown:
            return await self.stub.Check(request, timeout=self.timeout_s)

    async def settle(self, request: policy_pb2.SettleRequest) -> None:
        if self.stream.settle(request):
            return
        await self.stub.Settle(request, timeout=self.timeout_s * 4)

    def _settle_unary(self, request: policy_pb2.SettleRequest) -> None:
        task = asyncio.create_task(self._settle_logged(request))
        self._settle_tasks.add(task)
        task.add_done_callback(self._settle_tasks.discard)

    async def _settle_logged(self, request: policy_pb2.SettleRequest) -> None:
        try:
            await self.stub.Settle(request, timeout=self.timeout_s * 4)
        except grpc.aio.AioRpcError as exc:
            logger.warning(
                "settle of %s failed: %s", request.reservation_id, exc.code().name
            )

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

    async def close(self, timeout_s: float = 2.0) -> None:
        await self.stream.close(timeout_s)
        if self._settle_tasks:
            await asyncio.wait(set(self._settle_tasks), timeout=timeout_s)
        await self.channel.close()
