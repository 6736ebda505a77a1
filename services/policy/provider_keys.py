"""Stored provider keys: encrypted at rest in Redis, injected after authentication.

An operator stores a provider API key for a gateway, a team on it or a user on
it. The key is encrypted with AES-256-GCM under the key-encryption key from
``TOLLGATE_KEY_ENCRYPTION_KEY`` (32 bytes, base64). The associated data is
the entry's scope, so a ciphertext copied to another scope in Redis fails to
decrypt instead of serving another tenant's key.

Redis layout, all in the gateway's hash slot:

- ``{prefix}:{account/gateway}:provider-key:<provider>:gateway``,
  ``...:team:<team_id>`` and ``...:user:<user_id>``: one JSON entry each;
- ``{prefix}:{account/gateway}:provider-keys``: a set of the entry keys, for
  listing;
- ``{prefix}:global:provider-key-gateways``: a set of "account/gateway" that
  hold entries, so that a policy replica started without the key-encryption
  key refuses to start instead of failing on the first call.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.exceptions import RedisError

from gateway.policy.v1 import policy_pb2
from services.policy.errors import (
    InvalidRequestError,
    KeyEncryptionError,
    StoreUnavailableError,
)
from services.policy.store import RedisStore

KEK_ENV = "TOLLGATE_KEY_ENCRYPTION_KEY"
HINT_CHARS = 4
_NONCE_BYTES = 12
_MAX_SECRET_CHARS = 4096


class ProviderKeyCipher:
    """AES-256-GCM under the key-encryption key, bound to each entry's scope."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KeyEncryptionError(
                f"{KEK_ENV} must decode to 32 bytes, got {len(key)}"
            )
        self._aead = AESGCM(key)
        # Names the key-encryption key in each entry without revealing it, so
        # that a replica with a different key reports that instead of "corrupt".
        self.key_id = hashlib.sha256(b"tollgate-kek:" + key).hexdigest()[:12]

    def encrypt(self, plaintext: str, scope: str) -> tuple[bytes, bytes]:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, plaintext.encode(), scope.encode())

    def decrypt(self, nonce: bytes, ciphertext: bytes, scope: str) -> str:
        try:
            return self._aead.decrypt(nonce, ciphertext, scope.encode()).decode()
        except InvalidTag as exc:
            raise KeyEncryptionError(
                f"stored provider key for {scope} failed to decrypt"
            ) from exc


def parse_kek(value: str) -> bytes:
    """Decode a base64 (standard or URL-safe) key-encryption key."""
    text = value.strip()
    try:
        return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError) as exc:
        raise KeyEncryptionError(
            f"{KEK_ENV} is not valid base64; generate one with "
            '`python -c "import base64,os;'
            'print(base64.urlsafe_b64encode(os.urandom(32)).decode())"`'
        ) from exc


def cipher_from_env(value: str) -> ProviderKeyCipher | None:
    """Build the cipher from the setting; None when the setting is empty."""
    if not value:
        return None
    return ProviderKeyCipher(parse_kek(value))


def require_cipher(cipher: ProviderKeyCipher | None) -> ProviderKeyCipher:
    if cipher is None:
        raise KeyEncryptionError(
            f"stored provider keys need {KEK_ENV}: set it to 32 random bytes in "
            "base64 on every policy replica"
        )
    return cipher


def scope_label(scope: policy_pb2.Scope, provider: str) -> str:
    """Return the scope of an entry as text: the AEAD associated data."""
    if scope.user_id:
        kind = f"user:{scope.user_id}"
    elif scope.team_id:
        kind = f"team:{scope.team_id}"
    else:
        kind = "gateway"
    return f"{scope.account_id}/{scope.gateway_id}/{provider}/{kind}"


def _entry_key(store: RedisStore, scope: policy_pb2.Scope, provider: str) -> str:
    parts: tuple[str, ...]
    if scope.user_id:
        parts = ("user", scope.user_id)
    elif scope.team_id:
        parts = ("team", scope.team_id)
    else:
        parts = ("gateway",)
    return store.key(
        scope.account_id, scope.gateway_id, "provider-key", provider, *parts
    )


def _index_key(store: RedisStore, account_id: str, gateway_id: str) -> str:
    return store.key(account_id, gateway_id, "provider-keys")


def _gateways_key(store: RedisStore) -> str:
    return store.global_key("provider-key-gateways")


def validate_put(request: policy_pb2.PutProviderKeyRequest) -> None:
    scope = request.scope
    if not scope.account_id or not scope.gateway_id:
        raise InvalidRequestError("scope.account_id and scope.gateway_id are required")
    if scope.user_id and scope.team_id:
        raise InvalidRequestError("set either scope.team_id or scope.user_id, not both")
    if not request.provider:
        raise InvalidRequestError("provider is required")
    secret = request.secret.strip()
    if not secret:
        raise InvalidRequestError("the provider key is empty")
    if len(secret) > _MAX_SECRET_CHARS or any(c.isspace() for c in secret):
        raise InvalidRequestError(
            "the provider key is invalid: expected one token without spaces"
        )


def _record(
    scope: policy_pb2.Scope, provider: str, hint: str, created_at_ms: int
) -> policy_pb2.ProviderKeyRecord:
    return policy_pb2.ProviderKeyRecord(
        scope=scope, provider=provider, hint=hint, created_at_ms=created_at_ms
    )


