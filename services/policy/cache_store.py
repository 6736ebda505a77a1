"""Cache entries and in-flight locks in Redis.

An entry is one protobuf-serialized ``CachedResponse`` under
``{prefix}:{account/gateway}:cache:<key hash>``, written with a TTL. Its lock,
``<entry key>:lock``, marks a leader request that went upstream for it, with
the leader's request id as value. Both keys share the gateway's hash tag, so
the scripts below touch one slot on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from gateway.policy.v1 import policy_pb2
from services.policy.errors import StoreUnavailableError
from services.policy.rule_version import STALE, guard_lua
from services.policy.store import RedisStore

# KEYS: the entry, its lock, the gateway's rules version. ARGV: request id,
# lock ttl ms, the rules version the key was built with ("" to skip).
# GET the entry; without one, try to become the leader with SET NX PX.
# Returns {1, entry} for a hit, {2} for the leader, {3} for a waiter, or
# {9, version} without any change when the rules changed (see rule_version).
_LOOKUP = (
    guard_lua(3)
    + """
local entry = redis.call('GET', KEYS[1])
if entry then return {1, entry} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
"""
)
# Store the entry and free the lock if this request still holds it.
_STORE = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""
# Free the lock if this request still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# The entry, or 0 while the lock is held, or -1 when neither exists.
_PEEK = """
local entry = redis.call('GET', KEYS[1])
if entry then return entry end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return -1
"""

# NOTE: waiters poll Redis at this interval. A blocking command (BLPOP on a
# notification list) would hold one Redis connection per waiter, longer than
# the store's command timeout.
WAIT_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Lookup:
    """Result of a lookup: an entry, or whether this request leads the miss."""

    entry: policy_pb2.CachedResponse | None
    leader: bool
    # True when the rules changed since the key was built: nothing was done.
    stale: bool = False


def lock_key(entry_key: str) -> str:
    return entry_key + ":lock"


class CacheStore:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        client = store.client
        self._lookup = client.register_script(_LOOKUP)
        self._store = client.register_script(_STORE)
        self._release = client.register_script(_RELEASE)
        self._peek = client.register_script(_PEEK)

    def entry_key(self, account_id: str, gateway_id: str, key_hash: str) -> str:
        return self.store.key(account_id, gateway_id, "cache", key_hash)

    def owns(self, entry_key: str) -> bool:
        """Tell whether ``entry_key`` is an entry key of this deployment."""
        return entry_key.startswith(self.store.prefix + ":{") and ":cache:" in entry_key

    async def lookup(
        self,
        entry_key: str,
        request_id: str,
        lock_ttl_ms: int,
        *,
        version_key: str,
        version: str,
    ) -> Lookup:
        """Return the entry, or take the lock (leader) or not (waiter)."""
        try:
            result = await self._lookup(
                keys=[entry_key, lock_key(entry_key), version_key],
                args=[request_id, lock_ttl_ms, version],
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"cache lookup failed: {exc}") from exc
        if result[0] == STALE:
            return Lookup(None, leader=False, stale=True)
        if result[0] == 1:
            return Lookup(_parse_entry(result[1]), leader=False)
        return Lookup(None, leader=result[0] == 2)

    async def put(
        self,
        entry_key: str,
        request_id: str,
        response: policy_pb2.CachedResponse,
        ttl_s: int,
    ) -> None:
        try:
            await self._store(
                keys=[entry_key, lock_key(entry_key)],
                args=[response.SerializeToString(), ttl_s, request_id],
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(
                f"storing the cache entry failed: {exc}"
            ) from exc

    async def release(self, entry_key: str, request_id: str) -> bool:
        try:
            released = await self._release(
                keys=[lock_key(entry_key)], args=[request_id]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(
                f"releasing the cache lock failed: {exc}"
            ) from exc
        return bool(released)

    async def wait(
        self, entry_key: str, wait_ms: int
    ) -> policy_pb2.CachedResponse | None:
        """Wait for the leader's entry; None on timeout or when the lock is gone."""
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            try:
                result = await self._peek(keys=[entry_key, lock_key(entry_key)])
            except (RedisError, OSError) as exc:
                raise StoreUnavailableError(f"cache lookup failed: {exc}") from exc
            if isinstance(result, bytes):
                return _parse_entry(result)
            remaining_s = deadline - time.monotonic()
            if result == -1 or remaining_s <= 0:
                return None
            await asyncio.sleep(min(WAIT_POLL_S, remaining_s))


def _parse_entry(value: bytes) -> policy_pb2.CachedResponse:
    entry = policy_pb2.CachedResponse()
    entry.ParseFromString(value)
    return entry
