"""Errors the ingress answers itself, in the calling provider's error format.

Each :class:`GatewayError` names a status and one error type per format, so
a handler raises it and :func:`error_response` renders the JSON the SDK of
that provider expects (and maps to its own exception class).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from services.common.redaction import redact_text


class GatewayError(Exception):
    """An error answered by the gateway itself rather than by the provider."""

    status = 500
    anthropic_type = "api_error"
    openai_type = "server_error"
    openai_code: str | None = None

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class InvalidRequest(GatewayError):
    status = 400
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    anthropic_type = "authentication_error"
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    anthropic_type = "permission_error"
    openai_type = "invalid_request_error"
    openai_code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    anthropic_type = "not_found_error"
    openai_type = "invalid_request_error"
    openai_code = "not_found"


class RequestTooLarge(GatewayError):
    status = 413
    anthropic_type = "request_too_large"
    openai_type = "invalid_request_error"
    openai_code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    anthropic_type = "rate_limit_error"
    openai_type = "requests"
    openai_code = "rate_limit_exceeded"


class ClientDisconnected(GatewayError):
    """The client went away before its request body arrived in full.

    499 is nginx's status for a request the client closed; no response
    reaches the client, but the call event records it.
    """

    status = 499
    anthropic_type = "client_disconnected"
    openai_type = "client_disconnected"
    openai_code = "client_disconnected"


class UpstreamConnectFailed(GatewayError):
    status = 502
    anthropic_type = "api_error"
    openai_type = "server_error"
    openai_code = "upstream_connect_error"


class ServiceUnavailable(GatewayError):
    status = 503
    anthropic_type = "api_error"
    openai_type = "server_error"
    openai_code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    anthropic_type = "api_error"
    openai_type = "server_error"
    openai_code = "upstream_timeout"


def error_body(wire_format: str, error: GatewayError) -> bytes:
    message = redact_text(error.message)
    if wire_format == "anthropic":
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": error.anthropic_type, "message": message},
            }
        )
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": error.openai_type,
                "param": None,
                "code": error.openai_code,
            }
        }
    )


def error_response(
    wire_format: str, error: GatewayError, request_id: str = ""
) -> web.Response:
    headers = dict(error.headers)
    if request_id:
        headers["tollgate-request-id"] = request_id
    return web.Response(
        status=error.status,
        body=error_body(wire_format, error),
        content_type="application/json",
        headers=headers,
    )


def error_type_of(error: GatewayError, wire_format: str) -> str:
    """Return the error type recorded in the call event."""
    return (
        error.anthropic_type
        if wire_format == "anthropic"
        else (error.openai_code or error.openai_type)
    )
