"""The GatewayError hierarchy and the one JSON error renderer.

Every failure a client sees, on HTTP or WebSocket, has the shape
``{"error": {"code", "message", "trace_id", "details"?}}``. Messages are safe to show:
never a stack trace, never a secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from aiohttp import web


class GatewayError(Exception):
    """Base of every error the gateway answers with; carries code, status and safe message."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = dict(details) if details else None
        self.headers = dict(headers) if headers else {}
        if status is not None:
            self.status = status  # type: ignore[misc]
        super().__init__(self.message)

    def body(self, trace_id: str) -> dict[str, Any]:
        """The error object as sent to clients."""
        error: dict[str, Any] = {"code": self.code, "message": self.message,
                                 "trace_id": trace_id}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class ValidationFailed(GatewayError):
    """The request is malformed: bad JSON, wrong types, missing fields (400, or 422)."""

    code = "VALIDATION_ERROR"
    status = 400
    default_message = "request is not valid"


class Unauthenticated(GatewayError):
    """No credentials, or credentials that are not valid (401 + WWW-Authenticate)."""

    code = "UNAUTHENTICATED"
    status = 401
    default_message = "authentication required"

    def __init__(self, message: str | None = None, *, error: str = "invalid_token",
                 details: Mapping[str, Any] | None = None) -> None:
        challenge = f'Bearer realm="luki", error="{error}"'
        super().__init__(message, details=details, headers={"WWW-Authenticate": challenge})


class Forbidden(GatewayError):
    """The principal is known but may not do this."""

    code = "FORBIDDEN"
    status = 403
    default_message = "forbidden"


class InsufficientScope(GatewayError):
    """The principal lacks a scope the route requires."""

    code = "INSUFFICIENT_SCOPE"
    status = 403
    default_message = "insufficient scope"

    @classmethod
    def missing(cls, scopes: Sequence[str], message: str | None = None
                ) -> InsufficientScope:
        """The one shape of a scope refusal: ``details.missing_scopes`` and the RFC 6750
        challenge naming them."""
        return cls(message or f"missing scope {scopes[0]}",
                   details={"missing_scopes": list(scopes)},
                   headers={"WWW-Authenticate": f'Bearer realm="luki", '
                                                f'error="insufficient_scope", '
                                                f'scope="{" ".join(scopes)}"'})


class NotFound(GatewayError):
    """No route or resource at this path."""

    code = "NOT_FOUND"
    status = 404
    default_message = "not found"


class MethodNotAllowed(GatewayError):
    """The path exists but not for this method (Allow header lists the methods)."""

    code = "METHOD_NOT_ALLOWED"
    status = 405
    default_message = "method not allowed"


class PayloadTooLarge(GatewayError):
    """The request body is over the configured limit."""

    code = "PAYLOAD_TOO_LARGE"
    status = 413
    default_message = "request body too large"


class RateLimitExceeded(GatewayError):
    """A rate limit, quota or concurrency limit refused the request (429 + Retry-After)."""

    code = "RATE_LIMIT_EXCEEDED"
    status = 429
    default_message = "rate limit exceeded"

    def __init__(self, message: str | None = None, *, retry_after: int = 1,
                 details: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        merged = dict(headers or {})
        merged["Retry-After"] = str(max(1, int(retry_after)))
        super().__init__(message, details=details, headers=merged)
        self.retry_after = max(1, int(retry_after))


class DownstreamError(GatewayError):
    """The upstream answered with something unusable."""

    code = "DOWNSTREAM_ERROR"
    status = 502
    default_message = "upstream returned an invalid response"


class DownstreamUnavailable(GatewayError):
    """The upstream could not be reached."""

    code = "DOWNSTREAM_UNAVAILABLE"
    status = 503
    default_message = "upstream unavailable"


class ShuttingDown(DownstreamUnavailable):
    """The gateway is stopping and its shutdown grace ran out before the upstream answered."""

    default_message = "the gateway is shutting down; retry the request"


class CircuitOpen(GatewayError):
    """The upstream's circuit breaker is open; the request was not sent."""

    code = "CIRCUIT_OPEN"
    status = 503
    default_message = "upstream circuit open"


class DownstreamTimeout(GatewayError):
    """The upstream did not answer in time."""

    code = "DOWNSTREAM_TIMEOUT"
    status = 504
    default_message = "upstream timed out"


class InternalError(GatewayError):
    """Something failed inside the gateway; details are in the log, not the response."""


_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8",
                 "Cache-Control": "no-store"}


def error_response(err: GatewayError, trace_id: str) -> web.Response:
    """The one renderer: a GatewayError as a JSON HTTP response."""
    headers = {**_JSON_HEADERS, **err.headers}
    return web.Response(status=err.status, body=json.dumps(err.body(trace_id)).encode(),
                        headers=headers)


def error_message(err: GatewayError, trace_id: str) -> dict[str, Any]:
    """A GatewayError as a WebSocket/SSE ``error`` message payload (same shape)."""
    return {"type": "error", **err.body(trace_id)}
