"""WsSubscriber: a WebSocket subscriber; also the `WsConnection` chat handlers are given."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..auth.principal import Principal
from ..errors import GatewayError, error_message
from ..tracing import TraceContext
from .event import OPCODE_PING, Event, ws_frame, ws_json_frame
from .subscriber import Subscriber

if TYPE_CHECKING:
    from aiohttp.base_protocol import BaseProtocol

    from ..ratelimit.leases import Lease
    from .hub import Hub

OPCODE_CLOSE = 0x8
_PING = ws_frame(b"", OPCODE_PING)
CLOSE_REASONS = {1008: "policy violation", 1012: "service restart", 4401: "unauthenticated"}


def close_frame(code: int) -> bytes:
    """A server close frame with ``code`` and a short reason."""
    return ws_frame(struct.pack("!H", code) + CLOSE_REASONS.get(code, "").encode(),
                    OPCODE_CLOSE)


class WsSubscriber(Subscriber):
    """One ``/v1/ws`` socket: JSON messages out through the subscriber queue."""

    __slots__ = ("_unsent", "awaiting_pong", "client_ip", "malformed")

    kind = "ws"

    def __init__(self, hub: Hub, principal: Principal, transport: asyncio.Transport,
                 protocol: BaseProtocol, lease: Lease | None = None, client_ip: str = ""
                 ) -> None:
        super().__init__(hub, principal, transport, protocol, lease)
        self.awaiting_pong = False
        # The transport's unsent bytes at the last heartbeat tick (progress while paused).
        self._unsent = 0
        self.malformed = 0  # bad client messages so far (closed 1008 past the budget)
        # The client's address as the rate limiter sees it (messages that start work are
        # charged like requests).
        self.client_ip = client_ip

    def frame_of(self, event: Event) -> bytes:
        """The event's shared text frame."""
        return event.ws

    def notice_frame(self, message: dict[str, Any]) -> bytes:
        """A control message as a text frame."""
        return ws_json_frame(message)

    def final_bytes(self, error: GatewayError | None, code: int) -> bytes:
        """The error message (if any), then the close frame."""
        head = b"" if error is None else ws_json_frame(
            error_message(error, TraceContext.new().trace_id))
        return head + close_frame(code)

    def heartbeat(self) -> None:
        """Ping; a peer that sent nothing and took none of its backlog since the last tick is
        dead (closed and aborted).

        A backlogged peer gets no ping (it would queue behind the backlog and count against
        it), but the same rule applies: one that stopped reading would otherwise hold a full
        queue forever, while one that still reads is slow, not dead. Reading shows as a
        frame taken from the queue or, while the transport stays paused (a slow reader
        frees too little for it to resume), as fewer bytes waiting in the transport.
        """
        drained, self._drained = self._drained, False
        unsent, self._unsent = self._unsent, self.transport.get_write_buffer_size()
        if self._unsent < unsent:
            drained = True
        if self.awaiting_pong and not drained:
            transport = self.transport
            self.close()
            transport.abort()
            return
        # Cleared by the handler on any message from the peer (a pong included).
        self.awaiting_pong = True
        if self._queue is None:
            self.push_frame(_PING)

    def send_json(self, message: Mapping[str, Any]) -> None:
        """Enqueue one JSON message (never blocks, silently dropped once closed)."""
        self.push_frame(ws_json_frame(message))

    def replace_principal(self, principal: Principal) -> None:
        """After a successful ``auth`` message: the refreshed credentials."""
        self.principal = principal
