"""POST /v1/chat, GET/POST /v1/chat/stream, and chat over /v1/ws.

The sync route answers one turn as JSON; the stream route relays a turn as SSE (``token``,
``tool_call``, then exactly one ``done`` or ``error``, each with ``id: <turn_id>:<seq>``).
``GET /v1/chat/stream?turn_id=...`` with ``Last-Event-ID`` resumes a turn, on any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web
from marshmallow import Schema

from ..auth.principal import principal_of
from ..chat.limits import TurnAllowance
from ..chat.metrics import CHAT_METRICS
from ..chat.relay import (
    TurnRequest,
    agent_client,
    identity_headers,
    new_turn_id,
    open_turn,
    relays_ctx,
    stop_relays,
)
from ..chat.schema import chat_schema, plain_chat_body
from ..chat.sse import WATCH_INTERVAL_S, SseSink, end_sse_streams, open_sse, sse_streams_ctx
from ..chat.turn_access import CHAT_ACCESS, check_owner, resolve_user
from ..chat.ws import setup_ws
from ..errors import GatewayError, ShuttingDown, ValidationFailed
from ..hub.turns import TURNS, Turn
from ..lifecycle import LIFECYCLE
from ..settings import SETTINGS
from ..tracing import trace_of
from ..upstream.agent import AgentRequest
from ..validation import load, parse_json, read_body
from .access import RouteAccess, declare

T = TypeVar("T")
CHAT_SCHEMA = web.AppKey("chat_schema", Schema)
# EventSource puts the message in the URL; keep such URLs well under common limits.
GET_MESSAGE_MAX_CHARS = 2000


async def _agent_request(request: web.Request) -> AgentRequest:
    principal = principal_of(request)
    if request.method == "GET":
        query = request.query
        message = query.get("message")
        if message is not None and len(message) > GET_MESSAGE_MAX_CHARS:
            raise ValidationFailed("message too long for GET; POST it instead",
                                   details={"max_chars": GET_MESSAGE_MAX_CHARS})
        data = {"message": message} if message is not None else {}
        if "user_id" in query:
            data["user_id"] = query["user_id"]
    else:
        data = parse_json(await read_body(request))
    max_chars = request.app[SETTINGS].chat.max_message_chars
    body = plain_chat_body(data, max_chars) or load(request.app[CHAT_SCHEMA], data)
    return AgentRequest(resolve_user(principal, body["user_id"]), body["message"],
                        body["context"])


async def chat(request: web.Request) -> web.Response:
    """POST /v1/chat: one turn, answered whole."""
    app = request.app
    received = time.perf_counter()
    principal = principal_of(request)
    trace = trace_of(request)
    agent = await _agent_request(request)
    client = agent_client(app)
    allowance = await TurnAllowance.acquire(app, principal)
    metrics = app[CHAT_METRICS]
    turn_id = new_turn_id()
    outcome = "internal_error"
    output_tokens = 0
    counted = {"input_tokens": 0, "output_tokens": 0}  # tokens are counted on success only
    metrics.active.inc()
    try:
        headers = identity_headers(TurnRequest(principal, trace, "sync", agent, received),
                                   turn_id)
        reply = await _while_client_waits(request, client.complete(agent, headers))
        usage = reply["usage"] or {"input_tokens": len(agent.message.split()),
                                   "output_tokens": len(reply["text"].split())}
        output_tokens = usage["output_tokens"]
        outcome = reply["finish_reason"]
        counted = usage
    except ShuttingDown:
        outcome = "cancelled"  # as a stream's turn ends at shutdown: not the agent's failure
        raise
    except GatewayError as err:
        outcome = err.code
        raise
    except ConnectionResetError:
        outcome = "client_gone"  # the agent's request was cancelled; aiohttp drops the rest
        raise
    finally:
        metrics.active.dec()
        metrics.turn_ended("sync", outcome.lower(), counted)
        await allowance.settle(output_tokens)
    return web.json_response({
        "text": reply["text"], "tool_calls": reply["tool_calls"],
        "meta": {"trace_id": trace.trace_id, "turn_id": turn_id, "usage": usage,
                 "finish_reason": reply["finish_reason"]},
    })


async def _while_client_waits(request: web.Request, call: Awaitable[T]) -> T:
    """``call``'s result; cancelled (and with it the agent's request) when the client hangs
    up first, looked at every WATCH_INTERVAL_S: then ConnectionResetError. Also cancelled
    when a shutdown's grace runs out: then ShuttingDown, a 503 the client can retry."""
    lifecycle = request.app[LIFECYCLE]
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait((task,), timeout=WATCH_INTERVAL_S)
            if done:
                return task.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client left before the answer")
            if lifecycle.out_of_time:
                raise ShuttingDown()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def chat_stream(request: web.Request) -> web.StreamResponse:
    """GET/POST /v1/chat/stream: relay one turn as SSE (a GET naming a turn resumes it)."""
    if request.method == "GET":
        point = _resume_point(request)
        if point is not None:
            return await _resume(request, *point)
    app = request.app
    received = time.perf_counter()
    principal = principal_of(request)
    agent = await _agent_request(request)
    agent_client(app)  # no agent configured: a plain 503 before the stream starts
    allowance = await TurnAllowance.acquire(app, principal)
    # The agent request is written first; the SSE head is prepared while the agent works.
    relayed = await open_turn(app, TurnRequest(principal, trace_of(request), "sse", agent,
                                               received), allowance)
    return await _relay(request, relayed.turn, 0)