async def put_provider_key(
    store: RedisStore,
    cipher: ProviderKeyCipher | None,
    request: policy_pb2.PutProviderKeyRequest,
) -> policy_pb2.ProviderKeyRecord:
    validate_put(request)
    cipher = require_cipher(cipher)
    scope, provider = request.scope, request.provider
    secret = request.secret.strip()
    nonce, ciphertext = cipher.encrypt(secret, scope_label(scope, provider))
    created_at_ms = int(time.time() * 1000)
    hint = secret[-HINT_CHARS:] if len(secret) > 2 * HINT_CHARS else ""
    entry = orjson.dumps(
        {
            "kek_id": cipher.key_id,
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "hint": hint,
            "created_at_ms": created_at_ms,
        }
    )
    entry_key = _entry_key(store, scope, provider)
    pipe = store.client.pipeline(transaction=False)
    pipe.set(entry_key, entry)
    pipe.sadd(_index_key(store, scope.account_id, scope.gateway_id), entry_key)
    pipe.sadd(_gateways_key(store), f"{scope.account_id}/{scope.gateway_id}")
    try:
        await pipe.execute()
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(f"Redis failed storing a key: {exc}") from exc
    return _record(scope, provider, hint, created_at_ms)


async def delete_provider_key(
    store: RedisStore, request: policy_pb2.DeleteProviderKeyRequest
) -> bool:
    scope = request.scope
    entry_key = _entry_key(store, scope, request.provider)
    pipe = store.client.pipeline(transaction=False)
    pipe.delete(entry_key)
    pipe.srem(_index_key(store, scope.account_id, scope.gateway_id), entry_key)
    try:
        deleted, _ = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(f"Redis failed deleting a key: {exc}") from exc
    return bool(deleted)


def _scope_from_entry_key(
    store: RedisStore, account_id: str, gateway_id: str, entry_key: str
) -> tuple[policy_pb2.Scope, str] | None:
    head = store.key(account_id, gateway_id, "provider-key") + ":"
    if not entry_key.startswith(head):
        return None
    provider, _, rest = entry_key[len(head) :].partition(":")
    kind, _, owner = rest.partition(":")
    scope = policy_pb2.Scope(account_id=account_id, gateway_id=gateway_id)
    if kind == "user":
        scope.user_id = owner
    elif kind == "team":
        scope.team_id = owner
    return scope, provider


async def list_provider_keys(
    store: RedisStore, request: policy_pb2.ListProviderKeysRequest
) -> list[policy_pb2.ProviderKeyRecord]:
    account_id, gateway_id = request.account_id, request.gateway_id
    if not account_id or not gateway_id:
        raise InvalidRequestError("account_id and gateway_id are required")
    try:
        members = await store.client.smembers(_index_key(store, account_id, gateway_id))
        entry_keys = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        entries = await store.client.mget(entry_keys) if entry_keys else []
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(f"Redis failed listing keys: {exc}") from exc
    records = []
    for entry_key, raw in zip(entry_keys, entries, strict=True):
        parsed = _scope_from_entry_key(store, account_id, gateway_id, entry_key)
        if raw is None or parsed is None:
            continue
        value = orjson.loads(raw)
        records.append(
            _record(parsed[0], parsed[1], value["hint"], value["created_at_ms"])
        )
    return records


def _decrypt_entry(cipher: ProviderKeyCipher, raw: bytes | str, scope: str) -> str:
    value = orjson.loads(raw)
    if value.get("kek_id") != cipher.key_id:
        raise KeyEncryptionError(
            f"stored provider key for {scope} was encrypted under another "
            f"{KEK_ENV}; store it again or restore the old key"
        )
    nonce = base64.b64decode(value["nonce"])
    ciphertext = base64.b64decode(value["ciphertext"])
    return cipher.decrypt(nonce, ciphertext, scope)


async def resolve_provider_key(
    store: RedisStore,
    cipher: ProviderKeyCipher | None,
    identity: policy_pb2.Identity,
    account_id: str,
    gateway_id: str,
    provider: str,
) -> str:
    """Return the decrypted key of the most specific scope, or "" when none.

    The user's entry wins over the team's, which wins over the gateway's. All
    three are read in one MGET, since they share the gateway's hash slot.
    """
    scopes = []
    if identity.user_id:
        scopes.append(
            policy_pb2.Scope(
                account_id=account_id, gateway_id=gateway_id, user_id=identity.user_id
            )
        )
    if identity.team_id:
        scopes.append(
            policy_pb2.Scope(
                account_id=account_id, gateway_id=gateway_id, team_id=identity.team_id
            )
        )
    scopes.append(policy_pb2.Scope(account_id=account_id, gateway_id=gateway_id))
    try:
        entries = await store.client.mget(
            [_entry_key(store, scope, provider) for scope in scopes]
        )
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(f"Redis failed reading a key: {exc}") from exc
    for scope, raw in zip(scopes, entries, strict=True):
        if raw is not None:
            return _decrypt_entry(
                require_cipher(cipher), raw, scope_label(scope, provider)
            )
    return ""


async def check_cipher_at_start(
    store: RedisStore, cipher: ProviderKeyCipher | None
) -> None:
    """Refuse to start without a key-encryption key when stored keys exist."""
    if cipher is not None:
        return
    try:
        count = await store.client.scard(_gateways_key(store))
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(f"Redis is unavailable: {exc}") from exc
    if count:
        raise KeyEncryptionError(
            f"Redis contains stored provider keys for {count} gateway(s) but "
            f"{KEK_ENV} is not set; set it to the key they were stored with"
        )
