"""Input limits at the ingress: body and header size, path escapes, redirects.

The module starts its own stack, with one extra OpenAI-compatible provider
whose upstream is a loopback HTTP server that responds to every request with a
302 to the simulator.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import orjson
import pytest

from tests.support.stack import CONFIG, RunningStack, start_stack, stop_stack

MODEL_A = "claude-sonnet-4-5"


class _Redirector(BaseHTTPRequestHandler):
    target = ""
    hits = 0

    def _redirect(self) -> None:
        type(self).hits += 1
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.send_response(302)
        self.send_header("location", self.target + self.path)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = _redirect

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def limits_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = CONFIG + (
        "\n[providers.redirector]\n"
        'format = "openai"\n'
        f'base_url = "http://127.0.0.1:{server.server_address[1]}/api"\n'
    )
    running = start_stack(Path(tmp_path_factory.mktemp("limits")), config)
    _Redirector.target = running.simulator_url + "/openai"
    try:
        yield running
    finally:
        stop_stack(running)
        server.shutdown()
        server.server_close()
        thread.join(5)


def _send(
    stack: RunningStack,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(stack.ingress_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        all_headers = {"content-type": "application/json", **(headers or {})}
        all_headers.setdefault("content-length", str(len(body)))
        for name, value in all_headers.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def test_body_over_limit_gets_413(limits_stack: RunningStack) -> None:
    client = anthropic.Anthropic(
        base_url=limits_stack.anthropic_base_url(),
        api_key="sk-ant-test",
        max_retries=0,
    )
    before = limits_stack.simulator_total()
    try:
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.create(
                model=MODEL_A,
                max_tokens=8,
                messages=[{"role": "user", "content": "x" * (33 << 20)}],
            )
    finally:
        client.close()

    assert caught.value.status_code == 413
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "request_too_large"
    assert limits_stack.simulator_total() == before


def test_declared_body_over_limit_gets_413(limits_stack: RunningStack) -> None:
    status, _, body = _send(
        limits_stack,
        "POST",
        "/v1/acme/open/openai/v1/chat/completions",
        b"{}",
        {"content-length": str(40 << 20), "authorization": "Bearer sk-test"},
    )

    assert status == 413
    assert orjson.loads(body)["error"]["code"] == "request_too_large"


def test_oversized_header_rejected_cleanly(limits_stack: RunningStack) -> None:
    status, headers, body = _send(
        limits_stack,
        "POST",
        "/v1/acme/open/anthropic/v1/messages",
        b"{}",
        {"x-padding": "a" * (80 << 10)},
    )

    # aiohttp 3.14 returns 400 in plain text (not 431), before the handler.
    assert status == 400
    assert headers["content-type"].startswith("text/plain")
    assert b"Traceback" not in body
    assert len(body) < 1024


def test_too_many_headers_rejected_cleanly(limits_stack: RunningStack) -> None:
    many = {f"x-h{i}": "v" for i in range(200)}
    status, _, body = _send(
        limits_stack, "POST", "/v1/acme/open/anthropic/v1/messages", b"{}", many
    )

    assert status == 400
    assert body == b"Too many headers received"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/acme/open/anthropic/../../openai/v1/models",
        "/v1/acme/open/anthropic/v1/../../x",
        "/v1/acme/open/anthropic/%2e%2e/x",
        "/v1/acme/open/anthropic/%2E%2e/%2E%2E/x",
        "/v1/acme/open/anthropic//evil.example/v1/messages",
        "/v1/acme/open/anthropic/http://evil.example/v1/messages",
        "/v1/acme/open/anthropic/v1%2f..%2fmessages",
        "/v1/acme/open/anthropic/v1%5cmessages",
        "/v1/acme/open/anthropic/./v1/messages",
    ],
)
def test_path_escape_rejected(limits_stack: RunningStack, path: str) -> None:
    before = limits_stack.simulator_total()
    status, _, body = _send(
        limits_stack, "POST", path, b"{}", {"x-api-key": "sk-ant-test"}
    )

    assert status == 400
    error = orjson.loads(body)
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "invalid path" in error["error"]["message"]
    assert limits_stack.simulator_total() == before


def test_at_sign_stays_on_provider_host(limits_stack: RunningStack) -> None:
    status, _, _ = _send(
        limits_stack,
        "POST",
        "/v1/acme/open/anthropic/@evil.example/v1/messages",
        b"{}",
        {"x-api-key": "sk-ant-test"},
    )

    requests = limits_stack.simulator_requests()["requests"]
    assert status == 404
    assert requests[-1]["path"] == "/anthropic/@evil.example/v1/messages"


def test_redirect_not_followed(limits_stack: RunningStack) -> None:
    before_sim = limits_stack.simulator_total()
    before_hits = _Redirector.hits
    status, headers, _ = _send(
        limits_stack,
        "POST",
        "/v1/acme/open/redirector/v1/chat/completions",
        orjson.dumps({"model": "m", "messages": []}),
        {"authorization": "Bearer sk-test"},
    )

    assert _Redirector.hits == before_hits + 1
    assert status == 302
    assert headers["location"].startswith(limits_stack.simulator_url)
    assert limits_stack.simulator_total() == before_sim
