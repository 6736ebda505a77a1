"""Settings of the policy service, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import ConfigError
from services.common.env import MAX_PORT, env_bool, env_float, env_int
from services.policy.errors import KeyEncryptionError
from services.policy.provider_keys import KEK_ENV, cipher_from_env


@dataclass(frozen=True, slots=True)
class PolicySettings:
    host: str = "127.0.0.1"
    # 0 binds any free port, which the ready file then contains.
    port: int = 50051
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Prefix of every Redis key, so that several deployments (or test runs)
    # can share one Redis without seeing each other's state.
    redis_prefix: str = "tg"
    # Connect to a Redis Cluster rather than a single server.
    redis_cluster: bool = False
    # Deadline of one Redis command, in milliseconds.
    redis_timeout_ms: int = 200
    # Seconds a SIGTERM waits for in-flight RPCs before the server stops.
    shutdown_grace_s: float = 5.0
    # Key of the HMAC that derives user ids from provider keys; empty to let
    # the first replica generate one and share it through Redis.
    identity_secret: str = ""
    # Key-encryption key of stored provider keys (32 bytes, base64); empty
    # when no provider keys are stored.
    key_encryption_key: str = ""
    # Token that PolicyAdminService calls must send as gRPC metadata
    # "authorization: Bearer <token>"; empty leaves the admin RPCs open.
    admin_token: str = ""
    ready_file: str = ""
    # Lease of a concurrency slot, in seconds: a call that never settles (its
    # ingress crashed) frees its slot after this long.
    concurrency_lease_s: int = 900
    # Port of the /metrics HTTP endpoint: 0 disables it, -1 binds a free port.
    metrics_port: int = 0


def load_settings(environ: Mapping[str, str] = os.environ) -> PolicySettings:
    """Build the settings from the environment, reporting every invalid value."""
    problems: list[str] = []
    port = env_int(environ, "TOLLGATE_POLICY_PORT", 50051, problems, maximum=MAX_PORT)
    timeout_ms = env_int(
        environ, "TOLLGATE_POLICY_REDIS_TIMEOUT_MS", 200, problems, minimum=1
    )
    lease_s = env_int(environ, "TOLLGATE_CONCURRENCY_LEASE_S", 900, problems, minimum=1)
    metrics_port = env_int(
        environ,
        "TOLLGATE_POLICY_METRICS_PORT",
        0,
        problems,
        minimum=-1,
        maximum=MAX_PORT,
    )
    grace_s = env_float(environ, "TOLLGATE_SHUTDOWN_GRACE_S", 5.0, problems)
    redis_cluster = env_bool(environ, "TOLLGATE_REDIS_CLUSTER", False, problems)
    redis_url = environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append(
            f"REDIS_URL: expected a redis://, rediss:// or unix:// URL, "
            f"got {redis_url!r}"
        )
    key_encryption_key = environ.get(KEK_ENV, "")
    if key_encryption_key:
        try:
            cipher_from_env(key_encryption_key)
        except KeyEncryptionError as exc:
            problems.append(f"{KEK_ENV}: {exc}")
    if problems:
        raise ConfigError(problems)
    return PolicySettings(
        host=environ.get("TOLLGATE_POLICY_HOST", "127.0.0.1"),
        port=port,
        redis_url=redis_url,
        redis_prefix=environ.get("TOLLGATE_REDIS_PREFIX", "tg"),
        redis_cluster=redis_cluster,
        redis_timeout_ms=timeout_ms,
        shutdown_grace_s=grace_s,
        identity_secret=environ.get("TOLLGATE_IDENTITY_SECRET", ""),
        key_encryption_key=key_encryption_key,
        admin_token=environ.get("TOLLGATE_ADMIN_TOKEN", ""),
        ready_file=environ.get("TOLLGATE_READY_FILE", ""),
        concurrency_lease_s=lease_s,
        metrics_port=metrics_port,
    )
