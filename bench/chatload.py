"""Chat-turn clients: POST a turn, read the SSE answer, time the first token and every gap."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import cast

from .httpload import build_request


@dataclass
class Turn:
    """What one client saw of one streamed turn."""

    started: float
    status: int = 0
    token_times: list[float] = field(default_factory=list)
    ended: str = ""  # done | error | closed
    texts: list[str] = field(default_factory=list)

    @property
    def ttft_s(self) -> float | None:
        """Time to first token."""
        return self.token_times[0] - self.started if self.token_times else None

    @property
    def gaps_s(self) -> list[float]:
        """Gaps between consecutive tokens."""
        t = self.token_times
        return [b - a for a, b in itertools.pairwise(t)]


class _TurnProtocol(asyncio.Protocol):
    def __init__(self, turn: Turn, request: bytes) -> None:
        self.turn = turn
        self.request = request
        self.buf = bytearray()
        self.body = bytearray()
        self.head = False
        self.chunked = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.turn.ended:
            self.turn.ended = "closed"
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buf += data
        if not self.head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.turn.status = int(head.split(b" ", 2)[1])
            self.chunked = b"transfer-encoding: chunked" in head
            del self.buf[:end + 4]
            self.head = True
        if self.chunked:
            while True:
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    break
                size = int(bytes(self.buf[:eol]).split(b";")[0] or b"0", 16)
                if len(self.buf) < eol + 4 + size:
                    break
                self.body += self.buf[eol + 2:eol + 2 + size]
                del self.buf[:eol + 4 + size]
        else:
            self.body += self.buf
            self.buf.clear()
        self._events(now)

    def _events(self, now: float) -> None:
        while True:
            end = self.body.find(b"\n\n")
            if end < 0:
                return
            block = bytes(self.body[:end]).decode(errors="replace")
            del self.body[:end + 2]
            event = "message"
            data = ""
            for line in block.split("\n"):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
            if event == "token":
                self.turn.token_times.append(now)
                try:
                    self.turn.texts.append(str(json.loads(data).get("text", "")))
                except (ValueError, AttributeError):
                    self.turn.texts.append("?")
            elif event in ("done", "error"):
                self.turn.ended = event
                if self.transport is not None:
                    self.transport.close()


async def one_turn(port: int, path: str, headers: dict[str, str], message: str,
                   timeout_s: float) -> Turn:
    """Run one streamed turn to its end (or the timeout)."""
    body = json.dumps({"message": message}).encode()
    raw = build_request("POST", path, f"127.0.0.1:{port}",
                        {**headers, "Content-Type": "application/json",
                         "Accept": "text/event-stream"}, body)
    turn = Turn(started=time.monotonic())
    loop = asyncio.get_running_loop()
    try:
        _, proto = await loop.create_connection(lambda: _TurnProtocol(turn, raw),
                                                "127.0.0.1", port)
        await asyncio.wait_for(asyncio.shield(proto.done), timeout_s)
    except (OSError, TimeoutError):
        turn.ended = turn.ended or "timeout"
    return turn


async def concurrent_turns(port: int, path: str, headers: dict[str, str], count: int,
                           timeout_s: float) -> list[Turn]:
    """``count`` turns started together."""
    return list(await asyncio.gather(*(one_turn(port, path, headers, f"hello {i}", timeout_s)
                                       for i in range(count))))
