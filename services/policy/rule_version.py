"""A version counter of each gateway's runtime rules, and the cache it guards.

Runtime limits, loop-guard overrides and cache rules apply to every Check,
so reading them from Redis on each call cost one round trip for limits and
one for cache rules. Instead the policy process keeps what it read, with the
gateway's rules version: the counter under ``{prefix}:{<account>/<gateway>}:
rules-version``, which every admin write increments in the same script as
the write (``HSET_BUMP``, ``HDEL_BUMP``).

The decision scripts (the limit check and the cache lookup) take the version
key in KEYS and the version the rules were read at in ARGV. When the counter
moved they change nothing and return "stale"; the caller then rereads the
rules and runs the script again. A rule set at runtime therefore still takes
effect on the next request, on every policy replica, and a Check pays no
round trip for rules while they are unchanged.

NOTE: an entry is also dropped after ``RULES_MAX_AGE_S``, so a write that
bypasses the admin API (a hand-made HSET that does not increment the
counter, or a Redis that lost the counter with its data) is seen within one
second. A hash with more than ``MAX_CACHED_FIELDS`` fields (many per-user
overrides) is not cached: only the caller's fields are read, on every call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

VERSION_PART = "rules-version"
RULES_MAX_AGE_S = 1.0
# Gateways (or gateway and user pairs) whose rules are kept at once.
MAX_ENTRIES = 10_000
# Hashes with more fields are read per call for the caller's fields only.
MAX_CACHED_FIELDS = 256
# Reads of fresh rules after a "stale" result before the script is run
# without the version check (the rules were then read a moment before).
STALE_RETRIES = 3
# Sent as the expected version to skip the check.
ANY_VERSION = ""

# KEYS[1]: the rules hash, KEYS[2]: the version key. ARGV: field, value.
HSET_BUMP = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""
# KEYS as in HSET_BUMP. ARGV: field. Returns the number of fields removed.
HDEL_BUMP = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed > 0 then redis.call('INCR', KEYS[2]) end
return removed
"""

# The Lua lines that start a decision script: with KEYS[<n>] the version key
# and ARGV[#ARGV] the expected version, they return {STALE, version} when the
# rules changed since they were read. ``%d`` is the index of the version key.
STALE = 9
GUARD_LUA = """
local current_version = redis.call('GET', KEYS[%d]) or '0'
local expected_version = ARGV[#ARGV]
if expected_version ~= '' and expected_version ~= current_version then
  return {9, current_version}
end
"""


def guard_lua(version_key_index: int) -> str:
    return GUARD_LUA % version_key_index


@dataclass(slots=True)
class _Entry:
    version: str
    value: Any
    read_at_s: float


class RuleCache:
    """Rules read from Redis with the version they were read at, for a second."""

    def __init__(
        self,
        *,
        max_age_s: float = RULES_MAX_AGE_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[Hashable, _Entry] = {}

    def get(self, key: Hashable) -> tuple[str, Any] | None:
        """Return (version, value), or None when absent or older than max age."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() - entry.read_at_s > self.max_age_s:
            del self._entries[key]
            return None
        return entry.version, entry.value

    def put(self, key: Hashable, version: str, value: Any) -> None:
        self._entries.pop(key, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = _Entry(version, value, self.clock())

    def drop(self, key: Hashable) -> None:
        self._entries.pop(key, None)


def decode_version(raw: bytes | str | int | None) -> str:
    if raw is None:
        return "0"
    if isinstance(raw, bytes):
        return raw.decode()
    return str(raw)
