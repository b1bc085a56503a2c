"""The proxy's lean HTTP/1.1 pool against scripted upstreams on real sockets.

Each upstream here is a raw asyncio server that answers with exact bytes, so framing cases
(1xx interim answers, bodies delimited by the connection's end, chunked bodies split across
writes, garbage, resets) are what the client really receives. The same cases run on
asyncio's loop and on uvloop, which `serve` uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvloop
from yarl import URL

from luki_gateway.upstream.http1 import (
    BadResponse,
    ConnectFailed,
    Pool,
    UpstreamClosed,
    request_head,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[URL, list[int]]]:
    """A server running ``script`` per connection; yields its URL and a connection count."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield URL(f"http://127.0.0.1:{port}"), connections
    finally:
        server.close()


async def answering_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive upstream: answers every request on the connection with OK."""
    while True:
        await _read_head(reader)
        writer.write(OK)
        await writer.drain()


def replying(wire: bytes, *, linger_s: float = 0.0) -> Script:
    """A script that reads one request head, writes ``wire``, waits ``linger_s``, closes."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(wire)
        await writer.drain()
        await asyncio.sleep(linger_s)

    return script


def _pool(url: URL, limit: int = 4) -> Pool:
    return Pool(url, limit=limit, connect_timeout_s=2.0)


async def _get(pool: Pool, path: str = "/x", timeout_s: float = 2.0) -> tuple[int, bytes]:
    conn = await pool.acquire()
    try:
        await conn.send(request_head("GET", path, pool.authority, [], None), None, timeout_s)
        body = await conn.read(timeout_s)
        return conn.status, body
    finally:
        pool.release(conn)


def run_on_both_loops(case: Callable[[], Awaitable[None]]) -> None:
    """Run ``case`` on asyncio's default loop, then on uvloop."""
    asyncio.run(case())
    uvloop.run(case())


def test_keep_alive_reuses_one_connection() -> None:
    """Sequential exchanges share one upstream connection; the pool ends idle."""
    async def case() -> None:
        async with scripted(answering_ok) as (url, connections):
            pool = _pool(url)
            for _ in range(5):
                assert await _get(pool) == (200, b"ok")
            assert len(connections) == 1
            assert pool.in_use == 0 and pool.idle == 1
            pool.close()

    run_on_both_loops(case)


def test_connections_idle_past_keepalive_are_not_reused() -> None:
    """A connection idle longer than keepalive_s is closed, never written to again."""
    async def case() -> None:
        async with scripted(answering_ok) as (url, connections):
            pool = Pool(url, limit=4, connect_timeout_s=2.0, keepalive_s=0.05)
            assert await _get(pool) == (200, b"ok")
            assert await _get(pool) == (200, b"ok")  # at once: reused
            taken = pool.take_idle()  # the no-wait path hands out the same fresh one
            assert taken is not None and pool.in_use == 1
            pool.release(taken)  # given back unused: still good
            assert pool.idle == 1
            assert await _get(pool) == (200, b"ok")
            await asyncio.sleep(0.1)
            assert pool.take_idle() is None  # idle too long: only acquire() replaces it
            assert await _get(pool) == (200, b"ok")  # idle too long: a new connection
            assert len(connections) == 2
            pool.close()

    run_on_both_loops(case)


def test_interim_1xx_answers_are_skipped() -> None:
    """103 Early Hints before the final answer: the client sees only the final one."""
    serve = replying(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK)

    async def case() -> None:
        async with scripted(serve) as (url, _):
            pool = _pool(url)
            conn = await pool.acquire()
            await conn.send(request_head("GET", "/", pool.authority, [], None), None, 2.0)
            assert conn.status == 200 and conn.reason == "OK"
            assert ("Link", "</a.css>") not in conn.headers
            assert await conn.read(2.0) == b"ok"
            pool.release(conn)
            pool.close()

    run_on_both_loops(case)


