"""one persistent ClientSession per upstream (placeholder until its issue lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web


async def upstream_sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one persistent ClientSession per upstream."""
    yield
