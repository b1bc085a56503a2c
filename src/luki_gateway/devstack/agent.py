"""The reference agent: what `AGENT_URL` speaks, for `make run`, tests and benchmarks.

Native protocol: ``POST /v1/chat`` (JSON) and ``POST /v1/chat/stream`` (SSE ``token`` /
``tool_call`` / ``done`` / ``error``). OpenAI-compatible mode: ``POST /v1/chat/completions``
with ``stream: true`` (``data:`` chunks, ``[DONE]``). Both pace tokens at a configured rate
and can misbehave on purpose (early close, garbage, stall, error event, slow first token),
and every stream is recorded with how it ended, so tests can see a client-side cancel.

A request may override the app's behaviour with ``context.agent`` (native) or a top-level
``agent`` object (OpenAI mode): ``{"tokens": 5, "failure": "stall", "after": 2, ...}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

# early_close drops the connection mid-body; eof ends the body cleanly but with no final
# event; garbage sends an event that is not JSON; bad_utf8 one that is not UTF-8.
Failure = Literal["none", "early_close", "eof", "garbage", "stall", "error", "http_error",
                  "bad_utf8"]
FAILURES: tuple[str, ...] = ("none", "early_close", "eof", "garbage", "stall", "error",
                             "http_error", "bad_utf8")
Outcome = Literal["running", "completed", "cancelled", "failed"]

_WORDS = ("LUKi", "is", "listening", "and", "thinking", "about", "what", "you", "said", "so",
          "here", "is", "a", "calm", "streamed", "answer", "one", "token", "at", "a", "time")
_POLL_S = 0.02  # how often a waiting stream checks whether its client left


@dataclass(frozen=True, slots=True)
class AgentBehaviour:
    """How the reference agent answers: size, pace and the failure to act out."""

    # About two seconds per answer: slow enough to watch (and cancel) in the demo page.
    tokens: int = 40
    tokens_per_s: float = 20.0
    first_token_delay_s: float = 0.0
    failure: Failure = "none"
    # The failure happens after this many tokens were sent.
    after: int = 0
    tool_call: bool = False
    finish_reason: str = "stop"
    # Include usage in ``done`` (native) / the usage chunk (OpenAI); else the gateway counts.
    report_usage: bool = True
    # Write each event in pieces of this many bytes (0: whole), to test parsers' buffering.
    chunk_bytes: int = 0

    def merged(self, overrides: Any) -> AgentBehaviour:
        """This behaviour with the valid fields of a request's ``agent`` object applied."""
        if not isinstance(overrides, Mapping):
            return self
        known = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            current = known.get(name)
            if current is None:
                continue
            wanted = type(getattr(self, name))
            if wanted is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, wanted):
                continue
            if name == "failure" and value not in FAILURES:
                continue
            changes[name] = value
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class StreamRecord:
    """One streamed answer as the agent saw it."""

    message: str
    request_id: str
    started_at: float
    ended_at: float | None = None
    outcome: Outcome = "running"
    tokens_sent: int = 0


@dataclass(slots=True)
class AgentLog:
    """Every stream the agent served, in order; ``changed`` is set on each end."""

    streams: list[StreamRecord] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def ended(self, record: StreamRecord, outcome: Outcome) -> None:
        """Mark ``record`` as ended and wake waiters."""
        if record.outcome == "running":
            record.outcome = outcome
            record.ended_at = time.monotonic()
            self.changed.set()

    @property
    def cancelled(self) -> list[StreamRecord]:
        """The streams whose client left before the end."""
        return [s for s in self.streams if s.outcome == "cancelled"]

    @property
    def running(self) -> list[StreamRecord]:
        """The streams still being written."""
        return [s for s in self.streams if s.outcome == "running"]

    async def wait_for(self, predicate: Callable[[AgentLog], bool], within_s: float = 5.0
                       ) -> None:
        """Wait until ``predicate(self)`` holds (raises TimeoutError after ``within_s``)."""
        async with asyncio.timeout(within_s):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()


AGENT_BEHAVIOUR = web.AppKey("agent_behaviour", AgentBehaviour)
AGENT_LOG = web.AppKey("agent_log", AgentLog)


class _ClientGone(Exception):
    """The client closed the connection while the agent was waiting or writing."""


def reply_tokens(message: str, count: int) -> list[str]:
    words = [f"You said {len(message)} characters."] + [
        _WORDS[i % len(_WORDS)] for i in range(max(0, count - 1))]
    return [w + " " for w in words[:count]] if count > 0 else []


