"""Caller identity on open gateways: the user id from metadata or provider key."""

from __future__ import annotations

import hashlib
import hmac

import orjson

from gateway.policy.v1 import policy_pb2
from services.policy.errors import InvalidRequestError

# Cloudflare AI Gateway allows at most five entries in cf-aig-metadata.
MAX_METADATA_ENTRIES = 5
MAX_METADATA_VALUE_CHARS = 256


def parse_metadata(header: str) -> dict[str, str]:
    """Parse cf-aig-metadata: a JSON object of at most five scalar entries."""
    if not header:
        return {}
    try:
        value = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            "invalid cf-aig-metadata header: expected a JSON object"
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequestError(
            "invalid cf-aig-metadata header: expected a JSON object"
        )
    if len(value) > MAX_METADATA_ENTRIES:
        raise InvalidRequestError(
            f"invalid cf-aig-metadata header: at most {MAX_METADATA_ENTRIES} "
            f"entries are allowed, got {len(value)}"
        )
    metadata: dict[str, str] = {}
    for key, entry in value.items():
        if isinstance(entry, (dict, list)) or entry is None:
            raise InvalidRequestError(
                f"invalid cf-aig-metadata header: entry {key!r} must be a "
                "string, number or boolean"
            )
        text = entry if isinstance(entry, str) else orjson.dumps(entry).decode()
        if any(ord(char) < 0x20 for char in str(key) + text):
            raise InvalidRequestError(
                f"invalid cf-aig-metadata header: entry {key!r} contains a "
                "control character"
            )
        metadata[str(key)] = text[:MAX_METADATA_VALUE_CHARS]
    return metadata


def provider_key_user(presented_key: str, secret: bytes) -> str:
    """Derive a stable user id from a provider key without revealing the key.

    A keyed hash (HMAC-SHA256 under the deployment's identity secret) keeps
    bring-your-own-key users apart while making the id useless for guessing
    the key offline.
    """
    digest = hmac.new(secret, presented_key.encode(), hashlib.sha256).hexdigest()
    return "key:" + digest[:24]


def resolve_anonymous(
    presented_key: str, metadata: dict[str, str], secret: bytes
) -> policy_pb2.Identity:
    """Resolve the identity of a call on a gateway without authentication."""
    user = metadata.get("user", "")
    if user:
        return policy_pb2.Identity(
            user_id=user, source=policy_pb2.IDENTITY_SOURCE_METADATA
        )
    if presented_key:
        return policy_pb2.Identity(
            user_id=provider_key_user(presented_key, secret),
            source=policy_pb2.IDENTITY_SOURCE_PROVIDER_KEY_HASH,
        )
    return policy_pb2.Identity(
        user_id="anonymous", source=policy_pb2.IDENTITY_SOURCE_ANONYMOUS
    )
