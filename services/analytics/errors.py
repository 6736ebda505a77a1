"""Exceptions of the analytics service and the gRPC status code of each."""

from __future__ import annotations

import grpc


class AnalyticsError(Exception):
    """Base class of every error that the analytics service raises."""


class SettingsError(AnalyticsError):
    """Invalid environment settings. The message lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


class InvalidRequestError(AnalyticsError):
    """A request argument is invalid (time range, page size, cursor, event)."""


class NotFoundError(AnalyticsError):
    """The requested call does not exist or belongs to another user."""


class StorageUnavailableError(AnalyticsError):
    """ClickHouse cannot be reached or did not respond in time."""


class StorageError(AnalyticsError):
    """ClickHouse returned an error (invalid SQL, schema mismatch, ...)."""


class MigrationError(AnalyticsError):
    """A schema migration file is malformed or failed to apply."""


# The status code sent for each error class. The first matching class wins.
STATUS_CODES: tuple[tuple[type[AnalyticsError], grpc.StatusCode], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (StorageUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (StorageError, grpc.StatusCode.INTERNAL),
    (AnalyticsError, grpc.StatusCode.INTERNAL),
)


def status_code_for(error: AnalyticsError) -> grpc.StatusCode:
    """Return the gRPC status code that reports ``error`` to the caller."""
    for error_class, code in STATUS_CODES:
        if isinstance(error, error_class):
            return code
    return grpc.StatusCode.INTERNAL