def _tool_call(message: str) -> dict[str, Any]:
    return {"id": "call_1", "name": "lookup_memory",
            "arguments": {"query": message[:40], "limit": 3}}


async def _pause(request: web.Request, seconds: float) -> None:
    """Sleep, noticing within ``_POLL_S`` when the client has gone away."""
    deadline = time.monotonic() + seconds
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise _ClientGone
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, _POLL_S))


async def _write(response: web.StreamResponse, data: bytes, chunk_bytes: int = 0) -> None:
    try:
        if chunk_bytes <= 0:
            await response.write(data)
            return
        for start in range(0, len(data), chunk_bytes):
            await response.write(data[start:start + chunk_bytes])
            await asyncio.sleep(0)  # let each piece leave as its own segment
    except (ConnectionError, RuntimeError) as exc:
        raise _ClientGone from exc


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _openai_chunk(delta: Mapping[str, Any], finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-ref", "object": "chat.completion.chunk", "model": "luki-agent",
             "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def _read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error":{"code":"VALIDATION_ERROR"}}',
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error":{"code":"VALIDATION_ERROR"}}',
                                 content_type="application/json")
    return body


def _native_input(body: Mapping[str, Any], base: AgentBehaviour) -> tuple[str, AgentBehaviour]:
    message = str(body.get("message", ""))
    context = body.get("context")
    overrides = context.get("agent") if isinstance(context, Mapping) else None
    return message, base.merged(overrides)


def _openai_input(body: Mapping[str, Any], base: AgentBehaviour) -> tuple[str, AgentBehaviour]:
    messages = body.get("messages")
    message = ""
    if isinstance(messages, list) and messages and isinstance(messages[-1], Mapping):
        message = str(messages[-1].get("content", ""))
    behaviour = base.merged(body.get("agent"))
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and 0 < max_tokens < behaviour.tokens:
        behaviour = dataclasses.replace(behaviour, tokens=max_tokens, finish_reason="length")
    return message, behaviour


async def chat(request: web.Request) -> web.Response:
    """POST /v1/chat: the whole answer at once."""
    message, behaviour = _native_input(await _read_json(request), request.app[AGENT_BEHAVIOUR])
    if behaviour.failure == "http_error":
        return web.json_response({"error": {"code": "AGENT_FAILED", "message": "boom"}},
                                 status=500)
    await asyncio.sleep(behaviour.first_token_delay_s)
    tokens = reply_tokens(message, behaviour.tokens)
    tool_calls = [_tool_call(message)] if behaviour.tool_call else []
    return web.json_response({
        "text": "".join(tokens), "tool_calls": tool_calls,
        "usage": {"input_tokens": len(message.split()), "output_tokens": len(tokens)},
    })


async def _stream(request: web.Request, message: str, behaviour: AgentBehaviour,
                  openai: bool, include_usage: bool) -> web.StreamResponse:
    log = request.app[AGENT_LOG]
    record = StreamRecord(message=message, request_id=request.headers.get("X-Request-ID", ""),
                          started_at=time.monotonic())
    log.streams.append(record)
    if behaviour.failure == "http_error":
        log.ended(record, "failed")
        return web.json_response({"error": {"code": "AGENT_FAILED", "message": "boom"}},
                                 status=500)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    tokens = reply_tokens(message, behaviour.tokens)
    interval = 1.0 / behaviour.tokens_per_s if behaviour.tokens_per_s > 0 else 0.0
    try:
        await response.prepare(request)
        if openai:
            await _write(response, _openai_chunk({"role": "assistant", "content": ""}))
        await _pause(request, behaviour.first_token_delay_s)
        start = time.monotonic()
        for i, token in enumerate(tokens):
            if behaviour.failure != "none" and i == behaviour.after:
                await _misbehave(request, response, behaviour, log, record, openai)
                return response
            # Absolute schedule, so pacing does not drift with write time.
            await _pause(request, start + i * interval - time.monotonic())
            await _write(response, _openai_chunk({"content": token}) if openai
                         else _sse("token", {"text": token}), behaviour.chunk_bytes)
            record.tokens_sent += 1
        if behaviour.failure != "none":
            await _misbehave(request, response, behaviour, log, record, openai)
            return response
        finish = behaviour.finish_reason
        if behaviour.tool_call:
            finish = "tool_calls"
            await _write_tool_call(response, message, openai)
        usage = {"input_tokens": len(message.split()), "output_tokens": len(tokens)}
        if openai:
            await _write(response, _openai_chunk({}, finish))
            if include_usage and behaviour.report_usage:
                await _write(response, _openai_usage(usage))
            await _write(response, b"data: [DONE]\n\n")
        else:
            done: dict[str, Any] = {"finish_reason": finish}
            if behaviour.report_usage:
                done["usage"] = usage
            await _write(response, _sse("done", done), behaviour.chunk_bytes)
        await response.write_eof()
        log.ended(record, "completed")
    except (_ClientGone, ConnectionError):
        log.ended(record, "cancelled")
    except asyncio.CancelledError:
        log.ended(record, "cancelled")
        raise
    return response


