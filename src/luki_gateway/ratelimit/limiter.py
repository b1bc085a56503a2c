"""the rate limiter (memory or Redis backend) (placeholder until its issue lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web


async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the rate limiter (memory or Redis backend)."""
    yield
