"""Parsing and arithmetic of the cf-aig-custom-cost header."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.ingress.custom_cost import parse_custom_cost
from services.ingress.errors import InvalidRequest


def test_absent_header_is_none() -> None:
    assert parse_custom_cost(None) is None


def test_cloudflare_format_gives_exact_cost() -> None:
    cost = parse_custom_cost('{"per_token_in": 0.000001, "per_token_out": 0.000002}')
    assert cost.per_token_in_usd == Decimal("0.000001")
    # 100 input + 20 cache reads + 5 cache writes at 1 micro-USD, 7 output at 2.
    assert cost.cost_usd_micros(100, 7, 20, 5) == 125 + 14


def test_one_key_and_rounding_up() -> None:
    cost = parse_custom_cost('{"per_token_out": 0.0000001}')
    assert cost.cost_usd_micros(1000, 11, 0, 0) == 2  # 1.1 micro-USD


@pytest.mark.parametrize(
    "value",
    [
        "cheap",
        "[]",
        "{}",
        '{"per_token_in": "0.1"}',
        '{"per_token_in": -1}',
        '{"per_token_in": 1e9}',
        '{"per_token_in": NaN}',
        '{"per_token": 0.1}',
        "{" + " " * 2000 + "}",
    ],
)
def test_invalid_values_are_rejected(value: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_custom_cost(value)
    assert "cf-aig-custom-cost" in info.value.message
