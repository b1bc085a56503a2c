"""Writing one turn to one SSE client: frames, heartbeats and noticing the client leave.

A :class:`SseSink` is a turn listener: it formats each event once (``id: <turn_id>:<seq>``)
and wakes the request handler, which is the only writer to the socket. One watcher task
per app looks at every open stream a few times a second: it queues the heartbeat comment
and notices closed connections even while a turn is silent (aiohttp does not cancel the
handler when the client leaves), so the upstream is released within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from ..hub.turns import TERMINAL, TurnEvent
from ..settings import SETTINGS

# How often open streams are checked for a gone client (bounds the cancel delay).
WATCH_INTERVAL_S = 0.25
HEARTBEAT = b": keep-alive\n\n"

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class SseSink:
    """Frames waiting for one SSE client, and whether the stream is over."""

    __slots__ = ("_prefix", "ended", "frames", "gone", "last_write", "request", "waiter")

    def __init__(self, request: web.Request, turn_id: str) -> None:
        self.request = request
        self._prefix = f"id: {turn_id}:"
        self.frames: list[bytes] = []
        self.ended = False
        self.gone = False
        self.last_write = 0.0
        self.waiter: asyncio.Future[None] | None = None

    def __call__(self, item: TurnEvent) -> None:
        """Turn listener: format the event and wake the writer (hot path)."""
        self.frames.append(
            f"{self._prefix}{item.seq}\nevent: {item.event}\ndata: {item.data}\n\n".encode())
        if item.event in TERMINAL:
            self.ended = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push(self, frame: bytes) -> None:
        """Queue a frame that is not a turn event (heartbeat)."""
        self.frames.append(frame)
        self.wake()

    def wake(self) -> None:
        """Wake the writer without an event (client gone, heartbeat)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def pump(self, response: web.StreamResponse) -> bool:
        """Write frames as they come; True once the terminal event is written.

        Returns False when the client left first; raises ConnectionError if a write fails.
        """
        loop = asyncio.get_running_loop()
        streams = self.request.app[SSE_STREAMS]
        streams.add(self)
        try:
            while True:
                frames = self.frames
                if frames:
                    self.frames = []
                    await response.write(frames[0] if len(frames) == 1 else b"".join(frames))
                    self.last_write = loop.time()
                    if self.ended:
                        return True
                elif self.gone:
                    return False
                else:
                    waiter = loop.create_future()
                    self.waiter = waiter
                    await waiter
                    self.waiter = None
        finally:
            streams.discard(self)


class SseStreams:
    """Every open chat SSE stream of this app, watched by one task."""

    def __init__(self, heartbeat_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self._sinks: set[SseSink] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, sink: SseSink) -> None:
        """Watch ``sink`` until it is discarded."""
        sink.last_write = asyncio.get_running_loop().time()
        self._sinks.add(sink)
        if self._task is None:
            self._task = asyncio.create_task(self._watch())

    def discard(self, sink: SseSink) -> None:
        """Stop watching ``sink``."""
        self._sinks.discard(sink)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = loop.time()
            for sink in list(self._sinks):
                transport = sink.request.transport
                if transport is None or transport.is_closing():
                    sink.gone = True
                    sink.wake()
                elif now - sink.last_write >= self.heartbeat_s:
                    sink.last_write = now
                    sink.push(HEARTBEAT)

    async def close(self) -> None:
        """Stop the watcher."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


SSE_STREAMS = web.AppKey("chat_sse_streams", SseStreams)


async def sse_streams_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the watcher of open chat SSE streams."""
    streams = SseStreams(app[SETTINGS].hub.sse_heartbeat_s)
    app[SSE_STREAMS] = streams
    yield
    await streams.close()


async def open_sse(request: web.Request, turn_id: str) -> web.StreamResponse:
    """Send the SSE response head (no compression, no proxy buffering) and the retry hint."""
    response = web.StreamResponse(headers={**SSE_HEADERS, "X-LUKi-Turn-Id": turn_id})
    await response.prepare(request)
    retry_ms = request.app[SETTINGS].hub.sse_retry_ms
    await response.write(f"retry: {retry_ms}\n\n".encode())
    return response
