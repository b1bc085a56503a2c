"""The contract between the /v1/ws endpoint and the parts that handle its messages.

The hub owns the socket (connection, queue, writer task, subscribe/unsubscribe/ping); other
parts (chat turns) register handlers for their message types in ``app[WS_MESSAGE_HANDLERS]``
during ``setup(app)``. A handler never awaits the socket: it calls ``send_json``, which only
enqueues (the connection's writer task does the I/O).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from ..auth.principal import Principal


class WsConnection(Protocol):
    """What a message handler may do with the connection a message arrived on."""

    @property
    def connection_id(self) -> str:
        """Gateway-assigned id of this socket (also sent in ``welcome``)."""

    @property
    def principal(self) -> Principal:
        """The authenticated caller of this socket."""

    @property
    def client_ip(self) -> str:
        """The client's address as the rate limiter sees it (trusted proxies applied)."""

    @property
    def closed(self) -> bool:
        """True once the socket is closing or closed."""

    def send_json(self, message: Mapping[str, Any]) -> None:
        """Enqueue one JSON message for the client (never blocks, never raises on close)."""

    def add_close_callback(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` once when the socket closes (cancel turns, release leases)."""


WsMessageHandler = Callable[[WsConnection, dict[str, Any]], Awaitable[None]]

WS_MESSAGE_HANDLERS = web.AppKey("ws_message_handlers", dict[str, WsMessageHandler])
