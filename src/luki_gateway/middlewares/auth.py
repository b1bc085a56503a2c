"""Authentication and scope checks (filled in by the auth work; passes through for now)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the caller's principal and enforce the route's scopes."""
    return await handler(request)
