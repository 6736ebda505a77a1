"""The cache key of a request: a SHA-256 over everything that changes the answer.

The key covers the provider, the method and endpoint, the request body in
canonical form (keys sorted, so key order does not matter, and the rule's
ignored top-level fields removed), the headers that change the answer, the
stream flag and the cache scope. A ``cf-aig-cache-key`` header replaces the
body part only: provider, endpoint, headers, stream flag and scope stay in
the key, so a custom key never reaches another user's entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import Any

import orjson

# Request headers that change the provider's answer.
ANSWER_HEADERS = (
    "anthropic-version",
    "anthropic-beta",
    "openai-organization",
    "openai-project",
)
# Bumped when the key layout changes, so old entries are never read.
KEY_VERSION = "v1"
SHARED_SCOPE = "shared"


def user_scope(user_id: str) -> str:
    return "user:" + user_id


def canonical_body(body: bytes, ignore_fields: Collection[str]) -> bytes:
    """Return the body as JSON with sorted keys and without ``ignore_fields``.

    A body that is not a JSON object is returned unchanged, so it still keys
    on its exact bytes.
    """
    if not body:
        return b""
    try:
        value: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(value, dict):
        return body
    if ignore_fields:
        value = {
            name: item for name, item in value.items() if name not in ignore_fields
        }
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def body_part(body: bytes, ignore_fields: Collection[str], custom_key: str) -> str:
    """Return the body's part of the key, or the custom key in its place."""
    if custom_key:
        return "custom:" + custom_key
    digest = hashlib.sha256(canonical_body(body, ignore_fields)).hexdigest()
    return "body:" + digest


def cache_key_hash(
    *,
    provider: str,
    method: str,
    endpoint: str,
    body: str,
    headers: Mapping[str, str],
    stream: bool,
    scope: str,
) -> str:
    """Return the hex SHA-256 of the key parts; ``body`` comes from body_part."""
    answer_headers = [[name, headers.get(name, "")] for name in ANSWER_HEADERS]
    # A JSON array keeps the parts apart, so no two part lists hash the same.
    parts = [
        KEY_VERSION,
        provider,
        method.upper(),
        endpoint,
        body,
        answer_headers,
        stream,
        scope,
    ]
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()
