"""Rate limiting (filled in by the rate-limit work; passes through for now)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Charge the request against every applicable policy; 429 when one is exhausted."""
    return await handler(request)
