"""POST /v1/chat and /v1/chat/stream (placeholder until its issue lands)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add the routes: POST /v1/chat and /v1/chat/stream."""
