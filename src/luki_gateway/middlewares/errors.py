"""Every failure becomes the one JSON error shape; no HTML page, no stack trace."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    ValidationFailed,
    error_response,
)
from ..tracing import trace_of

log = structlog.get_logger("luki.errors")

_BY_STATUS: dict[int, type[GatewayError]] = {
    400: ValidationFailed,
    401: Unauthenticated,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def from_http_exception(exc: web.HTTPException) -> GatewayError:
    """Translate aiohttp's own HTTP errors (router 404/405, body too large) to ours."""
    cls = _BY_STATUS.get(exc.status)
    if cls is None:
        return GatewayError(exc.reason, status=exc.status)
    err = cls()
    if exc.status == 405 and "Allow" in exc.headers:
        err.headers["Allow"] = exc.headers["Allow"]
    return err


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render GatewayError, aiohttp HTTP errors and unexpected exceptions as JSON."""
    try:
        return await handler(request)
    except GatewayError as err:
        return error_response(err, trace_of(request).trace_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        translated = from_http_exception(exc)
        if exc.status == 413:
            translated.details = {"max_bytes": request.client_max_size}
        return error_response(translated, trace_of(request).trace_id)
    except (asyncio.CancelledError, ConnectionResetError):
        raise  # the client left; there is no one to answer
    except Exception:
        log.exception("unhandled error", path=request.path, method=request.method)
        return error_response(InternalError(), trace_of(request).trace_id)
