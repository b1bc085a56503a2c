"""concurrent-stream leases (placeholder until its issue lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web


async def leases_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: concurrent-stream leases."""
    yield
