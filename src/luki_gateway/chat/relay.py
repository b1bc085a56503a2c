"""One agent turn, relayed: upstream events in, numbered turn events out, one clean end.

The relay runs as its own task, apart from any client connection, so a turn can outlive a
dropped connection for the resume grace period. It owns the end-of-stream contract: every
turn ends with exactly one ``done`` (stop | length | tool_calls | cancelled | client_gone)
or one ``error`` (DOWNSTREAM_TIMEOUT, DOWNSTREAM_ERROR, DOWNSTREAM_UNAVAILABLE,
CIRCUIT_OPEN, INTERNAL_ERROR), whatever the upstream or the client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import structlog
from aiohttp import web

from ..auth.principal import Principal
from ..errors import (
    DownstreamError,
    DownstreamTimeout,
    DownstreamUnavailable,
    GatewayError,
    InternalError,
)
from ..hub.turns import TURNS, Turn
from ..metrics import REGISTRY
from ..settings import SETTINGS
from ..tracing import TraceContext
from ..upstream.agent import (
    AgentClient,
    AgentEvent,
    AgentRequest,
    AgentStream,
    Outcomes,
    PendingStream,
)
from ..upstream.metrics import UPSTREAM_METRICS
from ..upstream.sessions import UPSTREAMS
from .limits import TurnAllowance
from .metrics import CHAT_METRICS, ChatMetrics

log = structlog.get_logger("luki.chat")

AGENT_CLIENT = web.AppKey("agent_client", AgentClient)


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """A turn as a client asked for it, over one transport (sync, sse, ws)."""

    principal: Principal
    trace: TraceContext
    transport: str
    agent: AgentRequest
    # perf_counter() when the client's request arrived (time to first token starts here).
    received_at: float


def new_turn_id() -> str:
    """A turn id: unguessable, URL-safe, short."""
    return "t_" + os.urandom(12).hex()


def identity_headers(req: TurnRequest, turn_id: str) -> dict[str, str]:
    """What the agent learns about the caller and the trace."""
    principal = req.principal
    return {
        "X-Request-ID": req.trace.request_id,
        "traceparent": req.trace.traceparent,
        "X-LUKi-Principal": principal.subject,
        "X-LUKi-Scopes": " ".join(sorted(principal.scopes)),
        "X-LUKi-Auth-Type": principal.kind,
        "X-LUKi-Turn-Id": turn_id,
    }


def done_value(finish_reason: str, usage: dict[str, int], turn_id: str, trace_id: str
               ) -> dict[str, Any]:
    """The payload of a ``done`` event."""
    return {"finish_reason": finish_reason, "usage": usage, "turn_id": turn_id,
            "trace_id": trace_id}


def json_data(value: Any) -> bytes:
    """An event's ``data``: one line of JSON."""
    return json.dumps(value).encode()


