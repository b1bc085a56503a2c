"""One access-log line and the HTTP metrics for every request, streams included."""

from __future__ import annotations

import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from ..auth.principal import PRINCIPAL
from ..metrics import HTTP_METRICS
from ..settings import SETTINGS
from ..tracing import REQUEST_TRACE

log = structlog.get_logger("luki.access")

UNMATCHED = "unmatched"
OTHER_METHOD = "OTHER"
# Any token is a valid HTTP method; only these become metric label values.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(request: web.Request) -> str:
    """The route pattern for metrics and logs; unknown paths share one label."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    return resource.canonical


def method_label(method: str) -> str:
    """The method for metric labels: the usual ones, everything else as OTHER."""
    return method if method in _KNOWN_METHODS else OTHER_METHOD


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count, time and log the request once it is answered (or the stream closed)."""
    metrics = request.app[HTTP_METRICS]
    start = time.perf_counter()
    metrics.in_flight.inc()
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except BaseException:
        # 499 (nginx's "client closed request"): the client left before the answer.
        status = 499 if request.transport is None or request.transport.is_closing() else 500
        raise
    finally:
        elapsed = time.perf_counter() - start
        metrics.in_flight.dec()
        route = route_label(request)
        method = method_label(request.method)
        metrics.observe(route, method, str(status), elapsed)
        if request.app[SETTINGS].access_log:
            trace = request.get(REQUEST_TRACE)
            principal = request.get(PRINCIPAL)
            sent = 0
            if response is not None:
                sent = (response.body_length if response.prepared
                        else response.content_length or 0)
            log.info(
                "request",
                method=request.method,
                route=route,
                path=request.path,
                status=status,
                bytes=sent,
                duration_ms=round(elapsed * 1000, 3),
                request_id=trace.request_id if trace else None,
                principal=principal.display or principal.id if principal else None,
                remote=request.remote,
            )
