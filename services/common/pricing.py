"""The price table shared by the policy service (spend limits) and analytics.

Prices are integers in micro-USD per million tokens, so that costs stay exact
integers: a call's cost in micro-USD is ``tokens * price / 1_000_000``,
rounded up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

PRICE_FILE = "prices.json"
TOKENS_PER_PRICE_UNIT = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model in micro-USD per million tokens."""

    input: int
    output: int
    cache_write: int
    cache_read: int


@dataclass(frozen=True, slots=True)
class PriceTable:
    prices: dict[tuple[str, str], ModelPrice]

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """Return the price of ``model``, also for a dated variant of a listed name.

        ``claude-sonnet-4-5-20250929`` and ``gpt-4o-mini-2024-07-18`` resolve
        to their base names by dropping trailing ``-`` parts.
        """
        name = model
        while name:
            price = self.prices.get((provider, name))
            if price is not None:
                return price
            name, _, _ = name.rpartition("-")
        return None

    def max_price(self) -> ModelPrice:
        """Return the highest price of each kind in the table, as one price."""
        values = list(self.prices.values())
        return ModelPrice(
            input=max(p.input for p in values),
            output=max(p.output for p in values),
            cache_write=max(p.cache_write for p in values),
            cache_read=max(p.cache_read for p in values),
        )


def parse_price_table(raw: dict[str, Any]) -> PriceTable:
    prices: dict[tuple[str, str], ModelPrice] = {}
    for provider, models in raw.items():
        if provider.startswith("_"):
            continue
        for model, entry in models.items():
            prices[(provider, model)] = ModelPrice(
                input=int(entry["input"]),
                output=int(entry["output"]),
                cache_write=int(entry.get("cache_write", entry["input"])),
                cache_read=int(entry.get("cache_read", entry["input"])),
            )
    return PriceTable(prices)


def load_price_table() -> PriceTable:
    """Read the price table shipped with the package."""
    text = resources.files("services.common").joinpath(PRICE_FILE).read_text("utf-8")
    return parse_price_table(json.loads(text))


def cost_usd_micros(
    price: ModelPrice,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
) -> int:
    """Return the cost of one call in micro-USD, rounded up to a whole micro-USD."""
    total = (
        input_tokens * price.input
        + output_tokens * price.output
        + cache_read_tokens * price.cache_read
        + cache_write_tokens * price.cache_write
    )
    return -(-total // TOKENS_PER_PRICE_UNIT)
