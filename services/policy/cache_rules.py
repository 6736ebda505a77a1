"""Caching rules: gateway defaults from the config file, overrides in Redis.

The gateway's ``cache`` table sets the defaults::

    [accounts.acme.gateways.agents.cache]
    enabled = true
    ttl_s = 300
    max_entry_bytes = 1048576
    ignore_fields = ["metadata"]
    shared = false
    lock_wait_ms = 5000
    lock_ttl_ms = 60000

Operators add rules at runtime for the whole gateway, a team or a user. They
are stored in one Redis hash per gateway (fields ``gateway``, ``team:T``,
``user:U``). The policy process keeps a gateway's hash for at most a second
with the gateway's rules version, which every write increments and the cache
lookup script checks (``rule_version``), so a change still applies to the
next request. The most specific rule wins as a whole; its zero ``ttl_s`` or
``max_entry_bytes`` falls back to the gateway's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from gateway.policy.v1 import policy_pb2
from services.common.config import ConfigError, Gateway, GatewayConfig
from services.policy.errors import InvalidRequestError, StoreUnavailableError
from services.policy.rule_version import (
    HDEL_BUMP,
    HSET_BUMP,
    MAX_CACHED_FIELDS,
    VERSION_PART,
    RuleCache,
    decode_version,
)
from services.policy.store import RedisStore

# One month, the longest TTL Cloudflare AI Gateway accepts.
MAX_TTL_S = 2_592_000
MAX_ENTRY_BYTES_LIMIT = 64 << 20
DEFAULT_TTL_S = 300
DEFAULT_MAX_ENTRY_BYTES = 1 << 20
DEFAULT_LOCK_WAIT_MS = 5_000
DEFAULT_LOCK_TTL_MS = 60_000
MAX_LOCK_MS = 600_000
MAX_IGNORE_FIELDS = 64

_TABLE_KEYS = frozenset(
    {
        "enabled",
        "ttl_s",
        "max_entry_bytes",
        "ignore_fields",
        "shared",
        "lock_wait_ms",
        "lock_ttl_ms",
    }
)


@dataclass(frozen=True, slots=True)
class EffectiveRule:
    """The rule that applies to one request, with the defaults filled in."""

    enabled: bool = False
    ttl_s: int = DEFAULT_TTL_S
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    ignore_fields: frozenset[str] = frozenset()
    shared: bool = False
    # Where the rule came from: "config", "gateway", "team:T" or "user:U".
    source: str = "config"


@dataclass(frozen=True, slots=True)
class GatewayCacheConfig:
    """The gateway's ``cache`` table, validated."""

    defaults: EffectiveRule = EffectiveRule()
    # How long a request waits for an identical request in flight, in ms.
    lock_wait_ms: int = DEFAULT_LOCK_WAIT_MS
    # Lifetime of the in-flight lock, in ms; a leader that dies frees it then.
    lock_ttl_ms: int = DEFAULT_LOCK_TTL_MS


