"""Request parsing shared by both providers: JSON bodies, API keys, prompt parts."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from aiohttp import web

from .settings import SimSettings


class InvalidBody(ValueError):
    """A request body that is not a JSON object."""


async def read_json_object(request: web.Request) -> dict[str, object]:
    """Parse the body as a JSON object, raising InvalidBody otherwise."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidBody(f"invalid JSON body: {error}") from None
    if not isinstance(body, dict):
        raise InvalidBody("invalid request body: expected a JSON object")
    return body


def bearer_token(request: web.Request) -> str:
    """Return the token of an ``Authorization: Bearer`` header, or ''."""
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


def key_status(key: str, settings: SimSettings) -> str:
    """Classify an API key as ``missing``, ``invalid`` or ``ok``."""
    if not key:
        return "missing"
    if key in settings.rejected_keys:
        return "invalid"
    if settings.api_keys is not None and key not in settings.api_keys:
        return "invalid"
    return "ok"


@dataclass(frozen=True, slots=True)
class PromptTokens:
    """Input token split of one request, following the provider's usage fields."""

    uncached: int
    cache_creation: int = 0
    cache_read: int = 0

    @property
    def total(self) -> int:
        return self.uncached + self.cache_creation + self.cache_read


def split_cached(total: int, prefix: int, mode: str, seen: bool) -> PromptTokens:
    """Split ``total`` tokens into uncached, written and read parts.

    ``prefix`` is the cacheable part and ``seen`` matters only in ``auto`` mode.
    """
    if prefix <= 0 or mode == "none":
        return PromptTokens(total)
    read = mode == "read" or (mode == "auto" and seen)
    if read:
        return PromptTokens(total - prefix, cache_read=prefix)
    return PromptTokens(total - prefix, cache_creation=prefix)


def masked_key(key: str) -> str:
    """Return ``key`` with all but its first 3 and last 4 characters hidden."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"
