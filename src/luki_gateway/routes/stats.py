"""GET /v1/stats: this process's streaming state for operators (scope ``admin:read``)."""

from __future__ import annotations

from aiohttp import web

from ..auth.principal import PRINCIPAL
from ..errors import InsufficientScope, Unauthenticated
from ..hub.hub import HUB
from ..settings import SETTINGS
from .access import RouteAccess, declare

STATS_SCOPE = "admin:read"


async def stats(request: web.Request) -> web.Response:
    """Connections, channels, queue depths, slow-consumer actions, broker state."""
    principal = request.get(PRINCIPAL)
    if request.app[SETTINGS].auth.enabled:
        # Also enforced by the auth middleware from the declaration below.
        if principal is None:
            raise Unauthenticated()
        if not principal.has_scope(STATS_SCOPE):
            raise InsufficientScope.missing((STATS_SCOPE,))
    return web.json_response(request.app[HUB].stats())


def setup(app: web.Application) -> None:
    """Add the routes: GET /v1/stats."""
    declare(app, app.router.add_get("/v1/stats", stats),
            RouteAccess(scopes={"GET": (STATS_SCOPE,)}))
