"""Headers every response carries, streaming ones included (added at prepare time)."""

from __future__ import annotations

from aiohttp import web

from .settings import SETTINGS
from .tracing import trace_of

_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'")
_HSTS = "max-age=31536000; includeSubDomains"


async def standard_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: security headers plus X-Request-ID and traceparent."""
    headers = response.headers
    trace = trace_of(request)
    headers["X-Request-ID"] = trace.request_id
    headers["traceparent"] = trace.traceparent
    # Set before aiohttp's default, which would name Python and aiohttp with versions.
    headers["Server"] = "luki-gateway"
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if not request.app[SETTINGS].is_development:
        headers.setdefault("Strict-Transport-Security", _HSTS)
    content_type = headers.get("Content-Type", "")
    if content_type.startswith("text/html"):
        headers.setdefault("Content-Security-Policy", _CSP)
