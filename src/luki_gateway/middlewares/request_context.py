"""Request identity: trace context on the request and in every log line of the request."""

from __future__ import annotations

from collections.abc import Awaitable

from aiohttp import web
from aiohttp.typedefs import Handler
from structlog.contextvars import bind_contextvars, clear_contextvars

from ..tracing import REQUEST_TRACE, TraceContext


@web.middleware
def request_context(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Accept or mint X-Request-ID / traceparent and bind them to the log context."""
    headers = request.headers
    trace = TraceContext.from_headers(headers.get("X-Request-ID"), headers.get("traceparent"))
    request[REQUEST_TRACE] = trace
    # keep-alive requests share the connection task's context: start clean each time
    clear_contextvars()
    bind_contextvars(request_id=trace.request_id, trace_id=trace.trace_id)
    # A plain function handing back the handler's awaitable: no frame of ours stays
    # alive for the life of a stream.
    return handler(request)
