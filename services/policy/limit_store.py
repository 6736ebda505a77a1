"""The Redis side of limits: the scripts, runtime limits and loop-guard overrides.

Keys, all inside the gateway's hash tag ``{prefix}:{<account>/<gateway>}``:

- ``lim:<scope>:<subject>:<kind>:<window_s>`` and ``...:sum``: a window log;
- ``lim:<scope>:<subject>:concurrent:0``: the lease set of a concurrency limit;
- ``loop:<user>:<digest>`` and ``...:sum``: the loop guard's log of one body;
- ``res:<id>``: a reservation awaiting Settle;
- ``limits``: runtime limits, a hash of ``scope|subject|kind|window_s`` to
  the limit;
- ``loop-guard``: per-user loop-guard overrides, a hash of user id to
  ``max_repeats/window_s``;
- ``rules-version``: incremented with every write of either hash (see
  ``rule_version``), so that the rules read per Check can be kept in the
  process and checked inside the check script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from services.common.limit_config import LimitSpec, LoopGuardSpec
from services.policy.errors import StoreUnavailableError
from services.policy.limit_scripts import CHECK, READ_LIMIT_RULES, SETTLE
from services.policy.rule_version import (
    HDEL_BUMP,
    HSET_BUMP,
    MAX_CACHED_FIELDS,
    STALE,
    VERSION_PART,
    RuleCache,
    decode_version,
)
from services.policy.store import RedisStore


@dataclass(frozen=True, slots=True)
class ScriptLimit:
    """One limit in the form the check script takes it."""

    # Key parts after the gateway's hash tag.
    key_parts: tuple[str, ...]
    concurrent: bool
    limit: int
    window_ms: int
    amount: int
    capped: bool


@dataclass(frozen=True, slots=True)
class Admitted:
    # Per limit: used after the decision, ms until the window frees capacity,
    # and the amount reserved.
    used: list[int]
    reset_ms: list[int]
    amounts: list[int]


@dataclass(frozen=True, slots=True)
class Denied:
    index: int
    retry_after_ms: int
    used: int


@dataclass(frozen=True, slots=True)
class Stale:
    """The rules changed after they were read; nothing was consumed."""

    version: str


@dataclass(frozen=True, slots=True)
class LimitRules:
    """A gateway's runtime limits and the caller's loop-guard override."""

    version: str
    limits: list[LimitSpec]
    guard: LoopGuardSpec | None


@dataclass(frozen=True, slots=True)
class _GatewayRules:
    limits: list[LimitSpec]
    guards: dict[str, LoopGuardSpec]


def _unavailable(exc: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(f"Redis is unavailable: {type(exc).__name__}: {exc}")


def _field(spec: LimitSpec) -> str:
    return "|".join((spec.scope, spec.subject, spec.kind, str(spec.window_s)))


def _spec_from_field(field: str, value: str) -> LimitSpec | None:
    parts = field.split("|")
    if len(parts) != 4:
        return None
    scope, subject, kind, window_s = parts
    return LimitSpec(scope, kind, int(value), int(window_s), subject, "runtime")


class LimitStore:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        client = store.client
        self._check = client.register_script(CHECK)
        self._settle = client.register_script(SETTLE)
        self._read_rules = client.register_script(READ_LIMIT_RULES)
        self._hset = client.register_script(HSET_BUMP)
        self._hdel = client.register_script(HDEL_BUMP)
        self.rules = RuleCache()

    def _keys(self, account_id: str, gateway_id: str, limit: ScriptLimit) -> list[str]:
        key = self.store.key(account_id, gateway_id, *limit.key_parts)
        return [key] if limit.concurrent else [key, key + ":sum"]

    def reservation_key(self, account_id: str, gateway_id: str, token: str) -> str:
        return self.store.key(account_id, gateway_id, "res", token)

    async def evaluate(
        self,
        account_id: str,
        gateway_id: str,
        token: str,
        limits: Sequence[ScriptLimit],
        *,
        dry: bool,
        lease_ms: int,
        record_ttl_ms: int,
        version: str,
        meta: bytes = b"",
    ) -> Admitted | Denied | Stale:
        """Run the check script over every limit of one call at once.

        ``version`` is the rules version the limits were chosen with: when
        the gateway's rules changed since, nothing is consumed and Stale is
        returned.
        """
        keys = [
            self.reservation_key(account_id, gateway_id, token),
            self.store.key(account_id, gateway_id, VERSION_PART),
        ]
        args: list[Any] = [token, lease_ms, "1" if dry else "0", record_ttl_ms, meta]
        args.append(len(limits))
        for limit in limits:
            keys.extend(self._keys(account_id, gateway_id, limit))
            args.extend(
                (
                    "c" if limit.concurrent else "w",
                    limit.limit,
                    limit.window_ms,
                    limit.amount,
                    "1" if limit.capped else "0",
                )
            )
        args.append(version)
        try:
            result = await self._check(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        if int(result[0]) == STALE:
            self.rules.drop((account_id, gateway_id))
            return Stale(decode_version(result[1]))
        values = [int(value) for value in result]
        if values[0] == 0:
            return Denied(index=values[1] - 1, retry_after_ms=values[2], used=values[3])
        return Admitted(used=values[1::3], reset_ms=values[2::3], amounts=values[3::3])

    async def read_reservation_meta(self, key: str) -> bytes | None:
        try:
            raw: bytes | None = await self.store.client.hget(key, "meta")  # type: ignore[assignment]
            return raw
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def settle(
        self,
        account_id: str,
        gateway_id: str,
        token: str,
        meta: bytes,
        entries: Sequence[tuple[ScriptLimit, int, int]],
    ) -> int:
        """Replace reserved amounts with settled ones: (limit, index, settled).

        ``index`` is the limit's position in the check script (its reserved
        amount is read from the record inside the script). Returns 1 when
        settled, 0 when the reservation is gone, 2 (nothing changed) when the
        record's metadata is not ``meta``.
        """
        keys = [self.reservation_key(account_id, gateway_id, token)]
        args: list[Any] = [token, meta, len(entries)]
        for limit, index, settled in entries:
            keys.extend(self._keys(account_id, gateway_id, limit))
            args.extend(("c" if limit.concurrent else "w", f"a{index + 1}", settled))
            args.append(limit.window_ms)
        try:
            return int(await self._settle(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    # ------------------------------------------------------ runtime rules

    async def read_rules(
        self, account_id: str, gateway_id: str, user_id: str, *, fresh: bool = False
    ) -> LimitRules:
        """Return the runtime limits and the user's loop-guard override.

        From the process's cache while it holds them (see ``rule_version``),
        else read in one trip; ``fresh`` skips the cache.
        """
        cache_key = (account_id, gateway_id)
        cached = None if fresh else self.rules.get(cache_key)
        if cached is not None:
            version, rules = cached
            return LimitRules(version, rules.limits, rules.guards.get(user_id))
        keys = [
            self.store.key(account_id, gateway_id, "limits"),
            self.store.key(account_id, gateway_id, "loop-guard"),
            self.store.key(account_id, gateway_id, VERSION_PART),
        ]
        try:
            raw = await self._read_rules(keys=keys, args=[user_id, MAX_CACHED_FIELDS])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        version, cacheable = decode_version(raw[0]), raw[1] in (b"1", "1")
        split = 3 + 2 * int(raw[2])
        specs = _decode_limits(_pairs(raw[3:split]))
        guards = {
            field.decode(): guard
            for field, value in _pairs(raw[split:]).items()
            if (guard := _decode_guard(value)) is not None
        }
        if cacheable:
            self.rules.put(cache_key, version, _GatewayRules(specs, guards))
        return LimitRules(version, specs, guards.get(user_id))

    async def list_runtime_limits(
        self, account_id: str, gateway_id: str
    ) -> list[LimitSpec]:
        try:
            raw = await self.store.client.hgetall(
                self.store.key(account_id, gateway_id, "limits")
            )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return _decode_limits(raw)  # type: ignore[arg-type]

    async def set_limit(
        self, account_id: str, gateway_id: str, spec: LimitSpec
    ) -> None:
        await self._write(account_id, gateway_id, "limits", _field(spec), spec.limit)

    async def delete_limit(
        self, account_id: str, gateway_id: str, spec: LimitSpec
    ) -> bool:
        return bool(await self._write(account_id, gateway_id, "limits", _field(spec)))

    async def set_loop_guard(
        self, account_id: str, gateway_id: str, user_id: str, spec: LoopGuardSpec | None
    ) -> None:
        """Store a user's loop-guard override; None removes it."""
        value = None if spec is None else f"{spec.max_repeats}/{spec.window_s}"
        await self._write(account_id, gateway_id, "loop-guard", user_id, value)

    async def _write(
        self,
        account_id: str,
        gateway_id: str,
        hash_part: str,
        field: str,
        value: str | int | None = None,
    ) -> int:
        """Set (or with None remove) one rule and bump the rules version with it."""
        keys = [
            self.store.key(account_id, gateway_id, hash_part),
            self.store.key(account_id, gateway_id, VERSION_PART),
        ]
        try:
            if value is None:
                return int(await self._hdel(keys=keys, args=[field]))
            return int(await self._hset(keys=keys, args=[field, value]))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        finally:
            self.rules.drop((account_id, gateway_id))


def _decode_limits(raw: dict[bytes, bytes]) -> list[LimitSpec]:
    specs = []
    for field, value in raw.items():
        spec = _spec_from_field(field.decode(), value.decode())
        if spec is not None:
            specs.append(spec)
    return specs


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _decode_guard(raw: bytes | None) -> LoopGuardSpec | None:
    if not raw:
        return None
    max_repeats, _, window_s = raw.decode().partition("/")
    return LoopGuardSpec(int(max_repeats), int(window_s))
