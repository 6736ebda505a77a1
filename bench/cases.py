"""The workload: request bodies, the cases and the gateway configurations.

A case is one provider format (Anthropic or OpenAI), one response mode (JSON
or SSE) and one load (the fixed rate or the fixed concurrency). Every target
receives the same bodies byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

RATE_PER_S = 20.0
CONCURRENCY = 32

ANTHROPIC_MODEL = "claude-sonnet-4-5"
OPENAI_MODEL = "gpt-4.1-mini"
MAX_TOKENS = 64
ANTHROPIC_VERSION = "2023-06-01"
# Any non-empty key passes the simulator; the gateways pass it through.
PROVIDER_KEY = "sk-bench-0000000000000000"


@dataclass(frozen=True, slots=True)
class Durations:
    rate_s: float
    rate_warmup_s: float
    concurrency_s: float
    concurrency_warmup_s: float


FULL = Durations(
    rate_s=12.0, rate_warmup_s=1.0, concurrency_s=8.0, concurrency_warmup_s=1.5
)
QUICK = Durations(
    rate_s=3.0, rate_warmup_s=0.5, concurrency_s=2.5, concurrency_warmup_s=0.5
)


@dataclass(frozen=True, slots=True)
class Case:
    provider: str  # "anthropic" or "openai"
    mode: str  # "json" or "sse"
    load: str  # "rate" or "concurrency"

    @property
    def name(self) -> str:
        load = f"{RATE_PER_S:.0f} req/s" if self.load == "rate" else f"c={CONCURRENCY}"
        return f"{self.provider} {self.mode} {load}"

    @property
    def stream(self) -> bool:
        return self.mode == "sse"


ALL_CASES = tuple(
    Case(provider, mode, load)
    for load in ("rate", "concurrency")
    for provider in ("anthropic", "openai")
    for mode in ("json", "sse")
)


def select_cases(spec: str) -> tuple[Case, ...]:
    """Cases whose name contains every word of one comma-separated item.

    ``"anthropic json"`` picks both loads of Anthropic JSON; ``"rate,sse"``
    picks every rate case and every stream case; ``"all"`` or ``""`` all.
    """
    if spec.strip() in ("", "all"):
        return ALL_CASES
    items = [item.split() for item in spec.split(",") if item.strip()]
    chosen = tuple(
        case
        for case in ALL_CASES
        if any(all(word in _case_words(case) for word in item) for item in items)
    )
    if not chosen:
        raise ValueError(f"--cases {spec!r} matches no case")
    return chosen


def _case_words(case: Case) -> set[str]:
    return {case.provider, case.mode, case.load}


# About 2 KB of system prompt, as an agent framework sends on every call.
SYSTEM_PROMPT = (
    "You are a careful assistant working inside a customer-support agent. "
    "Follow the company's policies, cite the knowledge-base article you used, "
    "never invent order numbers, and hand over to a human when the customer "
    "asks for one. Keep answers short and use the customer's language. "
) * 8

TURNS = (
    ("user", "My order 1042 arrived with a cracked screen. What can I do?"),
    (
        "assistant",
        "I am sorry about the screen. Article KB-17 covers damaged deliveries: "
        "you can ask for a replacement or a refund within 30 days.",
    ),
    ("user", "A replacement, please. Do I need to send the broken one back?"),
    (
        "assistant",
        "Yes, KB-17 asks for the return with the prepaid label we email you.",
    ),
    ("user", "Fine. How long will the replacement take to arrive?"),
)


def anthropic_body(stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": ANTHROPIC_MODEL,
            "max_tokens": MAX_TOKENS,
            "system": SYSTEM_PROMPT,
            "messages": [{"role": r, "content": text} for r, text in TURNS],
            "stream": stream,
        }
    )


def openai_body(stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": OPENAI_MODEL,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}]
        + [{"role": r, "content": text} for r, text in TURNS],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def body_for(case: Case) -> bytes:
    if case.provider == "anthropic":
        return anthropic_body(case.stream)
    return openai_body(case.stream)


def provider_headers(case: Case) -> dict[str, str]:
    """The headers an official SDK sends, without the gateway's own."""
    headers = {"content-type": "application/json", "accept": "application/json"}
    if case.stream:
        headers["accept"] = "text/event-stream"
    if case.provider == "anthropic":
        headers["x-api-key"] = PROVIDER_KEY
        headers["anthropic-version"] = ANTHROPIC_VERSION
    else:
        headers["authorization"] = f"Bearer {PROVIDER_KEY}"
    return headers


def end_marker(case: Case) -> bytes:
    """What the last event of a complete stream contains."""
    if not case.stream:
        return b""
    return b"message_stop" if case.provider == "anthropic" else b"[DONE]"


# Gateway configurations of Tollgate's targets. Each feature that lands adds
# its table here so that the benchmark keeps "everything on": identity
# (anonymous users from provider keys) and payload logging are on by default;
# the tables below follow docs/limits.md and docs/caching.md.
ACCOUNT = "bench"
FULL_GATEWAY = "full"
CACHED_GATEWAY = "cached"

FEATURE_TABLES = """
[[accounts.bench.gateways.{gateway}.limits]]
# A generous per-user request limit and token limit, so that the limit path
# runs on every call (reserve in Check, settle after) without denying one.
scope = "user"
kind = "requests"
limit = 10000000
window_s = 60

[[accounts.bench.gateways.{gateway}.limits]]
scope = "user"
kind = "total_tokens"
limit = 100000000000
window_s = 60

# The benchmark repeats one body, so the loop guard runs on every call with a
# bound it never reaches.
[accounts.bench.gateways.{gateway}.loop_guard]
max_repeats = 100000000
window_s = 60
"""

CACHE_TABLE = """
[accounts.bench.gateways.cached.cache]
enabled = true
ttl_s = 3600
"""


def gateway_config() -> str:
    """The TOML of both benchmark gateways."""
    return "\n".join(
        [
            f"[accounts.{ACCOUNT}.gateways.{FULL_GATEWAY}]",
            "authenticated = false",
            f"[accounts.{ACCOUNT}.gateways.{CACHED_GATEWAY}]",
            "authenticated = false",
            FEATURE_TABLES.format(gateway=FULL_GATEWAY),
            FEATURE_TABLES.format(gateway=CACHED_GATEWAY),
            CACHE_TABLE,
            "[ingress]",
            f'default_account = "{ACCOUNT}"',
            f'default_gateway = "{FULL_GATEWAY}"',
            "",
        ]
    )