def _openai_usage(usage: Mapping[str, int]) -> bytes:
    chunk = {"id": "chatcmpl-ref", "object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": usage["input_tokens"],
                       "completion_tokens": usage["output_tokens"],
                       "total_tokens": usage["input_tokens"] + usage["output_tokens"]}}
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def _write_tool_call(response: web.StreamResponse, message: str, openai: bool) -> None:
    call = _tool_call(message)
    if not openai:
        await _write(response, _sse("tool_call", call))
        return
    args = json.dumps(call["arguments"])
    half = len(args) // 2
    # Arguments arrive in fragments, as OpenAI-compatible servers send them.
    await _write(response, _openai_chunk({"tool_calls": [{
        "index": 0, "id": call["id"], "type": "function",
        "function": {"name": call["name"], "arguments": args[:half]}}]}))
    await _write(response, _openai_chunk({"tool_calls": [{
        "index": 0, "function": {"arguments": args[half:]}}]}))


async def _misbehave(request: web.Request, response: web.StreamResponse,
                     behaviour: AgentBehaviour, log: AgentLog, record: StreamRecord,
                     openai: bool) -> None:
    """Act out ``behaviour.failure`` on an open stream."""
    failure = behaviour.failure
    if failure == "stall":
        # Keep the connection open and silent until the client gives up.
        await _pause(request, 3600.0)
    elif failure == "garbage":
        await _write(response, b"event: token\ndata: {not json at all\n\n" if not openai
                     else b"data: {not json at all\n\n")
    elif failure == "bad_utf8":
        await _write(response, b"event: token\ndata: \xff\xfe\xfd\n\n")
    elif failure == "error":
        await _write(response, _sse("error", {"error": {"code": "AGENT_FAILED",
                                                        "message": "the agent failed"}})
                     if not openai else
                     b'data: {"error": {"message": "the agent failed", "type": "server_error"}}'
                     b"\n\n")
    log.ended(record, "failed")
    if failure == "early_close" and request.transport is not None:
        # Drop the connection without a terminal event or a final chunk.
        request.transport.close()
        return
    await response.write_eof()


async def chat_stream(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/stream: the answer as SSE events, paced."""
    message, behaviour = _native_input(await _read_json(request), request.app[AGENT_BEHAVIOUR])
    return await _stream(request, message, behaviour, openai=False, include_usage=True)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions: OpenAI-compatible, streamed when ``stream`` is true."""
    body = await _read_json(request)
    message, behaviour = _openai_input(body, request.app[AGENT_BEHAVIOUR])
    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        return await _stream(request, message, behaviour, openai=True,
                             include_usage=include_usage)
    tokens = reply_tokens(message, behaviour.tokens)
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
    finish = behaviour.finish_reason
    if behaviour.tool_call:
        call = _tool_call(message)
        msg["tool_calls"] = [{"id": call["id"], "type": "function", "function": {
            "name": call["name"], "arguments": json.dumps(call["arguments"])}}]
        finish = "tool_calls"
    return web.json_response({
        "id": "chatcmpl-ref", "object": "chat.completion", "model": "luki-agent",
        "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
        "usage": {"prompt_tokens": len(message.split()), "completion_tokens": len(tokens),
                  "total_tokens": len(message.split()) + len(tokens)},
    })


async def health(request: web.Request) -> web.Response:
    """GET /health: always healthy."""
    return web.json_response({"status": "healthy", "service": "agent"})


def create_agent_app(behaviour: AgentBehaviour | None = None, **options: Any) -> web.Application:
    """The reference agent; ``options`` are :class:`AgentBehaviour` fields."""
    app = web.Application()
    base = behaviour or AgentBehaviour()
    app[AGENT_BEHAVIOUR] = dataclasses.replace(base, **options) if options else base
    app[AGENT_LOG] = AgentLog()
    app.router.add_post("/v1/chat", chat)
    app.router.add_post("/v1/chat/stream", chat_stream)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/health", health)
    return app
