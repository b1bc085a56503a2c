"""JWT verification keys and the JWKS cache (placeholder until its issue lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web


async def jwks_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: JWT verification keys and the JWKS cache."""
    yield
