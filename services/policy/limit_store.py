"""The Redis side of limits: the scripts, runtime limits and loop-guard overrides.

Keys, all inside the gateway's hash tag ``{prefix}:{<account>/<gateway>}``:

- ``lim:<scope>:<subject>:<kind>:<window_s>`` and ``...:sum``: a window log;
- ``lim:<scope>:<subject>:concurrent:0``: the lease set of a concurrency limit;
- ``loop:<user>:<digest>`` and ``...:sum``: the loop guard's log of one body;
- ``res:<id>``: a reservation awaiting Settle;
- ``limits``: runtime limits, a hash of ``scope|subject|kind|window_s`` to
  the limit;
- ``loop-guard``: per-user loop-guard overrides, a hash of user id to
  ``max_repeats/window_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from services.common.limit_config import LimitSpec, LoopGuardSpec
from services.policy.errors import StoreUnavailableError
from services.policy.limit_scripts import CHECK, SETTLE
from services.policy.store import RedisStore


@dataclass(frozen=True, slots=True)
class ScriptLimit:
    """One limit as the check script sees it."""

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
        self._check = store.client.register_script(CHECK)
        self._settle = store.client.register_script(SETTLE)

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
        meta: bytes = b"",
    ) -> Admitted | Denied:
        """Run the check script over every limit of one call at once."""
        keys = [self.reservation_key(account_id, gateway_id, token)]
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
        try:
            result = await self._check(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        values = [int(value) for value in result]
        if values[0] == 0:
            return Denied(index=values[1] - 1, retry_after_ms=values[2], used=values[3])
        return Admitted(used=values[1::3], reset_ms=values[2::3], amounts=values[3::3])

    async def read_reservation(self, key: str) -> dict[bytes, bytes]:
        try:
            raw: dict[bytes, bytes] = await self.store.client.hgetall(key)  # type: ignore[assignment]
            return raw
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def settle(
        self,
        account_id: str,
        gateway_id: str,
        token: str,
        entries: Sequence[tuple[ScriptLimit, int, int]],
    ) -> bool:
        """Replace reserved amounts with settled ones: (limit, reserved, settled)."""
        keys = [self.reservation_key(account_id, gateway_id, token)]
        args: list[Any] = [token, len(entries)]
        for limit, reserved, settled in entries:
            keys.extend(self._keys(account_id, gateway_id, limit))
            args.extend(("c" if limit.concurrent else "w", reserved, settled))
            args.append(limit.window_ms)
        try:
            return bool(await self._settle(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    # ------------------------------------------------------ runtime rules

    async def read_rules(
        self, account_id: str, gateway_id: str, user_id: str
    ) -> tuple[list[LimitSpec], LoopGuardSpec | None]:
        """Read the runtime limits and the user's loop-guard override in one trip."""
        pipe = self.store.client.pipeline(transaction=False)
        pipe.hgetall(self.store.key(account_id, gateway_id, "limits"))
        pipe.hget(self.store.key(account_id, gateway_id, "loop-guard"), user_id)
        try:
            raw_limits, raw_guard = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return _decode_limits(raw_limits), _decode_guard(raw_guard)

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
        key = self.store.key(account_id, gateway_id, "limits")
        try:
            await self.store.client.hset(key, _field(spec), spec.limit)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def delete_limit(
        self, account_id: str, gateway_id: str, spec: LimitSpec
    ) -> bool:
        key = self.store.key(account_id, gateway_id, "limits")
        try:
            return bool(await self.store.client.hdel(key, _field(spec)))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def set_loop_guard(
        self, account_id: str, gateway_id: str, user_id: str, spec: LoopGuardSpec | None
    ) -> None:
        """Store a user's loop-guard override; None removes it."""
        key = self.store.key(account_id, gateway_id, "loop-guard")
        try:
            if spec is None:
                await self.store.client.hdel(key, user_id)
            else:
                value = f"{spec.max_repeats}/{spec.window_s}"
                await self.store.client.hset(key, user_id, value)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc


def _decode_limits(raw: dict[bytes, bytes]) -> list[LimitSpec]:
    specs = []
    for field, value in raw.items():
        spec = _spec_from_field(field.decode(), value.decode())
        if spec is not None:
            specs.append(spec)
    return specs


def _decode_guard(raw: bytes | None) -> LoopGuardSpec | None:
    if not raw:
        return None
    max_repeats, _, window_s = raw.decode().partition("/")
    return LoopGuardSpec(int(max_repeats), int(window_s))
