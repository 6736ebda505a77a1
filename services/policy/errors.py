"""Errors of the policy service and the one table that maps them to gRPC codes.

PolicyError
├── UnknownGatewayError       NOT_FOUND
├── AuthenticationError       UNAUTHENTICATED
├── AdminTokenError           UNAUTHENTICATED (admin RPC without the admin token)
├── InvalidRequestError       INVALID_ARGUMENT
├── KeyNotFoundError          NOT_FOUND (admin RPC on an unknown key)
├── KeyEncryptionError        FAILED_PRECONDITION (stored keys without a usable
│                             key-encryption key)
├── DeadlineExpiredError      DEADLINE_EXCEEDED (the ingress stopped waiting)
├── StoreUnavailableError     UNAVAILABLE (Redis failed or timed out)
└── LimitExceededError        RESOURCE_EXHAUSTED (a limit or the loop guard)
"""

from __future__ import annotations

from typing import Any

import grpc


class PolicyError(Exception):
    """Base of the errors the policy service turns into gRPC statuses."""

    # The caller's identity and metadata, once known: sent with the denial as
    # a status detail so that the denied call is recorded under its user.
    caller: Any = None


class UnknownGatewayError(PolicyError):
    pass


class AuthenticationError(PolicyError):
    pass


class AdminTokenError(PolicyError):
    pass


class InvalidRequestError(PolicyError):
    pass


class KeyNotFoundError(PolicyError):
    pass


class KeyEncryptionError(PolicyError):
    pass


class DeadlineExpiredError(PolicyError):
    pass


class StoreUnavailableError(PolicyError):
    pass


STATUS_CODES: dict[type[PolicyError], grpc.StatusCode] = {
    UnknownGatewayError: grpc.StatusCode.NOT_FOUND,
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    AdminTokenError: grpc.StatusCode.UNAUTHENTICATED,
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    KeyNotFoundError: grpc.StatusCode.NOT_FOUND,
    KeyEncryptionError: grpc.StatusCode.FAILED_PRECONDITION,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExpiredError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code_for(error: PolicyError) -> grpc.StatusCode:
    for error_type in type(error).__mro__:
        code = STATUS_CODES.get(error_type)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


class LimitExceededError(PolicyError):
    """A limit or the loop guard denied the call."""

    def __init__(
        self, message: str, *, name: str, kind: str, limit: int, retry_after_s: int
    ) -> None:
        super().__init__(message)
        self.name = name
        self.kind = kind
        self.limit = limit
        self.retry_after_s = retry_after_s


STATUS_CODES[LimitExceededError] = grpc.StatusCode.RESOURCE_EXHAUSTED
