"""The gRPC servicers of the policy service and the server that hosts them."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services.common.config import GatewayConfig
from services.common.grpc_options import SERVER_KEEPALIVE_OPTIONS
from services.common.limit_config import load_gateway_limits
from services.common.logs import request_id_var
from services.common.metrics_http import MetricsServer, start_metrics_server
from services.common.pricing import load_price_table
from services.policy import provider_keys
from services.policy.admin import AdminTokenInterceptor, PolicyAdminServicer
from services.policy.cache import ResponseCache
from services.policy.cache_rules import load_gateway_cache_configs
from services.policy.check import PolicyContext, check
from services.policy.check_stream import CheckStreamHandler, error_status
from services.policy.errors import (
    PolicyError,
    StoreUnavailableError,
    status_code_for,
)
from services.policy.limit_decisions import LimitEngine
from services.policy.limit_store import LimitStore
from services.policy.metrics import MetricsInterceptor, PolicyMetrics
from services.policy.settings import PolicySettings
from services.policy.store import RedisStore

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    "gateway.policy.v1.PolicyService",
    "gateway.policy.v1.PolicyAdminService",
)


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self, ctx: PolicyContext, metrics: PolicyMetrics | None = None
    ) -> None:
        self.ctx = ctx
        self.metrics = metrics

    async def Check(
        self, request: policy_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.CheckResponse:
        request_id_var.set(request.request_id or "-")
        try:
            return await check(self.ctx, request)
        except PolicyError as exc:
            await context.abort_with_status(rpc_status.to_status(error_status(exc)))
            raise  # unreachable: abort raises

    async def Settle(
        self, request: policy_pb2.SettleRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.SettleResponse:
        request_id_var.set(request.request_id or "-")
        if self.ctx.limits is None or not request.reservation_id:
            return policy_pb2.SettleResponse()
        try:
            await self.ctx.limits.settle(request)
        except PolicyError as exc:
            await context.abort(status_code_for(exc), str(exc))
        return policy_pb2.SettleResponse()

    async def CheckStream(
        self,
        request_iterator: AsyncIterator[policy_pb2.CheckStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[policy_pb2.CheckStreamResponse]:
        handler = CheckStreamHandler(
            lambda request: check(self.ctx, request), self._settle, self.metrics
        )
        async for response in handler.serve(request_iterator):
            yield response

    async def _settle(self, request: policy_pb2.SettleRequest) -> None:
        if self.ctx.limits is not None and request.reservation_id:
            await self.ctx.limits.settle(request)

    async def StoreCacheEntry(
        self,
        request: policy_pb2.StoreCacheEntryRequest,
        context: grpc.aio.ServicerContext,
    ) -> policy_pb2.StoreCacheEntryResponse:
        request_id_var.set(request.request_id or "-")
        if self.ctx.cache is None:
            return policy_pb2.StoreCacheEntryResponse(stored=False)
        try:
            stored = await self.ctx.cache.store(request)
        except PolicyError as exc:
            await context.abort(status_code_for(exc), str(exc))
            raise  # unreachable: abort raises
        return policy_pb2.StoreCacheEntryResponse(stored=stored)

    async def WaitCacheEntry(
        self,
        request: policy_pb2.WaitCacheEntryRequest,
        context: grpc.aio.ServicerContext,
    ) -> policy_pb2.WaitCacheEntryResponse:
        request_id_var.set(request.request_id or "-")
        if self.ctx.cache is None:
            miss = policy_pb2.CacheDecision(status=policy_pb2.CACHE_STATUS_MISS)
            return policy_pb2.WaitCacheEntryResponse(cache=miss)
        try:
            decision = await self.ctx.cache.wait(request)
        except PolicyError as exc:
            await context.abort(status_code_for(exc), str(exc))
            raise  # unreachable: abort raises
        return policy_pb2.WaitCacheEntryResponse(cache=decision)


async def load_identity_secret(store: RedisStore, configured: str) -> bytes:
    """Return the identity HMAC key, shared by every policy replica.

    A configured secret wins. Otherwise the first replica to start stores a
    random one in Redis and every later replica reads it back.
    """
    if configured:
        return configured.encode()
    key = store.global_key("identity-secret")
    await store.client.set(key, secrets.token_hex(32), nx=True)
    value = await store.client.get(key)
    if not isinstance(value, bytes):
        raise StoreUnavailableError("Redis returned no identity secret")
    return value


class PolicyServer:
    """The grpc.aio server with its Redis store, started and stopped together."""

    def __init__(self, settings: PolicySettings, config: GatewayConfig) -> None:
        self.settings = settings
        self.config = config
        self.store = RedisStore(
            settings.redis_url,
            prefix=settings.redis_prefix,
            timeout_ms=settings.redis_timeout_ms,
            cluster=settings.redis_cluster,
        )
        self.health = health.aio.HealthServicer()
        self.metrics = PolicyMetrics()
        self.metrics_server: MetricsServer | None = None
        interceptors: list[grpc.aio.ServerInterceptor] = [
            MetricsInterceptor(self.metrics)
        ]
        if settings.admin_token:
            interceptors.append(AdminTokenInterceptor(settings.admin_token))
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 64 << 20),
                *SERVER_KEEPALIVE_OPTIONS,
            ],
        )
        self.port = 0
        # Validated here, so that a bad cache table stops the service at once.
        self.cache_configs = load_gateway_cache_configs(config)

    async def start(self) -> int:
        await self.store.ping()
        identity_secret = await load_identity_secret(
            self.store, self.settings.identity_secret
        )
        limit_engine = LimitEngine(
            LimitStore(self.store),
            load_gateway_limits(self.config),
            load_price_table(),
            lease_ms=self.settings.concurrency_lease_s * 1000,
        )
        cache = ResponseCache(self.store, self.cache_configs)
        cipher = provider_keys.cipher_from_env(self.settings.key_encryption_key)
        await provider_keys.check_cipher_at_start(self.store, cipher)
        ctx = PolicyContext(
            self.config,
            self.store,
            identity_secret,
            limits=limit_engine,
            cache=cache,
            provider_key_cipher=cipher,
        )
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(
            PolicyServicer(ctx, self.metrics), self.server
        )
        policy_pb2_grpc.add_PolicyAdminServiceServicer_to_server(
            PolicyAdminServicer(ctx), self.server
        )
        if not self.settings.admin_token:
            logger.warning(
                "TOLLGATE_ADMIN_TOKEN is not set: admin RPCs are open to anyone "
                "who can reach this port"
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise PolicyError(
                f"cannot listen on {address}: the port is in use or not allowed; "
                "set TOLLGATE_POLICY_PORT to a free port"
            ) from exc
        await self.server.start()
        if self.settings.metrics_port:
            self.metrics_server = start_metrics_server(
                self.metrics.registry, self.settings.host, self.settings.metrics_port
            )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("policy service listening on %s:%d", self.settings.host, self.port)
        return self.port

    async def stop(self) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(self.settings.shutdown_grace_s)
        await self.store.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        logger.info("policy service stopped")
