"""Headers every response carries, streaming ones included (added at prepare time).

One ``on_response_prepare`` hook does it all in one pass: security and trace headers,
the request's rate-limit headers, and CORS headers (aiohttp-cors' own hook, called only
when the request has an ``Origin``: without one there is nothing for CORS to add).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .lifecycle import LIFECYCLE
from .ratelimit.headers import RATE_DECISION, decision_headers
from .settings import SETTINGS
from .tracing import trace_of

PrepareHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]

_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'")
_HSTS = "max-age=31536000; includeSubDomains"


class ResponseHeaders:
    """The gateway's one on_response_prepare hook."""

    __slots__ = ("_cors", "_hsts", "_lifecycle")

    def __init__(self, app: web.Application, cors: PrepareHook | None) -> None:
        self._cors = cors
        self._hsts = not app[SETTINGS].is_development
        self._lifecycle = app[LIFECYCLE]

    async def __call__(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add the standard, rate-limit and (for cross-origin requests) CORS headers."""
        standard_headers(request, response, hsts=self._hsts)
        if self._lifecycle.draining:
            # Connection: close, so keep-alive clients (a load balancer's pool) reconnect
            # now, elsewhere, instead of racing the listener's close with their next request.
            # aiohttp wrote its Connection header before this hook runs: say it ourselves.
            response.force_close()
            response.headers["Connection"] = "close"
        decision = request.get(RATE_DECISION)
        if decision is not None:
            response.headers.update(decision_headers(decision))
        if self._cors is not None:
            # The grant depends on the Origin: caches must keep answers apart by it.
            vary = response.headers.get("Vary")
            if not vary:
                response.headers["Vary"] = "Origin"
            elif "origin" not in vary.lower():
                response.headers["Vary"] = vary + ", Origin"
            if "Origin" in request.headers:
                await self._cors(request, response)


def standard_headers(request: web.Request, response: web.StreamResponse, *,
                     hsts: bool) -> None:
    """Security headers plus X-Request-ID and traceparent."""
    headers = response.headers
    trace = trace_of(request)
    headers["X-Request-ID"] = trace.request_id
    headers["traceparent"] = trace.traceparent
    # Set before aiohttp's default, which would name Python and aiohttp with versions.
    headers["Server"] = "luki-gateway"
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if hsts:
        headers.setdefault("Strict-Transport-Security", _HSTS)
    content_type = headers.get("Content-Type", "")
    if content_type.startswith("text/html"):
        headers.setdefault("Content-Security-Policy", _CSP)
