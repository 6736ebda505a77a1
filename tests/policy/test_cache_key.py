"""The cache key: canonical bodies and which parts change the hash."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.policy import cache_key
from services.policy.cache_controls import parse_cache_controls
from services.policy.errors import InvalidRequestError

BODY = orjson.dumps({"model": "m", "max_tokens": 5, "temperature": 0.2})


def _key(**changes: Any) -> str:
    parts: dict[str, Any] = {
        "provider": "anthropic",
        "method": "POST",
        "endpoint": "/v1/messages",
        "body": cache_key.body_part(BODY, (), ""),
        "headers": {"anthropic-version": "2023-06-01"},
        "stream": False,
        "scope": cache_key.user_scope("alice"),
    }
    parts.update(changes)
    return cache_key.cache_key_hash(**parts)


def test_canonical_body_sorts_keys() -> None:
    reordered = orjson.dumps({"temperature": 0.2, "max_tokens": 5, "model": "m"})
    assert cache_key.canonical_body(reordered, ()) == cache_key.canonical_body(BODY, ())


def test_canonical_body_drops_ignored_fields() -> None:
    canonical = orjson.loads(cache_key.canonical_body(BODY, {"temperature"}))
    assert canonical == {"model": "m", "max_tokens": 5}


def test_canonical_body_keeps_non_json_bytes() -> None:
    assert cache_key.canonical_body(b"not json", ()) == b"not json"
    assert cache_key.canonical_body(b"[1, 2]", ()) == b"[1, 2]"


@pytest.mark.parametrize(
    "changes",
    [
        {"provider": "openai"},
        {"method": "GET"},
        {"endpoint": "/v1/messages/count_tokens"},
        {"body": cache_key.body_part(BODY.replace(b"5", b"6"), (), "")},
        {"body": cache_key.body_part(b'{"model": "n"}', (), "")},
        {"headers": {"anthropic-version": "2023-01-01"}},
        {"headers": {"anthropic-version": "2023-06-01", "anthropic-beta": "x"}},
        {"headers": {"anthropic-version": "2023-06-01", "openai-project": "p"}},
        {"headers": {"anthropic-version": "2023-06-01", "openai-organization": "o"}},
        {"stream": True},
        {"scope": cache_key.user_scope("bob")},
        {"scope": cache_key.SHARED_SCOPE},
    ],
)
def test_key_part_changed_alone_changes_key(changes: dict[str, Any]) -> None:
    assert _key(**changes) != _key()


def test_body_whitespace_does_not_change_key() -> None:
    assert _key(body=cache_key.body_part(BODY + b" \n", (), "")) == _key()


def test_other_headers_do_not_change_key() -> None:
    headers = {"anthropic-version": "2023-06-01", "cf-aig-metadata": "{}"}
    assert _key(headers=headers) == _key()


def test_custom_key_replaces_body_only() -> None:
    custom = cache_key.body_part(BODY, (), "faq-1")
    other_body = cache_key.body_part(b'{"model": "n"}', (), "faq-1")
    assert custom == other_body
    assert _key(body=custom) != _key()
    assert _key(body=custom, scope="user:bob") != _key(body=custom)


def test_key_is_sha256_hex() -> None:
    key = _key()
    assert len(key) == 64
    int(key, 16)


def test_controls_defaults() -> None:
    controls = parse_cache_controls({})
    assert controls.skip is False
    assert controls.ttl_s == 0
    assert controls.custom_key == ""


def test_controls_read_headers() -> None:
    controls = parse_cache_controls(
        {
            "cf-aig-skip-cache": "TRUE",
            "cf-aig-cache-ttl": "3600",
            "cf-aig-cache-key": "k",
        }
    )
    assert controls.skip is True
    assert controls.ttl_s == 3600
    assert controls.custom_key == "k"


@pytest.mark.parametrize(
    "headers",
    [
        {"cf-aig-cache-ttl": "59"},
        {"cf-aig-cache-ttl": "2592001"},
        {"cf-aig-cache-ttl": "1.5"},
        {"cf-aig-cache-ttl": "-60"},
        {"cf-aig-cache-ttl": "６０"},
        {"cf-aig-skip-cache": "yes please"},
        {"cf-aig-cache-key": "k" * 1025},
    ],
)
def test_controls_reject_invalid(headers: dict[str, str]) -> None:
    with pytest.raises(InvalidRequestError):
        parse_cache_controls(headers)
