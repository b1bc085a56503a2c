"""Writing one turn to one SSE client: frames, heartbeats and noticing the client leave.

A :class:`SseSink` is a turn listener. The response head is prepared at once but held
back (up to ``HEAD_WAIT_S``) so that the turn's first event sends it in one write from the
relay's own call. The ``retry:`` hint is a field of the first event's block, not a block of
its own: clients that surface every block (httpx-sse, fetch-event-source) would otherwise
see an empty event with no id before the first token. After that each event's frame (encoded
once by the turn) goes straight to the transport as one HTTP chunk: no queue, no task
switch, one ``transport.write`` per event. Only while the client is not reading
(transport paused), before the head is sent, or for a heartbeat are frames queued for
the request handler, which then writes them in order.
One watcher task per app looks at every open stream a few times a second: it queues the
heartbeat comment and notices closed connections even while a turn is silent (aiohttp
does not cancel the handler when the client leaves), so the upstream is released within a
second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import HttpVersion11, web

from ..hub.hub import HUB
from ..hub.turns import TERMINAL, TurnEvent
from ..middlewares.access import STREAM_SENT
from ..settings import SETTINGS

# How often open streams are checked for a gone client (bounds the cancel delay).
WATCH_INTERVAL_S = 0.25
HEARTBEAT = b": keep-alive\n\n"
# How long the response head may wait for a turn's first event, to leave in one write.
HEAD_WAIT_S = 0.05
# A first event larger than this waits for the handler to write it (with the head).
_FIRST_WRITE_MAX = 16384

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class SseSink:
    """Frames for one SSE client: written at once when possible, else queued in order."""

    __slots__ = (
        "_chunked",
        "_live",
        "_opening",
        "_retry",
        "_transport",
        "bytes_sent",
        "ended",
        "frames",
        "gone",
        "last_write",
        "request",
        "seen",
        "sent",
        "waiter",
    )

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.frames: list[bytes] = []
        self.ended = False
        self.gone = False
        # Set by pump() once the head is written: events may then skip the queue.
        self._live = False
        self._chunked = request.version >= HttpVersion11
        self._transport: asyncio.Transport | None = None
        self.last_write = 0.0
        # Frames written directly (counted; the watcher turns changes into last_write).
        self.sent = 0
        self.seen = 0
        # Body bytes sent (chunk framing included), for the access record.
        self.bytes_sent = 0
        request[STREAM_SENT] = self
        self.waiter: asyncio.Future[None] | None = None
        # Armed by open_sse: the prepared response whose head the first event sends.
        self._opening: web.StreamResponse | None = None
        # The reconnect hint (the hub's, shared with channel streams), sent as a field of
        # the first turn event written (then b"").
        self._retry = request.app[HUB].sse_retry_field

    def __call__(self, item: TurnEvent) -> None:
        """Turn listener (hot path): write the event's frame now, or queue it."""
        if item.event in TERMINAL:
            self.ended = True
        frame = item.sse
        if self._retry:
            frame, self._retry = self._retry + frame, b""
        if self._opening is not None and self._open_with(frame):
            return
        transport = self._transport
        if self._live and not self.frames and self._writable(transport):
            assert transport is not None  # _writable checked it
            data = b"%x\r\n%b\r\n" % (len(frame), frame) if self._chunked else frame
            transport.write(data)
            self.sent += 1
            self.bytes_sent += len(data)
            if self.ended:
                self.wake()
            return
        self.frames.append(frame)
        self.wake()

    def _writable(self, transport: asyncio.Transport | None) -> bool:
        """A write now reaches a client that is reading (open, not paused)."""
        return (transport is not None and not transport.is_closing()
                and not self.request.protocol._paused)

    def close_quietly(self) -> None:
        """End the stream without an event (the client has the turn's end already)."""
        self.ended = True
        self.wake()

    def push(self, frame: bytes) -> None:
        """Queue a frame that is not a turn event (heartbeat)."""
        self.frames.append(frame)
        self.wake()

    def wake(self) -> None:
        """Wake the handler (queued frames, the end, client gone)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def arm(self, response: web.StreamResponse) -> None:
        """Let the first event send ``response``'s head with its own frame."""
        self._opening = response

    def disarm(self) -> bool:
        """Stop waiting for the first event; True when the head has not been sent."""
        armed = self._opening is not None
        self._opening = None
        return armed

    def _open_with(self, frame: bytes) -> bool:
        """Write the armed head and ``frame`` in one write, from this call (no wait for the
        handler's task); False when that cannot be done at once."""
        response = self._opening
        if (response is None or self.frames or len(frame) > _FIRST_WRITE_MAX
                or not self._writable(self.request.transport)):
            return False
        self._opening = None
        _write_now(response, frame)
        self.written_by_aiohttp(len(frame))
        self.sent += 1
        self.wake()
        return True

    async def first_frame(self, within_s: float) -> None:
        """Wait until a frame is queued or the client is gone, for at most ``within_s``."""
        if self.frames or self.gone:
            return
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_later(within_s, self.wake)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def written_by_aiohttp(self, size: int) -> None:
        """Count ``size`` body bytes written through the response (it adds the framing)."""
        if size and self._chunked:
            size += len(b"%x\r\n\r\n" % size)
        self.bytes_sent += size

    def _framed(self, frames: list[bytes]) -> bytes:
        if not self._chunked:
            return b"".join(frames)
        return b"".join([b"%x\r\n%b\r\n" % (len(f), f) for f in frames])

    async def pump(self, response: web.StreamResponse) -> bool:
        """After the head: write queued frames, then let events go straight out; True once
        the terminal event is written.

        Returns False when the client left first; raises ConnectionError if a write fails.
        """
        loop = asyncio.get_running_loop()
        request = self.request
        protocol = request.protocol
        streams = request.app[SSE_STREAMS]
        streams.add(self)
        self._transport = request.transport
        try:
            while True:
                transport = self._transport
                if transport is None or transport.is_closing():
                    self.gone = True
                if self.frames and not self.gone:
                    if protocol._paused:
                        self._live = False
                        await protocol._drain_helper()
                        continue
                    frames, self.frames = self.frames, []
                    assert transport is not None
                    data = self._framed(frames)
                    transport.write(data)
                    self.bytes_sent += len(data)
                    self.last_write = loop.time()
                    continue
                if self.ended and not self.frames:
                    return True
                if self.gone:
                    return False
                self._live = True
                waiter = self.waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    self.waiter = None
        finally:
            self._live = False
            streams.discard(self)


