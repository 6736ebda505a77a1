"""Errors of the dashboard; each one is also the JSON response it becomes.

DashboardError
  BadRequestError      400, invalid parameters
  UnauthorizedError    401, no valid session or key
  ForbiddenError       403, signed in but not allowed
  NotFoundError        404
  UnavailableError     503, a backing service failed or lacks the feature
"""

from __future__ import annotations


class DashboardError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(DashboardError):
    status = 400
    code = "invalid_request"


class UnauthorizedError(DashboardError):
    status = 401
    code = "unauthenticated"


class ForbiddenError(DashboardError):
    status = 403
    code = "forbidden"


class NotFoundError(DashboardError):
    status = 404
    code = "not_found"


class UnavailableError(DashboardError):
    status = 503
    code = "unavailable"
