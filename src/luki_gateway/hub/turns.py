"""resumable chat turns (placeholder until its issue lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web


async def turns_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: resumable chat turns."""
    yield
