"""Subscriber: one client connection's outgoing queue, writer task and slow-consumer policy.

Producers (the hub's fan-out, chat turns) call ``push_*`` and never await: when nothing is
queued and the transport is not paused, the prepared bytes go straight to the transport; only
then is a queue allocated and one writer task started, which ends (and frees the queue) once
the queue is empty. The queue is bounded in bytes and in messages; when it is full the
channel's policy decides: ``coalesce`` keeps only the newest event of that channel,
``drop_oldest`` drops the oldest events and tells the client about the gap, ``disconnect``
sends a final ``SLOW_CONSUMER`` error and closes.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import structlog

from ..auth.principal import Principal
from ..errors import GatewayError
from .channels import Policy
from .event import Event

if TYPE_CHECKING:
    from aiohttp.base_protocol import BaseProtocol

    from ..ratelimit.leases import Lease
    from .hub import Hub

Transport = Literal["ws", "sse"]
log = structlog.get_logger("luki.hub")

# Once a slow peer is told to go, it gets this long to take the final bytes before abort.
CLOSE_GRACE_S = 2.0


class SlowConsumer(GatewayError):
    """The client did not read fast enough; its connection was closed by policy."""

    code = "SLOW_CONSUMER"
    status = 503
    default_message = "client is not reading fast enough; connection closed"


def new_connection_id() -> str:
    """A short random id naming one connection in logs, stats and ``welcome``."""
    return os.urandom(9).hex()


class Subscriber:
    """One client connection as the hub sees it (transport-specific parts in subclasses)."""

    __slots__ = ("_channels", "_close_callbacks", "_drained", "_gaps", "_queue", "_queued_bytes",
                 "_writer", "bytes_sent", "closed", "connection_id", "hub", "lease", "principal",
                 "protocol", "transport")

    kind: Transport = "ws"

    def __init__(self, hub: Hub, principal: Principal, transport: asyncio.Transport,
                 protocol: BaseProtocol, lease: Lease | None = None) -> None:
        self.hub = hub
        self.principal = principal
        # The stream lease this connection holds; its handler releases it at the end.
        self.lease = lease
        self.transport = transport
        self.protocol = protocol
        self.connection_id = new_connection_id()
        self.closed = False
        # Bytes written to the transport, for the access record (its handler registers it).
        self.bytes_sent = 0
        self._channels: dict[str, str] | None = None
        self._queue: deque[tuple[str | None, str, bytes]] | None = None
        self._queued_bytes = 0
        # The writer task took a frame from the queue since the WebSocket heartbeat last
        # looked: a backlogged peer that still reads is alive even when it sends nothing.
        self._drained = False
        self._writer: asyncio.Task[None] | None = None
        self._gaps: dict[str, str] | None = None
        self._close_callbacks: list[Callable[[], Awaitable[None]]] | None = None

    @property
    def channels(self) -> dict[str, str]:
        """Channel -> last event id sent (tracked by SSE only, for its Last-Event-ID).

        Made on first use: a socket that never subscribes keeps no dict.
        """
        found = self._channels
        if found is None:
            found = self._channels = {}
        return found

    @property
    def subscribed(self) -> bool:
        """True when the connection holds at least one subscription."""
        return bool(self._channels)

    # -- what transports encode differently ------------------------------------------------

    def frame_of(self, event: Event) -> bytes:
        """The bytes of ``event`` for this connection (shared across subscribers)."""
        raise NotImplementedError

    def notice_frame(self, message: dict[str, Any]) -> bytes:
        """A control message (gap, reset, error) for this transport."""
        raise NotImplementedError

    def final_bytes(self, error: GatewayError | None, code: int) -> bytes:
        """What a connection closed by the gateway receives last (error + end of stream)."""
        raise NotImplementedError

    def on_closed(self) -> None:
        """Transport hook: stop the handler that waits on this connection."""

    def heartbeat(self) -> None:
        """Called by the hub's sweep once per heartbeat interval."""

    # -- queue -----------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Messages waiting in this connection's queue."""
        return 0 if self._queue is None else len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in this connection's queue (transport buffer not included)."""
        return self._queued_bytes

    def push_event(self, event: Event, policy: Policy) -> bool:
        """Hand ``event`` to this connection; False when it was not accepted."""
        return self.push_prepared(self.frame_of(event), event, policy)

    def push_prepared(self, frame: bytes, event: Event, policy: Policy) -> bool:
        """``push_event`` with the frame already encoded (the fan-out's hot path)."""
        # Idle and writable: straight to the transport, no queue, no task.
        if self._queue is None and not self.closed and not self.protocol._paused:
            if self.protocol.transport is None:  # connection lost, handler not yet run
                self.close()
                return False
            self.transport.write(frame)
            self.bytes_sent += len(frame)
            return True
        if self.closed:
            return False
        return self._enqueue(event.channel, event.id, frame, policy)

    def push_frame(self, frame: bytes) -> None:
        """Queue prepared bytes that belong to no channel (replies, chat messages)."""
        if self.closed:
            return
        if self._queue is None and not self.protocol._paused:
            if self.protocol.transport is None:
                self.close()
                return
            self.transport.write(frame)
            self.bytes_sent += len(frame)
            return
        self._enqueue(None, "", frame, "disconnect")

    def _enqueue(self, channel: str | None, event_id: str, frame: bytes,
                 policy: Policy) -> bool:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        size = len(frame)
        if not self._fits(size):
            if not self._make_room(channel, size, policy):
                return False
            queue = self._queue  # the policy may have rebuilt it
            assert queue is not None
        queue.append((channel, event_id, frame))
        self._queued_bytes += size
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return True

    def _fits(self, size: int) -> bool:
        assert self._queue is not None
        limits = self.hub.settings
        return (self._queued_bytes + size <= limits.queue_max_bytes
                and len(self._queue) + 1 <= limits.queue_max_messages)

    def _make_room(self, channel: str | None, size: int, policy: Policy) -> bool:
        """Apply ``policy`` to a full queue; False when the connection was closed instead.

        A frame of no channel (a reply, a notice, a chat message) has no policy of its own:
        it takes the place of the oldest queued events of channels that may lose some, and
        closes the connection only when none of those are queued.
        """
        queue = self._queue
        assert queue is not None
        if channel is None:
            if self._drop_oldest(size, spare_disconnect=True):
                self.hub.count_slow("drop_oldest")
                if self._fits(size):
                    return True
        elif policy == "coalesce":
            kept = deque(item for item in queue if item[0] != channel)
            if len(kept) != len(queue):
                self._queued_bytes = sum(len(item[2]) for item in kept)
                self._queue = queue = kept
            self.hub.count_slow("coalesce")
            if self._fits(size):
                return True
            policy = "drop_oldest"
        if channel is not None and policy == "drop_oldest":
            self.hub.count_slow("drop_oldest")
            self._drop_oldest(size, spare_disconnect=False)
            # Room cannot be made when only replies (no channel events) fill the queue.
            if self._fits(size):
                return True
        queue = self._queue
        assert queue is not None
        self.hub.count_slow("disconnect")
        log.info("slow consumer disconnected", connection_id=self.connection_id,
                 transport=self.kind, queued=len(queue), queued_bytes=self._queued_bytes)
        self.close(error=SlowConsumer(), code=1008)
        return False

    def _drop_oldest(self, size: int, *, spare_disconnect: bool) -> bool:
        """Drop the oldest queued channel events until ``size`` more bytes fit (a gap is
        noted for each channel that lost some); replies are kept. With ``spare_disconnect``
        the events of ``disconnect`` channels are kept too. True when any was dropped."""
        queue = self._queue
        assert queue is not None
        limits = self.hub.settings
        count = len(queue)
        dropped = False
        kept: deque[tuple[str | None, str, bytes]] = deque()
        for item in queue:
            name = item[0]
            over = (self._queued_bytes + size > limits.queue_max_bytes
                    or count + 1 > limits.queue_max_messages)
            if (over and name is not None
                    and not (spare_disconnect and self.hub.policy(name) == "disconnect")):
                self._queued_bytes -= len(item[2])
                count -= 1
                self._note_gap(name, item[1])
                dropped = True
                continue
            kept.append(item)
        self._queue = kept
        return dropped

    def _note_gap(self, channel: str, event_id: str) -> None:
        gaps = self._gaps
        if gaps is None:
            gaps = self._gaps = {}
        # The oldest dropped id; the client resumes from the last id it did receive.
        gaps.setdefault(channel, event_id)

    async def _drain(self) -> None:
        """The writer task: runs only while something is queued."""
        try:
            while self._queue:
                if self.protocol._paused:
                    await self.protocol._drain_helper()
                if self.closed:
                    return
                gaps = self._gaps
                if gaps:
                    self._gaps = None
                    for channel, first_missed in gaps.items():
                        notice = self.notice_frame(
                            {"type": "gap", "channel": channel, "first_missed_id": first_missed})
                        self.transport.write(notice)
                        self.bytes_sent += len(notice)
                queue = self._queue
                if not queue:
                    break
                _, _, frame = queue.popleft()
                self._queued_bytes -= len(frame)
                self.transport.write(frame)
                self.bytes_sent += len(frame)
                self._drained = True
        except (ConnectionError, RuntimeError):
            self.close()
        finally:
            self._writer = None
            if self._queue is not None and not self._queue:
                self._queue = None  # idle connections hold no queue
                self._queued_bytes = 0

    # -- lifecycle -------------------------------------------------------------------------

    def add_close_callback(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` once when the connection closes."""
        if self._close_callbacks is None:
            self._close_callbacks = []
        self._close_callbacks.append(callback)

    def close(self, *, error: GatewayError | None = None, code: int | None = None) -> None:
        """Stop delivering; with a close ``code``, send ``error`` and the end, then close."""
        if self.closed:
            return
        self.closed = True
        self._queue = None
        self._queued_bytes = 0
        self._gaps = None
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        self.hub.forget(self)
        transport = self.transport
        if code is not None and not transport.is_closing():
            final = self.final_bytes(error, code)
            transport.write(final)
            self.bytes_sent += len(final)
            transport.close()
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)
        self.on_closed()

    async def run_close_callbacks(self) -> None:
        """Run the callbacks registered with ``add_close_callback`` (handler's finally)."""
        callbacks, self._close_callbacks = self._close_callbacks, None
        for callback in callbacks or ():
            try:
                await callback()
            except Exception:
                log.exception("close callback failed", connection_id=self.connection_id)
