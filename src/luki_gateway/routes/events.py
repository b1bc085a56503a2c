"""GET /v1/events (SSE) and POST /v1/events/publish (placeholder until its issue lands)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add the routes: GET /v1/events (SSE) and POST /v1/events/publish."""
