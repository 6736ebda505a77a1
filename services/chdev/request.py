"""Turn an HTTP request's URL parameters and body into a Statement.

The parameters follow ClickHouse's HTTP interface: ``query``, ``database``,
``default_format``, ``param_<name>`` for query parameters, and any other
name as a setting for this one statement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from services.chdev.engine import Statement
from services.chdev.errors import (
    NOT_IMPLEMENTED,
    READONLY,
    UNKNOWN_FORMAT,
    UNKNOWN_SETTING,
    ClickHouseError,
)
from services.chdev.sql import first_keyword

# Parameters that ClickHouse's HTTP handler or the client library consumes
# itself. They are not settings of the statement, so they never reach chdb.
TRANSPORT_PARAMETERS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "role",
        "stacktrace",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "close_session",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "compress",
        "decompress",
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_native_compression_disable_checksumming_on_decompress",
        "add_http_cors_header",
    }
)

# chdb output formats that exist only in its Python API, not in ClickHouse.
_PYTHON_ONLY_FORMATS = frozenset({"dataframe", "datastore", "arrowtable"})

# Statements that a GET request may run. ClickHouse treats GET as read-only
# but still allows SET and USE there.
_GET_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "SET", "USE"}
)

_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE_VALUES


def build_statement(
    parameters: Mapping[str, str], body: bytes, method: str
) -> Statement | None:
    """Build the statement for a request, or return None if it has no query.

    Raises ClickHouseError for a request the server cannot run.
    """
    _reject_native_compression(parameters)
    sql = _join_query(parameters.get("query", ""), body)
    if not sql.strip():
        return None
    if method == "GET":
        _check_get_statement(sql)
    return Statement(
        sql=sql,
        database=parameters.get("database") or "default",
        default_format=_default_format(parameters),
        settings=_settings(parameters),
        parameters=_query_parameters(parameters),
    )


def _join_query(url_query: str, body: bytes) -> bytes:
    # ClickHouse reads the query parameter, a line break, then the body as one
    # stream, so an INSERT header in the URL is followed by its data.
    if not url_query:
        return body
    if not body:
        return url_query.encode("utf-8")
    return url_query.encode("utf-8") + b"\n" + body


def _reject_native_compression(parameters: Mapping[str, str]) -> None:
    for name in ("compress", "decompress"):
        if is_true(parameters.get(name)):
            raise ClickHouseError.from_code(
                NOT_IMPLEMENTED,
                f"The URL parameter {name}=1 (ClickHouse block compression) is "
                "not supported by the development server: use Content-Encoding "
                "and Accept-Encoding instead",
            )


def _check_get_statement(sql: bytes) -> None:
    keyword = first_keyword(sql)
    if keyword in _GET_KEYWORDS:
        return
    raise ClickHouseError.from_code(
        READONLY,
        "Cannot execute query in readonly mode. For queries over HTTP, method "
        "GET implies readonly. You should use method POST for modifying queries",
    )


def _default_format(parameters: Mapping[str, str]) -> str:
    name = parameters.get("default_format") or "TabSeparated"
    if name.lower() in _PYTHON_ONLY_FORMATS:
        raise ClickHouseError.from_code(UNKNOWN_FORMAT, f"Unknown format {name}")
    return name


def _settings(parameters: Mapping[str, str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for name, value in parameters.items():
        if name in TRANSPORT_PARAMETERS or name.startswith("param_"):
            continue
        if not _SETTING_NAME.fullmatch(name):
            raise ClickHouseError.from_code(
                UNKNOWN_SETTING, f"Unknown setting '{name}'"
            )
        settings[name] = value
    return settings


def _query_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    return {
        name.removeprefix("param_"): value
        for name, value in parameters.items()
        if name.startswith("param_")
    }
