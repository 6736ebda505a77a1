"""The ``cf-aig-custom-cost`` request header: per-call prices set by the client.

Format (as in Cloudflare AI Gateway): a JSON object with USD prices per token,

    cf-aig-custom-cost: {"per_token_in": 0.000001, "per_token_out": 0.000002}

``per_token_in`` applies to every input token, cache reads and writes
included, and ``per_token_out`` to output tokens; a missing key counts as 0,
but at least one must be present. The cost replaces the price-table cost of
that call. Numbers are read as decimals, so the cost is exact; it is rounded
up to the next micro-USD. An invalid value is rejected with 400.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from services.ingress.errors import InvalidRequest
from services.ingress.usage import CallOutcome

HEADER = "cf-aig-custom-cost"
_KEYS = ("per_token_in", "per_token_out")
_MAX_HEADER_CHARS = 1024
# A price above 1000 USD per token is surely a mistake (e.g. per-million units).
_MAX_PER_TOKEN_USD = Decimal(1000)


@dataclass(frozen=True, slots=True)
class CustomCost:
    per_token_in_usd: Decimal
    per_token_out_usd: Decimal

    def cost_usd_micros(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
    ) -> int:
        prompt = input_tokens + cache_read_tokens + cache_write_tokens
        usd = prompt * self.per_token_in_usd + output_tokens * self.per_token_out_usd
        return math.ceil(usd * 1_000_000)


def parse_custom_cost(value: str | None) -> CustomCost | None:
    """Parse the header value; None when absent, InvalidRequest when invalid."""
    if value is None:
        return None
    if len(value) > _MAX_HEADER_CHARS:
        raise InvalidRequest(f"invalid {HEADER} header: longer than 1024 characters")
    try:
        parsed = json.loads(value, parse_float=Decimal, parse_int=Decimal)
    except (ValueError, InvalidOperation) as exc:
        raise InvalidRequest(
            f'invalid {HEADER} header: expected JSON like {{"per_token_in": '
            f'0.000001, "per_token_out": 0.000002}}, got {value[:100]!r}'
        ) from exc
    if not isinstance(parsed, dict) or not parsed:
        raise InvalidRequest(
            f"invalid {HEADER} header: expected a JSON object with "
            "per_token_in and/or per_token_out"
        )
    unknown = sorted(set(parsed) - set(_KEYS))
    if unknown:
        raise InvalidRequest(
            f"invalid {HEADER} header: unknown keys {', '.join(unknown)}; "
            "use per_token_in and per_token_out"
        )
    prices = {key: _price(parsed, key) for key in _KEYS}
    return CustomCost(prices["per_token_in"], prices["per_token_out"])


def _price(parsed: dict, key: str) -> Decimal:
    value = parsed.get(key, Decimal(0))
    if (
        not isinstance(value, Decimal)
        or not value.is_finite()
        or not Decimal(0) <= value <= _MAX_PER_TOKEN_USD
    ):
        raise InvalidRequest(
            f"invalid {HEADER} header: {key} must be a number of USD per token "
            f"from 0 to {_MAX_PER_TOKEN_USD}"
        )
    return value


def custom_cost_of(custom: CustomCost, outcome: CallOutcome) -> int:
    """The custom cost of a call from the usage its response reported."""
    return custom.cost_usd_micros(
        outcome.input_tokens,
        outcome.output_tokens,
        outcome.cache_read_tokens,
        outcome.cache_write_tokens,
    )
