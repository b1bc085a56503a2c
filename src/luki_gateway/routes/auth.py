"""POST /v1/auth/ticket: trade a real credential for a short-lived stream ticket."""

from __future__ import annotations

from aiohttp import web

from ..auth.authenticator import AUTHENTICATOR
from ..auth.principal import principal_of
from .access import RouteAccess, declare


async def issue_ticket(request: web.Request) -> web.Response:
    """``{"ticket", "expires_in"}`` for the caller, usable as ``?ticket=`` on GET streams."""
    principal = principal_of(request)
    ticket, expires_in = request.app[AUTHENTICATOR].mint_ticket(principal)
    return web.json_response({"ticket": ticket, "expires_in": expires_in},
                             headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    """Add the routes: POST /v1/auth/ticket (any principal)."""
    declare(app, app.router.add_post("/v1/auth/ticket", issue_ticket), RouteAccess())
