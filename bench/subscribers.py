"""Many lean WebSocket or SSE subscribers in one process, driven over stdin/stdout.

Raw asyncio protocols (no client library) so that one core can receive 10k events fast and
the receiving side stays cheap. Start-up: opens ``--n`` connections, subscribes, prints
``ready <ok> <failed>``. Then for every event whose ``seq`` reached all live subscribers it
prints ``got <seq> <time.monotonic()>`` (CLOCK_MONOTONIC is shared by all processes).
Exits when stdin closes. With ``--idle`` it only holds the connections open.

Run: ``python -m bench.subscribers --kind ws|sse --port P --path /v1/ws --n 2500``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import time
from collections import Counter
from typing import cast

_SEQ = re.compile(rb'"seq"\s*:\s*(-?\d+)')


class Tally:
    """Counts receipts per seq and reports when every live subscriber has one."""

    def __init__(self) -> None:
        self.live = 0
        self.counts: Counter[int] = Counter()
        self.ready = 0
        self.failed = 0
        self.closed = 0
        self.reports_left = 3  # refusals echoed to stderr; more would only fill the pipe

    def report(self, text: str) -> None:
        if self.reports_left > 0:
            self.reports_left -= 1
            sys.stderr.write(text[:300] + "\n")

    def got(self, payload: bytes) -> None:
        for m in _SEQ.finditer(payload):
            seq = int(m.group(1))
            self.counts[seq] += 1
            if self.counts[seq] == self.live:
                sys.stdout.write(f"got {seq} {time.monotonic():.6f}\n")
                sys.stdout.flush()
                del self.counts[seq]


class _Sub(asyncio.Protocol):
    """Shared handshake handling; subclasses parse the stream after the head."""

    def __init__(self, tally: Tally, request: bytes, idle: bool) -> None:
        self.tally = tally
        self.request = request
        self.idle = idle
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head_done = False
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        elif self.ready.result():
            self.tally.closed += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buf[:end]).split(b"\r\n", 1)[0]
            self.head_done = True
            self.on_head(status, bytes(self.buf[:end]).lower())
            del self.buf[:end + 4]
        if self.buf:
            self.on_body()

    def on_head(self, status: bytes, head: bytes) -> None:
        raise NotImplementedError

    def on_body(self) -> None:
        raise NotImplementedError

    def set_ready(self, ok: bool) -> None:
        if not self.ready.done():
            self.ready.set_result(ok)


def _mask_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (clients must mask)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + key + masked


class WsSub(_Sub):
    """A WebSocket subscriber: handshake, ``subscribe``, then count event frames."""

    def __init__(self, tally: Tally, request: bytes, idle: bool, subscribe: bytes) -> None:
        super().__init__(tally, request, idle)
        self.subscribe = subscribe

    def on_head(self, status: bytes, head: bytes) -> None:
        if b" 101 " not in status + b" ":
            self.tally.report(status.decode(errors="replace") + " " + bytes(self.buf).decode(
                errors="replace"))
            self.set_ready(False)
            return
        if self.idle:
            self.set_ready(True)
        elif self.transport is not None:
            self.transport.write(_mask_frame(0x1, self.subscribe))

    def on_body(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            n = buf[1] & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos:pos + n])
            del buf[:pos + n]
            self.on_frame(opcode, payload)

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9 and self.transport is not None:
            self.transport.write(_mask_frame(0xA, payload))
        elif opcode == 0x8:
            if self.transport is not None:
                self.transport.close()
        elif opcode == 0x1:
            if not self.ready.done():
                if b'"subscribed"' in payload:
                    self.set_ready(True)
                elif b'"error"' in payload:
                    self.tally.report(payload.decode(errors="replace"))
                    self.set_ready(False)
                return
            self.tally.got(payload)


class SseSub(_Sub):
    """An SSE subscriber: ready on a 200 head, then count events in the (chunked) body."""

    def __init__(self, tally: Tally, request: bytes, idle: bool) -> None:
        super().__init__(tally, request, idle)
        self.chunked = False
        self.pending = bytearray()

    def on_head(self, status: bytes, head: bytes) -> None:
        if b" 200 " not in status + b" ":
            self.tally.report(status.decode(errors="replace") + " " + head.decode(errors="replace"))
            self.set_ready(False)
            return
        self.chunked = b"transfer-encoding: chunked" in head
        self.set_ready(True)

    def on_body(self) -> None:
        if not self.chunked:
            self.pending += self.buf
            self.buf.clear()
        else:
            buf = self.buf
            while True:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    break
                size = int(bytes(buf[:eol]).split(b";")[0] or b"0", 16)
                if len(buf) < eol + 2 + size + 2:
                    break
                self.pending += buf[eol + 2:eol + 2 + size]
                del buf[:eol + 2 + size + 2]
        end = self.pending.rfind(b"\n\n")
        if end >= 0:
            events = bytes(self.pending[:end])
            del self.pending[:end + 2]
            if self.ready.done():
                self.tally.got(events)


def _request(path: str, port: int, kind: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if kind == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                  "Sec-WebSocket-Version: 13"]
    else:
        lines += ["Accept: text/event-stream", "Cache-Control: no-cache"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _open_one(args: argparse.Namespace, tally: Tally, headers: dict[str, str],
                    gate: asyncio.Semaphore, subs: list[_Sub]) -> None:
    loop = asyncio.get_running_loop()
    subscribe = json.dumps({"type": "subscribe", "channel": args.channel}).encode()
    request = _request(args.path, args.port, args.kind, headers)

    def factory() -> _Sub:
        if args.kind == "ws":
            return WsSub(tally, request, args.idle, subscribe)
        return SseSub(tally, request, args.idle)

    ok = False
    proto: _Sub | None = None
    for attempt in range(3):
        async with gate:
            try:
                _, proto = await loop.create_connection(factory, "127.0.0.1", args.port)
                ok = await asyncio.wait_for(asyncio.shield(proto.ready), args.timeout)
            except (OSError, TimeoutError) as exc:
                tally.report(f"attempt {attempt + 1}: {type(exc).__name__}: {exc}")
                ok = False
        if ok or (proto is not None and proto.ready.done()):
            break  # connected and subscribed, or refused by the server: no retry
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        proto = None
    if ok and proto is not None:
        tally.ready += 1
        subs.append(proto)
    else:
        tally.failed += 1
        if proto is not None and proto.transport is not None:
            proto.transport.close()


async def main_async(args: argparse.Namespace) -> None:
    """Open the subscribers, report readiness, then serve until stdin closes."""
    tally = Tally()
    headers: dict[str, str] = json.loads(args.headers) if args.headers else {}
    gate = asyncio.Semaphore(args.parallel)
    subs: list[_Sub] = []
    await asyncio.gather(*(_open_one(args, tally, headers, gate, subs)
                           for _ in range(args.n)))
    tally.live = tally.ready
    sys.stdout.write(f"ready {tally.ready} {tally.failed}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        # A line asks for a status report (connections closed by the server so far).
        sys.stdout.write(f"status {tally.ready - tally.closed} {tally.closed}\n")
        sys.stdout.flush()
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["ws", "sse"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--channel", default="broadcast:bench")
    parser.add_argument("--headers", default="")
    parser.add_argument("--idle", action="store_true")
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