class Watchdog:
    """First-token and idle timeouts for one relay task at the cost of one store per event.

    Relays write ``last`` on every event; the timer only fires at the earliest possible
    deadline and re-arms itself from ``last`` (no per-token timer rescheduling). Times are
    ``time.perf_counter()``, as in the chat metrics that share them: uvloop's loop clock
    counts whole milliseconds, too coarse for a sub-millisecond time to first token.
    """

    __slots__ = ("_handle", "_loop", "_task", "fired", "last", "limit_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None],
                 limit_s: float) -> None:
        self._loop = loop
        self._task = task
        self.last = perf_counter()
        self.limit_s = limit_s
        self.fired = False
        self._handle: asyncio.TimerHandle | None = loop.call_later(limit_s, self._check)

    def _check(self) -> None:
        left = self.last + self.limit_s - perf_counter()
        if left <= 0:
            self._handle = None
            self.fired = True
            self._task.cancel()
        else:
            self._handle = self._loop.call_later(left, self._check)

    def switch(self, now: float, limit_s: float) -> None:
        """From the first-token limit to the idle limit (once per turn: re-arms the timer)."""
        self.last = now
        self.limit_s = limit_s
        if self._handle is not None:
            self._handle.cancel()
            self._handle = self._loop.call_later(now + limit_s - perf_counter(), self._check)

    def stop(self) -> None:
        """Disarm (the relay is ending)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class RelayedTurn:
    """A turn and the task relaying it; ``cancel`` ends it with ``done`` cancelled.

    The agent's events are handled in the agent connection's own callback
    (:meth:`AgentStream.follow`): each token is timed and published the moment its bytes
    arrive, with no task switch; the task only waits for the end and settles the turn.
    """

    __slots__ = ("_cancel_reason", "_finish_reason", "_following", "_last", "_metrics",
                 "_pending", "_upstream_start", "_usage", "_watchdog", "allowance", "app",
                 "request", "task", "tokens", "turn")

    def __init__(self, app: web.Application, turn: Turn, request: TurnRequest,
                 allowance: TurnAllowance) -> None:
        self.app = app
        self.turn = turn
        self.request = request
        self.allowance = allowance
        self._cancel_reason = "client_gone"
        self.task: asyncio.Task[None] | None = None
        # The agent request written before the task ran (open_turn), or why it failed.
        self._pending: PendingStream | Exception | None = None
        self._upstream_start = 0.0
        # What the relay saw so far (written by _deliver).
        self.tokens = 0
        self._last = 0.0
        self._usage: dict[str, int] | None = None
        self._finish_reason = "stop"
        self._metrics: ChatMetrics = app[CHAT_METRICS]
        # Set by start() with the task, before any event can be delivered.
        self._watchdog: Watchdog
        # The agent stream being followed (from open_upstream): completes at its end.
        self._following: asyncio.Future[None] | None = None

    async def open_upstream(self) -> None:
        """Write the agent request now, from the caller's task: the agent starts on its
        answer while the caller prepares the client's response. Never raises a
        GatewayError: the relay task ends the turn with it instead."""
        req = self.request
        try:
            client = agent_client(self.app)
            self._upstream_start = perf_counter()
            pending = self._pending = await client.start_stream(
                req.agent, identity_headers(req, self.turn.turn_id))
            # Followed at once: the first token is published by the callback that reads it.
            self._following = pending.follow(self._deliver)
        except Exception as exc:  # the relay task raises it inside its own try
            self._pending = exc

    def cancel(self, reason: str) -> None:
        """Stop the upstream request now; the turn ends with ``done`` ``reason``."""
        if self.task is not None and not self.task.done():
            self._cancel_reason = reason
            self.task.cancel()

    def _deliver(self, events: list[AgentEvent]) -> None:
        """The agent's events as they arrive (the connection's callback: the hot path)."""
        publish = self.turn.publish
        for event in events:
            kind = event.kind
            if kind == "token":
                now = perf_counter()
                self.tokens += 1
                publish("token", event.data, event.value)  # first: the rest is bookkeeping
                if self.tokens > 1:
                    self._metrics.gap.observe(now - self._last)
                else:
                    self._first_token(now)
                self._last = self._watchdog.last = now
            elif kind == "tool_call":
                self._watchdog.last = perf_counter()
                publish("tool_call", event.data, event.value)
            elif kind == "done":
                self._usage = event.value["usage"]
                self._finish_reason = event.value["finish_reason"]
            else:
                raise DownstreamError("the agent reported an error", details=event.value)

    def _first_token(self, now: float) -> None:
        metrics = self._metrics
        metrics.upstream_ttft.observe(now - self._upstream_start)
        metrics.ttft.observe(now - self.request.received_at)
        self._watchdog.switch(now, self.app[SETTINGS].chat.idle_timeout_s)

    async def run(self) -> None:
        """Relay the agent's stream into the turn, then publish its one terminal event.

        The lease is released and the tokens charged before the terminal event goes out,
        so a client that saw ``done`` may start its next turn at once.
        """
        app = self.app
        metrics = self._metrics
        turn = self.turn
        req = self.request
        stream: AgentStream | None = None
        failure: GatewayError | None = None
        finish_reason = "stop"
        metrics.active.inc()
        task = asyncio.current_task()
        assert task is not None  # run() is always a task of its own
        watchdog = self._watchdog
        try:
            pending, self._pending = self._pending, None
            if isinstance(pending, Exception):
                raise pending
            if pending is None:
                client = agent_client(app)
                self._upstream_start = perf_counter()
                stream = await client.open_stream(req.agent,
                                                  identity_headers(req, turn.turn_id))
                following = stream.follow(self._deliver)
            else:
                stream = await pending.opened()
                assert self._following is not None  # open_upstream follows what it starts
                following = self._following
            await following
            finish_reason = self._finish_reason
        except GatewayError as exc:
            failure = exc
        except asyncio.CancelledError:
            task.uncancel()  # our own cancel (watchdog or cancel()); the turn still ends
            if watchdog.fired:
                agent_client(app).outcomes.failed("timeout")
                failure = DownstreamTimeout(
                    "no token from the agent within the idle timeout" if self.tokens else
                    "no first token from the agent in time")
            else:
                finish_reason = self._cancel_reason
        except Exception:
            log.exception("chat relay failed", turn_id=turn.turn_id)
            failure = InternalError()
        finally:
            watchdog.stop()
            # A stream that ended cleanly keeps its connection (released below).
            if stream is not None and not stream.ended_ok:
                stream.close()
            metrics.active.dec()
            usage = self._usage or self._counted(self.tokens)
            outcome = failure.code.lower() if failure is not None else finish_reason
            metrics.turn_ended(req.transport, outcome, usage)
            try:
                await self.allowance.settle(usage["output_tokens"])
            finally:
                # Exactly one terminal event, even if the settlement was interrupted.
                if failure is not None:
                    self.fail(failure)
                else:
                    self.finish(finish_reason, usage)
                if stream is not None:
                    # Back to the keep-alive pool once the body's end arrives (or closed).
                    await stream.release()

    def _counted(self, tokens: int) -> dict[str, int]:
        return {"input_tokens": len(self.request.agent.message.split()), "output_tokens": tokens}

    def finish(self, reason: str, usage: dict[str, int]) -> None:
        """Publish ``done`` (once)."""
        if not self.turn.finished:
            value = done_value(reason, usage, self.turn.turn_id, self.request.trace.trace_id)
            self.turn.publish("done", json_data(value), value)

    def fail(self, err: GatewayError) -> None:
        """Publish ``error`` (once)."""
        if not self.turn.finished:
            value = err.body(self.request.trace.trace_id)
            self.turn.publish("error", json_data(value), value)

    def start(self) -> None:
        """Run the relay in a task of its own, with its first-token and idle watchdog."""
        task = asyncio.create_task(self.run(), name=f"chat-turn-{self.turn.turn_id}")
        task.add_done_callback(self.ended)
        self.task = task
        self._watchdog = Watchdog(asyncio.get_running_loop(), task,
                                  self.app[SETTINGS].chat.first_token_timeout_s)

    def ended(self, task: asyncio.Task[None]) -> None:
        """Done callback: a task cancelled before it ever ran still ends its turn."""
        self.app[RELAYS].discard(self)
        self._watchdog.stop()
        following, self._following = self._following, None
        if following is not None and following.done() and not following.cancelled():
            following.exception()  # retrieved: the relay may have ended on another error
        pending, self._pending = self._pending, None
        if isinstance(pending, PendingStream):
            pending.abort()
        if not self.turn.finished:
            self.finish(self._cancel_reason, self._counted(0))
            settle = asyncio.ensure_future(self.allowance.settle(0))
            self.app[SETTLING].add(settle)
            settle.add_done_callback(self.app[SETTLING].discard)


def _client_for(app: web.Application) -> AgentClient:
    """The agent client over the agent upstream's persistent session."""
    settings = app[SETTINGS]
    upstream = app[UPSTREAMS].get("agent")
    return AgentClient(upstream.session, upstream.base_url, pool=upstream.pool,
                       protocol=settings.chat.agent_protocol, model=settings.chat.agent_model,
                       outcomes=Outcomes(upstream.name, upstream.breaker,
                                         app[UPSTREAM_METRICS]),
                       timeout_s=settings.upstream.timeout_s,
                       connect_timeout_s=settings.upstream.connect_timeout_s)


