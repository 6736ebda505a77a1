"""Limits and the loop guard of a gateway, as the configuration file declares them.

Both the policy service (which enforces them in Redis) and the ingress (whose
fail-open limiter applies the request limits while the policy service is
down) read them from ``Gateway.extra``::

    [[accounts.acme.gateways.agents.limits]]
    scope = "user"          # "gateway", "team", "user" or "key"
    kind = "requests"       # requests, input_tokens, output_tokens,
                            # total_tokens, spend, concurrent
    limit = 10              # requests, tokens, micro-USD or in-flight calls
    window_s = 60           # sliding window; omit for kind = "concurrent"
    # user = "alice"        # optional: this user only, an override of the
                            # scope's default (likewise team = ..., key = ...)

    [accounts.acme.gateways.agents.loop_guard]
    max_repeats = 5         # identical requests admitted per user and window
    window_s = 60

A limit with ``scope = "user"`` and no ``user`` applies to each user
separately; one with ``user = "alice"`` replaces it for alice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.config import ConfigError, GatewayConfig

SCOPES = ("gateway", "team", "user", "key")
KINDS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "spend",
    "concurrent",
)
# The TOML key that names one subject of each scope.
SUBJECT_FIELDS = {"team": "team", "user": "user", "key": "key"}
MAX_WINDOW_S = 31 * 24 * 3600


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One declared limit."""

    scope: str
    kind: str
    limit: int
    # 0 for kind "concurrent".
    window_s: int
    # Team, user or key id the limit is set for; empty for every subject of
    # the scope (and always empty for scope "gateway").
    subject: str = ""
    # "config" for the TOML file, "runtime" for limits set through SetLimit.
    source: str = "config"

    @property
    def identity(self) -> tuple[str, str, str, int]:
        """Return what makes two specs the same limit (one replaces the other)."""
        return (self.scope, self.subject, self.kind, self.window_s)


@dataclass(frozen=True, slots=True)
class LoopGuardSpec:
    """At most ``max_repeats`` identical requests per user within ``window_s``."""

    max_repeats: int
    window_s: int


def validate_limit(spec: LimitSpec) -> list[str]:
    """Return the problems of one limit, each as a sentence."""
    problems = []
    if spec.scope not in SCOPES:
        problems.append(
            f"scope: expected one of {', '.join(SCOPES)}, got {spec.scope!r}"
        )
    if spec.kind not in KINDS:
        problems.append(f"kind: expected one of {', '.join(KINDS)}, got {spec.kind!r}")
    if spec.limit < 1:
        problems.append(f"limit: expected a whole number >= 1, got {spec.limit}")
    if spec.kind == "concurrent" and spec.window_s != 0:
        problems.append("window_s: must be omitted (or 0) for kind concurrent")
    if spec.kind != "concurrent" and not 1 <= spec.window_s <= MAX_WINDOW_S:
        problems.append(
            f"window_s: expected seconds between 1 and {MAX_WINDOW_S}, "
            f"got {spec.window_s}"
        )
    if spec.scope == "gateway" and spec.subject:
        problems.append("a gateway-scope limit cannot name a team, user or key")
    return problems


def _int_field(entry: Mapping[str, Any], name: str, default: int) -> int | None:
    value = entry.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def parse_limits(value: Any, where: str, problems: list[str]) -> list[LimitSpec]:
    """Parse the ``limits`` array of tables of one gateway."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{where}: expected an array of tables ([[...limits]])")
        return []
    specs: list[LimitSpec] = []
    for index, entry in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{here}: expected a table")
            continue
        scope = str(entry.get("scope", "gateway"))
        subject_field = SUBJECT_FIELDS.get(scope, "")
        unknown = set(entry) - {"scope", "kind", "limit", "window_s", subject_field}
        if unknown:
            problems.append(f"{here}: unknown keys {', '.join(sorted(unknown))}")
        limit = _int_field(entry, "limit", 0)
        window_s = _int_field(entry, "window_s", 0)
        if limit is None or window_s is None:
            problems.append(f"{here}: limit and window_s must be whole numbers")
            continue
        spec = LimitSpec(
            scope=scope,
            kind=str(entry.get("kind", "")),
            limit=limit,
            window_s=window_s,
            subject=str(entry.get(subject_field, "")) if subject_field else "",
        )
        problems.extend(f"{here}.{problem}" for problem in validate_limit(spec))
        specs.append(spec)
    return specs


def parse_loop_guard(
    value: Any, where: str, problems: list[str]
) -> LoopGuardSpec | None:
    """Parse the ``loop_guard`` table of one gateway; None when it has none."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a table")
        return None
    max_repeats = _int_field(value, "max_repeats", 0)
    window_s = _int_field(value, "window_s", 60)
    if max_repeats is None or max_repeats < 1:
        problems.append(f"{where}.max_repeats: expected a whole number >= 1")
        return None
    if window_s is None or not 1 <= window_s <= MAX_WINDOW_S:
        problems.append(
            f"{where}.window_s: expected seconds between 1 and {MAX_WINDOW_S}"
        )
        return None
    return LoopGuardSpec(max_repeats, window_s)


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    limits: tuple[LimitSpec, ...]
    loop_guard: LoopGuardSpec | None


def load_gateway_limits(
    config: GatewayConfig,
) -> dict[tuple[str, str], GatewayLimits]:
    """Parse the limits of every gateway; raises ConfigError listing every problem."""
    problems: list[str] = []
    result: dict[tuple[str, str], GatewayLimits] = {}
    for (account_id, gateway_id), gateway in config.gateways.items():
        where = f"accounts.{account_id}.gateways.{gateway_id}"
        limits = parse_limits(gateway.extra.get("limits"), f"{where}.limits", problems)
        guard = parse_loop_guard(
            gateway.extra.get("loop_guard"), f"{where}.loop_guard", problems
        )
        result[(account_id, gateway_id)] = GatewayLimits(tuple(limits), guard)
    if problems:
        raise ConfigError(problems)
    return result
