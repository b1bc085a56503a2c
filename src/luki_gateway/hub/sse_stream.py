"""SseStream: a Server-Sent Events subscriber on ``GET /v1/events``.

With one channel every event's SSE chunk is shared by all subscribers. With several, the
``id:`` line has to carry every channel's position (``channel=id,channel=id``) so that the
browser's automatic ``Last-Event-ID`` resumes all of them; only that line is per connection.
Keep-alive comments come from the hub's sweep (no task or timer per stream), and the handler
waits on one future that ``close`` resolves. The ``retry:`` hint is a field of the stream's
first event, not a block of its own: clients that surface every block (httpx-sse,
fetch-event-source) would otherwise see an empty event before the first one.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from ..auth.principal import Principal
from ..errors import GatewayError
from ..tracing import TraceContext
from .event import Event, http_chunk, sse_block
from .history import parse_id
from .subscriber import Subscriber

if TYPE_CHECKING:
    from aiohttp.base_protocol import BaseProtocol

    from ..ratelimit.leases import Lease
    from .hub import Hub

_LAST_CHUNK = b"0\r\n\r\n"
_PING = b": ping\n\n"


def parse_last_event_id(raw: str, channels: list[str]) -> dict[str, str]:
    """Channel -> id to resume from, for a plain id (every channel) or a composite one."""
    raw = raw.strip()
    if not raw:
        return {}
    if "=" not in raw:
        return dict.fromkeys(channels, raw) if parse_id(raw) else {}
    found: dict[str, str] = {}
    for part in raw.split(","):
        channel, _, event_id = part.partition("=")
        if channel in channels and parse_id(event_id):
            found[channel] = event_id
    return found


class SseStream(Subscriber):
    """One event stream; writes go straight to the transport as HTTP chunks."""

    __slots__ = ("_ended", "_retry", "chunked", "previous_send_timeout", "single")

    kind = "sse"

    def __init__(self, hub: Hub, principal: Principal, transport: asyncio.Transport,
                 protocol: BaseProtocol, *, chunked: bool, single: bool,
                 lease: Lease | None = None, previous_send_timeout: int | None = None
                 ) -> None:
        super().__init__(hub, principal, transport, protocol, lease)
        self.chunked = chunked
        self.single = single
        # The reconnect hint (the hub's shared bytes), sent as a field of the first event.
        self._retry = hub.sse_retry_field
        # The socket's TCP_USER_TIMEOUT before the stream (ms), restored at its end.
        self.previous_send_timeout = previous_send_timeout
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wait_closed(self) -> asyncio.Future[None]:
        """Resolved once the stream is closed (client gone, slow consumer, shutdown)."""
        return self._ended

    def _frame(self, data: bytes) -> bytes:
        return http_chunk(data) if self.chunked else data

    def frame_of(self, event: Event) -> bytes:
        """The shared chunk (one channel), or the body with this stream's composite id (and,
        on the first event, the retry hint)."""
        if self.single and self.chunked and not self._retry:
            return event.sse
        channels = self.channels
        channels[event.channel] = event.id
        retry, self._retry = self._retry, b""
        if self.single:
            return self._frame(b"%bid: %b\n%b" % (retry, event.id.encode(), event.sse_body))
        return self._frame(b"%bid: %b\n%b" % (retry, self._composite_id().encode(),
                                               event.sse_body))

    def _composite_id(self) -> str:
        """Every channel's position (``channel=id,...``), for a multi-channel stream."""
        return ",".join(f"{c}={i}" for c, i in self.channels.items() if i)

    def notice_frame(self, message: dict[str, Any]) -> bytes:
        """``gap`` / ``reset`` as named SSE events, with the retry hint if first.

        A ``gap`` has no ``id:`` line, so the client's last event id stays that of the last
        event it actually received: the right place to resume from (a position taken when
        the notice is made can be ahead of events still queued, and the one-channel chunk is
        shared, so this stream does not track its position). A ``reset`` carries the
        position without its channel (an empty ``id:`` for one channel), so a reconnect does
        not ask for the lost id again and get the same reset."""
        if message["type"] == "reset":
            channels = self.channels
            channel = message.get("channel")
            if channel in channels:
                channels[channel] = ""
            position: str | None = "" if self.single else self._composite_id()
        else:
            position = None
        retry, self._retry = self._retry, b""
        body = {k: v for k, v in message.items() if k != "type"}
        return self._frame(retry + sse_block(json.dumps(body, separators=(",", ":")),
                                             event=str(message["type"]), event_id=position))

    def final_bytes(self, error: GatewayError | None, code: int) -> bytes:
        """An ``error`` event, or a ``reconnect`` hint on restart; then the end of the body."""
        if error is None:
            block = sse_block(json.dumps({"reason": "service restart"}), event="reconnect")
        else:
            block = sse_block(json.dumps(error.body(TraceContext.new().trace_id)),
                              event="error")
        return self._frame(block) + (_LAST_CHUNK if self.chunked else b"")

    def heartbeat(self) -> None:
        """A keep-alive comment, unless events are queued (they keep the stream alive)."""
        if self._queue is None:
            self.push_frame(self._frame(_PING))

    def on_closed(self) -> None:
        """Wake the handler waiting on this stream."""
        if not self._ended.done():
            self._ended.set_result(None)
