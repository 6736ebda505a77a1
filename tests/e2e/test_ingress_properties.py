"""Random headers, paths and bodies against a running ingress (hypothesis).

Whatever arrives, the ingress returns a forwarded response or its own
error in a provider's JSON format, never with a 500, and never with one of
the secrets sent along with the request.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.stack import RunningStack

SECRET_PROVIDER_KEY = "sk-ant-api03-propertytestsecret0123456789"
SECRET_GATEWAY_KEY = "tg_propertytestgatewaysecret0123456789abcdef"

_segment = st.one_of(
    st.sampled_from(
        ["v1", "messages", "chat", "completions", "models", "..", ".", "", "%2e%2e",
         "%2F", "@evil.example", "http:", "count_tokens", "%00", "a%5cb", "~x"]
    ),
    st.text(alphabet="abcdefxyz0123456789-_.~%@:", min_size=1, max_size=12),
)  # fmt: skip
_prefix = st.sampled_from(
    [
        "/v1/acme/open/anthropic",
        "/v1/acme/open/openai",
        "/v1/acme/secure/anthropic",
        "/v1/acme/nope/anthropic",
        "/v1/acme/open/unknown",
        "/anthropic",
        "/openai",
        "/v1",
        "",
    ]
)
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40
)
_headers = st.dictionaries(
    st.sampled_from(
        [
            "x-api-key",
            "authorization",
            "cf-aig-authorization",
            "cf-aig-metadata",
            "cf-aig-request-timeout",
            "cf-aig-collect-log",
            "anthropic-version",
            "content-type",
            "x-custom",
        ]
    ),
    _header_value,
    max_size=4,
)
_json_body = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["model", "messages", "stream", "max_tokens",
                                       "x"]), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip
_body = st.one_of(
    st.binary(max_size=200),
    # json.dumps, unlike orjson, also writes integers past 64 bits.
    _json_body.map(lambda value: json.dumps(value).encode()),
    st.just(b'{"model":"claude-sonnet-4-5","max_tokens":8,'
            b'"messages":[{"role":"user","content":"hi"}]}'),
)  # fmt: skip


def _is_provider_error(body: bytes) -> bool:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(value, dict) or not isinstance(value.get("error"), dict):
        return False
    error = value["error"]
    if value.get("type") == "error":
        return isinstance(error.get("type"), str) and isinstance(
            error.get("message"), str
        )
    return isinstance(error.get("message"), str)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    prefix=_prefix,
    segments=st.lists(_segment, max_size=4),
    headers=_headers,
    body=_body,
    secret_header=st.sampled_from(
        ["x-api-key", "authorization", "cf-aig-authorization"]
    ),
    secret=st.sampled_from([SECRET_PROVIDER_KEY, SECRET_GATEWAY_KEY]),
)  # fmt: skip
def test_ingress_answers_any_request_safely(
    stack: RunningStack,
    method: str,
    prefix: str,
    segments: list[str],
    headers: dict[str, str],
    body: bytes,
    secret_header: str,
    secret: str,
) -> None:
    path = prefix + "/" + "/".join(segments)
    headers = dict(headers)
    headers[secret_header] = (
        secret if secret_header == "x-api-key" else f"Bearer {secret}"
    )
    url = urlsplit(stack.ingress_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("content-length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        status, answer = response.status, response.read()
        content_type = response.getheader("content-type", "")
    finally:
        connection.close()

    assert status != 500, answer
    assert SECRET_PROVIDER_KEY.encode() not in answer
    assert SECRET_GATEWAY_KEY.encode() not in answer
    if status >= 400 and "json" in content_type:
        assert _is_provider_error(answer), answer
    if status >= 400:
        assert "json" in content_type or status == 405, (status, answer)


def test_property_run_left_no_secret_in_logs(stack: RunningStack) -> None:
    logs = [p for p in (stack.data_dir / "logs").glob("*.log") if p.stem != "simulator"]
    for path in logs:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert SECRET_PROVIDER_KEY not in text, path.name
        assert SECRET_GATEWAY_KEY not in text, path.name
