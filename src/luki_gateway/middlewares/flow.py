"""RequestFlow: one request through the chain's stages and its handler, without a frame of ours.

A coroutine middleware stays suspended for as long as its handler runs: for a WebSocket or an
SSE stream that is hours, and its frame is paid per idle connection. RequestFlow is a plain
awaitable that forwards ``send`` / ``throw`` to whatever runs now (a stage's awaitable, then
the handler's), so while a stream is open only this small object sits between aiohttp and the
handler. It also owns what wraps every request: the access record and the JSON error answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from types import CoroutineType
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from ..auth.principal import PRINCIPAL
from ..routes.access import RouteAccess
from ..tracing import TraceContext
from .access import record_access
from .errors import answer_failure
from .request_context import bind_log_context

# A step before the handler: None when it is done at once, else an awaitable to finish first.
Stage = Callable[[web.Request, RouteAccess], Awaitable[None] | None]


class _Step(Protocol):
    """What runs now: a coroutine, or the iterator behind another awaitable."""

    def send(self, value: Any, /) -> Any: ...

    def throw(self, error: BaseException, /) -> Any: ...

    def close(self) -> None: ...


def _runner(awaitable: Awaitable[Any]) -> _Step:
    """What to drive: the coroutine itself, or the iterator behind any other awaitable."""
    if isinstance(awaitable, CoroutineType):
        return awaitable
    return cast(_Step, awaitable.__await__())


class RequestFlow(Generator[Any, Any, web.StreamResponse]):
    """The stages in order, then the handler; the answer (or failure) is recorded once."""

    __slots__ = ("_access", "_current", "_handler", "_request", "_stage", "_stages",
                 "_started", "_trace")

    def __init__(self, request: web.Request, handler: Handler, stages: Sequence[Stage],
                 access: RouteAccess, trace: TraceContext, started: float) -> None:
        self._request = request
        self._handler = handler
        self._stages = stages
        self._access = access
        self._trace = trace
        self._started = started
        # Index of the running step: a stage below len(stages), the handler at len(stages).
        self._stage = -1
        self._current: _Step | None = None

    def __await__(self) -> RequestFlow:
        return self

    def __iter__(self) -> RequestFlow:
        return self

    def __next__(self) -> Any:
        return self._resume(None, None)

    def send(self, value: Any) -> Any:
        """Resume the running step with ``value``."""
        return self._resume(value, None)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Raise an exception (a cancellation, usually) inside the running step."""
        error = typ if val is None else val
        if isinstance(error, type):
            error = error()
        if tb is not None:
            error = error.with_traceback(tb)
        return self._resume(None, error)

    def close(self) -> None:
        """The awaiting coroutine is being closed: close the running step too."""
        current, self._current = self._current, None
        if current is not None:
            current.close()
        if self._stage <= len(self._stages):
            self._stage = len(self._stages) + 1
            record_access(self._request, self._started, 499, None)

    def _resume(self, value: Any, error: BaseException | None) -> Any:
        handler_stage = len(self._stages)
        while True:
            try:
                current = self._current
                if current is None:
                    if error is not None:
                        raise error
                    current = self._next_step(handler_stage)
                    if current is None:
                        continue  # a stage that finished at once
                    value = None
                if error is not None:
                    thrown, error = error, None
                    return current.throw(thrown)
                return current.send(value)
            except StopIteration as done:
                self._current = None
                value = done.value
                if self._stage == handler_stage:
                    self._stage += 1
                    response: web.StreamResponse = value
                    record_access(self._request, self._started, response.status, response)
                    raise
            except BaseException as exc:
                self._current = None
                answer = self._failed(exc, handler_stage)
                if answer is None:
                    raise
                raise StopIteration(answer) from None

    def _next_step(self, handler_stage: int) -> _Step | None:
        self._stage += 1
        request = self._request
        awaitable: Awaitable[Any] | None
        if self._stage < handler_stage:
            awaitable = self._stages[self._stage](request, self._access)
        else:
            bind_log_context(self._trace, request.get(PRINCIPAL))
            awaitable = self._handler(request)
        if awaitable is None:
            return None
        self._current = _runner(awaitable)
        return self._current

    def _failed(self, exc: BaseException, handler_stage: int) -> web.StreamResponse | None:
        """Record the failure; the JSON answer, or None when ``exc`` must propagate."""
        request = self._request
        if self._stage < handler_stage:
            bind_log_context(self._trace, request.get(PRINCIPAL))
        self._stage = handler_stage + 1
        answer = answer_failure(request, exc, self._trace)
        if answer is not None:
            status = answer.status
        elif isinstance(exc, web.HTTPException):
            status = exc.status
        else:
            # 499 (nginx's "client closed request"): the client left before the answer.
            transport = request.transport
            status = 499 if transport is None or transport.is_closing() else 500
            if status == 499 and isinstance(exc, ConnectionResetError):
                # A handler that noticed its client leave: routine, not aiohttp's "Error
                # handling request" and traceback. This answer is never sent (aiohttp
                # drops it quietly on the closed connection).
                answer = web.Response(status=499, reason="Client Closed Request")
        record_access(request, self._started, status, answer)
        return answer
