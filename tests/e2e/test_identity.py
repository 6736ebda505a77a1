"""Gateway keys and provider keys through the stack, with the official SDKs.

The gateway acme/secure requires a gateway key; acme/open does not. Each test
creates its own keys through the admin RPCs, and every secret it uses is
collected so that the last test can check that no log of the stack contains one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import grpc
import openai
import pytest

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from tests.support.stack import ADMIN_TOKEN, RunningStack

MODEL_A = "claude-sonnet-4-5"
MODEL_O = "gpt-4o-mini"
ADMIN_METADATA = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

# Every secret a test in this module used; see test_logs_hold_no_secret.
SECRETS: list[str] = []
_open: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


@pytest.fixture(scope="module")
def admin(stack: RunningStack) -> Iterator[policy_pb2_grpc.PolicyAdminServiceStub]:
    channel = grpc.insecure_channel(stack.policy_address)
    yield policy_pb2_grpc.PolicyAdminServiceStub(channel)
    channel.close()


def _create_key(admin: Any, user: str, **fields: Any) -> tuple[str, str]:
    response = admin.CreateKey(
        policy_pb2.CreateKeyRequest(user_id=user, **fields),
        metadata=ADMIN_METADATA,
        timeout=5,
    )
    SECRETS.append(response.secret)
    return response.key.key_id, response.secret


def _put_provider_key(admin: Any, gateway: str, provider: str, **owner: str) -> str:
    secret = f"sk-stored-{provider}-{uuid.uuid4().hex}"
    SECRETS.append(secret)
    admin.PutProviderKey(
        policy_pb2.PutProviderKeyRequest(
            scope=policy_pb2.Scope(account_id="acme", gateway_id=gateway, **owner),
            provider=provider,
            secret=secret,
        ),
        metadata=ADMIN_METADATA,
        timeout=5,
    )
    return secret


def _anthropic(base_url: str, api_key: str, **kwargs: Any) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        base_url=base_url, api_key=api_key, max_retries=0, **kwargs
    )
    _open.append(client)
    return client


def _openai(base_url: str, api_key: str, **kwargs: Any) -> openai.OpenAI:
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, **kwargs)
    _open.append(client)
    return client


def _row(stack: RunningStack, request_id: str) -> dict[str, Any]:
    rows = stack.wait_rows("request_id = {rid:String}", {"rid": request_id}, 1)
    assert len(rows) == 1, f"expected one row for {request_id}, got {len(rows)}"
    return rows[0]


def _upstream_headers(stack: RunningStack, marker: str) -> dict[str, str]:
    """Headers the simulator received with the request whose body has ``marker``."""
    for entry in reversed(stack.simulator_requests()["requests"]):
        if marker in str(entry["body"]):
            return {k.lower(): v for k, v in entry["headers"].items()}
    raise AssertionError(f"the simulator never received {marker!r}")


def _message(marker: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"identity check {marker}"}]


def test_admin_rpcs_require_admin_token(stack: RunningStack, admin: Any) -> None:
    request = policy_pb2.CreateKeyRequest(user_id="mallory")
    with pytest.raises(grpc.RpcError) as missing:
        admin.CreateKey(request, timeout=5)
    with pytest.raises(grpc.RpcError) as wrong:
        admin.CreateKey(
            request, metadata=(("authorization", "Bearer nope"),), timeout=5
        )

    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "admin token" in missing.value.details()


def test_gateway_key_in_cf_aig_authorization(stack: RunningStack, admin: Any) -> None:
    key_id, secret = _create_key(admin, "alice", team_id="blue", project_id="p1")
    byok = f"sk-ant-byok-{uuid.uuid4().hex}"
    SECRETS.append(byok)
    marker = uuid.uuid4().hex
    client = _anthropic(
        stack.anthropic_base_url(gateway="secure"),
        byok,
        default_headers={"cf-aig-authorization": f"Bearer {secret}"},
    )
    raw = client.messages.with_raw_response.create(
        model=MODEL_A, max_tokens=16, messages=_message(marker)
    )
    message = raw.parse()

    assert message.usage.output_tokens > 0
    sent = _upstream_headers(stack, marker)
    # Bring your own key: the provider key reaches the provider untouched and
    # the gateway key never does.
    assert sent.get("x-api-key", sent.get("authorization", "")).endswith(byok)
    assert secret not in str(sent)
    assert "cf-aig-authorization" not in sent
    row = _row(stack, raw.headers["tollgate-request-id"])
    assert row["user_id"] == "alice"
    assert row["team_id"] == "blue"
    assert row["key_id"] == key_id
    assert byok not in row["request_body"]
    assert secret not in row["request_body"]


def test_gateway_key_as_sdk_key_injects_stored_key(
    stack: RunningStack, admin: Any
) -> None:
    key_id, secret = _create_key(admin, "bob", team_id="green")
    gateway_key = _put_provider_key(admin, "secure", "anthropic")
    team_key = _put_provider_key(admin, "secure", "anthropic", team_id="green")
    marker = uuid.uuid4().hex
    # The Anthropic SDK 2.17 sends its key as Authorization: Bearer.
    client = _anthropic(stack.anthropic_base_url(gateway="secure"), secret)
    raw = client.messages.with_raw_response.create(
        model=MODEL_A, max_tokens=16, messages=_message(marker)
    )
    raw.parse()

    sent = _upstream_headers(stack, marker)
    assert sent["x-api-key"] == team_key
    assert "authorization" not in sent
    assert gateway_key not in str(sent)
    assert secret not in str(sent)
    row = _row(stack, raw.headers["tollgate-request-id"])
    assert row["user_id"] == "bob"
    assert row["key_id"] == key_id
    assert team_key not in row["request_body"] + row["response_body"]


def test_openai_sdk_key_injects_user_key(stack: RunningStack, admin: Any) -> None:
    key_id, secret = _create_key(admin, "carol", team_id="green")
    _put_provider_key(admin, "secure", "openai")
    user_key = _put_provider_key(admin, "secure", "openai", user_id="carol")
    marker = uuid.uuid4().hex
    client = _openai(stack.openai_base_url(gateway="secure"), secret)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_O, messages=_message(marker)
    )
    completion = raw.parse()

    assert completion.choices[0].message.content
    sent = _upstream_headers(stack, marker)
    assert sent["authorization"] == f"Bearer {user_key}"
    row = _row(stack, raw.headers["tollgate-request-id"])
    assert row["user_id"] == "carol"
    assert row["key_id"] == key_id


def test_gateway_key_as_sdk_key_without_stored_key(
    stack: RunningStack, admin: Any
) -> None:
    _, secret = _create_key(admin, "dave")
    before = stack.simulator_total()
    client = _anthropic(stack.anthropic_base_url(gateway="open"), secret)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model=MODEL_A, max_tokens=8, messages=_message("x"))

    assert "cf-aig-authorization" in str(caught.value)
    assert secret not in str(caught.value)
    # The gateway key was not sent to the provider.
    assert stack.simulator_total() == before


def test_byok_pass_through_on_open_gateway(stack: RunningStack) -> None:
    byok = f"sk-ant-api03-{uuid.uuid4().hex}"
    SECRETS.append(byok)
    marker = uuid.uuid4().hex
    client = _anthropic(stack.anthropic_base_url(gateway="open"), byok)
    raw = client.messages.with_raw_response.create(
        model=MODEL_A, max_tokens=16, messages=_message(marker)
    )
    raw.parse()

    sent = _upstream_headers(stack, marker)
    assert sent.get("x-api-key", sent.get("authorization", "")).endswith(byok)
    row = _row(stack, raw.headers["tollgate-request-id"])
    assert row["user_id"].startswith("key:")
    assert byok not in row["user_id"]
    assert row["key_id"] == ""


def test_metadata_user_on_open_gateway(stack: RunningStack) -> None:
    client = _openai(
        stack.openai_base_url(gateway="open"),
        "sk-openai-test",
        default_headers={"cf-aig-metadata": '{"user": "erin", "session": "s1"}'},
    )
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_O, messages=_message(uuid.uuid4().hex)
    )
    raw.parse()

    row = _row(stack, raw.headers["tollgate-request-id"])
    assert row["user_id"] == "erin"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer tg_wrongwrongwrongwrongwrongwrongwrongwrongwro",
        "Bearer not-a-gateway-key",
        "Bearer",
        "Basic dXNlcjpwYXNz",
    ],
    ids=["missing", "wrong", "malformed", "empty", "other-scheme"],
)
def test_secure_gateway_rejects_bad_keys(
    stack: RunningStack, header: str | None
) -> None:
    headers = {"cf-aig-authorization": header} if header is not None else {}
    before = stack.simulator_total()
    client = _anthropic(
        stack.anthropic_base_url(gateway="secure"),
        "sk-ant-byok-test-key",
        default_headers=headers,
    )
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model=MODEL_A, max_tokens=8, messages=_message("x"))

    body = caught.value.body
    assert caught.value.status_code == 401
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert "cf-aig-authorization: Bearer <key>" in body["error"]["message"]
    assert stack.simulator_total() == before


def test_openai_wrong_key_gets_openai_401(stack: RunningStack) -> None:
    client = _openai(
        stack.openai_base_url(gateway="secure"),
        "tg_wrongwrongwrongwrongwrongwrongwrongwrongwro",
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL_O, messages=_message("x"))

    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "invalid_api_key"
    assert "cf-aig-authorization" in body["message"]


def test_key_scoped_to_other_gateway_rejected(stack: RunningStack, admin: Any) -> None:
    _, secret = _create_key(admin, "frank", gateways=["acme/open"])
    client = _anthropic(
        stack.anthropic_base_url(gateway="secure"),
        "sk-ant-byok-test-key",
        default_headers={"cf-aig-authorization": f"Bearer {secret}"},
    )
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model=MODEL_A, max_tokens=8, messages=_message("x"))

    assert "acme/secure" in str(caught.value)


def test_revoked_key_rejected_on_every_replica(stack: RunningStack, admin: Any) -> None:
    key_id, secret = _create_key(admin, "grace")
    extra = stack.stack.start_extra_ingress("ingress-identity")
    try:
        urls = [stack.ingress_url, f"http://127.0.0.1:{extra.port}"]
        clients = [
            _anthropic(
                f"{url}/v1/acme/secure/anthropic",
                "sk-ant-byok-test-key",
                default_headers={"cf-aig-authorization": f"Bearer {secret}"},
            )
            for url in urls
        ]
        for client in clients:
            client.messages.create(model=MODEL_A, max_tokens=8, messages=_message("r"))

        admin.RevokeKey(
            policy_pb2.RevokeKeyRequest(key_id=key_id),
            metadata=ADMIN_METADATA,
            timeout=5,
        )
        revoked_at = time.monotonic()
        for client in clients:
            with pytest.raises(anthropic.AuthenticationError):
                client.messages.create(
                    model=MODEL_A, max_tokens=8, messages=_message("r")
                )
        # Check reads Redis on every call, so the first call after RevokeKey
        # is already rejected; this bounds the test's own slack.
        assert time.monotonic() - revoked_at < 1.0
    finally:
        extra.stop()


def test_rotated_key_replaces_old(stack: RunningStack, admin: Any) -> None:
    key_id, old = _create_key(admin, "heidi", team_id="red")
    rotated = admin.RotateKey(
        policy_pb2.RotateKeyRequest(key_id=key_id), metadata=ADMIN_METADATA, timeout=5
    )
    SECRETS.append(rotated.secret)
    listed = admin.ListKeys(
        policy_pb2.ListKeysRequest(user_id="heidi", include_revoked=True),
        metadata=ADMIN_METADATA,
        timeout=5,
    )

    assert rotated.key.key_id != key_id
    assert rotated.key.team_id == "red"
    by_id = {record.key_id: record for record in listed.keys}
    assert by_id[key_id].revoked_at_ms > 0
    assert by_id[rotated.key.key_id].revoked_at_ms == 0
    for secret, expected in (
        (old, anthropic.AuthenticationError),
        (rotated.secret, None),
    ):
        client = _anthropic(
            stack.anthropic_base_url(gateway="secure"),
            "sk-ant-byok-test-key",
            default_headers={"cf-aig-authorization": f"Bearer {secret}"},
        )
        if expected is None:
            client.messages.create(model=MODEL_A, max_tokens=8, messages=_message("o"))
        else:
            with pytest.raises(expected):
                client.messages.create(
                    model=MODEL_A, max_tokens=8, messages=_message("o")
                )


def test_authenticate_key_rpc(stack: RunningStack, admin: Any) -> None:
    key_id, secret = _create_key(admin, "ivan", project_id="p9")
    found = admin.AuthenticateKey(
        policy_pb2.AuthenticateKeyRequest(secret=secret),
        metadata=ADMIN_METADATA,
        timeout=5,
    )
    with pytest.raises(grpc.RpcError) as caught:
        admin.AuthenticateKey(
            policy_pb2.AuthenticateKeyRequest(secret=secret + "x"),
            metadata=ADMIN_METADATA,
            timeout=5,
        )

    assert found.key.key_id == key_id
    assert found.key.project_id == "p9"
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _cli(
    stack: RunningStack, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TOLLGATE_ADMIN_TOKEN=ADMIN_TOKEN)
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--policy", stack.policy_address, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_cli_keys_and_provider_keys(stack: RunningStack) -> None:
    user = f"cli-{uuid.uuid4().hex[:6]}"
    created = _cli(stack, "keys", "create", "--user", user, "--team", "ops")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.split("secret: ", 1)[1].strip()
    SECRETS.append(secret)
    key_id = created.stdout.split()[0]
    provider_secret = f"sk-ant-cli-{uuid.uuid4().hex}"
    SECRETS.append(provider_secret)

    put = _cli(
        stack,
        "provider-keys", "put", "--account", "acme", "--gateway", "secure",
        "--user", user, "--provider", "anthropic",
        stdin=provider_secret + "\n",
    )  # fmt: skip
    listed = _cli(stack, "keys", "list", "--user", user)
    provider_list = _cli(
        stack, "provider-keys", "list", "--account", "acme", "--gateway", "secure"
    )
    revoked = _cli(stack, "keys", "revoke", key_id)
    after = _cli(stack, "keys", "list", "--user", user)
    deleted = _cli(
        stack,
        "provider-keys", "delete", "--account", "acme", "--gateway", "secure",
        "--user", user, "--provider", "anthropic",
    )  # fmt: skip

    assert secret.startswith("tg_")
    assert put.returncode == 0, put.stderr
    assert provider_secret not in put.stdout + put.stderr
    assert provider_secret[-4:] in put.stdout
    assert key_id in listed.stdout
    assert secret not in listed.stdout
    assert f"user={user}" in provider_list.stdout
    assert provider_secret not in provider_list.stdout
    assert "revoked" in revoked.stdout
    assert key_id not in after.stdout
    assert deleted.returncode == 0
    assert deleted.stdout.strip() == "deleted"


def test_cli_without_admin_token_fails(stack: RunningStack) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOLLGATE_ADMIN_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "--policy", stack.policy_address,
         "keys", "list"],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )  # fmt: skip

    assert result.returncode == 1
    assert "UNAUTHENTICATED" in result.stderr


def test_secrets_scrubbed_from_stored_event(stack: RunningStack) -> None:
    byok = f"mykey-{uuid.uuid4().hex}"
    pattern_key = f"sk-ant-api03-{uuid.uuid4().hex}"
    gateway_shaped = f"tg_{uuid.uuid4().hex}"
    SECRETS.extend([byok, pattern_key, gateway_shaped])
    client = _anthropic(
        stack.anthropic_base_url(gateway="open"),
        byok,
        default_headers={"cf-aig-metadata": f'{{"note": "{pattern_key}"}}'},
    )
    prompt = (
        f"my key is {byok}, my other key is {pattern_key}, "
        f"and the gateway one is {gateway_shaped}"
    )
    raw = client.messages.with_raw_response.create(
        model=MODEL_A, max_tokens=16, messages=[{"role": "user", "content": prompt}]
    )
    raw.parse()

    row = _row(stack, raw.headers["tollgate-request-id"])
    stored = row["request_body"] + row["response_body"] + str(row["metadata"])
    for secret in (byok, pattern_key, gateway_shaped):
        assert secret not in stored
    assert "[REDACTED]" in row["request_body"]
    assert row["metadata"]["note"] == "[REDACTED]"


def test_secrets_scrubbed_from_error_message(stack: RunningStack) -> None:
    secret = f"sk-ant-api03-{uuid.uuid4().hex}"
    SECRETS.append(secret)
    client = _anthropic(
        stack.anthropic_base_url(gateway="open"),
        "sk-ant-test",
        default_headers={"cf-aig-request-timeout": secret},
    )
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL_A, max_tokens=8, messages=_message("e"))

    assert secret not in str(caught.value.body)
    assert "cf-aig-request-timeout" in str(caught.value.body)
    request_id = caught.value.response.headers["tollgate-request-id"]
    row = _row(stack, request_id)
    assert row["status"] == 400
    assert "cf-aig-request-timeout" in row["error_message"]
    assert secret not in row["error_message"]
    assert secret not in row["response_body"]


def test_logs_hold_no_secret(stack: RunningStack) -> None:
    """Every secret used above is absent from every log the stack wrote.

    The simulator's log is left out: it plays the provider, which receives the
    provider keys by design.
    """
    assert SECRETS, "the tests above should have used secrets"
    time.sleep(0.5)
    logs = [p for p in (stack.data_dir / "logs").glob("*.log") if p.stem != "simulator"]
    assert {p.stem for p in logs} >= {"policy", "ingress", "analytics"}
    for path in logs:
        text = path.read_text(encoding="utf-8", errors="replace")
        for secret in SECRETS:
            assert secret not in text, f"{path.name} contains a test secret"
