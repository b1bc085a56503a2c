"""The streaming reverse proxy: one request in, one upstream call, one response out.

Small, length-delimited upstream bodies are read whole and answered with one
``web.Response`` (the fast path); large, unknown-length and event-stream bodies are
streamed chunk by chunk both ways with flat memory. Failures before the first byte map
to the error shape; failures after it close the client connection, so a truncated body
is never presented as a whole one.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from ..errors import (
    CircuitOpen,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ValidationFailed,
)
from ..settings import Settings
from .failures import classify
from .forwarding import ForwardingPolicy, request_headers, response_headers
from .http1 import BadResponse, ConnectFailed, Connection, UpstreamClosed, request_head
from .metrics import UPSTREAM_METRICS, UpstreamMetrics
from .paths import needs_normalising, normalise
from .routes import IDEMPOTENT_METHODS, Route, RouteTable
from .sessions import UPSTREAMS, Upstream

log = structlog.get_logger("luki.proxy")

_CLIENT_CHECK_S = 0.5  # how often an idle stream checks that its client is still there
_MAX_BACKOFF_S = 1.0
# aiohttp warns above 1 MiB of raw bytes per write; bigger bodies are streamed anyway.
_MAX_SMALL_BODY = 1 << 20
_CLIENT_GONE_STATUS = 499  # nginx's "client closed request", for logs and metrics


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything the proxy needs per request, resolved once at start-up."""

    table: RouteTable
    policy: ForwardingPolicy
    retries: int
    backoff_s: float
    small_body_bytes: int
    idle_read_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ProxyConfig:
        """The proxy configuration for ``settings``."""
        cfg = settings.upstream
        return cls(table=RouteTable.from_settings(settings),
                   policy=ForwardingPolicy.parse(settings.trusted_proxies),
                   retries=cfg.retries, backoff_s=cfg.retry_backoff_s,
                   small_body_bytes=min(cfg.small_body_bytes, _MAX_SMALL_BODY),
                   idle_read_timeout_s=cfg.idle_read_timeout_s)


PROXY = web.AppKey("proxy", ProxyConfig)


