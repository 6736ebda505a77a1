"""Versioned schema migrations and the retention TTLs, applied on start.

Migrations are the files ``migrations/NNNN_name.sql``, applied in version
order. Each applied version is recorded in the ``schema_migrations`` table, so
a restart applies only new files. Statements use IF NOT EXISTS, so a migration
interrupted half-way is safe to run again.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from services.analytics.errors import MigrationError
from services.analytics.sink import ClickHouseSink

logger = logging.getLogger(__name__)

_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""

# Columns whose values expire before the row does.
PAYLOAD_COLUMNS = ("request_body", "response_body")
_PAYLOAD_COLUMN_TYPE = "String CODEC(ZSTD(3))"
_TTL_DAYS = r"TTL toDateTime\(start_time\) \+ toIntervalDay\((\d+)\)"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retention:
    """TTLs of the calls table in days, None where none was found."""

    call_days: int | None
    payload_days: dict[str, int | None]


def load_migrations() -> list[Migration]:
    """Read the migration files shipped with the package, in version order."""
    folder = resources.files("services.analytics").joinpath("migrations")
    migrations: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"two migration files have version {version}")
        statements = tuple(split_statements(entry.read_text(encoding="utf-8")))
        if not statements:
            raise MigrationError(f"migration {entry.name} contains no statement")
        migrations[version] = Migration(version, match.group(2), statements)
    return [migrations[version] for version in sorted(migrations)]


def split_statements(sql: str) -> list[str]:
    """Split a migration file into statements at each ``;`` that ends a line.

    Lines that contain only a ``--`` comment are dropped, so a statement never
    consists of comments alone.
    """
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    chunks = re.split(r";[ \t]*(?:\n|$)", "\n".join(lines))
    return [chunk.strip() for chunk in chunks if chunk.strip()]


async def apply_migrations(sink: ClickHouseSink) -> list[int]:
    """Apply the migrations not yet recorded and return their versions."""
    await sink.command(CREATE_MIGRATIONS_TABLE)
    rows = await sink.query("SELECT version FROM schema_migrations FINAL")
    done = {int(row[0]) for row in rows}
    applied: list[int] = []
    for migration in load_migrations():
        if migration.version in done:
            continue
        logger.info("applying migration %04d_%s", migration.version, migration.name)
        for statement in migration.statements:
            await sink.command(statement)
        await sink.command(
            "INSERT INTO schema_migrations (version, name) "
            "VALUES ({version:UInt32}, {name:String})",
            parameters={"version": migration.version, "name": migration.name},
        )
        applied.append(migration.version)
    return applied


async def apply_retention(
    sink: ClickHouseSink, payload_days: int, call_days: int
) -> None:
    """Set the TTLs of the calls table to the configured retention.

    A TTL is altered only when it differs, because ClickHouse recomputes the
    TTL of every existing part after the change.
    """
    rows = await sink.query(
        "SELECT create_table_query FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'calls'"
    )
    if not rows:
        raise MigrationError("table calls does not exist after the migrations")
    current = parse_retention(str(rows[0][0]))
    for statement in retention_statements(current, payload_days, call_days):
        logger.info("changing retention: %s", statement)
        await sink.command(statement)


def retention_statements(
    current: Retention, payload_days: int, call_days: int
) -> list[str]:
    """Return the ALTER statements that bring ``current`` to the given days."""
    # Both values are integers validated by the settings, so formatting them
    # into the DDL is safe; ClickHouse takes no query parameters in a TTL.
    statements: list[str] = []
    for column in PAYLOAD_COLUMNS:
        if current.payload_days.get(column) != payload_days:
            statements.append(
                f"ALTER TABLE calls MODIFY COLUMN {column} {_PAYLOAD_COLUMN_TYPE} "
                f"TTL toDateTime(start_time) + INTERVAL {int(payload_days)} DAY"
            )
    if current.call_days != call_days:
        statements.append(
            "ALTER TABLE calls MODIFY TTL "
            f"toDateTime(start_time) + INTERVAL {int(call_days)} DAY"
        )
    return statements


def parse_retention(create_table_query: str) -> Retention:
    """Find the row and payload TTLs in a ``system.tables`` create query."""
    columns, _, engine = create_table_query.partition(" ENGINE = ")
    payload_days: dict[str, int | None] = {}
    for column in PAYLOAD_COLUMNS:
        match = re.search(rf"`?{column}`? [^,]*?{_TTL_DAYS}", columns)
        payload_days[column] = int(match.group(1)) if match else None
    table_match = re.search(_TTL_DAYS, engine)
    call_days = int(table_match.group(1)) if table_match else None
    return Retention(call_days=call_days, payload_days=payload_days)
