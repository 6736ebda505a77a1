"""Gateway keys and stored provider keys: pure parts, then against real Redis."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.policy.v1 import policy_pb2
from services.common.config import ConfigError, Gateway
from services.policy import authn, keys, provider_keys
from services.policy.admin import token_matches
from services.policy.errors import (
    AuthenticationError,
    InvalidRequestError,
    KeyEncryptionError,
    KeyNotFoundError,
)
from services.policy.provider_keys import ProviderKeyCipher
from services.policy.settings import load_settings
from services.policy.store import RedisStore

KEK = base64.urlsafe_b64encode(os.urandom(32)).decode()


def test_new_secret_format() -> None:
    secret = keys.new_secret()

    assert secret.startswith("tg_")
    assert len(secret) == 46
    assert keys.looks_like_gateway_key(secret)
    assert keys.new_secret() != secret


def test_record_json_round_trip() -> None:
    record = policy_pb2.KeyRecord(
        key_id="key_1", user_id="u", gateways=["a/g"], created_at_ms=5
    )

    parsed, digest = keys.record_from_json(keys.record_to_json(record, "ab" * 32))

    assert parsed == record
    assert digest == "ab" * 32


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "user_id is required"),
        ({"user_id": "u", "gateways": ["nogateway"]}, "expected account/gateway"),
        ({"user_id": "u", "gateways": ["a/b/c"]}, "expected account/gateway"),
        ({"user_id": "u" * 129}, "too long"),
    ],
)
def test_validate_create_rejects(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        keys.validate_create(policy_pb2.CreateKeyRequest(**fields))  # type: ignore[arg-type]


def test_key_allows_gateway() -> None:
    scoped = policy_pb2.KeyRecord(gateways=["acme/open"])

    assert keys.key_allows_gateway(policy_pb2.KeyRecord(), "acme", "x")
    assert keys.key_allows_gateway(scoped, "acme", "open")
    assert not keys.key_allows_gateway(scoped, "acme", "secure")


def test_cipher_round_trip_bound_to_scope() -> None:
    cipher = ProviderKeyCipher(provider_keys.parse_kek(KEK))
    nonce, sealed = cipher.encrypt("sk-secret-value", "acme/g/anthropic/gateway")

    assert b"sk-secret-value" not in sealed
    assert (
        cipher.decrypt(nonce, sealed, "acme/g/anthropic/gateway") == "sk-secret-value"
    )
    with pytest.raises(KeyEncryptionError, match="failed to decrypt"):
        cipher.decrypt(nonce, sealed, "acme/g/anthropic/user:eve")


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_settings_reject_bad_kek(value: str) -> None:
    with pytest.raises(ConfigError, match="TOLLGATE_KEY_ENCRYPTION_KEY"):
        load_settings({"TOLLGATE_KEY_ENCRYPTION_KEY": value})


def test_settings_accept_standard_base64_kek() -> None:
    value = base64.b64encode(os.urandom(32)).decode()

    settings = load_settings(
        {"TOLLGATE_KEY_ENCRYPTION_KEY": value, "TOLLGATE_ADMIN_TOKEN": "t"}
    )

    assert settings.key_encryption_key == value
    assert settings.admin_token == "t"


def test_token_matches() -> None:
    assert token_matches((("authorization", "Bearer tok"),), "tok")
    assert token_matches((("authorization", "bearer tok"),), "tok")
    assert not token_matches((("authorization", "Bearer other"),), "tok")
    assert not token_matches((("authorization", "Basic tok"),), "tok")
    assert not token_matches((), "tok")


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    store = RedisStore(
        "redis://127.0.0.1:6379/0",
        prefix=f"test-keys-{uuid.uuid4().hex[:8]}",
        timeout_ms=1000,
    )
    yield store
    async for name in store.client.scan_iter(match=f"{store.prefix}:*"):
        await store.client.delete(name)
    await store.close()


async def test_key_lifecycle(store: RedisStore) -> None:
    issued = await keys.create_key(
        store, policy_pb2.CreateKeyRequest(user_id="u1", team_id="t1")
    )
    record = await keys.authenticate(store, issued.secret)
    raw = [
        await store.client.get(name)
        async for name in store.client.scan_iter(
            match=f"{store.prefix}:*", _type="string"
        )
    ]

    assert record.key_id == issued.record.key_id
    assert record.team_id == "t1"
    assert issued.record.prefix == issued.secret[:8]
    assert len(raw) == 2
    assert not any(issued.secret.encode() in value for value in raw)

    await keys.revoke_key(store, record.key_id)
    with pytest.raises(AuthenticationError):
        await keys.authenticate(store, issued.secret)
    active = await keys.list_keys(store, policy_pb2.ListKeysRequest(user_id="u1"))
    every = await keys.list_keys(
        store, policy_pb2.ListKeysRequest(user_id="u1", include_revoked=True)
    )
    assert active == []
    assert [r.key_id for r in every] == [record.key_id]


async def test_authenticate_rejects_unknown(store: RedisStore) -> None:
    for secret in ("", "tg_", keys.new_secret(), "x" * 5000, "sk-ant-not-a-key"):
        with pytest.raises(AuthenticationError):
            await keys.authenticate(store, secret)


async def test_rotate_and_unknown_ids(store: RedisStore) -> None:
    issued = await keys.create_key(store, policy_pb2.CreateKeyRequest(user_id="u2"))
    rotated = await keys.rotate_key(store, issued.record.key_id)

    assert (await keys.authenticate(store, rotated.secret)).user_id == "u2"
    with pytest.raises(AuthenticationError):
        await keys.authenticate(store, issued.secret)
    with pytest.raises(InvalidRequestError, match="revoked"):
        await keys.rotate_key(store, issued.record.key_id)
    with pytest.raises(KeyNotFoundError):
        await keys.revoke_key(store, "key_missing")


def _put(scope: dict[str, str], secret: str) -> policy_pb2.PutProviderKeyRequest:
    return policy_pb2.PutProviderKeyRequest(
        scope=policy_pb2.Scope(account_id="acme", gateway_id="g", **scope),
        provider="anthropic",
        secret=secret,
    )


async def test_provider_key_precedence(store: RedisStore) -> None:
    cipher = ProviderKeyCipher(provider_keys.parse_kek(KEK))
    for scope, secret in (
        ({}, "sk-gateway-000000"),
        ({"team_id": "t"}, "sk-team-11111111"),
        ({"user_id": "u"}, "sk-user-22222222"),
    ):
        await provider_keys.put_provider_key(store, cipher, _put(scope, secret))

    async def resolve(user: str, team: str) -> str:
        identity = policy_pb2.Identity(user_id=user, team_id=team)
        return await provider_keys.resolve_provider_key(
            store, cipher, identity, "acme", "g", "anthropic"
        )

    assert await resolve("u", "t") == "sk-user-22222222"
    assert await resolve("other", "t") == "sk-team-11111111"
    assert await resolve("other", "") == "sk-gateway-000000"
    listed = await provider_keys.list_provider_keys(
        store, policy_pb2.ListProviderKeysRequest(account_id="acme", gateway_id="g")
    )
    assert sorted(r.hint for r in listed) == ["0000", "1111", "2222"]
    assert all("sk-" not in str(r) for r in listed)

    deleted = await provider_keys.delete_provider_key(
        store,
        policy_pb2.DeleteProviderKeyRequest(
            scope=policy_pb2.Scope(account_id="acme", gateway_id="g", user_id="u"),
            provider="anthropic",
        ),
    )
    assert deleted
    assert await resolve("u", "t") == "sk-team-11111111"


async def test_provider_keys_need_the_kek(store: RedisStore) -> None:
    cipher = ProviderKeyCipher(provider_keys.parse_kek(KEK))
    other = ProviderKeyCipher(os.urandom(32))

    with pytest.raises(KeyEncryptionError, match="TOLLGATE_KEY_ENCRYPTION_KEY"):
        await provider_keys.put_provider_key(store, None, _put({}, "sk-x-0000000"))
    await provider_keys.check_cipher_at_start(store, None)
    await provider_keys.put_provider_key(store, cipher, _put({}, "sk-x-0000000"))
    with pytest.raises(KeyEncryptionError, match="not set"):
        await provider_keys.check_cipher_at_start(store, None)
    with pytest.raises(KeyEncryptionError, match="another"):
        await provider_keys.resolve_provider_key(
            store, other, policy_pb2.Identity(), "acme", "g", "anthropic"
        )


async def test_resolve_caller_modes(store: RedisStore) -> None:
    cipher = ProviderKeyCipher(provider_keys.parse_kek(KEK))
    secure = Gateway("acme", "g", authenticated=True)
    open_gateway = Gateway("acme", "o")
    issued = await keys.create_key(store, policy_pb2.CreateKeyRequest(user_id="u3"))
    await provider_keys.put_provider_key(store, cipher, _put({}, "sk-stored-000000"))

    async def resolve(gateway: Gateway, **fields: str) -> authn.Caller:
        request = policy_pb2.CheckRequest(provider="anthropic", **fields)
        return await authn.resolve_caller(
            store, cipher, b"secret", gateway, request, {}
        )

    with pytest.raises(AuthenticationError, match="missing gateway key"):
        await resolve(secure, presented_key="sk-ant-byok")
    as_sdk_key = await resolve(secure, presented_key=issued.secret)
    byok = await resolve(secure, gateway_key=issued.secret, presented_key="sk-own")
    anonymous = await resolve(open_gateway, presented_key="sk-own")
    with pytest.raises(AuthenticationError, match="no anthropic key is stored"):
        await resolve(open_gateway, presented_key=issued.secret)
    with pytest.raises(AuthenticationError, match="invalid gateway key"):
        await resolve(open_gateway, presented_key="tg_guessed")

    assert as_sdk_key.identity.user_id == "u3"
    assert as_sdk_key.inject_provider_key == "sk-stored-000000"
    assert byok.inject_provider_key == ""
    assert byok.identity.key_id == issued.record.key_id
    assert anonymous.identity.user_id.startswith("key:")
    assert anonymous.inject_provider_key == ""
