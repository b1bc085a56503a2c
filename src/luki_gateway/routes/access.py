"""What each route asks of a caller, declared where the route is added.

Routes register a :class:`RouteAccess` under their resource's canonical path; the auth and
rate-limit middlewares look it up for every request. Unregistered routes are private with no
scope requirement beyond being authenticated, so forgetting to declare fails closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True, slots=True)
class RouteAccess:
    """Access rules of one route: public or not, scopes per method, rate-limit cost."""

    public: bool = False
    # method -> scopes required (all of them); "*" is the fallback for unlisted methods.
    scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cost: int = 1
    rate_limited: bool = True
    # Accepts a ?ticket= (GET stream endpoints only: EventSource cannot send headers).
    ticket: bool = False
    # The handler finishes authentication itself (WebSocket: token in the first message);
    # the middleware still resolves credentials that are present, but lets none through.
    deferred_auth: bool = False

    def scopes_for(self, method: str) -> tuple[str, ...]:
        """The scopes a request with ``method`` must hold."""
        found = self.scopes.get(method)
        if found is None:
            found = self.scopes.get("*", ())
        return found


PRIVATE = RouteAccess()
PUBLIC = RouteAccess(public=True, rate_limited=False)

ROUTE_ACCESS = web.AppKey("route_access", dict[str, RouteAccess])


def declare(app: web.Application, route: web.AbstractRoute, access: RouteAccess) -> None:
    """Record the access rules of ``route``'s resource (wrap the ``add_*`` call with it)."""
    resource = route.resource
    if resource is None:
        raise ValueError("only routes with a resource can be declared")
    app[ROUTE_ACCESS][resource.canonical] = access


def access_of(request: web.Request) -> RouteAccess:
    """The access rules of the route this request matched (PRIVATE when undeclared)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return PUBLIC  # unmatched: the router answers 404/405 without touching anything
    return request.app[ROUTE_ACCESS].get(resource.canonical, PRIVATE)
