"""Proxied REST routes: one aiohttp resource pair per route-table prefix.

Each prefix is registered for exactly its methods (so aiohttp answers 405 with ``Allow``
and CORS can attach), and declared with the route's scopes and cost for the auth and
rate-limit middlewares. Added last, so the gateway's own routes always win.
"""

from __future__ import annotations

import functools

from aiohttp import web
from aiohttp.typedefs import Handler

from ..settings import SETTINGS
from ..upstream.proxy import PROXY, ProxyConfig, forward
from ..upstream.routes import Route
from .access import RouteAccess, declare


def _handler_for(route: Route, config: ProxyConfig) -> Handler:
    # A partial, not a wrapper coroutine: one frame less on every request's await chain.
    handler: Handler = functools.partial(forward, route=route, config=config)
    return handler


def setup(app: web.Application) -> None:
    """Register every route of the table (most specific prefix first)."""
    config = ProxyConfig.from_settings(app[SETTINGS])
    app[PROXY] = config
    router = app.router
    for route in config.table:
        handler = _handler_for(route, config)
        access = RouteAccess(scopes=route.scopes, cost=route.cost)
        patterns = ["/{tail:.*}"] if route.prefix == "/" else [route.prefix,
                                                                route.prefix + "/{tail:.*}"]
        for pattern in patterns:
            for method in sorted(route.methods):
                declare(app, router.add_route(method, pattern, handler), access)
