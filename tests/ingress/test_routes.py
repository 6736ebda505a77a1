"""Route parsing and the upstream URL: a path never leaves the provider's URL."""

from __future__ import annotations

import pytest

from services.common.config import parse_config
from services.ingress.errors import InvalidRequest, NotFound
from services.ingress.routes import parse_route, upstream_url

CONFIG = parse_config(
    {"accounts": {"acme": {"gateways": {"open": {}}}}},
    environ={"TOLLGATE_ANTHROPIC_BASE_URL": "http://127.0.0.1:9/anthropic"},
)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/acme/open/anthropic/../x",
        "/v1/acme/open/anthropic/v1/..",
        "/v1/acme/open/anthropic/%2e%2e/x",
        "/v1/acme/open/anthropic/%2E%2E/x",
        "/v1/acme/open/anthropic/.%2e/x",
        "/v1/acme/open/anthropic//evil.example/x",
        "/v1/acme/open/anthropic/http://evil.example/x",
        "/v1/acme/open/anthropic/https:%2f%2fevil.example/x",
        "/v1/acme/open/anthropic/v1%2fmessages",
        "/v1/acme/open/anthropic/v1\\messages",
        "/v1/acme/open/anthropic/v1%5cmessages",
        "/v1/acme/open/anthropic/v1/messages%00",
        "/v1/acme/open/anthropic/v1/messages%3fx=1",
        "/v1/acme/open/anthropic/v1/messages%23frag",
        "/v1/acme/open/anthropic/./v1",
    ],
)
def test_parse_route_rejects_escape(path: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid path"):
        parse_route(path, CONFIG)


def test_parse_route_keeps_at_sign_in_path() -> None:
    route = parse_route("/v1/acme/open/anthropic/models/m@001:predict", CONFIG)

    assert route.path == "/models/m@001:predict"


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/v1/messages", "", "http://127.0.0.1:9/anthropic/v1/messages"),
        ("/v1/models", "limit=2", "http://127.0.0.1:9/anthropic/v1/models?limit=2"),
        ("/@evil.example/x", "", "http://127.0.0.1:9/anthropic/@evil.example/x"),
        ("/", "", "http://127.0.0.1:9/anthropic/"),
    ],
)
def test_upstream_url_stays_on_base(path: str, query: str, expected: str) -> None:
    assert upstream_url("http://127.0.0.1:9/anthropic", path, query) == expected


@pytest.mark.parametrize(
    "path",
    ["/../x", "/a/../../x", "/%2e%2e/x", "#frag", "@evil.example/x", ".evil.example"],
)
def test_upstream_url_rejects_other_host_or_prefix(path: str) -> None:
    with pytest.raises(InvalidRequest):
        upstream_url("http://127.0.0.1:9/anthropic", path, "")


@pytest.mark.parametrize("path", ["@evil.example/x", ".evil.example/x", ":1/x"])
def test_upstream_url_rejects_host_change_without_prefix(path: str) -> None:
    with pytest.raises(InvalidRequest):
        upstream_url("http://127.0.0.1:9", path, "")


@pytest.mark.parametrize("path", ["/v1", "/v1/acme", "/v1/acme/open", "/v1/acme/open/"])
def test_parse_route_short_v1_path_not_found(path: str) -> None:
    with pytest.raises(NotFound, match=r"/v1/\{account_id\}"):
        parse_route(path, CONFIG)


def test_parse_route_long_and_short_forms() -> None:
    long_form = parse_route("/v1/acme/open/anthropic/v1/messages", CONFIG)
    unknown = CONFIG.gateway("default", "default")

    assert long_form.account_id == "acme"
    assert long_form.gateway_id == "open"
    assert long_form.provider == "anthropic"
    assert long_form.path == "/v1/messages"
    assert unknown is None
    with pytest.raises(NotFound, match="gateway default/default not found"):
        parse_route("/anthropic/v1/messages", CONFIG)
