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

# Redis connections per policy process; redis-py's own default is 100 and
# raises MaxConnectionsError past it.
DEFAULT_MAX_CONNECTIONS = 256


class RedisStore:
    """One pooled Redis client plus the key builder every feature uses."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_ms: int,
        cluster: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        timeout_s = timeout_ms / 1000
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
        }
        # RedisCluster speaks the same commands; the hash tag in every key
        # keeps the keys of one decision in one slot.
        self.client: redis.Redis | redis.RedisCluster
        if cluster:
            self.client = redis.RedisCluster.from_url(
                url, max_connections=max_connections, **options
            )
        else:
            # A burst past the pool size waits for a free connection (up to
            # the command timeout) instead of failing, which would admit the
            # call by the fail mode and skip its limits.
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout_s,
                health_check_interval=10,
                **options,
            )
            self.client = redis.Redis.from_pool(pool)
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
