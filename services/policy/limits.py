"""Limit arithmetic and selection, without Redis.

Which limits apply to a call, what a call reserves at admission, what it
uses at settlement, and which limit is the tightest afterwards. The Redis
side (one Lua script per decision) is in ``limit_scripts`` and
``limit_store``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.policy.v1 import policy_pb2
from services.common.limit_config import LimitSpec, LoopGuardSpec
from services.common.pricing import ModelPrice, cost_usd_micros

# Input tokens are estimated from the body size: about 4 bytes of JSON per
# token for English text and code, the usual rule of thumb. The estimate only
# sizes the reservation, and settlement replaces it with the real count.
BYTES_PER_TOKEN_ESTIMATE = 4
# Output reserved when a request names no max_tokens (OpenAI makes it
# optional).
DEFAULT_OUTPUT_TOKENS_ESTIMATE = 1024

TOKEN_KINDS = ("input_tokens", "output_tokens", "total_tokens")
# Kinds whose reservation is capped at what is left in the window, so that a
# large estimate never rejects a call by itself: a call is rejected only when
# the window is used up.
CAPPED_KINDS = (*TOKEN_KINDS, "spend")
UNITS = {
    "requests": "requests",
    "input_tokens": "tokens",
    "output_tokens": "tokens",
    "total_tokens": "tokens",
    "spend": "usd_micros",
    "concurrent": "concurrent",
}
KIND_TO_PROTO = {
    "requests": policy_pb2.LIMIT_KIND_REQUESTS,
    "input_tokens": policy_pb2.LIMIT_KIND_INPUT_TOKENS,
    "output_tokens": policy_pb2.LIMIT_KIND_OUTPUT_TOKENS,
    "total_tokens": policy_pb2.LIMIT_KIND_TOTAL_TOKENS,
    "spend": policy_pb2.LIMIT_KIND_SPEND,
    "concurrent": policy_pb2.LIMIT_KIND_CONCURRENT,
}
PROTO_TO_KIND = {value: key for key, value in KIND_TO_PROTO.items()}
LOOP_GUARD_NAME = "loop_guard"


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    """One limit as it applies to one call."""

    spec: LimitSpec
    # The team, user or key id the counter belongs to; "-" for the gateway.
    subject: str

    @property
    def name(self) -> str:
        """Return the name shown in headers and errors, e.g. ``user:requests:60s``."""
        scope = self.spec.scope
        if self.spec.kind == "concurrent":
            return f"{scope}:concurrent"
        return f"{scope}:{self.spec.kind}:{self.spec.window_s}s"

    @property
    def key_parts(self) -> tuple[str, ...]:
        """Return the Redis key parts of the counter, after the gateway's hash tag."""
        spec = self.spec
        return ("lim", spec.scope, self.subject, spec.kind, str(spec.window_s))


@dataclass(frozen=True, slots=True)
class Estimate:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class SettledUsage:
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd_micros: int


def merge_limits(
    configured: Iterable[LimitSpec], runtime: Iterable[LimitSpec]
) -> list[LimitSpec]:
    """Merge the file's limits with runtime ones; a runtime limit replaces its twin."""
    merged = {spec.identity: spec for spec in configured}
    for spec in runtime:
        merged[spec.identity] = spec
    return list(merged.values())


def subject_of(scope: str, caller: policy_pb2.Identity) -> str:
    """Return the caller's id in ``scope``; empty when the caller has none."""
    if scope == "gateway":
        return "-"
    if scope == "team":
        return caller.team_id
    if scope == "user":
        return caller.user_id
    return caller.key_id


def select_limits(
    specs: Sequence[LimitSpec], caller: policy_pb2.Identity
) -> list[AppliedLimit]:
    """Pick the limits that apply to ``caller``.

    In each scope a limit set for the caller's own team, user or key
    replaces the scope's default of the same kind and window. Team and key
    limits do not apply to a caller without a team or a key.
    """
    chosen: dict[tuple[str, str, int], AppliedLimit] = {}
    for spec in specs:
        subject = subject_of(spec.scope, caller)
        if not subject:
            continue
        if spec.subject and spec.subject != subject:
            continue
        slot = (spec.scope, spec.kind, spec.window_s)
        current = chosen.get(slot)
        if current is None or (spec.subject and not current.spec.subject):
            chosen[slot] = AppliedLimit(spec, subject)
    return list(chosen.values())


