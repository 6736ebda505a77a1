"""The price table: file parsing, lookup rule and exact integer costs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from services.common.pricing import (
    ModelPrice,
    PriceTableError,
    cost_usd_micros,
    load_price_table,
)


@pytest.fixture(scope="module")
def table():
    return load_price_table()


def test_shipped_table_loads_with_sources(table):
    assert len(table) >= 25
    for price in table.entries.values():
        assert price.source.startswith("https://")
        assert isinstance(price.as_of, dt.date)


@pytest.mark.parametrize(
    ("provider", "model", "listed"),
    [
        ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("anthropic", "claude-sonnet-4-0", "claude-sonnet-4"),
        ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("anthropic", "Claude-Opus-4-1-20250805", "claude-opus-4-1"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "gpt-4o", "gpt-4o"),
        ("openai", "gpt-5-nano-2025-08-07", "gpt-5-nano"),
    ],
)
def test_lookup_exact_then_snapshot_suffix_then_alias(table, provider, model, listed):
    price = table.lookup(provider, model)
    assert price is not None
    assert price.model == listed


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o-audio-preview"),  # not priced as gpt-4o
        ("openai", "claude-sonnet-4-5"),  # provider matters
        ("anthropic", "claude-sonnet-4-5-2025"),  # not a snapshot suffix
        ("anthropic", ""),
        ("groq", "llama-3.3-70b"),
    ],
)
def test_lookup_unknown_is_none(table, provider, model):
    assert table.lookup(provider, model) is None


def test_sonnet_prices_match_the_published_table(table):
    price = table.lookup("anthropic", "claude-sonnet-4-5")
    assert (price.input, price.output, price.cache_write, price.cache_read) == (
        3_000_000,
        15_000_000,
        3_750_000,
        300_000,
    )


def _price(**kw) -> ModelPrice:
    base = dict(
        provider="p",
        model="m",
        input=3_000_000,
        output=15_000_000,
        cache_write=3_750_000,
        cache_read=300_000,
        source="https://example.invalid",
        as_of=dt.date(2026, 1, 1),
    )
    base.update(kw)
    return ModelPrice(**base)


def test_cost_is_exact_and_counts_each_token_kind_once():
    price = _price()
    # 1000 in * 3 + 500 out * 15 + 2000 cr * 0.3 + 400 cw * 3.75 USD/MTok
    assert cost_usd_micros(price, 1000, 500, 2000, 400) == (3000 + 7500 + 600 + 1500)


def test_cost_rounds_up_to_next_micro_usd():
    price = _price(input=50_000, output=400_000, cache_read=5_000, cache_write=0)
    assert cost_usd_micros(price, 1, 0, 0, 0) == 1  # 0.05 micro-USD
    assert cost_usd_micros(price, 20, 0, 0, 0) == 1  # exactly 1
    assert cost_usd_micros(price, 21, 0, 0, 0) == 2
    assert cost_usd_micros(price, 0, 0, 0, 0) == 0


def test_cost_large_counts_stay_exact():
    price = _price()
    tokens = 10**12
    assert cost_usd_micros(price, tokens, 0, 0, 0) == 3 * 10**12


def test_invalid_file_lists_every_problem(tmp_path: Path):
    path = tmp_path / "prices.toml"
    path.write_text(
        '[[model]]\nprovider = "a"\nmodel = "m"\ninput = 1.5\noutput = -1\n'
        'cache_write = 1\ncache_read = 1\nsource = "s"\nas_of = "yesterday"\n'
        '[[model]]\nprovider = "a"\nmodel = "x"\ninput = 1\noutput = 1\n'
        'cache_write = 1\ncache_read = 1\nsource = "s"\nas_of = 2026-01-01\n'
        'aliases = ["x"]\n'
    )
    with pytest.raises(PriceTableError) as info:
        load_price_table(path)
    text = str(info.value)
    assert "model[0].input" in text
    assert "model[0].output" in text
    assert "model[0].as_of" in text
    assert "listed twice" in text


def test_env_var_selects_the_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "p.toml"
    path.write_text(
        '[[model]]\nprovider = "openai"\nmodel = "tiny"\ninput = 1\noutput = 2\n'
        'cache_write = 1\ncache_read = 1\nsource = "s"\nas_of = 2026-01-01\n'
    )
    monkeypatch.setenv("TOLLGATE_PRICES_FILE", str(path))
    table = load_price_table()
    assert table.lookup("openai", "tiny").output == 2
    assert table.lookup("openai", "gpt-4o") is None
