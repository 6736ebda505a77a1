"""The gateway configuration: defaults, fail modes and collected problems."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, parse_config


def _gateway(entry: dict[str, object]) -> dict[str, object]:
    return {"accounts": {"acme": {"gateways": {"g": entry}}}}


def test_open_gateway_fails_open_by_default() -> None:
    config = parse_config(_gateway({}), environ={})

    gateway = config.gateway("acme", "g")
    assert gateway is not None
    assert gateway.fail_mode == "open"


def test_authenticated_gateway_fails_closed_by_default() -> None:
    config = parse_config(_gateway({"authenticated": True}), environ={})

    gateway = config.gateway("acme", "g")
    assert gateway is not None
    assert gateway.fail_mode == "closed"


def test_authenticated_gateway_cannot_fail_open() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(_gateway({"authenticated": True, "fail_mode": "open"}), environ={})

    assert "cannot fail open" in str(raised.value)


def test_problems_reported_together() -> None:
    raw = {
        "providers": {"x": {"format": "soap", "base_url": "ftp://host"}},
        "accounts": {"acme": {"gateways": {"g": {"fail_mode": "sideways"}}}},
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, environ={})

    problems = raised.value.problems
    assert len(problems) == 3
    assert any("providers.x.format" in p for p in problems)
    assert any("providers.x.base_url" in p for p in problems)
    assert any("fail_mode" in p for p in problems)


def test_base_url_overridden_by_environment() -> None:
    config = parse_config(
        {}, environ={"TOLLGATE_OPENAI_BASE_URL": "http://127.0.0.1:9/"}
    )

    assert config.providers["openai"].base_url == "http://127.0.0.1:9"
    assert config.gateway("default", "default") is not None
