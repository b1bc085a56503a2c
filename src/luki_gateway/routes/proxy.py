"""proxied REST routes from the route table (placeholder until its issue lands)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add the routes: proxied REST routes from the route table."""
