"""SQL text inspection: statement kind, output format and inline insert data.

The server does not parse SQL. These helpers look only at the start and the
end of a statement, which is enough to route it the way ClickHouse's HTTP
handler does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LEADING_NOISE = re.compile(rb"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/|\()+", re.DOTALL)
_FIRST_WORD = re.compile(rb"[A-Za-z]+")
_TRAILING_FORMAT = re.compile(rb"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*\Z", re.IGNORECASE)
_FORMAT_NAME = re.compile(rb"\s+([A-Za-z0-9_]+)")
_TOKEN = re.compile(
    rb"\s+|--[^\n]*|/\*.*?\*/"
    rb"|'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`\\]|\\.)*`"
    rb"|[A-Za-z_][A-Za-z0-9_]*|.",
    re.DOTALL,
)
# Keywords that end an INSERT header without a FORMAT clause.
_INSERT_BODY_KEYWORDS = frozenset({b"VALUES", b"SELECT", b"WITH"})

# Statements that return a result set, so the response carries a format.
RESULT_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "CHECK"}
)


@dataclass(frozen=True)
class InlineInsert:
    """An ``INSERT ... FORMAT name`` header and the data bytes that follow it."""

    statement: str
    format_name: str
    data: bytes


def first_keyword(sql: bytes) -> str:
    """Return the first keyword of ``sql`` in upper case, skipping comments."""
    match = _LEADING_NOISE.match(sql)
    start = match.end() if match else 0
    word = _FIRST_WORD.match(sql, start)
    return word.group(0).decode("ascii").upper() if word else ""


def returns_result(sql: bytes) -> bool:
    """Return whether ``sql`` is a statement that produces a result set."""
    return first_keyword(sql) in RESULT_KEYWORDS


def trailing_format(sql: bytes) -> str | None:
    """Return the name in a trailing ``FORMAT name`` clause, if there is one."""
    match = _TRAILING_FORMAT.search(sql)
    return match.group(1).decode("ascii") if match else None


def split_inline_insert(sql: bytes) -> InlineInsert | None:
    """Split ``INSERT ... FORMAT name`` plus data into header, format and data.

    The header is read token by token, so quoted names and setting values
    that contain the word FORMAT are skipped. Returns None for an INSERT
    without a FORMAT clause (``VALUES`` or ``SELECT``), which runs as an
    ordinary statement.
    """
    if first_keyword(sql) != "INSERT":
        return None
    position = 0
    while position < len(sql):
        token = _TOKEN.match(sql, position)
        assert token is not None  # the last alternative matches any byte
        word = token.group(0).upper()
        if word in _INSERT_BODY_KEYWORDS:
            return None
        if word == b"FORMAT":
            return _inline_insert_at(sql, token.start(), token.end())
        position = token.end()
    return None


def _inline_insert_at(sql: bytes, format_start: int, format_end: int) -> InlineInsert:
    name = _FORMAT_NAME.match(sql, format_end)
    if name is None:
        raise ValueError("the FORMAT clause of the INSERT has no format name")
    data_start = _skip_format_separator(sql, name.end())
    return InlineInsert(
        statement=sql[:format_start].decode("utf-8").rstrip(),
        format_name=name.group(1).decode("ascii"),
        data=sql[data_start:],
    )


def _skip_format_separator(sql: bytes, position: int) -> int:
    """Skip the spaces and at most one line break after the format name.

    ClickHouse starts inline data there. No more is skipped, because binary
    formats such as Native can begin with a byte that looks like white space.
    """
    while sql[position : position + 1] in (b" ", b"\t"):
        position += 1
    if sql[position : position + 2] == b"\r\n":
        return position + 2
    if sql[position : position + 1] == b"\n":
        return position + 1
    return position