def estimate_tokens(max_tokens: int, body_bytes: int) -> Estimate:
    """Estimate a call's tokens before it runs, from max_tokens and the body size."""
    input_tokens = -(-max(body_bytes, 0) // BYTES_PER_TOKEN_ESTIMATE)
    output_tokens = max_tokens if max_tokens > 0 else DEFAULT_OUTPUT_TOKENS_ESTIMATE
    return Estimate(input_tokens, output_tokens)


def estimate_cost(estimate: Estimate, price: ModelPrice) -> int:
    return cost_usd_micros(price, estimate.input_tokens, estimate.output_tokens, 0, 0)


def reservation_amount(kind: str, estimate: Estimate, cost_micros: int) -> int:
    """Return what a call reserves on a limit of ``kind`` at admission."""
    if kind == "input_tokens":
        return estimate.input_tokens
    if kind == "output_tokens":
        return estimate.output_tokens
    if kind == "total_tokens":
        return estimate.input_tokens + estimate.output_tokens
    if kind == "spend":
        return cost_micros
    return 1


def settled_amount(kind: str, usage: SettledUsage) -> int:
    """Return what a finished call counts on a limit of ``kind``.

    Input-token limits count uncached input plus cache writes and leave cache
    reads out, the way Anthropic counts input tokens per minute; output and
    total follow from it.
    """
    counted_input = usage.input_tokens + usage.cache_write_tokens
    if kind == "input_tokens":
        return counted_input
    if kind == "output_tokens":
        return usage.output_tokens
    if kind == "total_tokens":
        return counted_input + usage.output_tokens
    if kind == "spend":
        return usage.cost_usd_micros
    return 1


def loop_guard_key_parts(
    caller: policy_pb2.Identity, endpoint: str, body_sha256: bytes
) -> tuple[str, ...]:
    """Return the key parts of the loop guard's counter for one user and body."""
    digest = hashlib.sha256(endpoint.encode() + b"\0" + body_sha256).hexdigest()
    return ("loop", caller.user_id, digest[:32])


def loop_guard_limit(spec: LoopGuardSpec) -> LimitSpec:
    return LimitSpec("user", "requests", spec.max_repeats, spec.window_s)


@dataclass(frozen=True, slots=True)
class LimitUse:
    """A limit's state after a decision."""

    limit: AppliedLimit
    used: int
    reset_ms: int


def limit_state(use: LimitUse) -> policy_pb2.LimitState:
    spec = use.limit.spec
    return policy_pb2.LimitState(
        name=use.limit.name,
        limit=spec.limit,
        remaining=max(spec.limit - use.used, 0),
        reset_s=-(-max(use.reset_ms, 0) // 1000),
        window_s=spec.window_s,
        unit=UNITS[spec.kind],
    )


def tightest(uses: Sequence[LimitUse]) -> LimitUse | None:
    """Return the limit with the smallest share left; ties go to the later reset."""
    if not uses:
        return None
    return min(
        uses,
        key=lambda use: (
            (use.limit.spec.limit - use.used) / use.limit.spec.limit,
            -use.reset_ms,
        ),
    )


def denial_message(name: str, kind: str, limit: int, retry_after_s: int) -> str:
    if name == LOOP_GUARD_NAME:
        return (
            f"a repeated identical request was blocked by the loop guard: the same "
            f"request was sent more than {limit} times in the window; it is admitted "
            f"again in {retry_after_s} s"
        )
    return (
        f"rate limit {name} exceeded: limit of {limit} {UNITS.get(kind, kind)}; "
        f"retry in {retry_after_s} s"
    )
