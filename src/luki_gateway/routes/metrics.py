"""GET /metrics: the app's own registry, Prometheus text or OpenMetrics when asked."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import exposition

from ..metrics import REGISTRY
from .access import PUBLIC, declare


async def metrics(request: web.Request) -> web.Response:
    """Render the registry in the format the scraper's Accept header asks for."""
    encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[REGISTRY])
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


def setup(app: web.Application) -> None:
    """Add /metrics (public; restrict by bind address or ACL in deployment)."""
    declare(app, app.router.add_get("/metrics", metrics), PUBLIC)