class _Upload:
    """A streamed request body, counted against the route's limit as it passes."""

    __slots__ = ("client_failed", "limit", "too_large")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.too_large = False
        self.client_failed = False

    async def chunks(self, content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
        """Yield the client's body; stop with PayloadTooLarge past the limit."""
        seen = 0
        while True:
            try:
                chunk = await content.readany()
            except Exception:
                self.client_failed = True  # client vanished or sent a broken body
                raise
            if not chunk:
                return
            seen += len(chunk)
            if seen > self.limit:
                self.too_large = True
                raise PayloadTooLarge(details={"max_bytes": self.limit})
            yield chunk


class _ClientWatch:
    """Interrupts an idle stream whose client has gone (aiohttp does not cancel handlers)."""

    __slots__ = ("_handle", "_loop", "_request", "_scope", "gone")

    def __init__(self, request: web.Request, scope: asyncio.Timeout) -> None:
        self._request = request
        self._scope = scope
        self._loop = asyncio.get_running_loop()
        self.gone = False
        self._handle = self._loop.call_later(_CLIENT_CHECK_S, self._check)

    def _check(self) -> None:
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self.gone = True
            self._scope.reschedule(self._loop.time())  # ends the scope with TimeoutError
            return
        self._handle = self._loop.call_later(_CLIENT_CHECK_S, self._check)

    def stop(self) -> None:
        """Stop checking."""
        self._handle.cancel()


def _target(upstream: Upstream, route: Route, table: RouteTable, request: web.Request
            ) -> str:
    """The request-target sent upstream: base path + route path + query, as received.

    The router matched the raw path: ``/v1/elr//admin`` or ``/v1/elr/x/../admin`` came in
    under ``/v1/elr``, whose scopes the auth middleware checked. A normalised path that
    another route owns (a more specific prefix, or another prefix altogether) is refused,
    never forwarded under the wrong route's policy.
    """
    rel = request.rel_url
    path = rel.raw_path
    if needs_normalising(path):
        path = normalise(path)
        if table.match(path) is not route:
            raise NotFound("path leaves the route's prefix")
    target = upstream.pool.base_path + route.upstream_path(path)
    query = rel.raw_query_string
    return f"{target}?{query}" if query else target


def _backoff(base_s: float, attempt: int) -> float:
    # Full jitter around an exponential step, so retries from many requests spread out.
    return min(_MAX_BACKOFF_S, base_s * 2.0 ** attempt) * random.uniform(0.5, 1.5)


def _streams(status: int, length: str | None, content_type: str, small: int) -> bool:
    """Whether an answer's body is relayed as a stream rather than read whole: unknown or
    large lengths and event streams are; bodiless statuses never."""
    if status in (204, 304):
        return False
    if length is None or not length.isdigit() or int(length) > small:
        return True
    return content_type.lower().startswith("text/event-stream")  # media types: any case


def _is_stream(resp: aiohttp.ClientResponse, small: int) -> bool:
    if resp.method == "HEAD":
        return False  # no body by definition
    return _streams(resp.status, resp.headers.get("Content-Length"),
                    resp.headers.get("Content-Type", ""), small)


async def forward(request: web.Request, route: Route, config: ProxyConfig
                  ) -> web.StreamResponse:
    """Proxy ``request`` along ``route`` to its upstream; the response, or a GatewayError.

    The hot path (lean pool, retries included) runs in this one coroutine: one frame of
    ours on the await chain, resumed twice per request at most.
    """
    method = request.method
    upstream = request.app[UPSTREAMS].get(route.upstream)
    target = _target(upstream, route, config.table, request)  # 404/400 before 405
    if method not in route.methods:
        raise MethodNotAllowed(headers={"Allow": route.allow_header})
    length = request.content_length
    if length is not None and length > route.max_body_bytes:
        raise PayloadTooLarge(details={"max_bytes": route.max_body_bytes})
    headers = request_headers(request, config.policy)
    body: bytes | None = None
    if request.body_exists:
        if length is None or length > config.small_body_bytes:
            upload = _Upload(route.max_body_bytes)
            if length is not None:
                headers.append(("Content-Length", str(length)))
            return await _proxy_session(request, route, upstream, config, target, headers,
                                        upload.chunks(request.content), upload)
        try:
            body = await request.read()
        except ConnectionError:
            return _client_left(request)
    elif length == 0:
        body = b""
    if method == "HEAD":  # aiohttp's client knows a HEAD answer has no body
        return await _proxy_session(request, route, upstream, config, target, headers,
                                    body, None)
    try:
        head = request_head(method, target, upstream.pool.authority, headers, body)
    except ValueError:
        raise ValidationFailed("a header value cannot be forwarded") from None
    attempts = 1 + config.retries if route.retries and method in IDEMPOTENT_METHODS else 1
    metrics = request.app[UPSTREAM_METRICS]
    pool = upstream.pool
    for attempt in range(attempts):
        _before_request(upstream, metrics)
        start = time.perf_counter()
        conn: Connection | None = None
        try:
            conn = pool.take_idle() or await pool.acquire()
            await conn.send(head, body, route.timeout_s, request.transport)
            streaming = _lean_is_stream(conn, config.small_body_bytes)
            data = b""
            if not streaming:
                data = conn.body_so_far() if conn.complete else await conn.read(route.timeout_s)
                pool.release(conn)
        except _UPSTREAM_FAILED as exc:
            if conn is not None:
                pool.release(conn)  # not complete: closed, never reused
            error = _failed(upstream, metrics, exc, attempt < attempts - 1)
            if error is not None:
                raise error from None
            await asyncio.sleep(_backoff(config.backoff_s, attempt))
            continue
        except BaseException:
            if conn is not None:
                pool.release(conn)
            raise
        status = conn.status
        _answered(upstream, metrics, status, start)
        out_headers = response_headers(conn.headers)
        if not streaming:
            response = web.Response(status=status, reason=conn.reason or None, body=data)
            response.headers.extend(out_headers)  # one copy (headers= would make two)
            return response
        return await _relay_lean(request, conn, out_headers, config, upstream, metrics)
    raise AssertionError("unreachable: the last attempt never retries")


_UPSTREAM_FAILED = (aiohttp.ClientError, TimeoutError, ConnectFailed, UpstreamClosed,
                    BadResponse)


def _before_request(upstream: Upstream, metrics: UpstreamMetrics) -> None:
    try:
        upstream.breaker.before_request()
    except CircuitOpen:
        metrics.errors.labels(upstream.name, "circuit_open").inc()
        raise


def _failed(upstream: Upstream, metrics: UpstreamMetrics, exc: BaseException,
            retry_allowed: bool) -> GatewayError | None:
    """Count a failure before the response started: the error to answer, or None to retry."""
    kind, error, retryable = classify(exc)
    metrics.errors.labels(upstream.name, kind).inc()
    upstream.breaker.record_failure()
    if retryable and retry_allowed:
        log.info("upstream retry", upstream=upstream.name, kind=kind)
        return None
    log.warning("upstream failed", upstream=upstream.name, kind=kind,
                error=type(exc).__name__)
    return error


def _answered(upstream: Upstream, metrics: UpstreamMetrics, status: int, start: float) -> None:
    metrics.observe(upstream.name, status, time.perf_counter() - start)
    if status >= 500:
        upstream.breaker.record_failure()
    else:
        upstream.breaker.record_success()


def _relay_lean(request: web.Request, conn: Connection, headers: list[tuple[str, str]],
                config: ProxyConfig, upstream: Upstream, metrics: UpstreamMetrics
                ) -> Awaitable[web.StreamResponse]:
    """Stream the rest of ``conn``'s body to the client; the connection goes back after."""
    pool, idle_s = upstream.pool, config.idle_read_timeout_s
    return _stream(request, conn.status, conn.reason, headers,
                   lambda: conn.readany(idle_s), lambda _: pool.release(conn),
                   upstream, metrics)


async def _proxy_session(request: web.Request, route: Route, upstream: Upstream,
                         config: ProxyConfig, target: str, headers: list[tuple[str, str]],
                         body: bytes | AsyncIterator[bytes] | None, upload: _Upload | None
                         ) -> web.StreamResponse:
    """Streamed uploads and HEAD, through the upstream's aiohttp session (same retries
    and failure mapping as the lean path in ``forward``)."""
    url = URL(upstream.pool.origin + target, encoded=True)
    attempts = 1
    if route.retries and upload is None and request.method in IDEMPOTENT_METHODS:
        attempts += config.retries
    metrics = request.app[UPSTREAM_METRICS]
    for attempt in range(attempts):
        _before_request(upstream, metrics)
        start = time.perf_counter()
        data = b""
        try:
            async with asyncio.timeout(route.timeout_s):
                resp = await upstream.session.request(
                    request.method, url, headers=headers, data=body, allow_redirects=False)
                streaming = _is_stream(resp, config.small_body_bytes)
                if not streaming:
                    try:
                        data = await resp.read()
                    finally:
                        resp.release()
        except _UPSTREAM_FAILED as exc:
            if upload is not None and upload.too_large:
                raise PayloadTooLarge(details={"max_bytes": upload.limit}) from None
            if upload is not None and upload.client_failed:
                return _client_left(request)
            error = _failed(upstream, metrics, exc, attempt < attempts - 1)
            if error is not None:
                raise error from None
            await asyncio.sleep(_backoff(config.backoff_s, attempt))
            continue
        _answered(upstream, metrics, resp.status, start)
        out_headers = response_headers(resp.headers.items())
        if not streaming:
            response = web.Response(status=resp.status, reason=resp.reason, body=data)
            response.headers.extend(out_headers)
            return response
        return await _relay_session(request, resp, out_headers, upstream, metrics)
    raise AssertionError("unreachable: the last attempt never retries")


def _relay_session(request: web.Request, resp: aiohttp.ClientResponse,
                   headers: list[tuple[str, str]], upstream: Upstream,
                   metrics: UpstreamMetrics) -> Awaitable[web.StreamResponse]:
    """Stream the rest of ``resp``'s body to the client; its connection is released after
    a complete body, closed otherwise."""
    def finish(complete: bool) -> None:
        if complete:
            resp.release()
        else:
            resp.close()  # never return a half-read connection to the pool

    return _stream(request, resp.status, resp.reason or "", headers,
                   resp.content.readany, finish, upstream, metrics)


_BodyReader = Callable[[], Awaitable[bytes]]
_Finish = Callable[[bool], None]


def _lean_is_stream(conn: Connection, small: int) -> bool:
    if conn.complete:
        return False  # all of the body arrived with the head
    return _streams(conn.status, conn.field("content-length"),
                    conn.field("content-type") or "", small)


def _client_left(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=_CLIENT_GONE_STATUS)


async def _stream(request: web.Request, status: int, reason: str,
                  headers: list[tuple[str, str]],
                  read: _BodyReader, finish: _Finish, upstream: Upstream,
                  metrics: UpstreamMetrics) -> web.StreamResponse:
    """Relay a large or open-ended body chunk by chunk, with flat memory."""
    response = web.StreamResponse(status=status, reason=reason or None)
    response.headers.extend(headers)
    complete = False
    try:
        await response.prepare(request)
        async with asyncio.timeout(None) as scope:
            watch = _ClientWatch(request, scope)
            try:
                while True:
                    try:
                        chunk = await read()
                    except _UPSTREAM_FAILED as exc:
                        if watch.gone:
                            raise
                        _upstream_broke(upstream, metrics, exc)
                        break
                    if not chunk:
                        complete = True
                        break
                    await response.write(chunk)
            finally:
                watch.stop()
    except (ConnectionError, TimeoutError):
        complete = False  # the client left mid-download
    finally:
        finish(complete)
    if not complete:
        # Closing the connection is the only honest end of a truncated body.
        transport = request.transport
        if transport is not None:
            transport.close()
        return response
    await response.write_eof()
    return response


def _upstream_broke(upstream: Upstream, metrics: UpstreamMetrics, exc: BaseException) -> None:
    kind = "timeout" if isinstance(exc, TimeoutError) else "reset"
    metrics.errors.labels(upstream.name, kind).inc()
    upstream.breaker.record_failure()
    log.warning("upstream broke mid-body", upstream=upstream.name, kind=kind,
                error=type(exc).__name__)
