"""The ClickHouse client of the analytics service.

Every ClickHouse or transport error is translated here, once, into
StorageUnavailableError (unreachable, timed out) or StorageError (ClickHouse
rejected the statement).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import clickhouse_connect
from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from services.analytics.errors import StorageError, StorageUnavailableError
from services.analytics.rows import CALL_COLUMN_NAMES, CALL_COLUMN_TYPES
from services.analytics.settings import ClickHouseTarget

logger = logging.getLogger(__name__)


@asynccontextmanager
async def _translated_errors(action: str) -> AsyncIterator[None]:
    try:
        yield
    except OperationalError as exc:
        raise StorageUnavailableError(f"ClickHouse {action} failed: {exc}") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise StorageUnavailableError(f"ClickHouse {action} failed: {exc!r}") from exc
    except ClickHouseError as exc:
        raise StorageError(f"ClickHouse {action} failed: {exc}") from exc


async def _open_client(
    target: ClickHouseTarget, database: str | None, timeout_s: float
) -> AsyncClient:
    return await clickhouse_connect.get_async_client(
        interface="https" if target.secure else "http",
        host=target.host,
        port=target.port,
        username=target.username,
        password=target.password,
        database=database,
        connect_timeout=timeout_s,
        send_receive_timeout=timeout_s,
        # The service retries failed inserts itself, with backoff.
        query_retries=0,
        client_name="tollgate-analytics",
    )


class ClickHouseSink:
    """Reads and writes the analytics database over the ClickHouse HTTP API."""

    def __init__(self, client: AsyncClient, database: str) -> None:
        self._client = client
        self.database = database

    @classmethod
    async def connect(
        cls, target: ClickHouseTarget, timeout_s: float
    ) -> ClickHouseSink:
        """Create the database if it is missing and return a sink bound to it."""
        async with _translated_errors("connect"):
            bootstrap = await _open_client(target, None, timeout_s)
            try:
                # The name was validated as an identifier by the settings.
                await bootstrap.command(
                    f"CREATE DATABASE IF NOT EXISTS {target.database}"
                )
            finally:
                await bootstrap.close()
            client = await _open_client(target, target.database, timeout_s)
        logger.info(
            "connected to ClickHouse at %s:%d, database %s",
            target.host,
            target.port,
            target.database,
        )
        return cls(client, target.database)

    async def command(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> None:
        """Run a statement that returns no rows (DDL, INSERT ... VALUES)."""
        async with _translated_errors("command"):
            await self._client.command(sql, parameters=dict(parameters or {}))

    async def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        column_formats: Mapping[str, str] | None = None,
    ) -> Sequence[Sequence[Any]]:
        """Run a SELECT and return its rows as tuples."""
        async with _translated_errors("query"):
            result = await self._client.query(
                sql,
                parameters=dict(parameters or {}),
                column_formats=dict(column_formats or {}),
            )
        return result.result_rows

    async def insert_calls(self, rows: Sequence[Sequence[Any]], token: str) -> None:
        """Insert rows into the calls table. A repeated ``token`` is a no-op."""
        async with _translated_errors("insert"):
            await self._client.insert(
                "calls",
                data=rows,
                column_names=CALL_COLUMN_NAMES,
                column_type_names=CALL_COLUMN_TYPES,
                settings={
                    "insert_deduplication_token": token,
                    # The rollup drops a retried block too (see migration 3).
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                },
            )

    async def stored_event_ids(
        self, event_ids: Sequence[str], min_start_us: int, max_start_us: int
    ) -> set[str]:
        """Return the ids among ``event_ids`` that the calls table holds.

        The start time bounds prune partitions; the bloom filter index on
        event_id skips the granules that cannot hold one of the ids.
        """
        if not event_ids:
            return set()
        # The ids are formatted into the SQL after uuid.UUID parsed them, so
        # they are safe literals; as a query parameter a long list would make
        # the client send a multipart request.
        literals = ",".join(f"'{uuid.UUID(event_id)}'" for event_id in event_ids)
        rows = await self.query(
            "SELECT DISTINCT toString(event_id) FROM calls "
            "WHERE start_time >= fromUnixTimestamp64Micro({lo:Int64}, 'UTC') "
            "AND start_time <= fromUnixTimestamp64Micro({hi:Int64}, 'UTC') "
            f"AND event_id IN ({literals})",
            {"lo": min_start_us, "hi": max_start_us},
        )
        return {str(row[0]) for row in rows}

    async def close(self) -> None:
        try:
            await self._client.close()
        except (aiohttp.ClientError, OSError):
            logger.warning("closing the ClickHouse client failed", exc_info=True)
