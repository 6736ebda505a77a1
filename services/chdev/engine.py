"""The chdb engine behind the server, run on one worker thread.

chdb hosts one embedded ClickHouse per process, bound to one data folder.
Every chdb call goes through a single-thread executor, so statements run one
at a time in arrival order and the event loop stays free for ``/ping``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.chdev.errors import SYNTAX_ERROR, ClickHouseError
from services.chdev.sql import InlineInsert, returns_result, split_inline_insert
from services.chdev.sql import trailing_format as find_trailing_format

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Statement:
    """One SQL statement from an HTTP request, with its request context."""

    sql: bytes
    database: str = "default"
    default_format: str = "TabSeparated"
    settings: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """The result of a statement: body, output format and summary counters.

    ``format_name`` is None for statements that return no result set, such
    as DDL and INSERT, because ClickHouse sends no X-ClickHouse-Format then.
    """

    body: bytes
    format_name: str | None
    summary: dict[str, str]


@dataclass(frozen=True)
class ServerInfo:
    """Facts read from the engine at start-up, sent in response headers."""

    version: str
    timezone: str


class Engine:
    """The chdb connection and the one thread that is allowed to use it."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        self._connection: Any = None
        self.info = ServerInfo(version="", timezone="UTC")

    async def open(self) -> None:
        """Open the chdb connection on the worker thread and read server facts."""
        await self._call(self._open)
        logger.info("chdb %s opened data folder %s", self.info.version, self._data_dir)

    async def close(self) -> None:
        """Close the connection on the worker thread, then stop the thread."""
        try:
            await self._call(self._close)
        finally:
            self._executor.shutdown(wait=True)

    async def execute(self, statement: Statement) -> Outcome:
        """Run one statement. Raises ClickHouseError if chdb rejects it."""
        return await self._call(self._execute, statement)

    async def _call(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    def _open(self) -> None:
        # Imported here, on the worker thread, because loading chdb starts the
        # embedded server and replaces the process's signal handlers.
        from chdb.state import sqlitelike

        self._data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._connection = sqlitelike.Connection(str(self._data_dir))
        except RuntimeError as error:
            raise ClickHouseError.from_chdb(error) from error
        # chdb defaults enable_http_compression to 1 and clickhouse-server to 0.
        # clickhouse-connect 1.12 reads it from system.settings. With 0 it
        # requests compressed responses with enable_http_compression=1, as it
        # does against a production server.
        self._raw_query("SET enable_http_compression = 0")
        row = self._query_text("SELECT version(), timezone()").rstrip("\n")
        version, timezone = row.split("\t")
        self.info = ServerInfo(version=version, timezone=timezone)

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _execute(self, statement: Statement) -> Outcome:
        self._use_database(statement.database)
        snapshot = self._apply_settings(statement.settings)
        try:
            return self._run(statement)
        finally:
            self._restore_settings(snapshot)

    def _run(self, statement: Statement) -> Outcome:
        inline_insert = _split_insert(statement.sql)
        if inline_insert is not None:
            return self._insert(inline_insert)
        sql = _decode_sql(statement.sql)
        result = self._raw_query(sql, statement.default_format, statement.parameters)
        format_name = None
        if returns_result(statement.sql):
            trailing_format = find_trailing_format(statement.sql)
            format_name = trailing_format or statement.default_format
        return Outcome(result.bytes(), format_name, _query_summary(result))

    def _insert(self, insert: InlineInsert) -> Outcome:
        try:
            inserter = self._connection.send_insert(
                insert.statement, insert.format_name
            )
            with inserter:
                if insert.data:
                    inserter.append(insert.data)
                result = inserter.finish()
        except RuntimeError as error:
            raise ClickHouseError.from_chdb(error) from error
        summary = {
            "written_rows": str(result.rows_written),
            "written_bytes": str(result.bytes_written),
            "elapsed_ns": str(int(result.elapsed * 1_000_000_000)),
        }
        return Outcome(b"", None, summary)

    def _use_database(self, database: str) -> None:
        # Without sessions, ClickHouse's HTTP interface starts each request in
        # the database from the `database` parameter, or in `default`.
        # NOTE: session_id is ignored, so a SET or USE sent as a statement
        # changes the one shared connection for every later request.
        self._raw_query(f"USE {_quote_identifier(database)}")

    def _apply_settings(self, settings: Mapping[str, str]) -> dict[str, str | None]:
        """Apply per-request settings with SET and return their prior values.

        A prior value of None means the setting was at its default.
        """
        if not settings:
            return {}
        snapshot = self._read_settings(settings)
        for name, value in settings.items():
            self._raw_query(f"SET {name} = {_quote_string(value)}")
        return snapshot

    def _read_settings(self, settings: Mapping[str, str]) -> dict[str, str | None]:
        names = ", ".join(_quote_string(name) for name in settings)
        text = self._query_text(
            "SELECT name, value, changed FROM system.settings "
            f"WHERE name IN ({names}) FORMAT JSONEachRow"
        )
        snapshot: dict[str, str | None] = dict.fromkeys(settings)
        for line in text.splitlines():
            row = json.loads(line)
            snapshot[row["name"]] = row["value"] if row["changed"] else None
        return snapshot

    def _restore_settings(self, snapshot: Mapping[str, str | None]) -> None:
        for name, value in snapshot.items():
            restored = "DEFAULT" if value is None else _quote_string(value)
            try:
                self._raw_query(f"SET {name} = {restored}")
            except ClickHouseError as error:
                logger.warning("failed to restore setting %s: %s", name, error)

    def _query_text(self, sql: str) -> str:
        return self._raw_query(sql).bytes().decode("utf-8")

    def _raw_query(
        self,
        sql: str,
        format_name: str = "TabSeparated",
        parameters: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            return self._connection.query(
                sql, format_name, params=dict(parameters or {})
            )
        except RuntimeError as error:
            raise ClickHouseError.from_chdb(error) from error


def _split_insert(sql: bytes) -> InlineInsert | None:
    try:
        return split_inline_insert(sql)
    except ValueError as error:
        raise ClickHouseError.from_code(
            SYNTAX_ERROR, f"Syntax error: {error}"
        ) from error


def _decode_sql(sql: bytes) -> str:
    try:
        return sql.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ClickHouseError.from_code(
            SYNTAX_ERROR, f"The query is not valid UTF-8 at byte {error.start}"
        ) from error


def _query_summary(result: Any) -> dict[str, str]:
    return {
        "read_rows": str(result.rows_read()),
        "read_bytes": str(result.bytes_read()),
        "written_rows": str(result.rows_written()),
        "written_bytes": str(result.bytes_written()),
        "elapsed_ns": str(int(result.elapsed() * 1_000_000_000)),
    }


def _quote_identifier(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace("`", "\\`")
    return f"`{escaped}`"


def _quote_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
