"""The response cache of the policy service: lookup, store and wait.

``ResponseCache.decide`` runs inside Check once the caller is known. A Redis
failure degrades the decision to BYPASS, because the cache only saves work
and must not fail a call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from gateway.policy.v1 import policy_pb2
from services.policy import cache_key
from services.policy.cache_controls import CacheControls, parse_cache_controls
from services.policy.cache_rules import (
    CacheRuleStore,
    GatewayCacheConfig,
    effective_rule,
)
from services.policy.cache_store import CacheStore
from services.policy.errors import InvalidRequestError, StoreUnavailableError
from services.policy.rule_version import ANY_VERSION, STALE_RETRIES
from services.policy.store import RedisStore

logger = logging.getLogger(__name__)

CACHEABLE_METHODS = frozenset({"GET", "POST"})
BYPASS = policy_pb2.CacheDecision(status=policy_pb2.CACHE_STATUS_BYPASS)


class ResponseCache:
    def __init__(
        self,
        store: RedisStore,
        configs: Mapping[tuple[str, str], GatewayCacheConfig],
    ) -> None:
        self.configs = configs
        self.rules = CacheRuleStore(store)
        self.entries = CacheStore(store)

    def gateway_config(self, account_id: str, gateway_id: str) -> GatewayCacheConfig:
        return self.configs.get((account_id, gateway_id), GatewayCacheConfig())

    async def decide(
        self,
        request: policy_pb2.CheckRequest,
        identity: policy_pb2.Identity,
        current_version: str | None = None,
    ) -> policy_pb2.CacheDecision:
        """Return HIT, MISS or BYPASS; raises InvalidRequestError for bad headers.

        ``current_version`` is the gateway's rules version if this Check
        already confirmed it in Redis (the limit check script does): rules
        kept at that version need no check when no lookup runs.
        """
        controls = parse_cache_controls(request.headers)
        if controls.skip or request.method.upper() not in CACHEABLE_METHODS:
            return BYPASS

        for attempt in range(STALE_RETRIES + 1):
            try:
                version, rules, cached = await self.rules.applicable_versioned(
                    request.account_id,
                    request.gateway_id,
                    identity.team_id,
                    identity.user_id,
                    fresh=attempt > 0,
                )
                if attempt == STALE_RETRIES:
                    version = ANY_VERSION
                # Rules from the process's cache that this Check has not
                # confirmed must not decide a BYPASS alone: only the lookup
                # script checks their version.
                confirmed = not cached or version == current_version
                decision = await self._decide(
                    request, identity, controls, rules, version, confirmed
                )
            except StoreUnavailableError as exc:
                logger.warning("cache bypassed: %s", exc)
                return BYPASS
            if decision is not None:
                return decision
            self.rules.forget(request.account_id, request.gateway_id)
        raise AssertionError("the lookup script ignores the version when it is empty")

    async def _decide(
        self,
        request: policy_pb2.CheckRequest,
        identity: policy_pb2.Identity,
        controls: CacheControls,
        rules: list[policy_pb2.CacheRule | None],
        version: str,
        confirmed: bool,
    ) -> policy_pb2.CacheDecision | None:
        """Look the call up once; None when the rules may have changed meanwhile."""
        gateway = self.gateway_config(request.account_id, request.gateway_id)
        rule = effective_rule(gateway.defaults, rules)
        if not rule.enabled:
            return BYPASS if confirmed else None

        scope = (
            cache_key.SHARED_SCOPE
            if rule.shared
            else cache_key.user_scope(identity.user_id)
        )
        key_hash = cache_key.cache_key_hash(
            provider=request.provider,
            method=request.method,
            endpoint=request.endpoint,
            body=cache_key.body_part(
                request.body, rule.ignore_fields, controls.custom_key
            ),
            headers=request.headers,
            stream=request.stream,
            scope=scope,
        )
        entry_key = self.entries.entry_key(
            request.account_id, request.gateway_id, key_hash
        )
        lookup = await self.entries.lookup(
            entry_key,
            request.request_id,
            gateway.lock_ttl_ms,
            version_key=self.rules.version_key(request.account_id, request.gateway_id),
            version=version,
        )
        if lookup.stale:
            return None
        if lookup.entry is not None:
            return policy_pb2.CacheDecision(
                status=policy_pb2.CACHE_STATUS_HIT, key=entry_key, response=lookup.entry
            )
        return policy_pb2.CacheDecision(
            status=policy_pb2.CACHE_STATUS_MISS,
            key=entry_key,
            ttl_s=controls.ttl_s or rule.ttl_s,
            max_entry_bytes=rule.max_entry_bytes,
            leader=lookup.leader,
            wait_ms=0 if lookup.leader else gateway.lock_wait_ms,
        )

    async def store(self, request: policy_pb2.StoreCacheEntryRequest) -> bool:
        """Store the leader's entry, or only release its lock; raises PolicyError."""
        if not self.entries.owns(request.key):
            raise InvalidRequestError(f"invalid cache key {request.key!r}")
        if request.release_only:
            await self.entries.release(request.key, request.request_id)
            return False
        if request.ttl_s <= 0:
            raise InvalidRequestError(f"invalid ttl_s {request.ttl_s}: must be > 0")
        response = policy_pb2.CachedResponse()
        response.CopyFrom(request.response)
        if not response.stored_at_ms:
            response.stored_at_ms = time.time_ns() // 1_000_000
        await self.entries.put(request.key, request.request_id, response, request.ttl_s)
        return True

    async def wait(
        self, request: policy_pb2.WaitCacheEntryRequest
    ) -> policy_pb2.CacheDecision:
        """Wait for a leader's entry; a MISS after the wait is never a leader."""
        if not self.entries.owns(request.key):
            raise InvalidRequestError(f"invalid cache key {request.key!r}")
        miss = policy_pb2.CacheDecision(
            status=policy_pb2.CACHE_STATUS_MISS, key=request.key
        )
        try:
            entry = await self.entries.wait(request.key, max(request.wait_ms, 0))
        except StoreUnavailableError as exc:
            logger.warning("waiting for a cache entry failed: %s", exc)
            return miss
        if entry is None:
            return miss
        return policy_pb2.CacheDecision(
            status=policy_pb2.CACHE_STATUS_HIT, key=request.key, response=entry
        )
