"""A lean HTTP/1.1 keep-alive load generator: closed loop (fixed concurrency) and open loop.

Used for the fixed-rate latency runs (wrk has no constant-rate mode in Debian) and as the
closed-loop fallback when wrk is missing. Latency in open loop is measured from the
*scheduled* send time, so a stalled server cannot hide queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast


@dataclass
class LoadResult:
    """Raw outcome of one load run."""

    requests: int = 0
    errors: int = 0
    non_2xx: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    bad_bodies: int = 0


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        parsed = _parse(self.buf)
        if parsed is not None:
            status, body, used = parsed
            del self.buf[:used]
            self.waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def _parse(buf: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes consumed) of one complete response in ``buf``, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).split(b"\r\n")
    status = int(head[0].split(b" ", 2)[1])
    length = -1
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    pos = end + 4
    if not chunked:
        length = max(length, 0)
        if len(buf) < pos + length:
            return None
        return status, bytes(buf[pos:pos + length]), pos + length
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        body += buf[start:start + size]
        pos = start + size + 2
        if size == 0:
            return status, bytes(body), pos


def build_request(method: str, path: str, host: str, headers: Mapping[str, str] | None = None,
                  body: bytes = b"") -> bytes:
    """Raw HTTP/1.1 keep-alive request bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def connect(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Connection, "127.0.0.1", port)
    return proto


def _record(result: LoadResult, status: int, body: bytes, expect_body: bytes | None) -> None:
    result.requests += 1
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if not 200 <= status < 300:
        result.non_2xx += 1
    elif expect_body is not None and body != expect_body:
        result.bad_bodies += 1


async def closed_loop(port: int, raw: bytes, *, connections: int, duration_s: float,
                      expect_body: bytes | None = None) -> LoadResult:
    """``connections`` workers each sending back-to-back requests for ``duration_s``."""
    result = LoadResult()
    deadline = time.monotonic() + duration_s

    async def worker() -> None:
        conn: Connection | None = None
        while time.monotonic() < deadline:
            try:
                if conn is None or conn.lost:
                    conn = await connect(port)
                t0 = time.perf_counter()
                status, body = await conn.request(raw)
                result.latencies_s.append(time.perf_counter() - t0)
                _record(result, status, body, expect_body)
            except (OSError, ValueError, IndexError):
                result.errors += 1
                conn = None
                await asyncio.sleep(0.01)  # back off a refusing server instead of spinning
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    result.duration_s = time.monotonic() - start
    return result


async def open_loop(port: int, raw: bytes, *, rate: float, duration_s: float,
                    max_connections: int = 256, expect_body: bytes | None = None
                    ) -> LoadResult:
    """Send at a constant ``rate`` regardless of answers; latency from the scheduled time."""
    result = LoadResult()
    idle: list[Connection] = []
    every: list[Connection] = []
    opened = 0
    interval = 1.0 / rate
    total = int(rate * duration_s)
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        nonlocal opened
        conn: Connection | None = None
        try:
            if idle:
                conn = idle.pop()
            elif opened < max_connections:
                opened += 1
                conn = await connect(port)
                every.append(conn)
            else:
                result.errors += 1
                return
            sent = time.perf_counter()
            status, body = await conn.request(raw)
            # uvloop's timers have 1 ms resolution, so a send can come slightly early:
            # measure from the schedule when late (queueing counts), from the send if early.
            result.latencies_s.append(time.perf_counter() - min(scheduled, sent))
            _record(result, status, body, expect_body)
            idle.append(conn)
        except (OSError, ValueError, IndexError):
            result.errors += 1
            opened -= 1

    start = time.perf_counter()
    for i in range(total):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    # Requests still unanswered 10 s after the last send count as errors, not as late data.
    for task in list(tasks):
        task.cancel()
        result.errors += 1
    result.duration_s = time.perf_counter() - start
    for conn in every:
        if conn.transport is not None:
            conn.transport.close()
    if result.errors:
        await asyncio.sleep(1.0)  # an overloaded server drains its backlog off the clock
    return result


async def fetch(port: int, raw: bytes, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    conn = await asyncio.wait_for(connect(port), timeout_s)
    try:
        return await asyncio.wait_for(conn.request(raw), timeout_s)
    finally:
        if conn.transport is not None:
            conn.transport.close()
