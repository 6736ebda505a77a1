"""The price table: list prices per provider and model, and exact call costs.

Prices live in a data file (``prices.toml`` next to this module, or the file
named by ``TOLLGATE_PRICES_FILE``) as integer micro-USD per million tokens, so
that every cost is computed with integer arithmetic and no float rounding.

Lookup rule for a model id, within one provider:

1. the exact id (``claude-sonnet-4-5``);
2. the id with one trailing snapshot suffix removed: ``-YYYYMMDD``,
   ``-YYYY-MM-DD`` or ``-latest`` (``claude-sonnet-4-5-20250929`` ->
   ``claude-sonnet-4-5``, ``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``);
3. an entry's ``aliases`` (``claude-sonnet-4-0`` -> ``claude-sonnet-4``).

A plain "longest listed prefix" rule is deliberately not used: it would price
an unlisted variant such as ``gpt-4o-audio-preview`` at the ``gpt-4o`` rate.
An unknown model has no price (``None``); callers record its cost as unknown,
never as zero. Ids are compared case-insensitively.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PRICES_FILE_ENV = "TOLLGATE_PRICES_FILE"
DEFAULT_PRICES_PATH = Path(__file__).with_name("prices.toml")

TOKENS_PER_PRICE_UNIT = 1_000_000

_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2}|latest)$")
_PRICE_FIELDS = ("input", "output", "cache_write", "cache_read")


class PriceTableError(ValueError):
    """The price file is invalid; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid price table:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """List prices of one model, in integer micro-USD per million tokens."""

    provider: str
    model: str
    input: int
    output: int
    cache_write: int
    cache_read: int
    # The public page the prices were read from, and the day they were read.
    source: str
    as_of: dt.date
    # False when the price could not be read on the provider's own page.
    confirmed: bool = True


@dataclass(frozen=True, slots=True)
class PriceTable:
    # (provider, lowercased model id or alias) -> price
    entries: Mapping[tuple[str, str], ModelPrice]

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        provider = provider.lower()
        model = model.strip().lower()
        if not model:
            return None
        price = self.entries.get((provider, model))
        if price is not None:
            return price
        base = _SNAPSHOT_SUFFIX.sub("", model)
        if base == model:
            return None
        return self.entries.get((provider, base))

    def __len__(self) -> int:
        return len({id(price) for price in self.entries.values()})

    def max_price(self) -> ModelPrice:
        """Return the highest price of each kind in the table, as one price.

        Spend limits charge calls to unknown models at this price, so that an
        unknown model is never free.
        """
        values = list(self.entries.values())
        return ModelPrice(
            provider="*",
            model="*",
            input=max(p.input for p in values),
            output=max(p.output for p in values),
            cache_write=max(p.cache_write for p in values),
            cache_read=max(p.cache_read for p in values),
            source="highest price of each kind in the table",
            as_of=max(p.as_of for p in values),
            confirmed=False,
        )


def cost_usd_micros(
    price: ModelPrice,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
) -> int:
    """The cost of one call in micro-USD, rounded up to the next micro-USD.

    ``input_tokens`` excludes cache reads and writes (the Tollgate usage
    convention), so each token is charged at exactly one rate.
    """
    numerator = (
        input_tokens * price.input
        + output_tokens * price.output
        + cache_read_tokens * price.cache_read
        + cache_write_tokens * price.cache_write
    )
    return -(-numerator // TOKENS_PER_PRICE_UNIT)


def load_price_table(path: Path | None = None) -> PriceTable:
    """Read the price file: ``path``, else ``TOLLGATE_PRICES_FILE``, else the
    file shipped with the package."""
    if path is None:
        env_path = os.environ.get(PRICES_FILE_ENV, "").strip()
        path = Path(env_path) if env_path else DEFAULT_PRICES_PATH
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PriceTableError([f"{path}: {exc}"]) from exc
    return parse_price_table(raw.get("model", []))


def parse_price_table(items: Iterable[object]) -> PriceTable:
    problems: list[str] = []
    entries: dict[tuple[str, str], ModelPrice] = {}
    for index, item in enumerate(items):
        where = f"model[{index}]"
        price = _parse_entry(item, where, problems)
        if price is None or not isinstance(item, dict):
            continue
        names = [price.model, *_aliases(item, where, problems)]
        for name in names:
            key = (price.provider, name.lower())
            if key in entries:
                problems.append(f"{where}: {price.provider}/{name} listed twice")
                continue
            entries[key] = price
    if problems:
        raise PriceTableError(problems)
    return PriceTable(entries)


def _parse_entry(item: object, where: str, problems: list[str]) -> ModelPrice | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: expected a table")
        return None
    before = len(problems)
    provider = _text(item, "provider", where, problems).lower()
    model = _text(item, "model", where, problems)
    source = _text(item, "source", where, problems)
    prices: dict[str, int] = {}
    for name in _PRICE_FIELDS:
        value = item.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(
                f"{where}.{name}: expected a non-negative integer "
                "(micro-USD per million tokens)"
            )
            continue
        prices[name] = value
    as_of = item.get("as_of")
    if not isinstance(as_of, dt.date) or isinstance(as_of, dt.datetime):
        problems.append(f"{where}.as_of: expected a date (YYYY-MM-DD)")
    confirmed = item.get("confirmed", True)
    if not isinstance(confirmed, bool):
        problems.append(f"{where}.confirmed: expected true or false")
    if len(problems) > before:
        return None
    return ModelPrice(
        provider=provider,
        model=model,
        source=source,
        as_of=as_of,  # type: ignore[arg-type]
        confirmed=confirmed,
        **prices,
    )


def _aliases(item: dict, where: str, problems: list[str]) -> list[str]:
    aliases = item.get("aliases", [])
    if not isinstance(aliases, list) or not all(
        isinstance(a, str) and a.strip() for a in aliases
    ):
        problems.append(f"{where}.aliases: expected a list of model ids")
        return []
    return [a.strip() for a in aliases]


def _text(item: dict, name: str, where: str, problems: list[str]) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}.{name}: expected a non-empty string")
        return ""
    return value.strip()
