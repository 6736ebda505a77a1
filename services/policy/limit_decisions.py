"""Admission and settlement of limits: the glue between Check, Settle and Redis.

One Check makes one Redis round trip for limits: one run of the check script
over every applicable limit at once (all or nothing). The runtime limits and
loop-guard overrides it applies are kept in the process and checked against
the gateway's rules version inside that script (``rule_version``). They are
read again (one more trip) only when they changed or are older than a second.

Settle makes one round trip when it reaches the process that admitted the
call (the usual case: Check and Settle share the ingress's stream): the
process remembers each reservation's metadata, so it knows the record's keys
without reading it, and the settle script reads the reserved amounts and
checks that metadata against the record. Otherwise (another replica, or the
process restarted) it reads the record's metadata first.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway.policy.v1 import policy_pb2
from services.common.limit_config import GatewayLimits, LimitSpec
from services.common.pricing import ModelPrice, PriceTable, cost_usd_micros
from services.policy import limits
from services.policy.errors import InvalidRequestError, LimitExceededError
from services.policy.limit_store import (
    Admitted,
    LimitRules,
    LimitStore,
    ScriptLimit,
    Stale,
)
from services.policy.rule_version import ANY_VERSION, STALE_RETRIES

logger = logging.getLogger(__name__)

# Minimum seconds between two log lines about the same unpriced model.
UNPRICED_LOG_INTERVAL_S = 60.0
# A reservation record outlives its longest window by this much.
RECORD_GRACE_MS = 60_000
# Reservations whose metadata the process remembers for a one-trip Settle.
# NOTE: a reservation never settled (its Settle was lost) stays remembered
# until it is among the oldest past this count (about 300 bytes each, an
# estimate).
PENDING_RESERVATIONS_MAX = 65_536
SETTLED = 1
SETTLE_MISMATCH = 2


@dataclass(frozen=True, slots=True)
class Admission:
    tightest_limit: policy_pb2.LimitState | None = None
    reservation_id: str = ""
    # The gateway's rules version the check script found current; None when
    # the script ran without the check.
    rules_version: str | None = None


def _script_limit(applied: limits.AppliedLimit, amount: int) -> ScriptLimit:
    spec = applied.spec
    return ScriptLimit(
        key_parts=applied.key_parts,
        concurrent=spec.kind == "concurrent",
        limit=spec.limit,
        window_ms=spec.window_s * 1000,
        amount=amount,
        capped=spec.kind in limits.CAPPED_KINDS,
    )


def _needs_settle(kind: str) -> bool:
    return kind != "requests"


class LimitEngine:
    """Decides limits for Check, settles them for Settle, reports their status."""

    def __init__(
        self,
        store: LimitStore,
        gateway_limits: Mapping[tuple[str, str], GatewayLimits],
        prices: PriceTable,
        *,
        lease_ms: int,
    ) -> None:
        self.store = store
        self.gateway_limits = gateway_limits
        self.prices = prices
        self.fallback_price = prices.max_price()
        self.lease_ms = lease_ms
        self._unpriced_logged: dict[tuple[str, str], float] = {}
        # Reservation token -> the metadata its record holds.
        self._pending: OrderedDict[str, bytes] = OrderedDict()

    def price_of(self, provider: str, model: str) -> ModelPrice:
        """Return the model's price, or the table's highest prices for an unknown one.

        An unknown model is never free: spend limits charge it at the highest
        input, output and cache prices in the table, which errs towards
        stopping a budget early rather than late.
        """
        price = self.prices.lookup(provider, model)
        if price is not None:
            return price
        now = time.monotonic()
        last = self._unpriced_logged.get((provider, model), -UNPRICED_LOG_INTERVAL_S)
        if now - last >= UNPRICED_LOG_INTERVAL_S:
            self._unpriced_logged[(provider, model)] = now
            logger.warning(
                "no price for %s model %r; spend limits charge the highest "
                "prices in the table",
                provider,
                model,
            )
        return self.fallback_price

    async def admit(
        self, request: policy_pb2.CheckRequest, caller: policy_pb2.Identity
    ) -> Admission:
        """Apply every limit and the loop guard to one call, consuming on admission.

        Raises LimitExceededError naming the limit that denied the call, and
        StoreUnavailableError when Redis fails.
        """
        token = uuid.uuid4().hex
        version = None
        for attempt in range(STALE_RETRIES + 1):
            rules = await self.store.read_rules(
                request.account_id,
                request.gateway_id,
                caller.user_id,
                fresh=version is not None,
            )
            version = rules.version if attempt < STALE_RETRIES else ANY_VERSION
            admission = await self._admit(request, caller, rules, token, version)
            if admission is not None:
                return admission
        raise AssertionError("the check script ignores the version when it is empty")

    async def _admit(
        self,
        request: policy_pb2.CheckRequest,
        caller: policy_pb2.Identity,
        rules: LimitRules,
        token: str,
        version: str,
    ) -> Admission | None:
        """Run the check script once; None when the rules changed meanwhile."""
        account_id, gateway_id = request.account_id, request.gateway_id
        configured = self.gateway_limits.get(
            (account_id, gateway_id), GatewayLimits((), None)
        )
        specs = limits.merge_limits(configured.limits, rules.limits)
        applied = limits.select_limits(specs, caller)
        guard = rules.guard or configured.loop_guard

        estimate = limits.estimate_tokens(request.max_tokens, request.body_bytes)
        cost = 0
        if any(item.spec.kind == "spend" for item in applied):
            price = self.price_of(request.provider, request.model)
            cost = limits.estimate_cost(estimate, price)
        script_limits = [
            _script_limit(
                item, limits.reservation_amount(item.spec.kind, estimate, cost)
            )
            for item in applied
        ]
        if guard is not None:
            script_limits.append(
                ScriptLimit(
                    key_parts=limits.loop_guard_key_parts(
                        caller, request.endpoint, request.body_sha256
                    ),
                    concurrent=False,
                    limit=guard.max_repeats,
                    window_ms=guard.window_s * 1000,
                    amount=1,
                    capped=False,
                )
            )

        settled = [
            [index, item.spec.kind, list(item.key_parts), item.spec.window_s * 1000]
            for index, item in enumerate(applied)
            if _needs_settle(item.spec.kind)
        ]
        record_ttl_ms = 0
        if settled:
            longest_ms = max(item.spec.window_s for item in applied) * 1000
            record_ttl_ms = max(longest_ms, self.lease_ms) + RECORD_GRACE_MS
        meta = orjson.dumps({"l": settled, "p": request.provider, "m": request.model})
        # Without any limit the script only checks that the rules are current.
        result = await self.store.evaluate(
            account_id,
            gateway_id,
            token,
            script_limits,
            dry=False,
            lease_ms=self.lease_ms,
            record_ttl_ms=record_ttl_ms,
            version=version,
            meta=meta,
        )
        if isinstance(result, Stale):
            return None
        if not isinstance(result, Admitted):
            raise self._denial(result.index, result.retry_after_ms, applied, guard)
        confirmed = version or None
        if not script_limits:
            return Admission(rules_version=confirmed)
        if settled:
            self._remember(token, meta)

        uses = [
            limits.LimitUse(item, result.used[index], result.reset_ms[index])
            for index, item in enumerate(applied)
        ]
        tightest = limits.tightest(uses)
        return Admission(
            tightest_limit=limits.limit_state(tightest) if tightest else None,
            reservation_id=f"{account_id}/{gateway_id}/{token}" if settled else "",
            rules_version=confirmed,
        )

    def _remember(self, token: str, meta: bytes) -> None:
        pending = self._pending
        while len(pending) >= PENDING_RESERVATIONS_MAX:
            pending.popitem(last=False)
        pending[token] = meta

    def _denial(
        self,
        index: int,
        retry_after_ms: int,
        applied: list[limits.AppliedLimit],
        guard: object,
    ) -> LimitExceededError:
        retry_after_s = max(-(-retry_after_ms // 1000), 1)
        if index >= len(applied):
            assert guard is not None
            name, kind = limits.LOOP_GUARD_NAME, "loop_guard"
            limit = getattr(guard, "max_repeats", 0)
        else:
            spec = applied[index].spec
            name, kind, limit = applied[index].name, spec.kind, spec.limit
        message = limits.denial_message(name, kind, limit, retry_after_s)
        return LimitExceededError(
            message, name=name, kind=kind, limit=limit, retry_after_s=retry_after_s
        )

    async def settle(self, request: policy_pb2.SettleRequest) -> bool:
        """Replace a call's reservations with its real usage; False if none is left."""
        parts = request.reservation_id.split("/")
        if len(parts) != 3 or not all(parts):
            raise InvalidRequestError(
                f"invalid reservation_id {request.reservation_id!r}: expected "
                "account/gateway/id as Check returned it"
            )
        account_id, gateway_id, token = parts
        meta_bytes = self._pending.pop(token, None)
        if meta_bytes is not None:
            outcome = await self._settle(
                request, account_id, gateway_id, token, meta_bytes
            )
            if outcome != SETTLE_MISMATCH:
                return outcome == SETTLED
        key = self.store.reservation_key(account_id, gateway_id, token)
        meta_bytes = await self.store.read_reservation_meta(key)
        if meta_bytes is None:
            return False
        outcome = await self._settle(request, account_id, gateway_id, token, meta_bytes)
        return outcome == SETTLED

    async def _settle(
        self,
        request: policy_pb2.SettleRequest,
        account_id: str,
        gateway_id: str,
        token: str,
        meta_bytes: bytes,
    ) -> int:
        meta = orjson.loads(meta_bytes)
        usage = self._usage(request, meta.get("p", ""), meta.get("m", ""))
        entries = []
        for index, kind, key_parts, window_ms in meta["l"]:
            limit = ScriptLimit(
                key_parts=tuple(key_parts),
                concurrent=kind == "concurrent",
                limit=0,
                window_ms=int(window_ms),
                amount=0,
                capped=False,
            )
            entries.append((limit, index, limits.settled_amount(kind, usage)))
        return await self.store.settle(
            account_id, gateway_id, token, meta_bytes, entries
        )

    def _usage(
        self, request: policy_pb2.SettleRequest, provider: str, model: str
    ) -> limits.SettledUsage:
        usage = request.usage
        if request.custom_cost_usd_micros >= 0:
            cost = request.custom_cost_usd_micros
        else:
            price = self.price_of(request.provider or provider, request.model or model)
            cost = cost_usd_micros(
                price,
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_tokens,
                usage.cache_write_tokens,
            )
        return limits.SettledUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost_usd_micros=cost,
        )

    async def status(
        self, account_id: str, gateway_id: str, caller: policy_pb2.Identity
    ) -> list[policy_pb2.LimitState]:
        """Report each limit that applies to ``caller`` without consuming any."""
        configured = self.gateway_limits.get(
            (account_id, gateway_id), GatewayLimits((), None)
        )
        rules = await self.store.read_rules(
            account_id, gateway_id, caller.user_id, fresh=True
        )
        applied = limits.select_limits(
            limits.merge_limits(configured.limits, rules.limits), caller
        )
        if not applied:
            return []
        # The rules were just read: the report needs no version check.
        result = await self.store.evaluate(
            account_id,
            gateway_id,
            uuid.uuid4().hex,
            [_script_limit(item, 0) for item in applied],
            dry=True,
            lease_ms=self.lease_ms,
            record_ttl_ms=0,
            version=ANY_VERSION,
        )
        assert isinstance(result, Admitted)
        return [
            limits.limit_state(
                limits.LimitUse(item, result.used[index], result.reset_ms[index])
            )
            for index, item in enumerate(applied)
        ]

    def all_limits(self, account_id: str, gateway_id: str) -> tuple[LimitSpec, ...]:
        configured = self.gateway_limits.get((account_id, gateway_id))
        return configured.limits if configured else ()


def rich_status(error: LimitExceededError) -> status_pb2.Status:
    """Build the google.rpc.Status of a denial: QuotaFailure plus RetryInfo."""
    violation = error_details_pb2.QuotaFailure.Violation(
        subject=error.name,
        description=str(error),
        quota_metric=error.kind,
        quota_id=error.name,
        quota_value=error.limit,
    )
    quota = any_pb2.Any()
    quota.Pack(error_details_pb2.QuotaFailure(violations=[violation]))
    retry = any_pb2.Any()
    retry.Pack(
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=error.retry_after_s)
        )
    )
    return status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message=str(error), details=[quota, retry]
    )
