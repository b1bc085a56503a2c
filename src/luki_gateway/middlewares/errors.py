"""Every failure becomes the one JSON error shape; no HTML page, no stack trace.

Called by the request flow (``flow.py``) for whatever a stage or the handler raised.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from ..errors import (
    DownstreamError,
    DownstreamTimeout,
    DownstreamUnavailable,
    Forbidden,
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimitExceeded,
    Unauthenticated,
    ValidationFailed,
    error_response,
)
from ..tracing import TraceContext

log = structlog.get_logger("luki.errors")

_BY_STATUS: dict[int, type[GatewayError]] = {
    400: ValidationFailed,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimitExceeded,
    502: DownstreamError,
    503: DownstreamUnavailable,
    504: DownstreamTimeout,
}
# Headers of aiohttp's own HTTP errors worth keeping on the translated answer.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def from_http_exception(exc: web.HTTPException) -> GatewayError:
    """Translate aiohttp's own HTTP errors (router 404/405, body too large, CORS 403) to ours."""
    cls = _BY_STATUS.get(exc.status)
    err: GatewayError
    if cls is None:
        # Other 4xx are the client's request being unacceptable; other 5xx are ours.
        fallback = ValidationFailed if exc.status < 500 else InternalError
        err = fallback(exc.reason, status=exc.status)
    else:
        err = cls()
    for name in _KEPT_HEADERS:
        if name in exc.headers:
            err.headers[name] = exc.headers[name]
    return err


def _headers_sent(request: web.Request) -> bool:
    """True once a streaming handler has prepared its response: no second answer is possible."""
    return request.writer.output_size > 0


def answer_failure(request: web.Request, exc: BaseException,
                   trace: TraceContext) -> web.Response | None:
    """The JSON answer for ``exc``: GatewayError, aiohttp's HTTP errors, unexpected exceptions.

    None when ``exc`` must propagate instead: the client left, redirects (answers, not
    errors), or a stream whose headers are already out (aiohttp then closes the connection).
    """
    if isinstance(exc, GatewayError):
        if _headers_sent(request):
            log.warning("error after the response started; closing", code=exc.code)
            return None
        return error_response(exc, trace.trace_id)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or _headers_sent(request):
            return None
        translated = from_http_exception(exc)
        if exc.status == 413:
            translated.details = {"max_bytes": request.client_max_size}
        return error_response(translated, trace.trace_id)
    if not isinstance(exc, Exception) or isinstance(exc, ConnectionResetError):
        return None  # cancelled (the client left), or the process is stopping
    log.exception("unhandled error", path=request.path, method=request.method)
    if _headers_sent(request):
        return None  # a half-sent stream cannot carry an error
    return error_response(InternalError(), trace.trace_id)
