"""Chat over /v1/ws: the ``chat``, ``cancel`` and ``resume`` message handlers.

The hub owns the socket; these handlers start turns, listen to them and enqueue messages
with ``conn.send_json``. Every message of a turn carries the client's ``id`` and the
gateway's ``turn_id``. When the socket closes, its turns lose their listener and are kept
for the resume grace period, then cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from marshmallow import Schema

from ..errors import (
    GatewayError,
    NotFound,
    RateLimitExceeded,
    ValidationFailed,
    error_message,
)
from ..hub.turns import (
    LIVENESS_QUIET_S,
    TERMINAL,
    TURNS,
    WATCH_REFRESH_S,
    Listener,
    Turn,
    TurnEvent,
)
from ..middlewares.ratelimit import charge_message
from ..routes.ws_protocol import WS_MESSAGE_HANDLERS, WsConnection
from ..settings import SETTINGS
from ..tracing import TraceContext
from ..upstream.agent import AgentRequest
from ..validation import load
from .limits import TurnAllowance
from .relay import RELAYS, RelayedTurn, TurnRequest, agent_client, start_turn
from .schema import CancelSchema, ResumeSchema, chat_schema
from .turn_access import CHAT_ACCESS, check_owner, require_chat_scope, resolve_user

# A turn followed from another process ends this long after its cancel at the latest: by
# the owner's own done (cancelled, within about WATCH_REFRESH_S), or, when the owner is
# dead, by the follower's stored end (the error every resume of the turn gets, once the
# turn has been quiet for LIVENESS_QUIET_S). Only if neither comes (Redis failing) does the
# socket end the turn itself, with a done that has no seq or usage.
REMOTE_CANCEL_WAIT_S = LIVENESS_QUIET_S + 3 * WATCH_REFRESH_S


@dataclass(slots=True)
class _Listening:
    turn: Turn | None
    listener: Listener
    feeder: asyncio.Task[None] | None = None
    turn_id: str = ""


@dataclass(slots=True)
class SocketTurns:
    """The turns one socket listens to, by the client's id."""

    by_id: dict[str, _Listening] = field(default_factory=dict)


CHAT_SOCKETS = web.AppKey("chat_sockets", dict[str, SocketTurns])
WS_CHAT_SCHEMA = web.AppKey("ws_chat_schema", Schema)


def ws_listener(conn: WsConnection, client_id: str, turn_id: str,
                on_end: Callable[[], None]) -> Listener:
    """A turn listener that sends each event as a WS message tagged with both ids."""
    send = conn.send_json

    def listener(item: TurnEvent) -> None:
        event = item.event
        if event == "token":
            send({"type": "token", "id": client_id, "turn_id": turn_id, "seq": item.seq,
                  "text": item.value})
            return
        if event == "tool_call":
            send({"type": "tool_call", "id": client_id, "turn_id": turn_id, "seq": item.seq,
                  "tool_call": item.value})
            return
        send({**item.value, "type": event, "id": client_id, "turn_id": turn_id,
              "seq": item.seq})
        if event in TERMINAL:
            on_end()

    return listener


def _socket(app: web.Application, conn: WsConnection) -> SocketTurns:
    sockets = app[CHAT_SOCKETS]
    found = sockets.get(conn.connection_id)
    if found is None:
        found = sockets[conn.connection_id] = SocketTurns()

        async def on_close() -> None:
            # Listeners leave; each running turn starts its grace period (or is cancelled).
            state = sockets.pop(conn.connection_id, None)
            if state is None:
                return
            for listening in state.by_id.values():
                if listening.feeder is not None:
                    listening.feeder.cancel()
                if listening.turn is not None:
                    listening.turn.detach(listening.listener)

        conn.add_close_callback(on_close)
    return found


def _send_error(conn: WsConnection, err: GatewayError, client_id: Any,
                trace: TraceContext, turn_id: str | None = None) -> None:
    message = error_message(err, trace.trace_id)
    if isinstance(client_id, str):
        message["id"] = client_id
    if turn_id is not None:
        message["turn_id"] = turn_id
    conn.send_json(message)


def _ended(state: SocketTurns, client_id: str) -> Callable[[], None]:
    def end() -> None:
        state.by_id.pop(client_id, None)
    return end


async def handle_chat(app: web.Application, conn: WsConnection, msg: dict[str, Any]) -> None:
    """``chat {id, message, context?}``: start a turn on this socket."""
    trace = TraceContext.new()
    received = time.perf_counter()
    try:
        body = load(app[WS_CHAT_SCHEMA], msg)
        client_id: str = body["id"]
        require_chat_scope(conn.principal)
        state = _socket(app, conn)
        if client_id in state.by_id:
            raise ValidationFailed("a turn with this id is still running",
                                   details={"id": client_id})
        limit = app[SETTINGS].chat.max_turns_per_socket
        if len(state.by_id) >= limit:
            raise RateLimitExceeded("too many turns running on this socket",
                                    details={"max_turns_per_socket": limit})
        principal = conn.principal
        agent = AgentRequest(resolve_user(principal, body["user_id"]), body["message"],
                             body["context"])
        # A turn costs what a POST /v1/chat/stream costs: per-minute/hour limits apply
        # (to turns this socket may start; a message refused above costs nothing).
        await charge_message(app, conn.principal, conn.client_ip, CHAT_ACCESS)
        agent_client(app)
        allowance = await TurnAllowance.acquire(app, principal)
    except GatewayError as err:
        _send_error(conn, err, msg.get("id"), trace)
        return
    if conn.closed:
        await allowance.settle(0)
        return
    relayed = start_turn(app, TurnRequest(principal, trace, "ws", agent, received), allowance)
    turn = relayed.turn
    app[TURNS].name_for_client(principal.id, client_id, turn.turn_id)
    listener = ws_listener(conn, client_id, turn.turn_id, _ended(state, client_id))
    state.by_id[client_id] = _Listening(turn, listener)
    turn.attach(listener)


