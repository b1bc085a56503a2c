"""the streaming hub: broker, history, subscribers (placeholder until its issue lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the streaming hub: broker, history, subscribers."""
    yield
