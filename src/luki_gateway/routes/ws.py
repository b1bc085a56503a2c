"""GET /v1/ws: the WebSocket endpoint (channel subscriptions here, chat turns via handlers).

The handler owns the read side only; everything sent goes through the connection's
subscriber queue (``WsSubscriber``). Pings are answered here and liveness is judged by the
hub's single sweep, so an idle socket costs no timer and no task beyond aiohttp's own.
"""

from __future__ import annotations

import sys
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from ..auth.authenticator import AUTHENTICATOR
from ..auth.principal import ANONYMOUS, PRINCIPAL, Principal
from ..errors import (
    Forbidden,
    GatewayError,
    InternalError,
    Unauthenticated,
    ValidationFailed,
    error_message,
)
from ..hub.channels import subscribe_refusal, validate_channel
from ..hub.history import parse_id
from ..hub.hub import HUB
from ..hub.ws_subscriber import WsSubscriber
from ..middlewares.access import STREAM_SENT
from ..ratelimit.leases import LEASES, Lease
from ..ratelimit.limiter import RATE_POLICIES
from ..ratelimit.policies import client_ip
from ..settings import SETTINGS, ws_frame_limit
from ..tracing import trace_of
from ..validation import client_json
from .access import RouteAccess, declare
from .ws_protocol import WS_MESSAGE_HANDLERS

log = structlog.get_logger("luki.ws")


def _principal(request: web.Request) -> Principal | None:
    found: Principal | None = request.get(PRINCIPAL)
    if found is None and not request.app[SETTINGS].auth.enabled:
        return ANONYMOUS
    return found


class _Session:
    """Handling of one client message (made per message: idle sockets keep none of it)."""

    __slots__ = ("conn", "request")

    def __init__(self, request: web.Request, conn: WsSubscriber) -> None:
        self.request = request
        self.conn = conn

    def error(self, err: GatewayError, **extra: Any) -> None:
        message = error_message(err, trace_of(self.request).trace_id)
        message.update(extra)
        self.conn.send_json(message)

    def refuse_malformed(self, err: GatewayError, **echo: Any) -> bool:
        """Answer a bad message; True when the budget is spent and the socket must close."""
        self.conn.malformed += 1
        self.error(err, **echo)
        return self.conn.malformed > self.request.app[SETTINGS].hub.ws_max_malformed

    async def handle_text(self, text: str) -> bool:
        """Handle one client message; True when the socket must close (1008)."""
        try:
            data = client_json(text)
        except (ValueError, RecursionError):
            return self.refuse_malformed(ValidationFailed("message is not valid JSON"))
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            return self.refuse_malformed(ValidationFailed(
                'message must be a JSON object with a string "type"'))
        kind = data["type"]
        # Replies to a failed message carry its client id (chat turns run several at once).
        echo = {"id": data["id"]} if "id" in data else {}
        try:
            if kind != "auth" and not await self.still_valid():
                return False
            if kind == "subscribe":
                await self.subscribe(data)
            elif kind == "unsubscribe":
                self.unsubscribe(data)
            elif kind == "auth":
                await self.refresh(data)
            elif kind == "ping":
                reply: dict[str, Any] = {"type": "pong"}
                if "id" in data:
                    reply["id"] = data["id"]
                self.conn.send_json(reply)
            else:
                handler = self.request.app[WS_MESSAGE_HANDLERS].get(kind)
                if handler is None:
                    return self.refuse_malformed(ValidationFailed(
                        "unknown message type", details={"type": kind[:64]}), **echo)
                await handler(self.conn, data)
        except GatewayError as err:
            self.error(err, **echo)
        except Exception:
            log.exception("ws message handler failed", type=kind[:64])
            self.error(InternalError(), **echo)
        return False

    async def still_valid(self) -> bool:
        """False, with the socket closed 4401 as the hub's sweep would, when its API key
        was revoked (or expired) since it authenticated: a message is refused as soon as
        a request with that key would be."""
        try:
            await self.request.app[AUTHENTICATOR].recheck(self.conn.principal)
        except Unauthenticated as err:
            self.conn.close(error=err, code=4401)
            return False
        return True

    async def subscribe(self, data: dict[str, Any]) -> None:
        hub = self.request.app[HUB]
        channel = validate_channel(data.get("channel"))
        last_id = data.get("last_id")
        if last_id is not None and (not isinstance(last_id, str) or parse_id(last_id) is None):
            raise ValidationFailed("last_id must be an event id from this channel",
                                   details={"channel": channel})
        refusal = subscribe_refusal(self.conn.principal, channel, hub.settings)
        if refusal is not None:
            raise refusal
        if channel in self.conn.channels:
            raise ValidationFailed("already subscribed to this channel",
                                   details={"channel": channel, "reason": "already_subscribed"})
        if len(self.conn.channels) >= hub.settings.ws_max_subscriptions:
            raise ValidationFailed("too many subscriptions on this connection",
                                   details={"limit": hub.settings.ws_max_subscriptions,
                                            "reason": "too_many_subscriptions"})
        reply: dict[str, Any] = {"type": "subscribed", "channel": channel}
        if last_id is None:
            hub.subscribe(self.conn, channel)
            self.conn.send_json(reply)
            return
        # Sent first so the replayed events follow their confirmation.
        self.conn.send_json({**reply, "last_id": last_id})
        await hub.subscribe_from(self.conn, channel, last_id)

    async def refresh(self, data: dict[str, Any]) -> None:
        """``auth`` on an open socket: fresh credentials for the same caller (token expiry)."""
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise ValidationFailed('auth needs a "token" string')
        principal = await self.request.app[AUTHENTICATOR].authenticate_token(token)
        if principal.id != self.conn.principal.id:
            raise Forbidden("auth must keep the same principal on an open socket")
        self.conn.replace_principal(principal)
        self.conn.send_json({"type": "authenticated", "expires_at": principal.expires_at})

    def unsubscribe(self, data: dict[str, Any]) -> None:
        channel = validate_channel(data.get("channel"))
        if not self.request.app[HUB].unsubscribe(self.conn, channel):
            raise ValidationFailed("not subscribed to this channel",
                                   details={"channel": channel, "reason": "not_subscribed"})
        self.conn.send_json({"type": "unsubscribed", "channel": channel})


