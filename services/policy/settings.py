"""Settings of the policy service, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import ConfigError
from services.common.env import env_float, env_int


@dataclass(frozen=True, slots=True)
class PolicySettings:
    host: str = "127.0.0.1"
    # 0 binds any free port; the ready file then tells the port.
    port: int = 50051
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Prefix of every Redis key, so that several deployments (or test runs)
    # can share one Redis without seeing each other's state.
    redis_prefix: str = "tg"
    # Deadline of one Redis command, in milliseconds.
    redis_timeout_ms: int = 200
    # Seconds a SIGTERM waits for in-flight RPCs before the server stops.
    shutdown_grace_s: float = 5.0
    # Key of the HMAC that derives user ids from provider keys; empty to let
    # the first replica generate one and share it through Redis.
    identity_secret: str = ""
    ready_file: str = ""
    # Port of the /metrics HTTP endpoint: 0 disables it, -1 binds a free port.
    metrics_port: int = 0


def load_settings(environ: Mapping[str, str] = os.environ) -> PolicySettings:
    """Build the settings from the environment, reporting every invalid value."""
    problems: list[str] = []
    port = env_int(environ, "TOLLGATE_POLICY_PORT", 50051, problems)
    timeout_ms = env_int(
        environ, "TOLLGATE_POLICY_REDIS_TIMEOUT_MS", 200, problems, minimum=1
    )
    metrics_port = env_int(
        environ, "TOLLGATE_POLICY_METRICS_PORT", 0, problems, minimum=-1
    )
    grace_s = env_float(environ, "TOLLGATE_SHUTDOWN_GRACE_S", 5.0, problems)
    redis_url = environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append(
            f"REDIS_URL: expected a redis://, rediss:// or unix:// URL, "
            f"got {redis_url!r}"
        )
    if problems:
        raise ConfigError(problems)
    return PolicySettings(
        host=environ.get("TOLLGATE_POLICY_HOST", "127.0.0.1"),
        port=port,
        redis_url=redis_url,
        redis_prefix=environ.get("TOLLGATE_REDIS_PREFIX", "tg"),
        redis_timeout_ms=timeout_ms,
        shutdown_grace_s=grace_s,
        identity_secret=environ.get("TOLLGATE_IDENTITY_SECRET", ""),
        ready_file=environ.get("TOLLGATE_READY_FILE", ""),
        metrics_port=metrics_port,
    )
