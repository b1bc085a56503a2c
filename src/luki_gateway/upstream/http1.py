"""A lean HTTP/1.1 client for the proxy's hot path: one keep-alive pool per upstream.

aiohttp's ``ClientSession.request`` costs about 90 µs of CPU per call on this kind of
machine, most of it generic machinery a reverse proxy does not use (URL and header
merging, cookies, redirects, tracing, per-request timeout objects). This client writes the
request head itself in one ``transport.write`` and parses the answer with httptools (the
llhttp parser uvicorn uses), about 10 µs per exchange. It does exactly what the proxy
needs and nothing else:

- bounded pool per upstream (``limit`` connections, waiters queue in order), keep-alive,
  LIFO reuse, idle connections closed after ``keepalive_s``, resolved addresses cached;
- one exchange per connection at a time (no pipelining); a connection goes back to the
  pool only after a complete response that allows keep-alive, otherwise it is closed;
- the response body is either read whole, streamed with back-pressure
  (``pause_reading`` above a high-water mark), or pushed to a consumer as it arrives
  (``consume``: the chat relay handles each token in the protocol's own callback);
- failures raise ``ConnectFailed`` (nothing was sent), ``UpstreamClosed`` (the connection
  broke) or ``BadResponse`` (the upstream did not speak HTTP/1.1); timeouts raise
  ``TimeoutError``.

Bodies are bytes (or none): streamed uploads and HEAD requests go through the upstream's
aiohttp session instead.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Protocol, cast

import httptools
from yarl import URL

_HIGH_WATER = 256 * 1024  # pause reading from the upstream above this much unread body
_MAX_HEAD_BYTES = 64 * 1024  # an upstream's header block larger than this is refused
_SWEEP_S = 0.05  # how often exchanges under way are checked against their deadlines


class ConnectFailed(OSError):
    """The upstream could not be reached (refused, unresolvable, unreachable)."""


class UpstreamClosed(ConnectionError):
    """The upstream closed or reset the connection before the response was complete."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class BadResponse(Exception):
    """The upstream's answer is not valid HTTP/1.1."""


class BodyConsumer(Protocol):
    """Takes a response body as it arrives (see :meth:`Connection.consume`)."""

    def body(self, data: bytes) -> None:
        """Body bytes, in the connection's own callback: must not raise."""

    def end(self, error: BaseException | None) -> None:
        """The body is complete (None) or the exchange failed (``error``)."""


class Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream; one exchange at a time."""

    __slots__ = (
        "_active",
        "_body",
        "_body_waiter",
        "_buffered",
        "_complete",
        "_consumer",
        "_deadline",
        "_eof_body",
        "_error",
        "_fields",
        "_head_bytes",
        "_head_waiter",
        "_keep_alive",
        "_parser",
        "_paused",
        "_pool",
        "client",
        "closed",
        "headers",
        "idle_since",
        "reason",
        "status",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._active = False
        # loop.time() by which the awaited head or body bytes must arrive; 0: no limit.
        # Checked by the pool's sweep: no timer per request.
        self._deadline = 0.0
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self._fields: dict[str, str] = {}  # lower-case name -> last value
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._eof_body = False
        self._paused = False
        self._error: BaseException | None = None
        self._head_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._consumer: BodyConsumer | None = None
        # The downstream connection this exchange answers, when its caller wants the
        # exchange ended once that client has gone (checked by the pool's sweep).
        self.client: asyncio.BaseTransport | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._active:
            # Bytes while idle: the upstream is not speaking in turn; never reuse this.
            self._fail(BadResponse("unsolicited data from upstream"))
            return
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # parser errors, our own refusals, upgrades we never asked
            cause = exc.__context__
            self._fail(cause if isinstance(cause, BadResponse)
                       else BadResponse(f"malformed upstream response: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if not self._active or self._complete or self._error is not None:
            return  # idle, the exchange was complete, or it already failed
        if self._eof_body and exc is None:
            self._complete = True  # a body delimited by the end of the connection
            self._wake()
            return
        self._fail(UpstreamClosed("upstream closed the connection",
                                  before_response=self.status == 0))

    def pause_writing(self) -> None:  # request heads and small bodies only: nothing to do
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ----------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")  # may arrive in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise BadResponse("upstream response headers too large")
        text = name.decode("latin-1")
        decoded = value.decode("utf-8", "surrogateescape")
        self.headers.append((text, decoded))
        self._fields[text.lower()] = decoded

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx interim answers (103 Early Hints...): not forwarded, wait for the final one.
            self.headers = []
            self._fields = {}
            self.reason = ""
            return
        self.status = status
        names = self._fields
        self._eof_body = (status not in (204, 304) and "content-length" not in names
                          and "transfer-encoding" not in names)
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            self._clear_deadline()
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        consumer = self._consumer
        if consumer is not None:
            consumer.body(body)
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of a 1xx interim answer
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    # -- the exchange -----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._complete:
            self._end_consumer(None)

    def _end_consumer(self, error: BaseException | None) -> None:
        """Push mode: tell the consumer, once, that the body ended (None) or failed."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.end(error)

    def _fail(self, exc: BaseException) -> None:
        if self._error is not None:
            return
        self._clear_deadline()
        self._error = exc
        for waiter in (self._head_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
        self._end_consumer(exc)
        self.close()

    def _on_timeout(self) -> None:
        self._deadline = 0.0
        self._fail(TimeoutError())

    def _clear_deadline(self) -> None:
        self._deadline = 0.0

    def _arm(self, waiter: asyncio.Future[None], timeout_s: float | None,
             loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        if timeout_s is not None:
            self._deadline = loop.time() + timeout_s
            self._pool.watch_deadlines(loop)
        return waiter

    def overdue(self, now: float) -> bool:
        """True when the awaited bytes are late (the pool's sweep then times it out)."""
        return 0.0 < self._deadline <= now

    def client_gone(self) -> bool:
        """True when the downstream client this exchange answers has hung up."""
        client = self.client
        return client is not None and client.is_closing()

    def send(self, head: bytes, body: bytes | None, timeout_s: float | None,
             client: asyncio.BaseTransport | None = None) -> asyncio.Future[None]:
        """Write the request; the future completes when the final response's headers are in.

        With ``client``, the wait for the head (and for a body read with a timeout) fails
        with ConnectionResetError soon after that downstream connection closes, and the
        upstream connection is closed: nobody waits for the answer any more.

        A plain function returning the future (no coroutine of its own): the hot path
        awaits it directly, one frame less on every resumption.
        """
        transport = self.transport
        if transport is None or self.closed:
            raise UpstreamClosed("connection closed", before_response=True)
        self._reset_exchange()
        self.client = client
        self._active = True
        loop = asyncio.get_running_loop()
        waiter = self._head_waiter = loop.create_future()
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        return self._arm(waiter, timeout_s, loop)

    def field(self, lower_name: str) -> str | None:
        """The (last) value of a response header, by lower-case name."""
        return self._fields.get(lower_name)

    @property
    def complete(self) -> bool:
        """True once the whole response body has arrived."""
        return self._complete

    def body_so_far(self) -> bytes:
        """Take the body bytes received and not yet read."""
        chunks = self._body
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body = []
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def consume(self, consumer: BodyConsumer | None) -> None:
        """Push mode: hand the body to ``consumer`` as it arrives, in this protocol's own
        callbacks (no task switch per chunk, nothing buffered here), bytes already received
        first; then its end or failure. ``None`` goes back to buffering for ``readany``.

        There is no back-pressure in push mode: the consumer takes every byte at once.
        """
        self._consumer = consumer
        if consumer is None:
            return
        if self._body:
            consumer.body(self.body_so_far())
        if self._consumer is not consumer:
            return  # the consumer let go already
        if self._error is not None:
            self._end_consumer(self._error)
        elif self._complete:
            self._end_consumer(None)

    async def readany(self, idle_timeout_s: float | None = None) -> bytes:
        """The next body bytes; b"" at the end. Raises on a broken or idle upstream."""
        while True:
            if self._body:
                return self.body_so_far()
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            loop = asyncio.get_running_loop()
            waiter = self._body_waiter = loop.create_future()
            try:
                await self._arm(waiter, idle_timeout_s, loop)
            finally:
                self._body_waiter = None
                self._clear_deadline()

    async def read(self, timeout_s: float | None = None) -> bytes:
        """The whole (remaining) body."""
        parts: list[bytes] = []
        while chunk := await self.readany(timeout_s):
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Close the connection (never reused)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def finish(self) -> bool:
        """End the exchange; True when the connection may carry another one."""
        self._active = False
        self._clear_deadline()
        return (self._complete and self._keep_alive and not self.closed
                and self._error is None and not self._body)


class Pool:
    """Keep-alive connections to one upstream origin, at most ``limit`` at a time."""

    __slots__ = ("_addresses", "_addresses_at", "_closed", "_connect_timeout_s",
                 "_dns_ttl_s", "_host", "_idle", "_in_use", "_keepalive_s", "_limit",
                 "_port", "_ssl", "_sweep", "_waiters", "authority", "base_path", "origin")

    def __init__(self, base_url: URL, *, limit: int, connect_timeout_s: float,
                 keepalive_s: float = 30.0, dns_ttl_s: float = 60.0) -> None:
        if base_url.scheme not in ("http", "https") or not base_url.host:
            raise ValueError(f"unsupported upstream URL {base_url}")
        self._host = base_url.host
        self._port = base_url.port or (443 if base_url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (ssl.create_default_context()
                                            if base_url.scheme == "https" else None)
        host = base_url.raw_host or self._host
        if ":" in host:
            host = f"[{host}]"
        default_port = base_url.port is None or base_url.is_default_port()
        self.authority = host if default_port else f"{host}:{self._port}"
        self.origin = f"{base_url.scheme}://{self.authority}"
        self.base_path = base_url.raw_path.rstrip("/")
        self._limit = limit
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._dns_ttl_s = dns_ttl_s
        self._idle: list[Connection] = []
        self._in_use: set[Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._addresses: list[tuple[int, tuple[str, int]]] = []
        self._addresses_at = 0.0
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def in_use(self) -> int:
        """Connections lent out right now."""
        return len(self._in_use)

    @property
    def idle(self) -> int:
        """Open connections waiting in the pool."""
        return len(self._idle)

    def _fresh(self, conn: Connection, now: float) -> bool:
        """An idle connection still worth reusing: open, and idle less than keepalive_s."""
        return not conn.closed and now - conn.idle_since <= self._keepalive_s

    def take_idle(self) -> Connection | None:
        """A fresh idle connection at once, when one is free and nobody waits; else None
        (then ``await acquire()``)."""
        idle = self._idle
        if not idle or self._waiters or len(self._in_use) >= self._limit:
            return None
        conn = idle[-1]
        if not self._fresh(conn, time.monotonic()):
            return None  # acquire() drops it
        idle.pop()
        self._in_use.add(conn)
        return conn

    async def acquire(self) -> Connection:
        """A connected, idle connection: reused when one is fresh, else a new one."""
        if self._closed:
            raise ConnectFailed("upstream pool is closed")
        while len(self._in_use) >= self._limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake_next()  # pass the slot we were given on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not self._fresh(conn, now):
                conn.close()
                continue
            self._in_use.add(conn)
            return conn
        conn = Connection(self)
        self._in_use.add(conn)
        try:
            await self._connect(conn)
        except BaseException:
            self._in_use.discard(conn)
            conn.close()
            self._wake_next()
            raise
        return conn

    async def _connect(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                addresses = await self._resolve()
                last: OSError | None = None
                for family, address in addresses:
                    try:
                        await loop.create_connection(
                            lambda: conn, address[0], address[1], family=family,
                            ssl=self._ssl, server_hostname=self._host if self._ssl else None)
                        return
                    except OSError as exc:
                        last = exc
                raise last or ConnectFailed(f"cannot connect to {self.authority}")
        except ConnectFailed:
            raise
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.authority}: {exc}") from exc

    async def _resolve(self) -> list[tuple[int, tuple[str, int]]]:
        now = time.monotonic()
        if self._addresses and now - self._addresses_at < self._dns_ttl_s:
            return self._addresses
        infos = await asyncio.get_running_loop().getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM)
        found: list[tuple[int, tuple[str, int]]] = [
            (int(family), (str(addr[0]), int(addr[1]))) for family, _, _, _, addr in infos]
        if not found:
            raise ConnectFailed(f"{self._host} has no address")
        self._addresses, self._addresses_at = found, now
        return found

    def watch_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure the sweep runs while some exchange has a deadline."""
        if self._sweep is None:
            self._sweep = loop.call_later(_SWEEP_S, self._check_deadlines, loop)

    def _check_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        # One timer per pool, every _SWEEP_S while exchanges are under way, instead of one
        # timer per request (creating and cancelling one cost ~2 µs of every request).
        self._sweep = None
        now = loop.time()
        watching = False
        for conn in list(self._in_use):
            if conn.overdue(now):
                conn._on_timeout()
            elif conn._deadline:
                if conn.client_gone():
                    conn._fail(ConnectionResetError("the client left before the answer"))
                else:
                    watching = True
        if watching:
            self.watch_deadlines(loop)

    def release(self, conn: Connection) -> None:
        """Give ``conn`` back: pooled when reusable, closed otherwise."""
        if conn not in self._in_use:
            return
        self._in_use.discard(conn)
        conn.client = None
        if conn.finish() and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        self._wake_next()

    def forget(self, conn: Connection) -> None:
        """A connection closed: drop it from the idle list (in-use ones are released)."""
        if conn in self._idle:
            self._idle.remove(conn)

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every connection; later acquires fail."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in [*self._idle, *self._in_use]:
            conn.close()
        self._idle.clear()


def request_head(method: str, target: str, authority: str,
                 headers: Iterable[tuple[str, str]], body: bytes | None) -> bytes:
    """The request line and headers, ready to write.

    Header values containing CR, LF or NUL are refused (``ValueError``): nothing a client
    or a token sends may split the request we write.
    """
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    elif method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    # CR and LF may appear only as the line breaks we wrote (two in the first part).
    breaks = len(lines) + 1
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        raise ValueError("header value contains a line break")
    return text.encode("utf-8", "surrogateescape")