def test_body_delimited_by_close_is_complete_and_not_reused() -> None:
    """No Content-Length, no chunking: the body ends with the connection, which is dropped."""
    serve = replying(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")

    async def case() -> None:
        async with scripted(serve) as (url, _):
            pool = _pool(url)
            assert await _get(pool) == (200, b"all of it")
            assert pool.idle == 0 and pool.in_use == 0
            pool.close()

    run_on_both_loops(case)


def test_chunked_body_split_across_writes() -> None:
    """A chunked body arriving in pieces, cut inside chunk headers, is reassembled."""
    wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        for i in range(0, len(wire), 7):
            writer.write(wire[i:i + 7])
            await writer.drain()
            await asyncio.sleep(0.001)

    async def case() -> None:
        async with scripted(serve) as (url, _):
            pool = _pool(url)
            assert await _get(pool) == (200, b"hello world")
            assert pool.idle == 1  # complete and keep-alive: reusable
            pool.close()

    run_on_both_loops(case)


class Collector:
    """A push-mode consumer that records what it is given, and when the end came."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ends: list[BaseException | None] = []
        self.ended = asyncio.get_running_loop().create_future()

    def body(self, data: bytes) -> None:
        self.chunks.append(data)

    def end(self, error: BaseException | None) -> None:
        self.ends.append(error)
        if not self.ended.done():
            self.ended.set_result(None)


def test_push_mode_hands_over_buffered_and_live_bytes_then_the_end() -> None:
    """consume(): bytes already received first, then each chunk as it arrives, then one
    end; the connection is reusable afterwards. A reset mid-body ends with the error."""
    async def paced(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nfirst\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            for word in (b"second", b"third"):
                writer.write(b"%x\r\n%b\r\n" % (len(word), word))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    mid = replying(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")

    async def case() -> None:
        async with scripted(paced) as (url, connections):
            pool = _pool(url)
            for _ in range(2):
                conn = await pool.acquire()
                await conn.send(request_head("GET", "/", pool.authority, [], None), None, 2.0)
                await asyncio.sleep(0.02)  # "first" arrives before anyone consumes
                got = Collector()
                conn.consume(got)
                assert got.chunks == [b"first"] and not got.ends
                await asyncio.wait_for(got.ended, 2.0)
                assert got.chunks == [b"first", b"second", b"third"]
                assert got.ends == [None]
                pool.release(conn)
            assert len(connections) == 1 and pool.idle == 1  # reused, back in the pool
            pool.close()
        async with scripted(mid) as (url, _):
            pool = _pool(url)
            conn = await pool.acquire()
            await conn.send(request_head("GET", "/", pool.authority, [], None), None, 2.0)
            got = Collector()
            conn.consume(got)
            await asyncio.wait_for(got.ended, 2.0)
            assert b"".join(got.chunks) == b"only part"
            assert len(got.ends) == 1 and isinstance(got.ends[0], UpstreamClosed)
            pool.release(conn)
            assert pool.idle == 0 and pool.in_use == 0
            pool.close()

    run_on_both_loops(case)


def test_reset_before_the_answer_and_mid_body() -> None:
    """A close before any byte and a close mid-body both raise UpstreamClosed."""
    async def before(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)

    mid = replying(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")

    async def case() -> None:
        async with scripted(before) as (url, _):
            pool = _pool(url)
            with pytest.raises(UpstreamClosed) as info:
                await _get(pool)
            assert info.value.before_response
            assert pool.in_use == 0 and pool.idle == 0
        async with scripted(mid) as (url, _):
            pool = _pool(url)
            with pytest.raises(UpstreamClosed) as info:
                await _get(pool)
            assert not info.value.before_response
            assert pool.in_use == 0 and pool.idle == 0

    run_on_both_loops(case)


def test_garbage_oversized_or_upgrading_answers_are_bad_responses() -> None:
    """Bytes that are not HTTP/1.1, endless headers and an unasked-for protocol switch are
    refused with BadResponse, not waited out, and the connection is dropped."""
    garbage = b"SSH-2.0-OpenSSH_9.2\r\n\r\n"
    endless = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n"
    upgrade = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\n\r\n\x81\x00")

    async def case() -> None:
        for wire in (garbage, endless, upgrade):
            async with scripted(replying(wire, linger_s=1.0)) as (url, _):
                pool = _pool(url)
                with pytest.raises(BadResponse):
                    await _get(pool)
                assert pool.in_use == 0 and pool.idle == 0

    run_on_both_loops(case)


def test_time_to_headers_is_bounded() -> None:
    """An upstream that never answers times out; the connection is not reused."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        await asyncio.sleep(5)

    async def case() -> None:
        async with scripted(serve) as (url, _):
            pool = _pool(url)
            with pytest.raises(TimeoutError):
                await _get(pool, timeout_s=0.1)
            assert pool.in_use == 0 and pool.idle == 0

    run_on_both_loops(case)


def test_refused_connection_is_connect_failed() -> None:
    """Nothing listening: ConnectFailed, and the slot is given back."""
    async def case() -> None:
        async with scripted(_read_head) as (url, _):
            pass  # closed: the port now refuses
        pool = _pool(url)
        with pytest.raises(ConnectFailed):
            await pool.acquire()
        assert pool.in_use == 0

    run_on_both_loops(case)


def test_pool_limit_queues_callers_in_order() -> None:
    """With limit 2, six concurrent exchanges use at most two connections at a time."""
    busy = 0
    peak = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy, peak
        while True:
            await _read_head(reader)
            busy += 1
            peak = max(peak, busy)
            await asyncio.sleep(0.02)
            busy -= 1
            writer.write(OK)
            await writer.drain()

    async def case() -> None:
        nonlocal peak
        peak = 0
        async with scripted(serve) as (url, connections):
            pool = _pool(url, limit=2)
            results = await asyncio.gather(*(_get(pool) for _ in range(6)))
            assert results == [(200, b"ok")] * 6
            assert peak == 2 and len(connections) == 2
            assert pool.in_use == 0
            pool.close()

    run_on_both_loops(case)


def test_idle_connection_closed_by_upstream_is_not_reused() -> None:
    """The upstream closes an idle keep-alive connection: the next exchange opens a new one."""
    serve = replying(OK)  # then closes while the client holds the connection idle

    async def case() -> None:
        async with scripted(serve) as (url, connections):
            pool = _pool(url)
            assert await _get(pool) == (200, b"ok")
            for _ in range(100):
                if pool.idle == 0:
                    break
                await asyncio.sleep(0.01)
            assert pool.idle == 0  # noticed the close while idle
            assert await _get(pool) == (200, b"ok")
            assert len(connections) == 2
            pool.close()

    run_on_both_loops(case)


def test_request_head_refuses_line_breaks() -> None:
    """A header value with CR or LF (e.g. from a token's claims) cannot split the request."""
    assert request_head("GET", "/a?b=1", "up:80", [("X-A", "1")], None) == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: up:80\r\nX-A: 1\r\n\r\n")
    assert request_head("POST", "/", "up", [], None).endswith(b"Content-Length: 0\r\n\r\n")
    assert b"Content-Length: 3\r\n" in request_head("PUT", "/", "up", [], b"abc")
    for bad in ("a\r\nX-Evil: 1", "a\nb", "a\rb", "a\0b"):
        with pytest.raises(ValueError):
            request_head("GET", "/", "up", [("X-LUKi-Principal", bad)], None)


def test_pool_parses_authority_and_base_path() -> None:
    """Default ports are left out of Host; a base path prefixes every target."""
    assert _pool(URL("http://example.test")).authority == "example.test"
    assert _pool(URL("http://example.test:8080/api/")).authority == "example.test:8080"
    assert _pool(URL("http://example.test:8080/api/")).base_path == "/api"
    assert _pool(URL("https://[::1]:8443")).authority == "[::1]:8443"
    with pytest.raises(ValueError):
        _pool(URL("ftp://example.test"))
