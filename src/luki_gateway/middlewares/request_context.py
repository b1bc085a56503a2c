"""Request identity: trace context on the request and in every log line of the request."""

from __future__ import annotations

from aiohttp import web
from structlog.contextvars import bind_contextvars

from ..auth.principal import Principal
from ..tracing import REQUEST_TRACE, TraceContext


def request_context(request: web.Request) -> TraceContext:
    """Accept or mint X-Request-ID / traceparent and keep them on the request."""
    headers = request.headers
    trace = TraceContext.from_headers(headers.get("X-Request-ID"), headers.get("traceparent"))
    request[REQUEST_TRACE] = trace
    return trace


def bind_log_context(trace: TraceContext, principal: Principal | None) -> None:
    """One bind per request: request id, trace id and (once known) the principal.

    No clearing first: aiohttp runs every request in a task of its own with a copy of the
    connection's context, so nothing bound here reaches the next keep-alive request.
    """
    if principal is None:
        bind_contextvars(request_id=trace.request_id, trace_id=trace.trace_id)
    else:
        bind_contextvars(request_id=trace.request_id, trace_id=trace.trace_id,
                         principal=principal.display)