class SseStreams:
    """Every open chat SSE stream of this app, watched by one task."""

    def __init__(self, heartbeat_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self._sinks: set[SseSink] = set()
        self._task: asyncio.Task[None] | None = None
        self._ending = False

    def add(self, sink: SseSink) -> None:
        """Watch ``sink`` until it is discarded (ended at once when the app is stopping)."""
        sink.last_write = asyncio.get_running_loop().time()
        self._sinks.add(sink)
        if self._ending:
            sink.close_quietly()
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
                if sink.sent != sink.seen:
                    sink.seen = sink.sent
                    sink.last_write = now
                if transport is None or transport.is_closing():
                    sink.gone = True
                    sink.wake()
                elif now - sink.last_write >= self.heartbeat_s:
                    sink.last_write = now
                    sink.push(HEARTBEAT)

    def end_all(self) -> None:
        """End every open stream now, after its queued frames (the app is stopping)."""
        self._ending = True
        for sink in list(self._sinks):
            sink.close_quietly()

    async def close(self) -> None:
        """Stop the watcher."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


SSE_STREAMS = web.AppKey("chat_sse_streams", SseStreams)


async def end_sse_streams(app: web.Application) -> None:
    """on_shutdown, after the local turns ended: a stream still open relays a turn another
    process runs (a resume); it ends now, without a terminal event since the turn goes on,
    so its client resumes elsewhere instead of being cut off when the shutdown times out."""
    streams = app.get(SSE_STREAMS)
    if streams is not None:
        streams.end_all()


async def sse_streams_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the watcher of open chat SSE streams."""
    streams = SseStreams(app[SETTINGS].hub.sse_heartbeat_s)
    app[SSE_STREAMS] = streams
    yield
    await streams.close()


def _write_now(response: web.StreamResponse, data: bytes) -> None:
    """``await response.write(data)``, done within this call (a turn listener cannot await).

    aiohttp's writer hands the bytes (and a head not yet sent) to the transport at once
    and suspends only afterwards, to drain a paused transport; that wait is skipped here
    (the handler's pump drains before its next write).
    """
    step = response.write(data)
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()


class _SseResponse(web.StreamResponse):
    """A stream response whose head waits in aiohttp's writer for the first body bytes, so
    head and first events leave in one write (one wake-up of the client)."""

    _send_headers_immediately = False


async def open_sse(request: web.Request, turn_id: str, sink: SseSink) -> web.StreamResponse:
    """Send the SSE head (no compression, no proxy buffering) and the events queued so far,
    in one write (the head alone when there are none yet).

    The head waits up to ``HEAD_WAIT_S`` for the turn's first event: an agent that answers
    at once gets its first token out with the head, written by the relay in the same call
    that read the token, and no token waits for anything.
    """
    response = _SseResponse(headers={**SSE_HEADERS, "X-LUKi-Turn-Id": turn_id})
    await response.prepare(request)  # the head is built now, and sent with the first write
    if not sink.frames:
        sink.arm(response)
        await sink.first_frame(HEAD_WAIT_S)
        if not sink.disarm():
            return response  # the first event went out with the head
    frames, sink.frames = sink.frames, []
    body = b"".join(frames)
    await response.write(body)  # b"": the head alone, the events follow
    sink.written_by_aiohttp(len(body))
    return response
