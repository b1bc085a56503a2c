"""Authentication and scope checks for every non-public route.

Credentials come from ``Authorization: Bearer``; on ticket routes (GET only) from
``?ticket=``; on deferred-auth routes (the WebSocket) also from
``Sec-WebSocket-Protocol: bearer, <token>``, and with none at all the request goes on
without a principal so the handler can authenticate from the first message.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable

from aiohttp import web

from ..auth.authenticator import AUTHENTICATOR, Authenticator
from ..auth.failure import AuthFailure
from ..auth.metrics import FailureReason
from ..auth.origin import check_ws_origin, is_websocket_upgrade
from ..auth.principal import ANONYMOUS, PRINCIPAL, Principal
from ..errors import Forbidden, InsufficientScope
from ..routes.access import RouteAccess
from ..settings import SETTINGS

# Query parameters that carry credentials: refused on every route (URLs end up in logs,
# browser history and Referer headers); only a short-lived ?ticket= is ever accepted.
_QUERY_CREDENTIALS = frozenset({"access_token", "token", "api_key", "apikey", "jwt",
                                "id_token", "bearer"})
# ... and values that look like our keys or a JWT, under any parameter name.
_CREDENTIAL_VALUE = re.compile(r"sk_(?:live|test|dev)_\S{16,}|eyJ[\w-]+\.[\w-]+\.")
WS_BEARER_PROTOCOL = "bearer"


def bearer_subprotocol(request: web.Request) -> str | None:
    """The token of ``Sec-WebSocket-Protocol: bearer, <token>``, if offered."""
    values = request.headers.getall("Sec-WebSocket-Protocol", [])
    offered = [p.strip() for v in values for p in v.split(",") if p.strip()]
    for i, name in enumerate(offered[:-1]):
        if name.lower() == WS_BEARER_PROTOCOL:
            return offered[i + 1]
    return None


def _refuse(authenticator: Authenticator, reason: FailureReason, message: str) -> AuthFailure:
    authenticator.fail(reason)
    return AuthFailure(reason, message)


def _check_query(request: web.Request, access: RouteAccess,
                 authenticator: Authenticator) -> None:
    if not request.rel_url.raw_query_string:
        return
    query = request.query
    ticket_route = access.ticket and request.method in ("GET", "HEAD")
    if (any(name.lower() in _QUERY_CREDENTIALS for name in query)
            or ("ticket" in query and not ticket_route)
            or any(_CREDENTIAL_VALUE.match(value) for value in query.values())):
        raise _refuse(authenticator, "token_in_query",
                      "credentials are not accepted in the URL of this route")


def _known(request: web.Request, authenticator: Authenticator) -> Principal | None:
    """The principal of a bearer credential verified before and still good, without I/O."""
    header = request.headers.get("Authorization")
    if header is None or not header.startswith("Bearer "):
        return None
    return authenticator.known(header[7:].strip())


async def _resolve(request: web.Request, access: RouteAccess,
                   authenticator: Authenticator) -> Principal | None:
    query = request.query
    ticket_route = access.ticket and request.method in ("GET", "HEAD")
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _refuse(authenticator, "malformed", "expected 'Authorization: Bearer <token>'")
        return await authenticator.authenticate_token(token)
    if ticket_route and "ticket" in query:
        tickets = query.getall("ticket")
        if len(tickets) != 1:
            raise _refuse(authenticator, "invalid_ticket", "one ticket expected")
        return await authenticator.authenticate_ticket(tickets[0])
    if access.deferred_auth:
        offered = bearer_subprotocol(request)
        if offered is not None:
            return await authenticator.authenticate_token(offered)
        return None  # the handler authenticates from the first message
    raise _refuse(authenticator, "missing", "authentication required")


def _is_preflight(request: web.Request) -> bool:
    # CORS preflights never carry credentials; aiohttp-cors answers them.
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


def authenticate(request: web.Request, access: RouteAccess) -> Awaitable[None] | None:
    """Resolve the caller's principal and enforce the route's scopes.

    Done at once when there is nothing to verify (public routes, preflights, auth off);
    otherwise the awaitable that verifies the credential.
    """
    if access.public or _is_preflight(request):
        return None
    if not request.app[SETTINGS].auth.enabled:
        request[PRINCIPAL] = ANONYMOUS
        return None
    authenticator = request.app[AUTHENTICATOR]
    if is_websocket_upgrade(request):
        try:
            check_ws_origin(request)
        except Forbidden:
            authenticator.fail("forbidden_origin")
            raise
    _check_query(request, access, authenticator)
    principal = _known(request, authenticator)
    if principal is not None:
        _admit(request, access, authenticator, principal)
        return None  # a key seen before: no awaitable, no coroutine
    return _authenticate(request, access, authenticator)


async def _authenticate(request: web.Request, access: RouteAccess,
                        authenticator: Authenticator) -> None:
    principal = await _resolve(request, access, authenticator)
    if principal is None:
        return  # deferred: the handler authenticates from the first message
    _admit(request, access, authenticator, principal)


def _admit(request: web.Request, access: RouteAccess, authenticator: Authenticator,
           principal: Principal) -> None:
    """Attach ``principal`` to the request if it holds the route's scopes (else 403)."""
    request[PRINCIPAL] = principal
    missing = principal.missing_scopes(access.scopes_for(request.method))
    if missing:
        authenticator.fail("insufficient_scope")
        raise InsufficientScope.missing(missing)