async def _first_message_auth(request: web.Request, ws: web.WebSocketResponse
                              ) -> Principal | None:
    """Wait for ``{"type":"auth","token":...}``; None (socket closed 4401) when it fails."""
    app = request.app
    trace_id = trace_of(request).trace_id
    failure: GatewayError = Unauthenticated(
        'send {"type":"auth","token":...} first, or the token in Authorization '
        "or Sec-WebSocket-Protocol")
    try:
        msg = await ws.receive(timeout=app[SETTINGS].auth.ws_auth_timeout_s)
        data = client_json(msg.data) if msg.type is WSMsgType.TEXT else None
        if (isinstance(data, dict) and data.get("type") == "auth"
                and isinstance(data.get("token"), str)):
            return await app[AUTHENTICATOR].authenticate_token(data["token"])
    except GatewayError as err:
        failure = err
    except (TimeoutError, ValueError, RecursionError):
        pass
    if not ws.closed:
        await ws.send_json(error_message(failure, trace_id))
        await ws.close(code=4401, message=b"unauthenticated")
    return None


async def _lease(request: web.Request, principal: Principal) -> Lease | None:
    app = request.app
    return await app[LEASES].acquire(principal, "ws") if LEASES in app else None


async def _open(request: web.Request, ws: web.WebSocketResponse) -> WsSubscriber | None:
    """Upgrade and authenticate: the registered connection, or None when it was refused."""
    hub = request.app[HUB]
    principal = _principal(request)
    # With credentials up front, a concurrency refusal is a plain HTTP 429.
    lease = await _lease(request, principal) if principal is not None else None
    try:
        await ws.prepare(request)
        # Sent: the 101's headers (security, trace ids) need not live as long as the socket.
        ws.headers.clear()
        if principal is None:
            principal = await _first_message_auth(request, ws)
            if principal is None:
                return None
            try:
                lease = await _lease(request, principal)
            except GatewayError as err:
                await ws.send_json(error_message(err, trace_of(request).trace_id))
                await ws.close(code=1013, message=b"try again later")
                return None
    except BaseException:
        if lease is not None:
            await lease.release()
        raise
    transport = request.transport
    assert transport is not None  # prepared: the connection is open
    # Only rate limits use it (chat turns are charged like requests).
    policies = request.app.get(RATE_POLICIES)
    ip = (client_ip(request, policies.trusted)
          if policies is not None and request.app[SETTINGS].ratelimit.enabled else "")
    conn = WsSubscriber(hub, principal, transport, request.protocol, lease, sys.intern(ip))
    hub.register(conn)
    request[STREAM_SENT] = conn
    conn.send_json(_welcome(conn))
    return conn


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    """Upgrade, authenticate, then read messages until the socket closes.

    This coroutine lives as long as the socket and its frame is paid per idle connection:
    the handshake runs in ``_open`` (its locals gone once done), the read loop inline.
    """
    ws = web.WebSocketResponse(protocols=("bearer",), autoping=False, compress=False,
                               max_msg_size=ws_frame_limit(request.app[SETTINGS]))
    conn = await _open(request, ws)
    if conn is None:
        return ws
    try:
        while not conn.closed:
            msg = await ws.receive()
            conn.awaiting_pong = False
            if msg.type is WSMsgType.TEXT:
                if await _Session(request, conn).handle_text(msg.data):
                    await ws.close(code=1008, message=b"too many malformed messages")
                    break
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.BINARY:
                if _Session(request, conn).refuse_malformed(
                        ValidationFailed("binary messages are not accepted")):
                    await ws.close(code=1008, message=b"too many malformed messages")
                    break
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                              WSMsgType.ERROR):
                break
    finally:
        conn.close()
        await conn.run_close_callbacks()
        if conn.lease is not None:
            await conn.lease.release()
    return ws


def _welcome(conn: WsSubscriber) -> dict[str, Any]:
    principal = conn.principal
    return {"type": "welcome", "connection_id": conn.connection_id,
            "principal": {"id": principal.id, "subject": principal.subject,
                          "kind": principal.kind, "scopes": sorted(principal.scopes)}}


def setup(app: web.Application) -> None:
    """Add the routes: GET /v1/ws."""
    declare(app, app.router.add_get("/v1/ws", ws_handler),
            RouteAccess(deferred_auth=True))
