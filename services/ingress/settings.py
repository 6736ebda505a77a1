"""Settings of the ingress, read once from the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import ConfigError
from services.common.env import env_float, env_int


@dataclass(frozen=True, slots=True)
class IngressSettings:
    host: str = "127.0.0.1"
    # 0 binds any free port; the ready file then tells the port.
    port: int = 8080
    policy_address: str = "127.0.0.1:50051"
    analytics_address: str = "127.0.0.1:50052"
    # Deadline of one PolicyService.Check call, in milliseconds.
    policy_timeout_ms: int = 250
    # Seconds to open a connection to a provider.
    upstream_connect_timeout_s: float = 10.0
    # Seconds without a byte from the provider before the call fails with 504.
    upstream_read_timeout_s: float = 600.0
    # Largest request body accepted, in bytes; larger bodies get 413.
    max_body_bytes: int = 32 << 20
    # Largest request or response body stored with a call event, in bytes;
    # longer payloads are stored truncated.
    max_logged_payload_bytes: int = 1 << 20
    # Call events held in memory while the analytics service is slow or down.
    event_queue_max: int = 100_000
    event_batch_max: int = 256
    event_flush_interval_ms: int = 50
    # Seconds a SIGTERM waits for in-flight calls and unsent events.
    shutdown_grace_s: float = 10.0
    # Name of this replica, stored with each call event.
    ingress_id: str = ""
    ready_file: str = ""


def load_settings(environ: Mapping[str, str] = os.environ) -> IngressSettings:
    """Build the settings from the environment, reporting every invalid value."""
    problems: list[str] = []
    d = IngressSettings()
    settings = IngressSettings(
        host=environ.get("TOLLGATE_INGRESS_HOST", d.host),
        port=env_int(environ, "TOLLGATE_INGRESS_PORT", d.port, problems),
        policy_address=environ.get("TOLLGATE_POLICY_ADDRESS", d.policy_address),
        analytics_address=environ.get(
            "TOLLGATE_ANALYTICS_ADDRESS", d.analytics_address
        ),
        policy_timeout_ms=env_int(
            environ,
            "TOLLGATE_POLICY_TIMEOUT_MS",
            d.policy_timeout_ms,
            problems,
            minimum=1,
        ),
        upstream_connect_timeout_s=env_float(
            environ,
            "TOLLGATE_UPSTREAM_CONNECT_TIMEOUT_S",
            d.upstream_connect_timeout_s,
            problems,
        ),
        upstream_read_timeout_s=env_float(
            environ,
            "TOLLGATE_UPSTREAM_READ_TIMEOUT_S",
            d.upstream_read_timeout_s,
            problems,
        ),
        max_body_bytes=env_int(
            environ, "TOLLGATE_MAX_BODY_BYTES", d.max_body_bytes, problems, minimum=1
        ),
        max_logged_payload_bytes=env_int(
            environ,
            "TOLLGATE_MAX_LOGGED_PAYLOAD_BYTES",
            d.max_logged_payload_bytes,
            problems,
        ),
        event_queue_max=env_int(
            environ,
            "TOLLGATE_EVENT_QUEUE_MAX",
            d.event_queue_max,
            problems,
            minimum=1,
        ),
        event_batch_max=env_int(
            environ,
            "TOLLGATE_EVENT_BATCH_MAX",
            d.event_batch_max,
            problems,
            minimum=1,
        ),
        event_flush_interval_ms=env_int(
            environ,
            "TOLLGATE_EVENT_FLUSH_INTERVAL_MS",
            d.event_flush_interval_ms,
            problems,
            minimum=1,
        ),
        shutdown_grace_s=env_float(
            environ, "TOLLGATE_SHUTDOWN_GRACE_S", d.shutdown_grace_s, problems
        ),
        ingress_id=environ.get("TOLLGATE_INGRESS_ID") or socket.gethostname(),
        ready_file=environ.get("TOLLGATE_READY_FILE", ""),
    )
    if problems:
        raise ConfigError(problems)
    return settings
