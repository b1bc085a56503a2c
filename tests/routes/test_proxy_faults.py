"""Proxy faults against real servers: down, slow, reset, garbage, disconnects, smuggling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from luki_gateway.app import create_app
from luki_gateway.settings import Settings
from luki_gateway.upstream.breaker import CircuitBreaker
from luki_gateway.upstream.sessions import UPSTREAMS, Upstream

from ..conftest import closed_port_url
from .proxy_upstream import Control, garbage_server

Client = TestClient[Any, Any]


@pytest.fixture
async def proxied(gateway: Callable[..., Any], echo_app: tuple[str, Control]) -> Client:
    """The real gateway with memory -> echo app, auth off, fast retries."""
    client: Client = await gateway(upstreams={"memory": echo_app[0]},
                                   auth={"enabled": False},
                                   upstream={"retry_backoff_s": 0.001})
    return client


def memory(client: Client) -> Upstream:
    """The gateway's memory upstream (session, breaker)."""
    return client.app[UPSTREAMS].get("memory")


async def wait_for(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll ``predicate`` on the event loop until it holds (fails after ``within_s``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The ``error`` object of a gateway error response."""
    body: dict[str, Any] = await resp.json()
    return body["error"]  # type: ignore[no-any-return]


async def metrics_text(client: Client) -> str:
    """The gateway's /metrics page."""
    return await (await client.get("/metrics")).text()


async def raw_exchange(client: Client, data: bytes, *, close_after_send: bool = False
                       ) -> bytes:
    """Send raw bytes to the gateway; return everything it answers until it closes."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(data)
    await writer.drain()
    if close_after_send:
        writer.close()
        await writer.wait_closed()
        return b""
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    return answer


# --- upstream down, slow, broken -------------------------------------------------------


async def test_upstream_down_is_503_after_retries(gateway: Callable[..., Any]) -> None:
    """Connection refused: 503 DOWNSTREAM_UNAVAILABLE; GET retried, each try counted."""
    client = await gateway(upstreams={"memory": closed_port_url()}, auth={"enabled": False},
                           upstream={"retries": 2, "retry_backoff_s": 0.001})
    resp = await client.get("/v1/elr/items")
    assert resp.status == 503
    error = await error_of(resp)
    assert error["code"] == "DOWNSTREAM_UNAVAILABLE"
    assert error["trace_id"]
    text = await metrics_text(client)
    assert 'luki_upstream_errors_total{kind="connect",upstream="memory"} 3.0' in text


async def test_post_to_down_upstream_is_not_retried(gateway: Callable[..., Any]) -> None:
    """A non-idempotent request is tried once."""
    client = await gateway(upstreams={"memory": closed_port_url()}, auth={"enabled": False},
                           upstream={"retries": 2, "retry_backoff_s": 0.001})
    resp = await client.post("/v1/elr/ingest_text", json={"text": "x"})
    assert resp.status == 503
    text = await metrics_text(client)
    assert 'luki_upstream_errors_total{kind="connect",upstream="memory"} 1.0' in text


async def test_dns_failure_is_503(gateway: Callable[..., Any]) -> None:
    """A name that does not resolve is DOWNSTREAM_UNAVAILABLE, not a 500."""
    client = await gateway(upstreams={"memory": "http://no-such-host.invalid:9"},
                           auth={"enabled": False}, upstream={"retries": 0})
    resp = await client.get("/v1/elr/items")
    assert resp.status == 503
    assert (await error_of(resp))["code"] == "DOWNSTREAM_UNAVAILABLE"


async def test_retry_recovers_from_a_dropped_connection(proxied: Client,
                                                        echo_app: tuple[str, Control]) -> None:
    """An idempotent GET whose connection is dropped before an answer is retried and works."""
    echo_app[1].drop_next = 1
    resp = await proxied.get("/v1/elr/items")
    assert resp.status == 200
    assert echo_app[1].requests == 2


async def test_dropped_post_is_502_without_retry(proxied: Client,
                                                 echo_app: tuple[str, Control]) -> None:
    """A POST whose connection is dropped is answered 502 and sent only once."""
    echo_app[1].drop_next = 1
    resp = await proxied.post("/v1/elr/ingest_text", data=b"{}")
    assert resp.status == 502
    assert (await error_of(resp))["code"] == "DOWNSTREAM_ERROR"
    assert echo_app[1].requests == 1
    assert 'kind="reset",upstream="memory"} 1.0' in await metrics_text(proxied)


async def test_slow_headers_time_out_504(gateway: Callable[..., Any],
                                         echo_app: tuple[str, Control]) -> None:
    """No headers within the route's timeout: 504 DOWNSTREAM_TIMEOUT, not retried."""
    client = await gateway(upstreams={"memory": echo_app[0]}, auth={"enabled": False},
                           routes=[{"prefix": "/v1/elr", "upstream": "memory",
                                    "timeout_s": 0.3}])
    resp = await client.get("/v1/elr/slow-headers?s=5")
    assert resp.status == 504
    assert (await error_of(resp))["code"] == "DOWNSTREAM_TIMEOUT"
    text = await metrics_text(client)
    assert 'luki_upstream_errors_total{kind="timeout",upstream="memory"} 1.0' in text
    await wait_for(lambda: memory(client).in_use == 0)


async def test_idle_stream_times_out_and_closes(gateway: Callable[..., Any],
                                                echo_app: tuple[str, Control]) -> None:
    """A stream that goes silent past the idle-read timeout is cut: connection closed."""
    client = await gateway(upstreams={"memory": echo_app[0]}, auth={"enabled": False},
                           upstream={"idle_read_timeout_s": 0.3})
    resp = await client.get("/v1/elr/slow-body?s=5")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    text = await metrics_text(client)
    assert 'luki_upstream_errors_total{kind="timeout",upstream="memory"} 1.0' in text
    await wait_for(lambda: memory(client).in_use == 0)


async def test_reset_mid_body_closes_the_client_connection(
        proxied: Client, echo_app: tuple[str, Control]) -> None:
    """Upstream dies mid-body: the client sees a broken body, never a complete short one."""
    resp = await proxied.get("/v1/elr/reset")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(1 << 20)
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert 'kind="reset",upstream="memory"} 1.0' in await metrics_text(proxied)
    await wait_for(lambda: memory(proxied).in_use == 0)


async def test_reset_before_small_body_complete_is_502(proxied: Client) -> None:
    """A small body cut short before anything was sent to the client becomes 502."""
    resp = await proxied.get("/v1/elr/reset-small")
    assert resp.status == 502
    assert (await error_of(resp))["code"] == "DOWNSTREAM_ERROR"


@pytest.mark.parametrize("reply", [
    b"THIS IS NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 abc Nope\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
])
async def test_garbage_response_is_502(gateway: Callable[..., Any], reply: bytes) -> None:
    """An upstream answering something that is not valid HTTP: 502 DOWNSTREAM_ERROR."""
    async for url in garbage_server(reply):
        client = await gateway(upstreams={"memory": url}, auth={"enabled": False},
                               upstream={"retries": 0})
        resp = await client.get("/v1/elr/items")
        assert resp.status == 502
        assert (await error_of(resp))["code"] == "DOWNSTREAM_ERROR"


# --- client disconnects ----------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A gateway on a real socket, served the way ``serve`` or a test server serves it."""

    base: str
    host: str
    port: int
    app: web.Application
    session: aiohttp.ClientSession

    @property
    def memory(self) -> Upstream:
        """The gateway's memory upstream."""
        return self.app[UPSTREAMS].get("memory")


@pytest.fixture(params=[False, True], ids=["like-serve", "handler-cancellation"])
async def served(request: pytest.FixtureRequest, make_settings: Callable[..., Settings],
                 echo_app: tuple[str, Control]) -> AsyncIterator[Served]:
    """The gateway with aiohttp's handler cancellation off (as `serve` runs) and on."""
    app = create_app(make_settings(upstreams={"memory": echo_app[0]},
                                   auth={"enabled": False}))
    runner = web.AppRunner(app, handler_cancellation=request.param)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        yield Served(f"http://{host}:{port}", host, port, app, session)
    await runner.cleanup()


async def test_client_leaves_mid_download(served: Served,
                                          echo_app: tuple[str, Control]) -> None:
    """Client closes during a huge download: upstream request dropped, pool back to 0."""
    resp = await served.session.get(served.base + "/v1/elr/big?n=1073741824")
    await resp.content.readexactly(200_000)
    assert served.memory.in_use == 1
    resp.close()
    await wait_for(lambda: served.memory.in_use == 0)
    await asyncio.wait_for(echo_app[1].stream_ended.wait(), 5)
    assert echo_app[1].streams_cancelled == 1


async def test_client_leaves_idle_event_stream(served: Served,
                                               echo_app: tuple[str, Control]) -> None:
    """Client closes an SSE stream while the upstream is silent: noticed within a second."""
    resp = await served.session.get(served.base + "/v1/elr/events")
    got = b""
    while got.count(b"\n\n") < 3:
        got += await resp.content.readany()
    resp.close()
    await wait_for(lambda: served.memory.in_use == 0, within_s=2)
    await asyncio.wait_for(echo_app[1].stream_ended.wait(), 5)
    assert echo_app[1].streams_cancelled == 1


async def test_client_leaves_before_the_upstream_answers(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    """Client gives up while the upstream has not answered yet: the upstream request is
    dropped within a fraction of a second, not kept until the upstream answers or the
    route's timeout (30 s); the gateway logs no error for it."""
    with pytest.raises(TimeoutError):
        await served.session.get(served.base + "/v1/elr/slow-headers?s=20",
                                 timeout=aiohttp.ClientTimeout(total=0.3))
    assert served.memory.in_use == 1
    await wait_for(lambda: served.memory.in_use == 0, within_s=1.5)
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_client_leaves_mid_upload(served: Served, echo_app: tuple[str, Control],
                                        framing: str) -> None:
    """Client vanishes mid-upload: the upstream never sees a complete body; pool back to 0."""
    if framing == "length":
        head = b"Content-Length: 1000000\r\n"
        partial = b"p" * 200_000
    else:
        head = b"Transfer-Encoding: chunked\r\n"
        partial = b"".join(b"%x\r\n%s\r\n" % (50_000, b"p" * 50_000) for _ in range(4))
    request = (b"POST /v1/elr/upload HTTP/1.1\r\nHost: gw\r\n" + head + b"\r\n" + partial)
    _, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(request)
    await writer.drain()
    await asyncio.wait_for(echo_app[1].upload_started.wait(), 5)
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(echo_app[1].request_ended.wait(), 5)
    assert echo_app[1].upload_errors == 1
    assert echo_app[1].uploads[0] <= 200_000
    await wait_for(lambda: served.memory.in_use == 0)


# --- smuggling, limits, paths ----------------------------------------------------------


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
])
async def test_smuggling_shapes_are_400(proxied: Client, echo_app: tuple[str, Control],
                                        headers: bytes) -> None:
    """Ambiguous framing (CL+TE, duplicate CL, TE not ending in chunked) is refused, unsent."""
    answer = await raw_exchange(
        proxied, b"POST /v1/elr/ingest_text HTTP/1.1\r\nHost: gw\r\n" + headers
        + b"\r\n5\r\nhello\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.0 400")
    assert echo_app[1].requests == 0


async def test_declared_body_over_route_limit_is_413(gateway: Callable[..., Any],
                                                     echo_app: tuple[str, Control]) -> None:
    """Content-Length over the route's own limit: 413 before the upstream is called."""
    client = await gateway(upstreams={"memory": echo_app[0], "reports": echo_app[0]},
                           auth={"enabled": False},
                           routes=[{"prefix": "/v1/elr", "upstream": "memory",
                                    "max_body_bytes": 1000},
                                   {"prefix": "/v1/reports", "upstream": "reports"}])
    resp = await client.post("/v1/elr/ingest_text", data=b"a" * 1001)
    assert resp.status == 413
    error = await error_of(resp)
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert error["details"] == {"max_bytes": 1000}
    assert echo_app[1].requests == 0
    resp = await client.post("/v1/reports/generate", data=b"a" * 1001)
    assert resp.status == 200  # the other route keeps the global limit


async def test_chunked_body_over_route_limit_is_413(gateway: Callable[..., Any],
                                                    echo_app: tuple[str, Control]) -> None:
    """A chunked upload is counted as it streams; past the limit it is cut and 413."""
    client = await gateway(upstreams={"memory": echo_app[0]}, auth={"enabled": False},
                           routes=[{"prefix": "/v1/elr", "upstream": "memory",
                                    "max_body_bytes": 100_000}])

    async def body() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"c" * 10_000

    resp = await client.post("/v1/elr/upload", data=body())
    assert resp.status == 413
    assert (await error_of(resp))["code"] == "PAYLOAD_TOO_LARGE"
    await wait_for(lambda: memory(client).in_use == 0)
    # The upstream may not even have started its handler; it never got a whole body.
    assert echo_app[1].upload_errors == len(echo_app[1].uploads)


async def test_global_body_limit_applies_to_chunked(gateway: Callable[..., Any],
                                                    echo_app: tuple[str, Control]) -> None:
    """Without a route limit, MAX_BODY_BYTES bounds a chunked upload too."""
    client = await gateway(upstreams={"memory": echo_app[0]}, auth={"enabled": False},
                           max_body_bytes=50_000)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"c" * 10_000

    resp = await client.post("/v1/elr/upload", data=body())
    assert resp.status == 413


@pytest.mark.parametrize(("raw", "status", "upstream_path"), [
    ("/v1/elr//items", 200, "/v1/elr/items"),
    ("/v1/elr/a/%2e%2e/items", 200, "/v1/elr/items"),
    ("/v1/elr/./items/", 200, "/v1/elr/items/"),
    ("/v1/elr/%2e%2e/activities/recommend", 404, None),
    ("/v1/elr/../activities/recommend", 404, None),
    ("/v1/elr/.%2E/%2e%2e/admin", 404, None),
    ("/v1/elr/%2e%2e", 404, None),
    ("/v1/elr/..%2f..%2fadmin", 400, None),
    ("/v1/elr/a%2Fb", 400, None),
    ("/v1/elr/a%5c..%5cb", 400, None),
])
async def test_path_cannot_escape_prefix(proxied: Client, echo_app: tuple[str, Control],
                                         raw: str, status: int,
                                         upstream_path: str | None) -> None:
    """Dot segments (plain or encoded), // and encoded slashes never leave the prefix."""
    answer = await raw_exchange(
        proxied, f"GET {raw} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), answer
    if upstream_path is not None:
        assert f'"path": "{upstream_path}"'.encode() in body
    else:
        assert echo_app[1].requests == 0
        assert b'"error"' in body


# --- circuit breaker -------------------------------------------------------------------


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def test_breaker_opens_answers_503_and_recovers(proxied: Client,
                                                      echo_app: tuple[str, Control]) -> None:
    """3 upstream 5xx open the circuit; then 503 CIRCUIT_OPEN without a call; then recovery."""
    clock = FakeClock()
    upstream = memory(proxied)
    upstream.breaker = CircuitBreaker("memory", failures=3, cooldown_s=10, clock=clock)
    control = echo_app[1]
    control.fail_status = 500
    for _ in range(3):
        assert (await proxied.get("/v1/elr/items")).status == 500
    assert upstream.breaker.state == "open"
    resp = await proxied.get("/v1/elr/items")
    assert resp.status == 503
    assert (await error_of(resp))["code"] == "CIRCUIT_OPEN"
    assert resp.headers["Retry-After"] == "10"
    assert control.requests == 3
    text = await metrics_text(proxied)
    assert 'luki_upstream_circuit_state{upstream="memory"} 2.0' in text
    assert 'luki_upstream_errors_total{kind="circuit_open",upstream="memory"} 1.0' in text

    clock.now += 10
    assert 'luki_upstream_circuit_state{upstream="memory"} 1.0' in await metrics_text(proxied)
    control.fail_status = 0
    assert (await proxied.get("/v1/elr/items")).status == 200
    assert upstream.breaker.state == "closed"
    assert 'luki_upstream_circuit_state{upstream="memory"} 0.0' in await metrics_text(proxied)


async def test_breaker_failed_probe_reopens(proxied: Client,
                                            echo_app: tuple[str, Control]) -> None:
    """A failing half-open probe opens the circuit again for a full cool-down."""
    clock = FakeClock()
    upstream = memory(proxied)
    upstream.breaker = CircuitBreaker("memory", failures=2, cooldown_s=10, clock=clock)
    echo_app[1].fail_status = 503
    for _ in range(2):
        await proxied.get("/v1/elr/items")
    clock.now += 10
    assert (await proxied.get("/v1/elr/items")).status == 503  # the probe, from upstream
    assert echo_app[1].requests == 3
    resp = await proxied.get("/v1/elr/items")
    assert (await error_of(resp))["code"] == "CIRCUIT_OPEN"
    assert echo_app[1].requests == 3


async def test_breaker_counts_connection_failures(gateway: Callable[..., Any]) -> None:
    """Refused connections trip the breaker with the configured threshold."""
    client = await gateway(upstreams={"memory": closed_port_url()}, auth={"enabled": False},
                           upstream={"retries": 0, "breaker_failures": 2})
    for _ in range(2):
        assert (await error_of(await client.get("/v1/elr/x")))["code"] == \
            "DOWNSTREAM_UNAVAILABLE"
    assert (await error_of(await client.get("/v1/elr/x")))["code"] == "CIRCUIT_OPEN"
