"""GET /openapi.json, /docs and the demo page at / (placeholder until its issue lands)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add the routes: GET /openapi.json, /docs and the demo page at /."""
