"""Origin checks for WebSocket upgrades (cross-site WebSocket hijacking).

Browsers send cookies and other ambient credentials with a WebSocket upgrade from any
site, and CORS does not apply to it, so the gateway itself refuses foreign origins.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import Forbidden
from ..settings import SETTINGS


def is_websocket_upgrade(request: web.Request) -> bool:
    """True for an HTTP request asking to become a WebSocket."""
    return request.headers.get("Upgrade", "").strip().lower() == "websocket"


def origin_allowed(request: web.Request) -> bool:
    """No Origin (non-browser client), same origin, or one of the CORS origins."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    allowed = request.app[SETTINGS].effective_cors_origins
    if "*" in allowed or origin in allowed:
        return True
    return origin == f"{request.scheme}://{request.host}"


def check_ws_origin(request: web.Request) -> None:
    """Raise Forbidden (403) when a WebSocket upgrade comes from a foreign origin."""
    if not origin_allowed(request):
        raise Forbidden("origin not allowed for WebSocket connections")
