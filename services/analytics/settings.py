"""Settings of the analytics service, read once from the environment.

Every invalid value is collected and reported together in one
:class:`SettingsError`, each by its variable name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from services.analytics.errors import SettingsError

DEFAULT_CLICKHOUSE_URL = "http://127.0.0.1:8123/tollgate"
DEFAULT_DATABASE = "tollgate"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class ClickHouseTarget:
    """Address of the ClickHouse HTTP interface and the database to use."""

    secure: bool
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    database: str


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    # 0 binds a free port, written to ready_file.
    port: int
    clickhouse: ClickHouseTarget
    # A batch is written when it contains this many events ...
    batch_max_events: int
    # ... or when its oldest event has waited this long.
    flush_interval_ms: int
    # Events held in memory at most; when full, the service stops reading
    # from the Ingest streams until a batch is stored.
    buffer_max_events: int
    # Upper bound of the backoff between retries of a failed insert.
    retry_max_ms: int
    # Timeout of one ClickHouse request.
    clickhouse_timeout_ms: int
    # Time given to open streams and the final flush on SIGTERM or SIGINT.
    shutdown_grace_ms: int
    # Days after start_time when request and response bodies are removed.
    payload_retention_days: int
    # Days after start_time when whole rows are removed.
    call_retention_days: int
    # Directory of the durable local buffer used while ClickHouse is down;
    # empty turns it off (see docs/durability.md).
    spool_dir: str
    # Largest size of the local buffer files, in bytes.
    spool_max_bytes: int
    ready_file: str | None
    # Port of the /metrics HTTP endpoint: 0 disables it, -1 binds a free port.
    metrics_port: int = 0
    # Ranges up to this many hours read the raw calls table (exact
    # percentiles); longer ranges read the per-minute rollup.
    raw_query_max_hours: int = 24
    # The price table; None reads the file shipped with the package.
    prices_file: Path | None = None


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read the settings from ``environ``, or raise SettingsError listing problems."""
    problems: list[str] = []

    def integer(name: str, default: int, minimum: int, maximum: int) -> int:
        return _read_int(environ, name, default, minimum, maximum, problems)

    host = environ.get("TOLLGATE_ANALYTICS_HOST", "127.0.0.1").strip()
    if not host:
        problems.append("TOLLGATE_ANALYTICS_HOST: must not be empty")
    url = environ.get("CLICKHOUSE_URL", DEFAULT_CLICKHOUSE_URL)
    settings = Settings(
        host=host,
        port=integer("TOLLGATE_ANALYTICS_PORT", 50052, 0, 65535),
        clickhouse=_parse_clickhouse_url(url, problems),
        batch_max_events=integer(
            "TOLLGATE_ANALYTICS_BATCH_MAX_EVENTS", 1000, 1, 1_000_000
        ),
        flush_interval_ms=integer(
            "TOLLGATE_ANALYTICS_FLUSH_INTERVAL_MS", 1000, 1, 600_000
        ),
        buffer_max_events=integer(
            "TOLLGATE_ANALYTICS_BUFFER_MAX_EVENTS", 100_000, 1, 100_000_000
        ),
        retry_max_ms=integer("TOLLGATE_ANALYTICS_RETRY_MAX_MS", 5000, 1, 600_000),
        clickhouse_timeout_ms=integer(
            "TOLLGATE_ANALYTICS_CLICKHOUSE_TIMEOUT_MS", 30_000, 100, 3_600_000
        ),
        shutdown_grace_ms=integer(
            "TOLLGATE_ANALYTICS_SHUTDOWN_GRACE_MS", 10_000, 0, 3_600_000
        ),
        payload_retention_days=integer(
            "TOLLGATE_PAYLOAD_RETENTION_DAYS", 30, 1, 36_500
        ),
        call_retention_days=integer("TOLLGATE_CALL_RETENTION_DAYS", 395, 1, 36_500),
        spool_dir=_spool_dir(environ),
        spool_max_bytes=integer(
            "TOLLGATE_ANALYTICS_SPOOL_MAX_BYTES", 1 << 30, 1 << 16, 1 << 50
        ),
        ready_file=environ.get("TOLLGATE_READY_FILE") or None,
        metrics_port=integer("TOLLGATE_ANALYTICS_METRICS_PORT", 0, -1, 65535),
        raw_query_max_hours=integer(
            "TOLLGATE_ANALYTICS_RAW_QUERY_MAX_HOURS", 24, 0, 24 * 36_500
        ),
        prices_file=Path(environ["TOLLGATE_PRICES_FILE"])
        if environ.get("TOLLGATE_PRICES_FILE", "").strip()
        else None,
    )
    _check_relations(settings, problems)
    if problems:
        raise SettingsError(problems)
    return settings


def _spool_dir(environ: Mapping[str, str]) -> str:
    value = environ.get("TOLLGATE_ANALYTICS_SPOOL_DIR", "").strip()
    if value.lower() == "off":
        return ""
    if value:
        return value
    data_dir = environ.get("TOLLGATE_DATA_DIR", "").strip() or "var"
    return os.path.join(data_dir, "spool", "analytics")


def _check_relations(settings: Settings, problems: list[str]) -> None:
    if settings.buffer_max_events < settings.batch_max_events:
        problems.append(
            "TOLLGATE_ANALYTICS_BUFFER_MAX_EVENTS: must be at least "
            f"TOLLGATE_ANALYTICS_BATCH_MAX_EVENTS ({settings.batch_max_events}), "
            f"got {settings.buffer_max_events}"
        )
    if settings.payload_retention_days > settings.call_retention_days:
        problems.append(
            "TOLLGATE_PAYLOAD_RETENTION_DAYS: must not exceed "
            f"TOLLGATE_CALL_RETENTION_DAYS ({settings.call_retention_days}), "
            f"got {settings.payload_retention_days}"
        )


def _read_int(
    environ: Mapping[str, str],
    name: str,
    default: int,
    minimum: int,
    maximum: int,
    problems: list[str],
) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name}: expected an integer, got {raw!r}")
        return default
    if not minimum <= value <= maximum:
        problems.append(
            f"{name}: expected an integer from {minimum} to {maximum}, got {value}"
        )
        return default
    return value


def _parse_clickhouse_url(url: str, problems: list[str]) -> ClickHouseTarget:
    def problem(message: str) -> None:
        problems.append(f"CLICKHOUSE_URL: {message}")

    fallback = ClickHouseTarget(
        False, "127.0.0.1", 8123, "default", "", DEFAULT_DATABASE
    )
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        problem(f"expected an http or https URL, got scheme {parts.scheme!r}")
        return fallback
    if not parts.hostname:
        problem("missing host")
        return fallback
    try:
        port = parts.port
    except ValueError:
        problem("invalid port")
        return fallback
    secure = parts.scheme == "https"
    database = unquote(parts.path.strip("/")) or DEFAULT_DATABASE
    if not _valid_identifier(database):
        problem(f"invalid database name {database!r}: use letters, digits and _")
    return ClickHouseTarget(
        secure=secure,
        host=parts.hostname,
        port=port or (8443 if secure else 8123),
        username=unquote(parts.username or "") or "default",
        password=unquote(parts.password or ""),
        database=database,
    )


def _valid_identifier(name: str) -> bool:
    return _IDENTIFIER.fullmatch(name) is not None
