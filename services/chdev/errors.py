"""ClickHouse exceptions as the HTTP interface reports them.

A failed query gets the HTTP status that ClickHouse's
``exceptionCodeToHTTPStatus`` picks for the error, the header
``X-ClickHouse-Exception-Code`` and a body such as
``Code: 60. DB::Exception: <message>. (UNKNOWN_TABLE) (version 26.9.2.1)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Error codes as errorCodeToName() in chdb-core 26.9 names them.
NOT_IMPLEMENTED = 48
SYNTAX_ERROR = 62
UNKNOWN_FORMAT = 73
UNKNOWN_COMPRESSION_METHOD = 89
UNKNOWN_SETTING = 115
READONLY = 164
QUERY_IS_TOO_LARGE = 229
CANNOT_DECOMPRESS = 271
STD_EXCEPTION = 1001

_CODE_NAMES = {
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    UNKNOWN_FORMAT: "UNKNOWN_FORMAT",
    UNKNOWN_COMPRESSION_METHOD: "UNKNOWN_COMPRESSION_METHOD",
    UNKNOWN_SETTING: "UNKNOWN_SETTING",
    READONLY: "READONLY",
    QUERY_IS_TOO_LARGE: "QUERY_IS_TOO_LARGE",
    CANNOT_DECOMPRESS: "CANNOT_DECOMPRESS",
    STD_EXCEPTION: "STD_EXCEPTION",
}

# HTTP status by error name, as in ClickHouse's
# src/Server/HTTP/exceptionCodeToHTTPStatus.cpp. Other errors map to 500.
_STATUS_BY_NAME = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(
        (
            "UNKNOWN_USER",
            "WRONG_PASSWORD",
            "AUTHENTICATION_FAILED",
            "SET_NON_GRANTED_ROLE",
            "ACCESS_DENIED",
        ),
        403,
    ),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS",
            "CANNOT_COMPILE_REGEXP",
            "CANNOT_PARSE_TEXT",
            "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING",
            "CANNOT_PARSE_DATE",
            "CANNOT_PARSE_DATETIME",
            "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
            "CANNOT_PARSE_IPV4",
            "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            "CANNOT_PARSE_UUID",
            "DUPLICATE_COLUMN",
            "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST",
            "UNKNOWN_TYPE_OF_AST_NODE",
            "THERE_IS_NO_COLUMN",
            "TOO_DEEP_AST",
            "TOO_BIG_AST",
            "UNEXPECTED_AST_STRUCTURE",
            "SYNTAX_ERROR",
            "INCORRECT_DATA",
            "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE",
            "UNKNOWN_FUNCTION",
            "UNKNOWN_IDENTIFIER",
            "UNKNOWN_TYPE",
            "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE",
            "UNKNOWN_SETTING",
            "UNKNOWN_DIRECTION_OF_SORTING",
            "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT",
            "UNKNOWN_DATABASE_ENGINE",
            "UNKNOWN_TYPE_OF_QUERY",
            "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "CANNOT_SCHEDULE_TASK": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}

_CHDB_MESSAGE = re.compile(
    r"Code: (?P<code>\d+)\. DB::Exception: (?P<text>.*?)"
    r"(?: \((?P<name>[A-Z0-9_]+)\))?\s*\Z",
    re.DOTALL,
)


@dataclass(eq=False)
class ClickHouseError(Exception):
    """A ClickHouse exception with its numeric code and symbolic name."""

    code: int
    name: str
    message: str

    @classmethod
    def from_code(cls, code: int, message: str) -> ClickHouseError:
        return cls(code, _CODE_NAMES.get(code, "UNKNOWN_EXCEPTION"), message)

    @classmethod
    def from_chdb(cls, error: BaseException) -> ClickHouseError:
        """Parse chdb's ``Code: N. DB::Exception: text. (NAME)`` message."""
        raw = str(error)
        match = _CHDB_MESSAGE.search(raw)
        if match is None:
            return cls.from_code(STD_EXCEPTION, raw.strip() or type(error).__name__)
        code = int(match.group("code"))
        name = match.group("name") or _CODE_NAMES.get(code, "UNKNOWN_EXCEPTION")
        text = match.group("text").strip().removesuffix(".")
        return cls(code, name, text)

    def __str__(self) -> str:
        return f"Code: {self.code}. {self.message} ({self.name})"

    @property
    def http_status(self) -> int:
        return _STATUS_BY_NAME.get(self.name, 500)

    def body(self, version: str) -> str:
        """Return the response body in the text layout of ClickHouse's server."""
        return (
            f"Code: {self.code}. DB::Exception: {self.message}. "
            f"({self.name}) (version {version})\n"
        )
