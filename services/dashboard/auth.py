"""Who is asking: a session cookie, an admin token or a gateway key.

Every API handler derives the user whose data it returns from the principal
here, never from the URL alone: a user is always pinned to their own user id.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from services.dashboard.backend import Backend
from services.dashboard.errors import (
    BadRequestError,
    ForbiddenError,
    UnauthorizedError,
)
from services.dashboard.sessions import (
    COOKIE_NAME,
    ROLE_OPERATOR,
    ROLE_USER,
    Session,
    verify_session,
)
from services.dashboard.settings import DashboardSettings


@dataclass(frozen=True, slots=True)
class Principal:
    role: str
    # Empty for operators.
    user_id: str
    key_id: str = ""

    @property
    def is_operator(self) -> bool:
        return self.role == ROLE_OPERATOR


def admin_token_matches(presented: str, settings: DashboardSettings) -> bool:
    """Compare in constant time; an unset admin token matches nothing."""
    if not settings.admin_token or not presented:
        return False
    return hmac.compare_digest(presented.encode(), settings.admin_token.encode())


def principal_from_session(session: Session) -> Principal:
    return Principal(session.role, session.user_id, session.key_id)


async def authenticate(
    request: web.Request, settings: DashboardSettings, backend: Backend
) -> Principal:
    """Return the principal of a request, or raise UnauthorizedError.

    ``Authorization: Bearer`` takes the admin token or a gateway key, for
    products that show usage in their own interface; otherwise the session
    cookie is used.
    """
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise UnauthorizedError("expected Authorization: Bearer <key>")
        credential = credential.strip()
        if admin_token_matches(credential, settings):
            return Principal(ROLE_OPERATOR, "")
        key = await backend.authenticate_key(credential)
        return Principal(ROLE_USER, key.user_id, key.key_id)

    cookie = request.cookies.get(COOKIE_NAME, "")
    session = verify_session(cookie, settings.session_key, time.time())
    if session is None:
        raise UnauthorizedError("sign in first: no valid session")
    return principal_from_session(session)


def scoped_user_id(principal: Principal, query: Mapping[str, str]) -> str:
    """Return the user id a request may read: a user's own, or any for operators.

    A user who names another user gets 403 rather than silently their own
    data, so that a product bug shows up instead of returning wrong numbers.
    """
    requested = query.get("user_id", "")
    if principal.is_operator:
        return requested
    if requested and requested != principal.user_id:
        raise ForbiddenError("a user session can only read its own user's data")
    return principal.user_id


def require_operator(principal: Principal) -> None:
    if not principal.is_operator:
        raise ForbiddenError("this endpoint is for operators only")


def check_origin(request: web.Request) -> None:
    """Reject a cross-site POST: its Origin must be this server's own origin.

    Together with SameSite=Strict cookies this stops cross-site request
    forgery. Clients without an Origin header (curl, server-side code) carry
    no ambient cookie risk and pass.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return
    expected = f"{request.scheme}://{request.host}"
    if origin != expected:
        raise ForbiddenError(f"cross-origin request rejected: Origin {origin!r}")


def require_field(body: Mapping[str, object], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"missing {name}: expected a non-empty string")
    return value
