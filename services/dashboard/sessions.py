"""Signed session cookies that any ingress replica can verify.

A cookie value is ``base64url(json payload) "." base64url(HMAC-SHA256)``. The
payload carries the role, the user id, the gateway key id (never the key) and
the expiry; nothing is stored on the server, so sessions survive restarts and
work across replicas that share the signing key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

import orjson

COOKIE_NAME = "tollgate_session"
ROLE_USER = "user"
ROLE_OPERATOR = "operator"
ROLES = (ROLE_USER, ROLE_OPERATOR)


@dataclass(frozen=True, slots=True)
class Session:
    role: str
    # The signed-in user; empty for operators.
    user_id: str
    # Public id of the gateway key a user signed in with; empty for operators.
    key_id: str
    # Seconds since the Unix epoch after which the session is invalid.
    expires_at_s: int

    @property
    def is_operator(self) -> bool:
        return self.role == ROLE_OPERATOR


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(payload: str, key: bytes) -> str:
    return _b64encode(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def sign_session(session: Session, key: bytes) -> str:
    """Encode and sign a session as a cookie value."""
    if not key:
        raise ValueError("a session cannot be signed without a session key")
    payload = _b64encode(
        orjson.dumps(
            {
                "r": session.role,
                "u": session.user_id,
                "k": session.key_id,
                "e": session.expires_at_s,
            }
        )
    )
    return f"{payload}.{_signature(payload, key)}"


def verify_session(value: str, key: bytes, now_s: float) -> Session | None:
    """Return the session of a cookie value, or None if forged, malformed or expired."""
    if not key or value.count(".") != 1:
        return None
    payload, signature = value.split(".")
    if not hmac.compare_digest(signature, _signature(payload, key)):
        return None
    try:
        fields = orjson.loads(_b64decode(payload))
        session = Session(
            role=str(fields["r"]),
            user_id=str(fields["u"]),
            key_id=str(fields["k"]),
            expires_at_s=int(fields["e"]),
        )
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        return None
    if session.role not in ROLES or session.expires_at_s <= now_s:
        return None
    if session.role == ROLE_USER and not session.user_id:
        return None
    return session
