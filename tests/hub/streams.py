"""Test helpers for reading streams: an SSE parser and a WebSocket client that stops reading."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientResponse


@dataclass
class SseEvent:
    """One parsed SSE event."""

    event: str = "message"
    id: str | None = None
    data: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The data field decoded as JSON."""
        return json.loads(self.data)


class SseReader:
    """Reads events (and the ``retry`` hint) from an SSE response, comments skipped."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.retry: int | None = None
        self.comments = 0

    async def next(self, within: float = 5.0) -> SseEvent:
        """The next complete event (raises TimeoutError, or EOFError at end of stream)."""
        async with asyncio.timeout(within):
            current = SseEvent()
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if "data" in current.fields:
                        return current
                    current = SseEvent()
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "retry":
                    self.retry = int(value)
                elif name == "id":
                    current.id = value
                elif name == "event":
                    current.event = value
                elif name == "data":
                    current.data = value if not current.data else current.data + "\n" + value
                current.fields[name] = value

    async def take(self, count: int, within: float = 10.0) -> list[SseEvent]:
        """The next ``count`` events."""
        return [await self.next(within) for _ in range(count)]


async def _raw_request(host: str, port: int, head: str
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive buffer so the peer's backlog reaches the gateway's queue quickly.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
    writer.write(head.encode())
    await writer.drain()
    status = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, status


async def stalled_ws(host: str, port: int, path: str = "/v1/ws",
                     headers: dict[str, str] | None = None
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket by hand and read the 101 answer; ``stop_reading`` makes it slow."""
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    reader, writer, status = await _raw_request(host, port, (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"))
    assert status.startswith(b"HTTP/1.1 101"), status
    return reader, writer


async def stalled_sse(host: str, port: int, path: str
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open an SSE stream by hand and read its headers; ``stop_reading`` makes it slow."""
    reader, writer, status = await _raw_request(
        host, port, f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Accept: text/event-stream\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), status
    return reader, writer


def stop_reading(writer: asyncio.StreamWriter) -> None:
    """From now on the kernel buffers fill up and the gateway sees a slow consumer."""
    transport = writer.transport
    assert isinstance(transport, asyncio.ReadTransport)
    transport.pause_reading()


def resume_reading(writer: asyncio.StreamWriter) -> None:
    """Read again (to inspect what the gateway sent after the stall)."""
    transport = writer.transport
    assert isinstance(transport, asyncio.ReadTransport)
    transport.resume_reading()


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition the gateway offers no event for (e.g. a connection forgotten)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  (state inside the app, no event to await)
            await asyncio.sleep(0.01)


async def stall_only_subscriber(hub: Any, channel: str, writer: asyncio.StreamWriter) -> Any:
    """The one connection on ``channel``, once subscribed, made to back up at once: a small
    kernel send buffer on the gateway's side, and its client (``writer``) stops reading."""
    await wait_until(lambda: hub.local_count(channel) == 1)
    sub = next(iter(hub.connections.values()))
    sub.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stop_reading(writer)
    return sub


def ws_client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client-to-server frame (for sending from ``stalled_ws``)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked
