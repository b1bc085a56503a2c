"""The agent upstream client: one turn as a request, or as a stream of agent events.

Two dialects behind one interface: the native LUKi protocol (``POST /v1/chat`` and SSE
``POST /v1/chat/stream``) and the OpenAI-compatible ``POST /v1/chat/completions`` with
``stream: true`` (vLLM, llama.cpp server, Ollama, LiteLLM). Both come out as
:class:`AgentEvent` ``token`` / ``tool_call`` / ``done`` / ``error``; anything else the
upstream does (garbage, closing without a terminal event) raises :class:`DownstreamError`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp
import yarl

from ..errors import CircuitOpen, DownstreamError, DownstreamUnavailable, GatewayError
from ..validation import strict_json
from .breaker import CircuitBreaker
from .failures import classify
from .http1 import BadResponse, ConnectFailed, Connection, Pool, UpstreamClosed, request_head
from .metrics import UpstreamMetrics
from .sse import SseEvent, SseParser, SseProtocolError

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "cancelled", "client_gone"})
SYNC_FINISH_REASONS = frozenset({"stop", "length", "tool_calls"})
# After the terminal event, how long and how much the rest of the body may take to arrive
# so that the connection is reused (the agent normally ends its body right after).
RELEASE_WAIT_S = 1.0
RELEASE_MAX_BYTES = 65536


class AgentEvent(NamedTuple):
    """One event of a turn from the agent.

    ``data`` is the one-line JSON (UTF-8 bytes) forwarded to clients as is (``token``,
    ``tool_call``); ``value`` is the token text, or the decoded payload for the other kinds.
    """

    kind: str
    data: bytes
    value: Any


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One turn as the gateway asks the agent for it."""

    user_id: str
    message: str
    context: Mapping[str, Any] | None = None


def _decode_object(data: str | bytes) -> dict[str, Any]:
    try:
        value = strict_json(data)
    except (ValueError, RecursionError):
        raise DownstreamError("agent sent an event that is not JSON") from None
    if not isinstance(value, dict):
        raise DownstreamError("agent sent an event that is not a JSON object")
    return value


def _usage(raw: Any) -> dict[str, int] | None:
    if not isinstance(raw, Mapping):
        return None
    inp = raw.get("input_tokens", raw.get("prompt_tokens"))
    out = raw.get("output_tokens", raw.get("completion_tokens"))
    if isinstance(inp, int) and isinstance(out, int):
        return {"input_tokens": inp, "output_tokens": out}
    return None


def _done(finish_reason: Any, usage: Any) -> AgentEvent:
    reason = finish_reason if finish_reason in FINISH_REASONS else "stop"
    return AgentEvent("done", b"", {"finish_reason": reason, "usage": _usage(usage)})


def _finish_reason(given: Any, tool_calls: list[Any]) -> str:
    """A sync answer's finish reason: the agent's when it is one a whole answer can have,
    else implied by the answer."""
    if given in SYNC_FINISH_REASONS:
        return str(given)
    return "tool_calls" if tool_calls else "stop"


def _agent_error(error: Any) -> AgentEvent:
    code = "AGENT_ERROR"
    if isinstance(error, Mapping):
        code = str(error.get("code") or error.get("type") or code)[:64]
    return AgentEvent("error", b"", {"upstream_code": code})


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


# The usual native token block, exactly as the reference agent (json.dumps) writes it.
_TOKEN_HEAD = b"event: token\ndata: "
_TOKEN_HEAD_LEN = len(_TOKEN_HEAD)
_TEXT_HEAD = b'{"text": "'
_TEXT_HEAD_LEN = len(_TEXT_HEAD)
_TEXT_TAIL = b'"}'


class NativeDialect:
    """The LUKi agent's own SSE events, forwarded nearly as they come."""

    path_sync = "/v1/chat"
    path_stream = "/v1/chat/stream"

    def body(self, turn: AgentRequest, stream: bool) -> dict[str, Any]:
        """The JSON the agent expects for this turn."""
        body: dict[str, Any] = {"user_id": turn.user_id, "message": turn.message}
        if turn.context is not None:
            body["context"] = turn.context
        return body

    def translate_block(self, block: bytes, parser: SseParser) -> list[AgentEvent]:
        """One raw upstream block as agent events (the relay's hot path).

        The usual ``event: token`` / ``data: {"text": "..."}`` block is passed through as
        bytes: no quote, escape or control character in the string means the JSON string
        is the text itself, so nothing is decoded but the text's UTF-8. Anything else goes
        through the full parser.
        """
        if block.startswith(_TOKEN_HEAD):
            data = block[_TOKEN_HEAD_LEN:]
            if data.startswith(_TEXT_HEAD) and data.endswith(_TEXT_TAIL):
                literal = data[_TEXT_HEAD_LEN:-2]
                if b'"' not in literal and b"\\" not in literal and b"\n" not in literal:
                    try:
                        text = literal.decode()
                    except UnicodeDecodeError:
                        raise SseProtocolError("upstream event is not valid UTF-8") from None
                    if text.isprintable():
                        return [AgentEvent("token", data, text)]
        event = parser.parse_block(block)
        return self.translate(event) if event is not None else []

    def translate(self, event: SseEvent) -> list[AgentEvent]:
        """One upstream SSE event as agent events (unknown event types are skipped)."""
        kind = event.event
        if kind == "token":
            payload = _decode_object(event.data)
            text = payload.get("text")
            if not isinstance(text, str):
                raise DownstreamError("agent sent a token without text")
            # Re-encoded: one line (multi-line JSON would break our own SSE framing).
            return [AgentEvent("token", _json_bytes(payload), text)]
        if kind == "tool_call":
            payload = _decode_object(event.data)
            return [AgentEvent("tool_call", _json_bytes(payload), payload)]
        if kind == "done":
            payload = _decode_object(event.data)
            return [_done(payload.get("finish_reason"), payload.get("usage"))]
        if kind == "error":
            payload = _decode_object(event.data)
            return [_agent_error(payload.get("error"))]
        return []

    def finish(self) -> list[AgentEvent]:
        """The stream ended without a terminal event: that is the agent's failure."""
        raise DownstreamError("agent closed the stream without a final event")

    def reply(self, body: Any) -> dict[str, Any]:
        """The sync answer as ``{text, tool_calls, usage}``."""
        if not isinstance(body, Mapping) or not isinstance(body.get("text"), str):
            raise DownstreamError("agent answered without text")
        tool_calls = body.get("tool_calls") or []
        if not isinstance(tool_calls, list):
            raise DownstreamError("agent answered with malformed tool calls")
        return {"text": body["text"], "tool_calls": tool_calls, "usage": _usage(body.get("usage")),
                "finish_reason": _finish_reason(body.get("finish_reason"), tool_calls)}


@dataclass(slots=True)
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        raw = "".join(self.arguments)
        try:
            arguments: Any = strict_json(raw) if raw else {}
        except (ValueError, RecursionError):
            arguments = raw  # keep what the model produced; the client decides
        return {"id": self.id, "name": self.name, "arguments": arguments}


class OpenAIDialect:
    """``/v1/chat/completions`` chunks mapped to agent events (one dialect per stream)."""

    path_sync = "/v1/chat/completions"
    path_stream = "/v1/chat/completions"

    def __init__(self, model: str) -> None:
        self.model = model
        self._finish: str | None = None
        self._usage: Any = None
        self._tools: list[_ToolCallParts] = []  # in the order they began
        self._tool_at: dict[int, _ToolCallParts] = {}  # the call each index is building

    def body(self, turn: AgentRequest, stream: bool) -> dict[str, Any]:
        """An OpenAI chat-completions request for this turn."""
        messages: list[Any] = []
        history = turn.context.get("messages") if turn.context else None
        if isinstance(history, list):
            messages.extend(history)
        messages.append({"role": "user", "content": turn.message})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": stream,
                                "user": turn.user_id}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def translate_block(self, block: bytes, parser: SseParser) -> list[AgentEvent]:
        """One raw upstream block as agent events."""
        event = parser.parse_block(block)
        return self.translate(event) if event is not None else []

    def translate(self, event: SseEvent) -> list[AgentEvent]:
        """One ``data:`` chunk as agent events; ``[DONE]`` ends the turn."""
        data = event.data
        if data == "[DONE]":
            return [*self._flush_tools(), _done(self._finish or "stop", self._usage)]
        chunk = _decode_object(data)
        if chunk.get("error"):
            return [_agent_error(chunk["error"])]
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return []
        choice = choices[0]
        if not isinstance(choice, Mapping):
            raise DownstreamError("agent sent a malformed choice")
        out: list[AgentEvent] = []
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(AgentEvent("token", _json_bytes({"text": content}), content))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                self._collect_tools(calls)
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._finish = finish
            out.extend(self._flush_tools())
        return out

    def _collect_tools(self, calls: list[Any]) -> None:
        """Join argument fragments per call. A fragment continues the call at its
        ``index`` (without one: the latest call) unless it names another call ``id``:
        some servers (Ollama) send parallel calls without an index, or all at index 0."""
        for call in calls:
            if not isinstance(call, Mapping):
                raise DownstreamError("agent sent a malformed tool call")
            index = call.get("index")
            if not isinstance(index, int):
                index = None
            call_id = call.get("id")
            if not isinstance(call_id, str):
                call_id = ""
            tools = self._tools
            parts = self._tool_at.get(index) if index is not None else (
                tools[-1] if tools else None)
            if parts is None or (call_id and parts.id and call_id != parts.id):
                parts = _ToolCallParts()
                tools.append(parts)
                if index is not None:
                    self._tool_at[index] = parts
            if call_id:
                parts.id = call_id
            function = call.get("function")
            if isinstance(function, Mapping):
                if isinstance(function.get("name"), str):
                    parts.name += function["name"]
                if isinstance(function.get("arguments"), str):
                    parts.arguments.append(function["arguments"])

    def _flush_tools(self) -> list[AgentEvent]:
        out = []
        for parts in self._tools:
            payload = parts.payload()
            out.append(AgentEvent("tool_call", _json_bytes(payload), payload))
        self._tools.clear()
        self._tool_at.clear()
        return out

    def finish(self) -> list[AgentEvent]:
        """No ``[DONE]``: a finish_reason already seen still ends the turn well."""
        if self._finish is None:
            raise DownstreamError("agent closed the stream without a final chunk")
        return [*self._flush_tools(), _done(self._finish, self._usage)]

    def reply(self, body: Any) -> dict[str, Any]:
        """A non-streamed completion as ``{text, tool_calls, usage}``."""
        try:
            choice = body["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise DownstreamError("agent answered without a choice") from None
        raw_calls = message.get("tool_calls") or []
        if not isinstance(text, str) or not isinstance(raw_calls, list):
            raise DownstreamError("agent answered with a malformed message")
        calls = []
        for call in raw_calls:
            function = call.get("function") or {} if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping):
                raise DownstreamError("agent answered with a malformed tool call")
            parts = _ToolCallParts(id=str(call.get("id", "")))
            parts.name = str(function.get("name", ""))
            parts.arguments.append(str(function.get("arguments", "")))
            calls.append(parts.payload())
        return {"text": text, "tool_calls": calls, "usage": _usage(body.get("usage")),
                "finish_reason": _finish_reason(choice.get("finish_reason"), calls)}


