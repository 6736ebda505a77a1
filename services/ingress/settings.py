"""Settings of the ingress, read once from the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.config import ConfigError
from services.common.env import MAX_PORT, env_float, env_int


@dataclass(frozen=True, slots=True)
class IngressSettings:
    host: str = "127.0.0.1"
    # 0 binds any free port, which the ready file then contains.
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
    # One Ingest message per interval at low rates: each message wakes the
    # analytics service, and each of its flushes costs two ClickHouse queries.
    event_flush_interval_ms: int = 200
    # Directory of the call event spool (see docs/durability.md); empty
    # turns the spool off. Default: <TOLLGATE_DATA_DIR>/spool/ingress-<id>.
    event_spool_dir: str = ""
    # Largest size of the spool files, in bytes; when full, new events are
    # dropped (logged and counted).
    event_spool_max_bytes: int = 1 << 30
    # Interval between fsyncs of the spool, in milliseconds.
    # 1 s, as Redis appendfsync everysec: each fsync is a worker-thread hop
    # and a disk flush, 5 per second at 200 ms.
    event_spool_fsync_interval_ms: int = 1000
    # Seconds a SIGTERM waits for in-flight calls and unsent events.
    shutdown_grace_s: float = 10.0
    # Name of this replica, stored with each call event.
    ingress_id: str = ""
    ready_file: str = ""
    # The admin token, removed from every stored payload like a provider key.
    admin_token: str = field(default="", repr=False)


def load_settings(environ: Mapping[str, str] = os.environ) -> IngressSettings:
    """Build the settings from the environment, reporting every invalid value."""
    problems: list[str] = []
    d = IngressSettings()
    ingress_id = environ.get("TOLLGATE_INGRESS_ID") or socket.gethostname()
    settings = IngressSettings(
        host=environ.get("TOLLGATE_INGRESS_HOST", d.host),
        port=env_int(
            environ, "TOLLGATE_INGRESS_PORT", d.port, problems, maximum=MAX_PORT
        ),
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
        ingress_id=ingress_id,
        event_spool_dir=_spool_dir(environ, ingress_id),
        event_spool_max_bytes=env_int(
            environ,
            "TOLLGATE_EVENT_SPOOL_MAX_BYTES",
            d.event_spool_max_bytes,
            problems,
            minimum=1 << 16,
        ),
        event_spool_fsync_interval_ms=env_int(
            environ,
            "TOLLGATE_EVENT_SPOOL_FSYNC_INTERVAL_MS",
            d.event_spool_fsync_interval_ms,
            problems,
            minimum=1,
        ),
        ready_file=environ.get("TOLLGATE_READY_FILE", ""),
        admin_token=environ.get("TOLLGATE_ADMIN_TOKEN", ""),
    )
    if problems:
        raise ConfigError(problems)
    return settings


def _spool_dir(environ: Mapping[str, str], ingress_id: str) -> str:
    """Return the spool directory: the setting, "" for "off", else the default."""
    value = environ.get("TOLLGATE_EVENT_SPOOL_DIR", "").strip()
    if value.lower() == "off":
        return ""
    if value:
        return value
    data_dir = environ.get("TOLLGATE_DATA_DIR", "").strip() or "var"
    return os.path.join(data_dir, "spool", f"ingress-{ingress_id}")
