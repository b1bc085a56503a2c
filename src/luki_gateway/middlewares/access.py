"""One access-log line and the HTTP metrics for every request, streams included.

The request flow (``flow.py``) calls ``begin_access`` first and ``record_access`` once the
answer is out, the handler failed or the client left.
"""

from __future__ import annotations

import time
from typing import Protocol

import structlog
from aiohttp import web

from ..auth.principal import PRINCIPAL
from ..lifecycle import LIFECYCLE
from ..metrics import HTTP_METRICS
from ..settings import SETTINGS
from ..tracing import REQUEST_TRACE

log = structlog.get_logger("luki.access")


class SentBytes(Protocol):
    """A stream that writes to the transport itself and counts what it wrote."""

    bytes_sent: int


# Chat SSE, channel SSE and WebSocket write to the transport themselves: aiohttp's
# response.body_length misses those writes (and is set only at the end of the body, after
# the record). Such a stream registers itself here; the record reads its count instead.
STREAM_SENT = web.RequestKey[SentBytes]("stream_sent")

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


def begin_access(request: web.Request) -> float:
    """Count the request in flight; its start time for ``record_access``."""
    app = request.app
    app[HTTP_METRICS].in_flight.inc()
    app[LIFECYCLE].in_flight.add(request.task)  # what a shutdown's grace ends
    return time.perf_counter()


def record_access(request: web.Request, started: float, status: int,
                  response: web.StreamResponse | None) -> None:
    """Metrics and (when enabled) the access line, once the request is answered or gone."""
    elapsed = time.perf_counter() - started
    app = request.app
    metrics = app[HTTP_METRICS]
    metrics.in_flight.dec()
    app[LIFECYCLE].in_flight.discard(request.task)
    route = route_label(request)
    metrics.observe(route, method_label(request.method), status, elapsed)
    if not app[SETTINGS].access_log:
        return
    trace = request.get(REQUEST_TRACE)
    principal = request.get(PRINCIPAL)
    sent = 0
    if response is not None:
        if response.prepared:
            stream = request.get(STREAM_SENT)
            sent = response.body_length if stream is None else stream.bytes_sent
        else:
            sent = response.content_length or 0
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