Dialect = NativeDialect | OpenAIDialect


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Where the outcome of each agent exchange is counted: the upstream's circuit breaker
    and ``luki_upstream_*`` metrics, as for the proxy's upstreams."""

    name: str = "agent"
    breaker: CircuitBreaker | None = None
    metrics: UpstreamMetrics | None = None

    def before_request(self) -> None:
        """Raise CircuitOpen (counted) while the breaker is open."""
        if self.breaker is not None:
            try:
                self.breaker.before_request()
            except CircuitOpen:
                if self.metrics is not None:
                    self.metrics.errors.labels(self.name, "circuit_open").inc()
                raise

    def record(self, ok: bool) -> None:
        """One exchange's end for the breaker."""
        if self.breaker is not None:
            if ok:
                self.breaker.record_success()
            else:
                self.breaker.record_failure()

    def answered(self, status: int, started: float) -> None:
        """The answer's head arrived ``started`` (perf_counter) after the request."""
        if self.metrics is not None:
            self.metrics.observe(self.name, status, time.perf_counter() - started)

    def failed(self, kind: str) -> None:
        """A failed exchange of ``kind`` (timeout|connect|reset|bad_response)."""
        if self.metrics is not None:
            self.metrics.errors.labels(self.name, kind).inc()
        self.record(False)

    def broke(self, exc: BaseException) -> GatewayError:
        """Count an exchange that failed before the answer; the client's error."""
        kind, error, _ = classify(exc)
        self.failed(kind)
        return error


_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_SSE_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class AgentStream:
    """An open streamed turn on one pooled connection: :meth:`follow` it until its
    terminal event, then :meth:`release` (or :meth:`close` to cancel)."""

    __slots__ = ("_conn", "_deliver", "_dialect", "_done", "_ended", "_failed", "_ok",
                 "_outcomes", "_parser", "_pool")

    def __init__(self, pool: Pool, conn: Connection, dialect: Dialect, outcomes: Outcomes
                 ) -> None:
        self._pool = pool
        self._conn = conn
        self._dialect = dialect
        self._outcomes = outcomes
        self._parser = SseParser()
        self._ended = False
        self._ok = False
        self._failed: DownstreamError | None = None
        self._deliver: Callable[[list[AgentEvent]], None] | None = None
        self._done: asyncio.Future[None] | None = None

    def follow(self, deliver: Callable[[list[AgentEvent]], None]) -> asyncio.Future[None]:
        """Push mode: each chunk's events go to ``deliver`` as soon as the bytes arrive,
        in the connection's own callback (no task switch per token).

        The future completes once the terminal event was delivered; it fails with
        :class:`DownstreamError` (garbage, a broken connection, an end without a terminal
        event: after the events that came complete before it) or with what ``deliver``
        raised. Nothing is delivered after that.
        """
        self._deliver = deliver
        done = self._done = asyncio.get_running_loop().create_future()
        self._conn.consume(self)
        return done

    def body(self, data: bytes) -> None:
        """Push mode: the connection's callback with body bytes (never raises)."""
        deliver = self._deliver
        if deliver is None or self._conn.status >= 400:
            return  # an error answer's body is not a stream (PendingStream.opened raises)
        try:
            events = self._take(data)
            if events:
                deliver(events)
        except Exception as exc:
            self._settle(exc)
            return
        if self._failed is not None:
            self._settle(self._failed)
        elif self._ended:
            self._settle(None)

    def end(self, error: BaseException | None) -> None:
        """Push mode: the body is complete, or the connection failed."""
        if error is None:
            self.body(b"")
            return
        status = self._conn.status
        if 0 < status < 400:  # before an answer, or in an error answer, opened() reports it
            self._end(False, "reset")
        self._settle(DownstreamError("agent connection broke mid-stream"))

    def _settle(self, error: BaseException | None) -> None:
        self._deliver = None
        self._conn.consume(None)
        done = self._done
        if done is not None and not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def _take(self, chunk: bytes) -> list[AgentEvent]:
        """The events ``chunk`` completes (b"": the end of the body).

        A failure after some events is kept in ``_failed`` and those events returned;
        a failure before any raises :class:`DownstreamError`.
        """
        events: list[AgentEvent] = []
        try:
            if not chunk:
                events = self._dialect.finish()
                self._end(True)
                return events
            translate = self._dialect.translate_block
            parser = self._parser
            for block in parser.blocks(chunk):
                for event in translate(block, parser):
                    events.append(event)
                    if event.kind == "done" or event.kind == "error":
                        # The agent's own error event is an answer, not a broken upstream:
                        # one user's bad turn must not open the breaker for everyone.
                        self._end(True)
                        return events
        except (SseProtocolError, DownstreamError) as exc:
            self._end(False)
            failure = DownstreamError(str(exc) if isinstance(exc, SseProtocolError)
                                      else exc.message)
            if not events:
                raise failure from None
            self._failed = failure  # the events before the bad one still go out
        return events

    def _end(self, ok: bool, kind: str = "bad_response") -> None:
        if not self._ended:
            self._ended = True
            self._ok = ok
            if ok:
                self._outcomes.record(True)
            else:
                self._outcomes.failed(kind)

    @property
    def ended_ok(self) -> bool:
        """True once the agent sent its terminal event (done, or its own error event)."""
        return self._ok

    def close(self) -> None:
        """Give the connection back: kept only if the response was complete, else closed
        (which cancels the agent's stream)."""
        self._deliver = None
        self._conn.consume(None)
        self._pool.release(self._conn)

    async def release(self, within_s: float = RELEASE_WAIT_S) -> None:
        """After a clean end: wait (briefly) for the end of the body, so the connection
        goes back to the keep-alive pool instead of being closed; else close it."""
        try:
            if self._ok and not self._conn.complete:
                async with asyncio.timeout(within_s):
                    left = RELEASE_MAX_BYTES
                    while left > 0:
                        chunk = await self._conn.readany()
                        if not chunk:
                            break
                        left -= len(chunk)
        except (TimeoutError, *_BROKEN):
            pass
        finally:
            self.close()


