"""The per-request cache headers, with Cloudflare AI Gateway's names.

- ``cf-aig-skip-cache: true`` neither reads nor writes the cache (BYPASS).
- ``cf-aig-cache-ttl: SECONDS`` sets the entry's lifetime, 60 seconds to one
  month as Cloudflare accepts. Rules may set shorter TTLs, headers may not.
- ``cf-aig-cache-key: TEXT`` replaces the request body in the key.

An invalid value is rejected with InvalidRequestError, which the ingress
answers with 400 in the provider's error format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.policy.cache_rules import MAX_TTL_S
from services.policy.errors import InvalidRequestError

MIN_HEADER_TTL_S = 60
MAX_CUSTOM_KEY_CHARS = 1024
_TRUE = ("true", "1")
_FALSE = ("false", "0", "")


@dataclass(frozen=True, slots=True)
class CacheControls:
    skip: bool = False
    # 0 when the header is absent.
    ttl_s: int = 0
    custom_key: str = ""


def parse_cache_controls(headers: Mapping[str, str]) -> CacheControls:
    """Read the cache headers of a request; raises InvalidRequestError."""
    skip_value = headers.get("cf-aig-skip-cache", "").strip().lower()
    if skip_value not in _TRUE + _FALSE:
        raise InvalidRequestError(
            f"invalid cf-aig-skip-cache header {skip_value!r}: expected true or false"
        )

    ttl_s = 0
    ttl_value = headers.get("cf-aig-cache-ttl", "").strip()
    if ttl_value:
        if not ttl_value.isascii() or not ttl_value.isdigit():
            raise InvalidRequestError(
                f"invalid cf-aig-cache-ttl header {ttl_value!r}: expected whole seconds"
            )
        ttl_s = int(ttl_value)
        if not MIN_HEADER_TTL_S <= ttl_s <= MAX_TTL_S:
            raise InvalidRequestError(
                f"invalid cf-aig-cache-ttl header {ttl_s}: expected "
                f"{MIN_HEADER_TTL_S} to {MAX_TTL_S} seconds"
            )

    custom_key = headers.get("cf-aig-cache-key", "")
    if len(custom_key) > MAX_CUSTOM_KEY_CHARS:
        raise InvalidRequestError(
            f"invalid cf-aig-cache-key header: longer than {MAX_CUSTOM_KEY_CHARS} "
            "characters"
        )
    return CacheControls(skip=skip_value in _TRUE, ttl_s=ttl_s, custom_key=custom_key)
