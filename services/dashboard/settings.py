"""Settings of the dashboard, read once from the environment."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import ConfigError
from services.common.env import env_bool, env_int

# Label that separates the session key derived from the admin token from any
# other use of that token.
_SECRET_DERIVATION_LABEL = b"tollgate-dashboard-session-v1:"


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    # Operators sign in with this token; empty disables operator sign-in.
    admin_token: str = ""
    # HMAC-SHA256 key of the session cookies. Every ingress replica must use
    # the same key so that any replica accepts a session another one issued.
    session_key: bytes = b""
    # Send cookies with the Secure attribute. Only plain HTTP on loopback
    # (make run, the tests) should turn it off.
    secure_cookies: bool = True
    # Lifetime of a session, in seconds.
    session_ttl_s: int = 12 * 3600
    # Deadline of one analytics or policy query, in milliseconds.
    query_timeout_ms: int = 10_000


def session_key_from(secret: str, admin_token: str) -> bytes:
    """Return the cookie signing key: the secret if set, else derived from the token.

    An empty result means no key is available; the dashboard then rejects
    every sign-in, because an unsigned session would be forgeable.
    """
    if secret:
        return hashlib.sha256(secret.encode()).digest()
    if admin_token:
        return hashlib.sha256(_SECRET_DERIVATION_LABEL + admin_token.encode()).digest()
    return b""


def load_dashboard_settings(
    environ: Mapping[str, str] = os.environ,
) -> DashboardSettings:
    """Build the settings from the environment, reporting every invalid value."""
    problems: list[str] = []
    d = DashboardSettings()
    admin_token = environ.get("TOLLGATE_ADMIN_TOKEN", "")
    settings = DashboardSettings(
        admin_token=admin_token,
        session_key=session_key_from(
            environ.get("TOLLGATE_DASHBOARD_SECRET", ""), admin_token
        ),
        secure_cookies=env_bool(
            environ, "TOLLGATE_DASHBOARD_SECURE_COOKIES", d.secure_cookies, problems
        ),
        session_ttl_s=env_int(
            environ,
            "TOLLGATE_DASHBOARD_SESSION_TTL_S",
            d.session_ttl_s,
            problems,
            minimum=60,
        ),
        query_timeout_ms=env_int(
            environ,
            "TOLLGATE_DASHBOARD_QUERY_TIMEOUT_MS",
            d.query_timeout_ms,
            problems,
            minimum=1,
        ),
    )
    if problems:
        raise ConfigError(problems)
    return settings