# A pooled connection that broke, spoke garbage HTTP or timed out.
_BROKEN = (UpstreamClosed, BadResponse, TimeoutError, OSError)


def _error_answer(status: int) -> GatewayError:
    """The agent answered 4xx/5xx: 503 means it is unavailable, anything else an error."""
    if status == 503:
        return DownstreamUnavailable(details={"upstream_status": status})
    return DownstreamError(details={"upstream_status": status})


class AgentClient:
    """Talks to the agent through the upstream's one persistent session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: yarl.URL, *,
                 pool: Pool | None = None, protocol: str = "native", model: str = "luki-agent",
                 outcomes: Outcomes | None = None, timeout_s: float = 30.0,
                 connect_timeout_s: float = 2.0) -> None:
        self.session = session
        self.base_url = base_url
        # Streams go through the upstream's lean keep-alive pool (upstream/http1.py): an
        # exchange costs a fraction of aiohttp's client machinery, once per turn.
        self.pool = pool
        self.protocol = protocol
        self.model = model
        self.outcomes = outcomes or Outcomes()
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s

    def url(self, path: str) -> yarl.URL:
        """The agent URL for ``path`` under the configured base (which may have a path)."""
        return self.base_url.with_path(self.base_url.path.rstrip("/") + path)

    def dialect(self) -> Dialect:
        """A fresh dialect (OpenAI keeps per-stream state)."""
        return OpenAIDialect(self.model) if self.protocol == "openai" else NativeDialect()

    async def complete(self, turn: AgentRequest, headers: Mapping[str, str]) -> dict[str, Any]:
        """A whole turn in one request: ``{text, tool_calls, usage}``."""
        dialect = self.dialect()
        outcomes = self.outcomes
        outcomes.before_request()
        started = time.perf_counter()
        try:
            async with self.session.post(
                self.url(dialect.path_sync), json=dialect.body(turn, False),
                headers={**headers, **_JSON_HEADERS},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                outcomes.answered(response.status, started)
                if response.status >= 400:
                    outcomes.record(response.status < 500)
                    raise _error_answer(response.status)
                try:
                    body = await response.json(loads=strict_json, content_type=None)
                except (ValueError, RecursionError):
                    outcomes.failed("bad_response")
                    raise DownstreamError("agent answered with invalid JSON") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise outcomes.broke(exc) from None
        try:
            reply = dialect.reply(body)
        except DownstreamError:
            outcomes.failed("bad_response")
            raise
        outcomes.record(True)
        return reply

    async def start_stream(self, turn: AgentRequest, headers: Mapping[str, str]
                           ) -> PendingStream:
        """Write the streamed request on a pooled connection now (no wait for the answer
        when an idle connection is at hand); :meth:`PendingStream.opened` waits for it."""
        pool = self.pool
        if pool is None:
            raise DownstreamUnavailable(details={"upstream": "agent"})
        dialect = self.dialect()
        outcomes = self.outcomes
        outcomes.before_request()
        started = time.perf_counter()
        body = json.dumps(dialect.body(turn, True)).encode()
        head = request_head("POST", pool.base_path + dialect.path_stream, pool.authority,
                            [*headers.items(), *_SSE_HEADERS.items()], body)
        try:
            conn = await pool.acquire()
        except (ConnectFailed, TimeoutError, OSError) as exc:
            outcomes.failed("timeout" if isinstance(exc, TimeoutError) else "connect")
            raise DownstreamUnavailable() from None
        try:
            answered = conn.send(head, body, None)
        except BaseException as exc:
            pool.release(conn)  # incomplete: closed, never reused
            if isinstance(exc, _BROKEN):
                raise outcomes.broke(exc) from None
            raise
        return PendingStream(pool, conn, answered, dialect, outcomes, started)

    async def open_stream(self, turn: AgentRequest, headers: Mapping[str, str]) -> AgentStream:
        """Send the streamed request and wait for the answer's head (the caller bounds
        that wait: no timeout here but the connect timeout)."""
        return await (await self.start_stream(turn, headers)).opened()


class PendingStream:
    """A streamed request written to the agent, its answer not yet read: :meth:`opened`
    once, or :meth:`abort`."""

    __slots__ = ("_answered", "_conn", "_dialect", "_outcomes", "_pool", "_started",
                 "_stream")

    def __init__(self, pool: Pool, conn: Connection, answered: asyncio.Future[None],
                 dialect: Dialect, outcomes: Outcomes, started: float) -> None:
        self._pool = pool
        self._conn = conn
        self._answered = answered
        self._dialect = dialect
        self._outcomes = outcomes
        self._started = started
        self._stream: AgentStream | None = None

    def follow(self, deliver: Callable[[list[AgentEvent]], None]) -> asyncio.Future[None]:
        """:meth:`AgentStream.follow`, from before the answer's head arrives: the first
        events are delivered by the callback that reads them, with no task switch before.
        :meth:`opened` still checks the head (and returns this stream)."""
        self._stream = AgentStream(self._pool, self._conn, self._dialect, self._outcomes)
        return self._stream.follow(deliver)

    async def opened(self) -> AgentStream:
        """Wait for the answer's head: the stream, or DownstreamUnavailable/DownstreamError."""
        pool, conn, outcomes = self._pool, self._conn, self._outcomes
        try:
            await self._answered
        except BaseException as exc:
            pool.release(conn)  # incomplete: closed, never reused
            if isinstance(exc, _BROKEN):
                raise outcomes.broke(exc) from None
            raise
        status = conn.status
        outcomes.answered(status, self._started)
        if status >= 400:
            pool.release(conn)
            outcomes.record(status < 500)
            raise _error_answer(status)
        return self._stream or AgentStream(pool, conn, self._dialect, outcomes)

    def abort(self) -> None:
        """Drop the request unread (the connection is closed, the agent sees a cancel)."""
        answered = self._answered
        if answered.done() and not answered.cancelled():
            answered.exception()  # retrieved: no "never retrieved" warning
        self._pool.release(self._conn)
