"""CORS through aiohttp-cors: every route gets the configured origins, preflight included."""

from __future__ import annotations

from typing import cast

import aiohttp_cors
from aiohttp import web

from .headers import PrepareHook
from .settings import SETTINGS

# Response headers a cross-origin script may read (the turn id: to resume a chat stream).
_EXPOSED = ("X-Request-ID", "traceparent", "Retry-After", "RateLimit", "RateLimit-Policy",
            "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-LUKi-Turn-Id")


def setup_cors(app: web.Application) -> PrepareHook | None:
    """Apply CORS_ORIGINS (per environment) to every route added so far; call after routes.

    Returns aiohttp-cors' response hook, taken off ``on_response_prepare``: the gateway's
    one header hook (headers.ResponseHeaders) calls it for requests with an Origin only.
    """
    origins = app[SETTINGS].effective_cors_origins
    if not origins:
        return None
    before = list(app.on_response_prepare)
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call,unused-ignore]
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
    added = [h for h in app.on_response_prepare if h not in before]
    for h in added:
        app.on_response_prepare.remove(h)
    if len(added) != 1:
        raise RuntimeError(f"aiohttp-cors registered {len(added)} response hooks, expected 1")
    return _with_error_grants(cast(PrepareHook, added[0]), origins)


def _with_error_grants(cors_hook: PrepareHook, origins: tuple[str, ...]
                       ) -> PrepareHook:
    """aiohttp-cors grants only on routes it knows: a 404 (no route) or 405 for an allowed
    origin would reach the page unreadable. Errors get the same grant."""
    any_origin = "*" in origins
    allowed = frozenset(origins)
    exposed = ",".join(_EXPOSED)

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        await cors_hook(request, response)
        headers = response.headers
        if response.status < 400 or "Access-Control-Allow-Origin" in headers:
            return
        origin = request.headers.get("Origin", "")
        if any_origin:
            headers["Access-Control-Allow-Origin"] = "*"
        elif origin in allowed:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Allow-Credentials"] = "true"
        else:
            return
        headers["Access-Control-Expose-Headers"] = exposed

    return hook