def _int_in(
    table: Mapping[str, Any],
    name: str,
    default: int,
    low: int,
    high: int,
    where: str,
    problems: list[str],
) -> int:
    value = table.get(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        problems.append(f"{where}.{name}: expected an integer {low} to {high}")
        return default
    return value


def _bool(
    table: Mapping[str, Any], name: str, default: bool, where: str, problems: list[str]
) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        problems.append(f"{where}.{name}: expected true or false")
        return default
    return value


def parse_cache_table(
    table: Any, where: str, problems: list[str]
) -> GatewayCacheConfig:
    """Validate a gateway's ``cache`` table, appending each problem found."""
    if table is None:
        return GatewayCacheConfig()
    if not isinstance(table, dict):
        problems.append(f"{where}: expected a table")
        return GatewayCacheConfig()
    for name in sorted(set(table) - _TABLE_KEYS):
        problems.append(f"{where}.{name}: unknown setting")
    ignore = table.get("ignore_fields", [])
    if not isinstance(ignore, list) or not all(
        isinstance(item, str) and item for item in ignore
    ):
        problems.append(f"{where}.ignore_fields: expected a list of field names")
        ignore = []
    defaults = EffectiveRule(
        enabled=_bool(table, "enabled", False, where, problems),
        ttl_s=_int_in(table, "ttl_s", DEFAULT_TTL_S, 1, MAX_TTL_S, where, problems),
        max_entry_bytes=_int_in(
            table,
            "max_entry_bytes",
            DEFAULT_MAX_ENTRY_BYTES,
            1,
            MAX_ENTRY_BYTES_LIMIT,
            where,
            problems,
        ),
        ignore_fields=frozenset(ignore),
        shared=_bool(table, "shared", False, where, problems),
    )
    return GatewayCacheConfig(
        defaults=defaults,
        lock_wait_ms=_int_in(
            table, "lock_wait_ms", DEFAULT_LOCK_WAIT_MS, 0, MAX_LOCK_MS, where, problems
        ),
        lock_ttl_ms=_int_in(
            table, "lock_ttl_ms", DEFAULT_LOCK_TTL_MS, 100, MAX_LOCK_MS, where, problems
        ),
    )


def load_gateway_cache_configs(
    config: GatewayConfig,
) -> dict[tuple[str, str], GatewayCacheConfig]:
    """Validate the ``cache`` table of every gateway; raises ConfigError."""
    problems: list[str] = []
    configs: dict[tuple[str, str], GatewayCacheConfig] = {}
    for ids, gateway in config.gateways.items():
        configs[ids] = _gateway_cache_config(gateway, problems)
    if problems:
        raise ConfigError(problems)
    return configs


def _gateway_cache_config(gateway: Gateway, problems: list[str]) -> GatewayCacheConfig:
    where = f"accounts.{gateway.account_id}.gateways.{gateway.gateway_id}.cache"
    return parse_cache_table(gateway.extra.get("cache"), where, problems)


def rule_field(scope: policy_pb2.Scope) -> str:
    """Return the hash field of a rule's scope: user, then team, then gateway."""
    if scope.user_id:
        return "user:" + scope.user_id
    if scope.team_id:
        return "team:" + scope.team_id
    return "gateway"


def rule_problems(rule: policy_pb2.CacheRule) -> list[str]:
    """Return why ``rule`` cannot be stored, or an empty list."""
    problems: list[str] = []
    if not rule.scope.account_id or not rule.scope.gateway_id:
        problems.append("rule.scope: account_id and gateway_id are required")
    if not 0 <= rule.ttl_s <= MAX_TTL_S:
        problems.append(
            f"rule.ttl_s: expected 1 to {MAX_TTL_S} seconds, or 0 for the "
            f"gateway default, got {rule.ttl_s}"
        )
    if not 0 <= rule.max_entry_bytes <= MAX_ENTRY_BYTES_LIMIT:
        problems.append(
            f"rule.max_entry_bytes: expected 1 to {MAX_ENTRY_BYTES_LIMIT}, or 0 "
            f"for the gateway default, got {rule.max_entry_bytes}"
        )
    if len(rule.ignore_fields) > MAX_IGNORE_FIELDS:
        problems.append(
            f"rule.ignore_fields: at most {MAX_IGNORE_FIELDS} fields, "
            f"got {len(rule.ignore_fields)}"
        )
    if any(not name for name in rule.ignore_fields):
        problems.append("rule.ignore_fields: field names must not be empty")
    return problems


def effective_rule(
    defaults: EffectiveRule, rules: list[policy_pb2.CacheRule | None]
) -> EffectiveRule:
    """Pick the first rule of ``rules`` (most specific first) over the defaults."""
    for rule in rules:
        if rule is None:
            continue
        return EffectiveRule(
            enabled=rule.enabled,
            ttl_s=rule.ttl_s or defaults.ttl_s,
            max_entry_bytes=rule.max_entry_bytes or defaults.max_entry_bytes,
            ignore_fields=frozenset(rule.ignore_fields),
            shared=rule.shared,
            source=rule_field(rule.scope),
        )
    return defaults


def rule_message(
    rule: EffectiveRule, account_id: str, gateway_id: str
) -> policy_pb2.CacheRule:
    """Describe an effective rule as a CacheRule, its scope the rule's source."""
    scope = policy_pb2.Scope(account_id=account_id, gateway_id=gateway_id)
    kind, _, name = rule.source.partition(":")
    if kind == "user":
        scope.user_id = name
    elif kind == "team":
        scope.team_id = name
    return policy_pb2.CacheRule(
        scope=scope,
        enabled=rule.enabled,
        ttl_s=rule.ttl_s,
        max_entry_bytes=rule.max_entry_bytes,
        ignore_fields=sorted(rule.ignore_fields),
        shared=rule.shared,
    )


# KEYS[1]: the rules hash, KEYS[2]: the rules version. ARGV: most fields to
# cache, then the caller's fields. Returns {version, "1", every field and
# value...} for a hash small enough to keep, else {version, "0", the value of
# each of the caller's fields or "" where unset}.
_READ_RULES = """
local version = redis.call('GET', KEYS[2]) or '0'
if redis.call('HLEN', KEYS[1]) <= tonumber(ARGV[1]) then
  local out = {version, '1'}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
  return out
end
local out = {version, '0'}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i]) or ''
end
return out
"""


class CacheRuleStore:
    """Rules in one Redis hash per gateway, in the gateway's hash slot."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        client = store.client
        self._read = client.register_script(_READ_RULES)
        self._hset = client.register_script(HSET_BUMP)
        self._hdel = client.register_script(HDEL_BUMP)
        self.cached = RuleCache()

    def _key(self, account_id: str, gateway_id: str) -> str:
        return self.store.key(account_id, gateway_id, "cache-rules")

    def version_key(self, account_id: str, gateway_id: str) -> str:
        return self.store.key(account_id, gateway_id, VERSION_PART)

    async def applicable(
        self, account_id: str, gateway_id: str, team_id: str, user_id: str
    ) -> list[policy_pb2.CacheRule | None]:
        """Return the user's, the team's and the gateway's rule, None where unset."""
        _, rules, _ = await self.applicable_versioned(
            account_id, gateway_id, team_id, user_id, fresh=True
        )
        return rules

    async def applicable_versioned(
        self,
        account_id: str,
        gateway_id: str,
        team_id: str,
        user_id: str,
        *,
        fresh: bool = False,
    ) -> tuple[str, list[policy_pb2.CacheRule | None], bool]:
        """Return the rules version, the caller's rules as ``applicable``, and
        whether they came from the process's cache.

        From the process's cache while it holds the gateway's rules, else
        read in one trip; ``fresh`` skips the cache.
        """
        fields = []
        if user_id:
            fields.append("user:" + user_id)
        if team_id:
            fields.append("team:" + team_id)
        fields.append("gateway")
        cache_key = (account_id, gateway_id)
        cached = None if fresh else self.cached.get(cache_key)
        if cached is not None:
            version, by_field = cached
            return version, [by_field.get(field) for field in fields], True
        keys = [
            self._key(account_id, gateway_id),
            self.version_key(account_id, gateway_id),
        ]
        try:
            raw = await self._read(keys=keys, args=[MAX_CACHED_FIELDS, *fields])
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"reading cache rules failed: {exc}") from exc
        version = decode_version(raw[0])
        if raw[1] in (b"1", "1"):
            pairs = raw[2:]
            by_field = {
                (name.decode() if isinstance(name, bytes) else name): _parse_rule(value)
                for name, value in zip(pairs[::2], pairs[1::2], strict=True)
            }
            self.cached.put(cache_key, version, by_field)
            return version, [by_field.get(field) for field in fields], False
        return version, [_parse_rule(value or None) for value in raw[2:]], False

    def forget(self, account_id: str, gateway_id: str) -> None:
        self.cached.drop((account_id, gateway_id))

    async def all(self, account_id: str, gateway_id: str) -> list[policy_pb2.CacheRule]:
        try:
            values = await self.store.client.hgetall(self._key(account_id, gateway_id))
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"reading cache rules failed: {exc}") from exc
        rules = [_parse_rule(value) for _, value in sorted(values.items())]
        return [rule for rule in rules if rule is not None]

    async def put(self, rule: policy_pb2.CacheRule) -> None:
        problems = rule_problems(rule)
        if problems:
            raise InvalidRequestError("invalid cache rule: " + "; ".join(problems))
        account_id, gateway_id = rule.scope.account_id, rule.scope.gateway_id
        keys = [
            self._key(account_id, gateway_id),
            self.version_key(account_id, gateway_id),
        ]
        try:
            await self._hset(
                keys=keys, args=[rule_field(rule.scope), rule.SerializeToString()]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(
                f"storing the cache rule failed: {exc}"
            ) from exc
        finally:
            self.forget(account_id, gateway_id)

    async def delete(self, scope: policy_pb2.Scope) -> bool:
        account_id, gateway_id = scope.account_id, scope.gateway_id
        keys = [
            self._key(account_id, gateway_id),
            self.version_key(account_id, gateway_id),
        ]
        try:
            removed = await self._hdel(keys=keys, args=[rule_field(scope)])
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(
                f"deleting the cache rule failed: {exc}"
            ) from exc
        finally:
            self.forget(account_id, gateway_id)
        return bool(removed)


def _parse_rule(value: bytes | str | None) -> policy_pb2.CacheRule | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode()
    rule = policy_pb2.CacheRule()
    rule.ParseFromString(value)
    return rule