async def _relay(request: web.Request, turn: Turn, after_seq: int) -> web.StreamResponse:
    """Write ``turn``'s events after ``after_seq`` to this request until it ends or leaves."""
    sink = SseSink(request)
    with request.app[TURNS].stream_slot(turn.turn_id):
        try:
            turn.attach(sink, after_seq)
            response = await open_sse(request, turn.turn_id, sink)
            with contextlib.suppress(ConnectionError):  # the client left mid-write
                await sink.pump(response)
            return response
        finally:
            turn.detach(sink)


def _resume_point(request: web.Request) -> tuple[str, int] | None:
    """The turn a GET resumes and the last ``seq`` its client has, or None for a new turn.

    ``?turn_id=`` resumes that turn (after ``Last-Event-ID``, else from its start). Without
    it, a ``Last-Event-ID`` means a reconnect: a browser's EventSource comes back to the
    URL that started the turn (``?message=...``) with the id of the last event it got, and
    must get the rest of that turn, not the same question asked again.
    """
    query = request.query
    turn_id = query.get("turn_id")
    raw = request.headers.get("Last-Event-ID") or query.get("last_event_id")
    if not raw:
        return None if turn_id is None else (turn_id, 0)
    prefix, sep, seq = raw.rpartition(":")
    if (not sep or not prefix or not seq.isascii() or not seq.isdigit()
            or turn_id not in (None, prefix)):
        raise ValidationFailed("Last-Event-ID must be <turn_id>:<seq> of this turn")
    return prefix, int(seq)


def _nothing_more() -> web.Response:
    """204: the client has the turn's terminal event; an EventSource stops reconnecting."""
    return web.Response(status=204)


async def _resume(request: web.Request, turn_id: str, after: int) -> web.StreamResponse:
    """Missed events after ``after``, then the live rest of the turn (204 when it ended
    and the client has its last event)."""
    principal = principal_of(request)
    registry = request.app[TURNS]
    turn = registry.local(turn_id)
    if turn is not None:
        check_owner(turn, principal)
        if turn.finished and after >= turn.seq:
            return _nothing_more()
        return await _relay(request, turn, after)
    if await registry.has_remote_end(turn_id, principal.id, after):
        return _nothing_more()
    sink = SseSink(request)
    with registry.stream_slot(turn_id):
        feeder = registry.start_follow(turn_id, principal.id, after, sink,
                                       trace_of(request).trace_id)
        # Followed to its end, or the client had the end already (found while following).
        feeder.add_done_callback(lambda _: sink.close_quietly())
        try:
            response = await open_sse(request, turn_id, sink)
            with contextlib.suppress(ConnectionError):
                await sink.pump(response)
            return response
        finally:
            feeder.cancel()


def setup(app: web.Application) -> None:
    """Add the routes: POST /v1/chat, GET/POST /v1/chat/stream; WS chat handlers."""
    app[CHAT_SCHEMA] = chat_schema(app[SETTINGS].chat)
    app.cleanup_ctx.append(relays_ctx)
    app.cleanup_ctx.append(sse_streams_ctx)
    app.on_shutdown.append(stop_relays)
    app.on_shutdown.append(end_sse_streams)  # after stop_relays: followers of other processes
    declare(app, app.router.add_post("/v1/chat", chat),
            RouteAccess(scopes={"POST": ("chat:write",)}))
    stream = app.router.add_resource("/v1/chat/stream")
    declare(app, stream.add_route("POST", chat_stream), CHAT_ACCESS)
    declare(app, stream.add_route("GET", chat_stream), CHAT_ACCESS)
    setup_ws(app)