def agent_client(app: web.Application) -> AgentClient:
    """The app's agent client (503 DOWNSTREAM_UNAVAILABLE when no agent is configured)."""
    client = app.get(AGENT_CLIENT)
    if client is None:
        raise DownstreamUnavailable(details={"upstream": "agent"})
    return client


def _new_turn(app: web.Application, request: TurnRequest, allowance: TurnAllowance
              ) -> RelayedTurn:
    turn = app[TURNS].create(new_turn_id(), request.principal.id)
    relayed = RelayedTurn(app, turn, request, allowance)
    turn.abandon = relayed.cancel
    app[RELAYS].add(relayed)
    return relayed


def start_turn(app: web.Application, request: TurnRequest, allowance: TurnAllowance
               ) -> RelayedTurn:
    """Create the turn and start relaying it in its own task."""
    relayed = _new_turn(app, request, allowance)
    relayed.start()
    return relayed


async def open_turn(app: web.Application, request: TurnRequest, allowance: TurnAllowance
                    ) -> RelayedTurn:
    """:func:`start_turn`, with the agent request written before this returns (with an
    idle pooled connection, without a task switch): the caller's own work (the SSE head)
    then overlaps the agent's, which shortens the time to the first token."""
    relayed = _new_turn(app, request, allowance)
    try:
        await relayed.open_upstream()
    finally:
        relayed.start()  # even when interrupted: the task ends the turn and its request
    return relayed


RELAYS = web.AppKey("chat_relays", set[RelayedTurn])
# Lease releases of turns cancelled before they started (kept so none is lost).
SETTLING = web.AppKey("chat_settling", set[asyncio.Future[None]])


async def relays_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: chat metrics, and no relay task outlives the app."""
    app[CHAT_METRICS] = ChatMetrics.create(app[REGISTRY])
    app[RELAYS] = set()
    app[SETTLING] = set()
    if "agent" in app[UPSTREAMS]:
        app[AGENT_CLIENT] = _client_for(app)
    yield
    await stop_relays(app)


async def stop_relays(app: web.Application) -> None:
    """on_shutdown: end every running turn with ``done`` cancelled and wait for them."""
    relays = list(app.get(RELAYS, ()))
    for relayed in relays:
        relayed.cancel("cancelled")
    for relayed in relays:
        if relayed.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await relayed.task
    settling = list(app.get(SETTLING, ()))
    if settling:
        await asyncio.gather(*settling, return_exceptions=True)
