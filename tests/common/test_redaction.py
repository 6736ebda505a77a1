"""The redaction list: headers, key patterns, known values, and the log filter."""

from __future__ import annotations

import io
import logging

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common import redaction
from services.common.logs import JsonFormatter, RedactionFilter
from services.common.redaction import (
    REDACTED,
    SECRET_HEADERS,
    redact_bytes,
    redact_headers,
    redact_text,
)

PROVIDER_KEY = "sk-ant-api03-Zx9VbQ1kLmN0pQrStUvWxYz_0123456789"
GATEWAY_KEY = "tg_Q2hhbmdlTWVOb3dQbGVhc2VUaGlzSXNBVGVzdEtleQ"


@pytest.mark.parametrize(
    "text",
    [
        f"x-api-key: {PROVIDER_KEY}",
        f"X-Api-Key={PROVIDER_KEY}",
        f"authorization: Bearer {PROVIDER_KEY}",
        f"cf-aig-authorization: Bearer {GATEWAY_KEY}",
        f'{{"authorization": "Bearer {PROVIDER_KEY}"}}',
        f'{{"x-api-key":"{PROVIDER_KEY}"}}',
        f"the key is {PROVIDER_KEY}.",
        f"use {GATEWAY_KEY} here",
        f"Bearer {GATEWAY_KEY}",
        f"sk-proj-{'a' * 40}",
    ],
)
def test_redact_text_removes_secret(text: str) -> None:
    redacted = redact_text(text)

    assert PROVIDER_KEY not in redacted
    assert GATEWAY_KEY not in redacted
    assert "a" * 40 not in redacted
    assert REDACTED in redacted


def test_redact_text_keeps_json_valid() -> None:
    text = orjson.dumps({"x-api-key": PROVIDER_KEY, "model": "m"}).decode()

    value = orjson.loads(redact_text(text))

    assert value == {"x-api-key": REDACTED, "model": "m"}


def test_redact_text_cookie_header() -> None:
    redacted = redact_text("cookie: session=abc123; theme=dark")

    assert "abc123" not in redacted
    assert "dark" not in redacted


def test_redact_text_keeps_placeholders() -> None:
    text = "send it as cf-aig-authorization: Bearer <key> or x-api-key: <key>"

    assert redact_text(text) == text


def test_redact_text_keeps_plain_text() -> None:
    text = "Summarise the ticket about sk- prefixes and tg_ names in one line."

    assert redact_text(text) == text


def test_redact_text_known_values() -> None:
    short_secret = "mysecret-42"
    text = f"prompt mentions {short_secret} twice: {short_secret}"

    redacted = redact_text(text, [short_secret, "a", ""])

    assert short_secret not in redacted
    assert redacted.count(REDACTED) == 2
    # Values under eight characters are not replaced as substrings.
    assert "prompt" in redacted


def test_redact_bytes_matches_text() -> None:
    data = f'{{"messages":[{{"content":"key {PROVIDER_KEY}"}}]}}'.encode()

    redacted = redact_bytes(data + b"\xff\xfe", [GATEWAY_KEY])

    assert PROVIDER_KEY.encode() not in redacted
    assert redacted.endswith(b"\xff\xfe")
    assert orjson.loads(redacted[:-2])["messages"][0]["content"] == f"key {REDACTED}"


def test_redact_headers_by_name() -> None:
    headers = {name: "value-of-secret" for name in SECRET_HEADERS}
    headers["anthropic-version"] = "2023-06-01"

    redacted = redact_headers(headers)

    assert all(redacted[name] == REDACTED for name in SECRET_HEADERS)
    assert redacted["anthropic-version"] == "2023-06-01"


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"tests.redaction.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_log_filter_scrubs_arguments() -> None:
    logger, stream = _logger(logging.Formatter("%(message)s"))

    logger.info("forwarding with x-api-key: %s", PROVIDER_KEY)
    logger.warning("gateway key %s rejected", GATEWAY_KEY)

    output = stream.getvalue()
    assert PROVIDER_KEY not in output
    assert GATEWAY_KEY not in output
    assert output.count(REDACTED) == 2


def test_log_filter_scrubs_tracebacks() -> None:
    logger, stream = _logger(JsonFormatter())

    try:
        raise ValueError(f"bad header authorization: Bearer {PROVIDER_KEY}")
    except ValueError:
        logger.exception("request failed")

    entry = orjson.loads(stream.getvalue())
    assert PROVIDER_KEY not in stream.getvalue()
    assert "ValueError" in entry["exc_info"]


MARKER_TEXT = st.lists(
    st.sampled_from(
        list('ab \n",:=_-<x')
        + ["sk-", "tg_", "Bearer ", "x-api-key", '"authorization"', "Cookie"]
        + ["0123456789abcdefghij"]
    ),
    max_size=40,
).map("".join)


@given(MARKER_TEXT)
def test_redact_text_matches_the_full_pattern(text: str) -> None:
    # Matching only next to the markers gives what the full pattern gives.
    expected = redaction._TEXT_PATTERN.sub(redaction._replace_text, text)

    assert redact_text(text) == expected
    assert redact_bytes(text.encode()) == expected.encode()


def test_redact_bytes_large_body_with_a_marker_word() -> None:
    body = b"x" * (1 << 20) + b' "authorization": "Bearer abcdefghijk" ' + b"y" * 100

    redacted = redact_bytes(body)

    assert b"abcdefghijk" not in redacted
    assert redacted.startswith(b"x" * (1 << 20))
