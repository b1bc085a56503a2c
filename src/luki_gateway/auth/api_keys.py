"""API key store (file or Redis) (placeholder until its issue lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web


async def key_store_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: API key store (file or Redis)."""
    yield
