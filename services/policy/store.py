"""The Redis connection of the policy service and its key layout.

Keys are ``{prefix}:{<account>/<gateway>}:<kind>:...``. The part in braces
is a Redis Cluster hash tag, so every key of one gateway sits in one slot and
a Lua script may touch any of them on a cluster unchanged.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from services.policy.errors import StoreUnavailableError


class RedisStore:
    """One pooled Redis client plus the key builder every feature uses."""

    def __init__(
        self, url: str, *, prefix: str, timeout_ms: int, cluster: bool = False
    ) -> None:
        timeout_s = timeout_ms / 1000
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
        }
        # RedisCluster speaks the same commands; the hash tag in every key
        # keeps the keys of one decision in one slot.
        self.client: redis.Redis | redis.RedisCluster = (
            redis.RedisCluster.from_url(url, **options)
            if cluster
            else redis.Redis.from_url(url, health_check_interval=10, **options)
        )
        self.prefix = prefix

    def key(self, account_id: str, gateway_id: str, *parts: str) -> str:
        """Build a key in the gateway's hash slot."""
        return ":".join((self.prefix, f"{{{account_id}/{gateway_id}}}", *parts))

    def global_key(self, *parts: str) -> str:
        """Build a key that belongs to no gateway (for example gateway keys)."""
        return ":".join((self.prefix, "global", *parts))

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"Redis is unavailable: {exc}") from exc

    async def close(self) -> None:
        await self.client.aclose()