def _relay_of(app: web.Application, turn: Turn) -> RelayedTurn | None:
    for relayed in app[RELAYS]:
        if relayed.turn is turn:
            return relayed
    return None


async def handle_cancel(app: web.Application, conn: WsConnection, msg: dict[str, Any]
                        ) -> None:
    """``cancel {id}``: stop that turn's upstream; it ends with ``done`` cancelled."""
    trace = TraceContext.new()
    try:
        client_id: str = load(CancelSchema(), msg)["id"]
        state = _socket(app, conn)
        listening = state.by_id.get(client_id)
        if listening is None:
            raise NotFound("no running turn with this id", details={"id": client_id})
    except GatewayError as err:
        _send_error(conn, err, msg.get("id"), trace)
        return
    relayed = _relay_of(app, listening.turn) if listening.turn is not None else None
    if relayed is not None:
        relayed.cancel("cancelled")
        return
    # A turn followed from another process: its owner stops it and its done (cancelled,
    # with usage) arrives through the follower; if it does not come in time, end it here.
    if await app[TURNS].request_cancel(listening.turn_id):
        asyncio.get_running_loop().call_later(
            REMOTE_CANCEL_WAIT_S, _end_followed, conn, state, client_id, listening, trace)
    else:
        _end_followed(conn, state, client_id, listening, trace)


def _end_followed(conn: WsConnection, state: SocketTurns, client_id: str,
                  listening: _Listening, trace: TraceContext) -> None:
    """Stop following a turn of another process; ``done`` cancelled for this client."""
    if state.by_id.get(client_id) is not listening:
        return  # it ended already (the owner's done came)
    if listening.feeder is not None:
        listening.feeder.cancel()
    state.by_id.pop(client_id, None)
    conn.send_json({"type": "done", "id": client_id, "turn_id": listening.turn_id,
                    "finish_reason": "cancelled", "trace_id": trace.trace_id})


async def handle_resume(app: web.Application, conn: WsConnection, msg: dict[str, Any]
                        ) -> None:
    """``resume {turn_id, last_seq, id?}``: missed events, then the live rest of the turn.

    Without ``turn_id``, the latest turn this principal started with ``chat {id}``: a
    client whose connection dropped before the turn's first event never learnt its id.
    """
    trace = TraceContext.new()
    try:
        body = load(ResumeSchema(), msg)
        after: int = body["last_seq"]
        require_chat_scope(conn.principal)
        state = _socket(app, conn)
        registry = app[TURNS]
        turn_id: str | None = body["turn_id"]
        if turn_id is None:
            turn_id = await registry.turn_of_client(conn.principal.id, body["id"])
            if turn_id is None:
                raise NotFound("no turn was started with this id", details={"id": body["id"]})
        client_id: str = body["id"] or turn_id
        if client_id in state.by_id:
            raise ValidationFailed("a turn with this id is still running",
                                   details={"id": client_id})
        turn = registry.local(turn_id)
        if turn is not None:
            check_owner(turn, conn.principal)
            listener = ws_listener(conn, client_id, turn_id, _ended(state, client_id))
            turn.attach(listener, after)
            if not turn.finished:
                state.by_id[client_id] = _Listening(turn, listener)
            return
        if await registry.has_remote_end(turn_id, conn.principal.id, after):
            return  # the client has the end already, as for a finished local turn
    except GatewayError as err:
        _send_error(conn, err, msg.get("id"), trace, msg.get("turn_id")
                    if isinstance(msg.get("turn_id"), str) else None)
        return
    listener = ws_listener(conn, client_id, turn_id, _ended(state, client_id))
    listening = _Listening(None, listener, turn_id=turn_id)
    try:
        listening.feeder = registry.start_follow(turn_id, conn.principal.id, after, listener,
                                                 trace.trace_id)
    except GatewayError as err:
        _send_error(conn, err, msg.get("id"), trace, turn_id)
        return
    state.by_id[client_id] = listening

    def followed(_: asyncio.Task[None]) -> None:
        # Also when the client had the end already: the id is free for a new turn.
        if state.by_id.get(client_id) is listening:
            del state.by_id[client_id]
    listening.feeder.add_done_callback(followed)


def setup_ws(app: web.Application) -> None:
    """Register the chat message handlers on /v1/ws."""
    app[CHAT_SOCKETS] = {}
    app[WS_CHAT_SCHEMA] = chat_schema(app[SETTINGS].chat, with_id=True)
    handlers = app[WS_MESSAGE_HANDLERS]

    async def chat(conn: WsConnection, msg: dict[str, Any]) -> None:
        await handle_chat(app, conn, msg)

    async def cancel(conn: WsConnection, msg: dict[str, Any]) -> None:
        await handle_cancel(app, conn, msg)

    async def resume(conn: WsConnection, msg: dict[str, Any]) -> None:
        await handle_resume(app, conn, msg)

    handlers["chat"] = chat
    handlers["cancel"] = cancel
    handlers["resume"] = resume
