"""Limit selection, estimates and config parsing, without Redis."""

from __future__ import annotations

import datetime

import pytest

from gateway.policy.v1 import policy_pb2
from services.common.config import ConfigError, parse_config
from services.common.limit_config import LimitSpec, load_gateway_limits
from services.common.pricing import ModelPrice, cost_usd_micros, load_price_table
from services.policy import limits


def _price(input: int, output: int, cache_write: int, cache_read: int) -> ModelPrice:
    return ModelPrice(
        provider="anthropic",
        model="test-model",
        input=input,
        output=output,
        cache_write=cache_write,
        cache_read=cache_read,
        source="test",
        as_of=datetime.date(2026, 12, 1),
    )


def test_user_override_replaces_default() -> None:
    default = LimitSpec("user", "requests", 10, 60)
    alice = LimitSpec("user", "requests", 100, 60, subject="alice")
    other_window = LimitSpec("user", "requests", 5, 1)
    caller = policy_pb2.Identity(user_id="alice")
    chosen = limits.select_limits([default, alice, other_window], caller)
    assert sorted(item.spec.limit for item in chosen) == [5, 100]
    bob = limits.select_limits([default, alice], policy_pb2.Identity(user_id="bob"))
    assert [item.spec.limit for item in bob] == [10]


def test_team_limit_skipped_without_team() -> None:
    team = LimitSpec("team", "requests", 10, 60)
    assert limits.select_limits([team], policy_pb2.Identity(user_id="u")) == []


def test_runtime_limit_replaces_config_twin() -> None:
    configured = LimitSpec("gateway", "requests", 10, 60)
    runtime = LimitSpec("gateway", "requests", 20, 60, source="runtime")
    assert limits.merge_limits([configured], [runtime]) == [runtime]


def test_estimate_without_max_tokens_uses_default() -> None:
    estimate = limits.estimate_tokens(0, 9)
    assert estimate.input_tokens == 3
    assert estimate.output_tokens == limits.DEFAULT_OUTPUT_TOKENS_ESTIMATE


def test_settled_input_leaves_cache_reads_out() -> None:
    usage = limits.SettledUsage(10, 5, 1000, 7, 0)
    assert limits.settled_amount("input_tokens", usage) == 17
    assert limits.settled_amount("total_tokens", usage) == 22


def test_cost_rounds_up() -> None:
    price = _price(input=3_000_000, output=15_000_000, cache_write=0, cache_read=0)
    assert cost_usd_micros(price, 1, 0, 0, 0) == 3
    assert cost_usd_micros(_price(1, 1, 1, 1), 1, 0, 0, 0) == 1


def test_price_lookup_dated_model() -> None:
    table = load_price_table()
    assert table.lookup("anthropic", "claude-sonnet-4-5-20250929") is not None
    assert table.lookup("anthropic", "unknown-model") is None


def test_tightest_picks_smallest_share() -> None:
    a = limits.AppliedLimit(LimitSpec("user", "requests", 10, 60), "u")
    b = limits.AppliedLimit(LimitSpec("user", "total_tokens", 1000, 60), "u")
    chosen = limits.tightest([limits.LimitUse(a, 5, 1000), limits.LimitUse(b, 900, 1)])
    assert chosen is not None
    assert chosen.limit is b


def test_config_errors_reported_together() -> None:
    config = parse_config(
        {
            "accounts": {
                "a": {
                    "gateways": {
                        "g": {
                            "limits": [
                                {
                                    "scope": "planet",
                                    "kind": "requests",
                                    "limit": 1,
                                    "window_s": 60,
                                },
                                {"kind": "concurrent", "limit": 2, "window_s": 5},
                            ],
                            "loop_guard": {"max_repeats": 0},
                        }
                    }
                }
            }
        },
        environ={},
    )
    with pytest.raises(ConfigError) as error:
        load_gateway_limits(config)
    assert len(error.value.problems) == 3
