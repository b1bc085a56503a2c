"""CORS through aiohttp-cors: every route gets the configured origins, preflight included."""

from __future__ import annotations

import aiohttp_cors
from aiohttp import web

from .settings import SETTINGS

_EXPOSED = ("X-Request-ID", "traceparent", "Retry-After", "RateLimit", "RateLimit-Policy",
            "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def setup_cors(app: web.Application) -> None:
    """Apply CORS_ORIGINS (per environment) to every route added so far; call after routes."""
    origins = app[SETTINGS].effective_cors_origins
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials="*" not in origins,
        expose_headers=_EXPOSED,
        allow_headers="*",
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        if route.method == "OPTIONS":
            continue
        cors.add(route)
