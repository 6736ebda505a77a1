"""The in-process limiter the ingress applies while calls are admitted fail-open.

When the policy service or Redis is down, each ingress replica enforces the
gateway's request limits from the configuration file with a local token
bucket per gateway and per user. The bound is rough: each replica counts on
its own, so N replicas admit up to N times the limit, and runtime limits set
through the admin RPCs are not known here.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from gateway.policy.v1 import policy_pb2
from services.common.limit_config import GatewayLimits

# Maximum buckets kept. Reaching it drops them all (a refill), to bound memory.
MAX_BUCKETS = 100_000


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated_s: float


def fallback_user(request: policy_pb2.CheckRequest) -> str:
    """Return a user key without the policy: the metadata user, else a key hash."""
    header = request.headers.get("cf-aig-metadata", "")
    if header:
        try:
            value = orjson.loads(header)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("user"), str):
            return "meta:" + value["user"]
    if request.presented_key:
        digest = hashlib.sha256(request.presented_key.encode()).hexdigest()
        return "key:" + digest[:16]
    return "anonymous"


class LocalLimiter:
    def __init__(self, gateway_limits: Mapping[tuple[str, str], GatewayLimits]) -> None:
        self.gateway_limits = gateway_limits
        self.buckets: dict[tuple[str, ...], Bucket] = {}

    def admit(self, request: policy_pb2.CheckRequest) -> int:
        """Take a request from each applicable bucket; return 0 or seconds to wait."""
        configured = self.gateway_limits.get((request.account_id, request.gateway_id))
        if configured is None:
            return 0
        user = fallback_user(request)
        now = time.monotonic()
        chosen = []
        for spec in configured.limits:
            if spec.kind != "requests" or spec.scope not in ("gateway", "user"):
                continue
            named = "meta:" + spec.subject
            if spec.scope == "user" and spec.subject and named != user:
                continue
            subject = "-" if spec.scope == "gateway" else user
            key: tuple[str, ...] = (
                request.account_id,
                request.gateway_id,
                spec.scope,
                subject,
                str(spec.window_s),
            )
            chosen.append((key, spec.limit, spec.window_s))

        wait_s = 0.0
        for key, limit, window_s in chosen:
            bucket = self._refill(key, limit, window_s, now)
            if bucket.tokens < 1:
                wait_s = max(wait_s, (1 - bucket.tokens) * window_s / limit)
        if wait_s > 0:
            return math.ceil(wait_s)
        for key, _, _ in chosen:
            self.buckets[key].tokens -= 1
        return 0

    def _refill(
        self, key: tuple[str, ...], limit: int, window_s: int, now: float
    ) -> Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self.buckets.clear()
            bucket = self.buckets[key] = Bucket(float(limit), now)
            return bucket
        rate = limit / window_s
        bucket.tokens = min(
            float(limit), bucket.tokens + (now - bucket.updated_s) * rate
        )
        bucket.updated_s = now
        return bucket
