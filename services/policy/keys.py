"""Gateway keys: issue, list, revoke, rotate and authenticate them in Redis.

A gateway key is ``tg_`` plus 43 URL-safe characters (32 random bytes). Only
its SHA-256 is stored. A plain hash is enough because the secret carries 256
random bits. Searching that space is infeasible, so a slow password hash would
add cost without adding safety.

Redis layout (global keys, which belong to no gateway's hash slot):

- ``{prefix}:global:gwkey:secret:<sha256 hex>``: the key's record as JSON,
  read once per authenticated call;
- ``{prefix}:global:gwkey:id:<key_id>``: the SHA-256 of the key's secret,
  so that a key can be revoked by its id;
- ``{prefix}:global:gwkeys``: a set of every key id, for listing.

Timing: authentication is one GET by the hash of the presented secret, then
one ``hmac.compare_digest`` of that hash against the hash in the record (a
fixed dummy when nothing was found). An attacker can not learn a prefix of a
valid key from the timing, because Redis looks up the SHA-256 of the whole
presented value, never the value itself. Malformed keys take the same path.
Revocation is read by that GET on every Check, with no cache in the policy
service, so a revoked key is rejected on every ingress replica as soon as
RevokeKey returns.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from gateway.policy.v1 import policy_pb2
from services.policy.errors import (
    AuthenticationError,
    InvalidRequestError,
    KeyNotFoundError,
    StoreUnavailableError,
)
from services.policy.store import RedisStore

SECRET_PREFIX = "tg_"
# Characters of the secret kept in the record, to tell keys apart in lists.
SHOWN_PREFIX_CHARS = 8
_DUMMY_HASH = "0" * 64
_MAX_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class IssuedKey:
    record: policy_pb2.KeyRecord
    secret: str


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_gateway_key(value: str) -> bool:
    """Tell whether a presented value is meant as a gateway key."""
    return value.startswith(SECRET_PREFIX)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def _secret_key(store: RedisStore, digest: str) -> str:
    return store.global_key("gwkey", "secret", digest)


def _id_key(store: RedisStore, key_id: str) -> str:
    return store.global_key("gwkey", "id", key_id)


def _index_key(store: RedisStore) -> str:
    return store.global_key("gwkeys")


def record_to_json(record: policy_pb2.KeyRecord, digest: str) -> bytes:
    return orjson.dumps(
        {
            "key_id": record.key_id,
            "user_id": record.user_id,
            "team_id": record.team_id,
            "project_id": record.project_id,
            "gateways": list(record.gateways),
            "description": record.description,
            "created_at_ms": record.created_at_ms,
            "revoked_at_ms": record.revoked_at_ms,
            "prefix": record.prefix,
            "sha256": digest,
        }
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def record_from_json(raw: bytes | str) -> tuple[policy_pb2.KeyRecord, str]:
    """Parse a stored record; returns it with the stored SHA-256 of its secret."""
    value = orjson.loads(raw)
    digest = str(value.pop("sha256", ""))
    return policy_pb2.KeyRecord(**value), digest


def validate_create(request: policy_pb2.CreateKeyRequest) -> None:
    """Raise InvalidRequestError for a request that can not become a key."""
    if not request.user_id:
        raise InvalidRequestError("user_id is required to create a gateway key")
    for name in ("user_id", "team_id", "project_id"):
        value = getattr(request, name)
        if len(value) > _MAX_ID_CHARS:
            raise InvalidRequestError(
                f"{name} is too long: at most {_MAX_ID_CHARS} characters"
            )
    for gateway in request.gateways:
        account, slash, name = gateway.partition("/")
        if not slash or not account or not name or "/" in name:
            raise InvalidRequestError(
                f"invalid gateway {gateway!r}: expected account/gateway"
            )


def key_allows_gateway(
    record: policy_pb2.KeyRecord, account_id: str, gateway_id: str
) -> bool:
    return not record.gateways or f"{account_id}/{gateway_id}" in record.gateways


async def _write(
    store: RedisStore, record: policy_pb2.KeyRecord, digest: str, *, new: bool
) -> None:
    # Plain pipeline, not MULTI: the three keys sit in different cluster slots.
    pipe = store.client.pipeline(transaction=False)
    pipe.set(_secret_key(store, digest), record_to_json(record, digest))
    if new:
        pipe.set(_id_key(store, record.key_id), digest)
        pipe.sadd(_index_key(store), record.key_id)
    try:
        await pipe.execute()
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(f"Redis failed writing a key: {exc}") from exc


async def create_key(
    store: RedisStore, request: policy_pb2.CreateKeyRequest
) -> IssuedKey:
    validate_create(request)
    secret = new_secret()
    record = policy_pb2.KeyRecord(
        key_id=new_key_id(),
        user_id=request.user_id,
        team_id=request.team_id,
        project_id=request.project_id,
        gateways=list(request.gateways),
        description=request.description,
        created_at_ms=int(time.time() * 1000),
        prefix=secret[:SHOWN_PREFIX_CHARS],
    )
    await _write(store, record, secret_hash(secret), new=True)
    return IssuedKey(record, secret)


async def _load_by_id(
    store: RedisStore, key_id: str
) -> tuple[policy_pb2.KeyRecord, str]:
    try:
        digest = await store.client.get(_id_key(store, key_id))
        raw = (
            await store.client.get(_secret_key(store, _text(digest)))
            if digest
            else None
        )
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(f"Redis failed reading a key: {exc}") from exc
    if raw is None:
        raise KeyNotFoundError(f"gateway key {key_id!r} not found")
    return record_from_json(raw)


async def revoke_key(store: RedisStore, key_id: str) -> policy_pb2.KeyRecord:
    """Mark a key revoked; revoking a revoked key keeps its first revocation time."""
    record, digest = await _load_by_id(store, key_id)
    if record.revoked_at_ms:
        return record
    record.revoked_at_ms = int(time.time() * 1000)
    await _write(store, record, digest, new=False)
    return record


async def rotate_key(store: RedisStore, key_id: str) -> IssuedKey:
    """Issue a new key with the same owner and gateways, then revoke the old one."""
    old, _ = await _load_by_id(store, key_id)
    if old.revoked_at_ms:
        raise InvalidRequestError(
            f"gateway key {key_id!r} is revoked; create a new one"
        )
    issued = await create_key(
        store,
        policy_pb2.CreateKeyRequest(
            user_id=old.user_id,
            team_id=old.team_id,
            project_id=old.project_id,
            gateways=list(old.gateways),
            description=old.description,
        ),
    )
    await revoke_key(store, key_id)
    return issued


async def list_keys(
    store: RedisStore, request: policy_pb2.ListKeysRequest
) -> list[policy_pb2.KeyRecord]:
    try:
        key_ids = sorted(
            _text(m) for m in await store.client.smembers(_index_key(store))
        )
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(f"Redis failed listing keys: {exc}") from exc
    records = []
    for key_id in key_ids:
        try:
            record, _ = await _load_by_id(store, key_id)
        except KeyNotFoundError:
            continue
        if request.user_id and record.user_id != request.user_id:
            continue
        if record.revoked_at_ms and not request.include_revoked:
            continue
        records.append(record)
    return records


async def authenticate(store: RedisStore, secret: str) -> policy_pb2.KeyRecord:
    """Return the active record of a gateway key; raise AuthenticationError if none.

    Wrong, malformed and revoked keys raise the same error after the same
    work, described in the module docstring.
    """
    digest = secret_hash(secret)
    try:
        raw = await store.client.get(_secret_key(store, digest))
    except (RedisError, OSError) as exc:
        raise StoreUnavailableError(f"Redis failed reading a key: {exc}") from exc
    record, stored = record_from_json(raw) if raw else (None, _DUMMY_HASH)
    matches = hmac.compare_digest(stored, digest)
    if record is None or not matches or record.revoked_at_ms:
        raise AuthenticationError("invalid gateway key")
    return record
