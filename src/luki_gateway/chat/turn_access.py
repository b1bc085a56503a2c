"""Who a turn is for, and who may follow it."""

from __future__ import annotations

from ..auth.principal import Principal
from ..errors import Forbidden, InsufficientScope
from ..hub.turns import Turn
from ..routes.access import RouteAccess

# Acting for another user is an explicit grant, never implied by chat:write.
ACT_AS_SCOPE = "chat:act_as"
CHAT_SCOPE = "chat:write"
# GET/POST /v1/chat/stream; a WebSocket turn is charged as one such request.
CHAT_ACCESS = RouteAccess(scopes={"POST": (CHAT_SCOPE,), "GET": (CHAT_SCOPE,)}, ticket=True)


def require_chat_scope(principal: Principal) -> None:
    """A WebSocket turn needs what the HTTP chat routes need (the socket itself does not)."""
    missing = principal.missing_scopes((CHAT_SCOPE,))
    if missing:
        raise InsufficientScope.missing(missing)


def resolve_user(principal: Principal, requested: str | None) -> str:
    """The user a turn is for: the caller's subject unless it may act for another."""
    if requested is None or requested == principal.subject:
        return principal.subject
    if not principal.has_scope(ACT_AS_SCOPE):
        raise InsufficientScope.missing(
            (ACT_AS_SCOPE,), f"acting for another user needs the {ACT_AS_SCOPE} scope")
    return requested


def check_owner(turn: Turn, principal: Principal) -> None:
    """Only the principal who started a turn may resume it."""
    if turn.owner != principal.id:
        raise Forbidden("only the principal who started a turn may resume it")
