"""The reverse proxy against a real upstream: paths, queries, headers, bodies, streams."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from luki_gateway.upstream.sessions import UPSTREAMS

from ..conftest import bearer
from .proxy_upstream import Control, create_upstream_app
from .test_proxy_faults import raw_exchange

Client = TestClient[Any, Any]


@pytest.fixture
async def proxied(gateway: Callable[..., Any], echo_app: tuple[str, Control]) -> Client:
    """The real gateway with the memory upstream pointed at the echo app, auth off."""
    client: Client = await gateway(upstreams={"memory": echo_app[0]},
                                   auth={"enabled": False})
    return client


def raw_url(client: Client, raw: str) -> URL:
    """An absolute URL to the gateway with ``raw`` sent exactly as written (no requoting)."""
    return URL(f"http://{client.host}:{client.port}{raw}", encoded=True)


def header(echoed: dict[str, Any], name: str) -> list[str]:
    """All values of ``name`` the upstream received."""
    return [v for k, v in echoed["headers"] if k.lower() == name.lower()]


async def test_path_and_query_pass_unchanged(proxied: Client) -> None:
    """Path and raw query string (encoding, order, repeats, empty values) arrive as sent."""
    resp = await proxied.session.get(raw_url(proxied, "/v1/elr/items/a%20b?z=1&a=%2Fx&a=2&flag&e="))
    assert resp.status == 200
    echoed = await resp.json()
    assert echoed["path"] == "/v1/elr/items/a%20b"
    assert echoed["query"] == "z=1&a=%2Fx&a=2&flag&e="
    assert resp.headers["X-Upstream"] == "echo"


async def test_prefix_itself_is_routed(proxied: Client) -> None:
    """The bare prefix (no trailing part) is proxied too; a look-alike prefix is not."""
    resp = await proxied.get("/v1/elr")
    assert (await resp.json())["path"] == "/v1/elr"
    resp = await proxied.get("/v1/elrx/items")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "NOT_FOUND"


async def test_post_body_and_status_pass_through(proxied: Client) -> None:
    """A small JSON body reaches the upstream byte for byte; the status comes back."""
    resp = await proxied.post("/v1/elr/ingest_text", data=b'{"text":"hi"}',
                              headers={"Content-Type": "application/json"})
    echoed = await resp.json()
    assert echoed["method"] == "POST"
    assert echoed["body"] == '{"text":"hi"}'
    assert header(echoed, "Content-Type") == ["application/json"]
    assert header(echoed, "Content-Length") == ["13"]


async def test_upstream_error_status_is_preserved(proxied: Client,
                                                  echo_app: tuple[str, Control]) -> None:
    """A 4xx/5xx the upstream chose is passed through untouched, body included."""
    echo_app[1].fail_status = 418
    resp = await proxied.get("/v1/elr/items")
    assert resp.status == 418
    assert await resp.json() == {"failed": True}


async def test_forwarding_and_trace_headers(proxied: Client) -> None:
    """X-Forwarded-*, Forwarded, X-Request-ID and traceparent are set once by the gateway."""
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    resp = await proxied.get("/v1/elr/items", headers=[
        ("X-Request-ID", "req-123"), ("traceparent", parent),
        ("tracestate", "congo=t61rcWkgMzE"), ("tracestate", "rojo=00f067aa0ba902b7"),
        ("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"), ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Host", "evil.example")])
    echoed = await resp.json()
    assert header(echoed, "X-Request-ID") == ["req-123"]
    sent_parent = header(echoed, "traceparent")
    assert len(sent_parent) == 1
    assert sent_parent[0].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert sent_parent[0] != parent  # the gateway's own span is the parent upstream
    assert header(echoed, "tracestate") == ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]
    fresh = await proxied.get("/v1/elr/items", headers={"tracestate": "congo=t61rcWkgMzE"})
    assert header(await fresh.json(), "tracestate") == []  # a new trace starts without it
    assert header(echoed, "X-Forwarded-For") == ["127.0.0.1"]
    assert header(echoed, "X-Forwarded-Proto") == ["http"]
    host = f"{proxied.host}:{proxied.port}"
    assert header(echoed, "X-Forwarded-Host") == [host]
    assert header(echoed, "Forwarded") == [f'for=127.0.0.1;proto=http;host="{host}"']
    assert header(echoed, "X-Real-IP") == []
    assert resp.headers["X-Request-ID"] == "req-123"


async def test_hostile_host_cannot_break_forwarded(proxied: Client) -> None:
    """A Host with a quote is left out of Forwarded instead of breaking its quoting."""
    resp = await proxied.get("/v1/elr/x", headers={"Host": 'a";for=6.6.6.6'})
    echoed = await resp.json()
    assert header(echoed, "Forwarded") == ["for=127.0.0.1;proto=http"]


async def test_trusted_proxy_chain_is_extended(gateway: Callable[..., Any],
                                               echo_app: tuple[str, Control]) -> None:
    """Behind a trusted proxy, its X-Forwarded-For / Forwarded are kept and appended to."""
    client = await gateway(upstreams={"memory": echo_app[0]}, auth={"enabled": False},
                           trusted_proxies=["127.0.0.0/8"])
    resp = await client.get("/v1/elr/x", headers={
        "X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7;proto=https",
        "X-Forwarded-Proto": "https"})
    echoed = await resp.json()
    assert header(echoed, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert header(echoed, "X-Forwarded-Proto") == ["https"]
    assert header(echoed, "Forwarded")[0].startswith("for=203.0.113.7;proto=https, for=")


async def test_hop_by_hop_request_headers_are_dropped(proxied: Client) -> None:
    """Connection, Keep-Alive, TE, Upgrade, Proxy-* and Connection-named headers stop here."""
    resp = await proxied.get("/v1/elr/items", headers={
        "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "5",
        "TE": "trailers", "Upgrade": "h2c", "Proxy-Authorization": "Basic Zm9v",
        "Trailer": "X-T", "X-Kept": "yes"})
    echoed = await resp.json()
    names = {k.lower() for k, _ in echoed["headers"]}
    for gone in ("x-secret-hop", "keep-alive", "te", "upgrade", "proxy-authorization",
                 "trailer"):
        assert gone not in names
    assert header(echoed, "X-Kept") == ["yes"]


async def test_client_luki_headers_are_stripped_and_identity_added(
        gateway: Callable[..., Any], echo_app: tuple[str, Control]) -> None:
    """Client X-LUKi-* never reach the upstream; the gateway adds the principal's identity."""
    client = await gateway(upstreams={"memory": echo_app[0]})
    headers = {**bearer("alice", ("elr:read", "chat:write")),
               "X-LUKi-Principal": "admin", "x-luki-scopes": "*", "X-LUKi-Other": "1"}
    resp = await client.get("/v1/elr/items", headers=headers)
    assert resp.status == 200
    echoed = await resp.json()
    assert header(echoed, "X-LUKi-Principal") == ["alice"]
    assert header(echoed, "X-LUKi-Scopes") == ["chat:write elr:read"]
    assert header(echoed, "X-LUKi-Auth-Type") == ["jwt"]
    assert header(echoed, "X-LUKi-Other") == []
    assert header(echoed, "Authorization") == []  # the gateway consumed the credential


async def test_route_scopes_are_enforced(gateway: Callable[..., Any],
                                         echo_app: tuple[str, Control]) -> None:
    """GET needs elr:read and POST elr:write; without them the upstream is never called."""
    client = await gateway(upstreams={"memory": echo_app[0]})
    resp = await client.post("/v1/elr/ingest_text", json={"text": "x"},
                             headers=bearer("bob", ("elr:read",)))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "INSUFFICIENT_SCOPE"
    resp = await client.get("/v1/elr/items")
    assert resp.status == 401
    assert echo_app[1].requests == 0


async def test_hop_by_hop_response_headers_are_dropped(proxied: Client) -> None:
    """Upstream hop-by-hop headers stay behind; both Set-Cookie headers come through."""
    resp = await proxied.get("/v1/elr/hop")
    assert await resp.text() == "ok"
    assert "X-Private" not in resp.headers
    assert "Keep-Alive" not in resp.headers
    assert "Proxy-Authenticate" not in resp.headers
    assert len(resp.headers.getall("Set-Cookie")) == 2


async def test_compressed_body_passes_untouched(proxied: Client) -> None:
    """A gzip body is relayed as bytes with its Content-Encoding (no decompression)."""
    resp = await proxied.get("/v1/elr/gzip", auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await resp.read()) == b"hello " * 100


async def test_no_content_and_head(proxied: Client) -> None:
    """204 passes through with no body; HEAD is answered without one."""
    resp = await proxied.delete("/v1/elr/nothing")
    assert resp.status == 204
    assert await resp.read() == b""
    resp = await proxied.head("/v1/elr/items")
    assert resp.status == 200
    assert await resp.read() == b""


async def test_method_not_in_route_is_405(gateway: Callable[..., Any],
                                          echo_app: tuple[str, Control]) -> None:
    """A method the route does not list gets 405 with Allow, and no upstream call."""
    client = await gateway(upstreams={"memory": echo_app[0]}, auth={"enabled": False},
                           routes=[{"prefix": "/v1/elr", "upstream": "memory",
                                    "methods": ["GET"]}])
    resp = await client.post("/v1/elr/items", data=b"x")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in resp.headers["Allow"]
    assert echo_app[1].requests == 0


async def test_large_download_streams(proxied: Client) -> None:
    """A body larger than the small-body limit is streamed through intact (chunked)."""
    resp = await proxied.get("/v1/elr/big?n=3000000")
    assert resp.status == 200
    total = 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
    assert total == 3_000_000
    assert proxied.app[UPSTREAMS].get("memory").in_use == 0


def rss_mib() -> float:
    """This process's resident memory now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


async def test_huge_download_keeps_memory_flat(proxied: Client) -> None:
    """256 MiB pass through while resident memory (sampled throughout) stays nearly flat."""
    size = 256 * 1024 * 1024
    before = rss_mib()
    peak = before
    resp = await proxied.get(f"/v1/elr/big?n={size}&length=1")
    total = 0
    async for chunk in resp.content.iter_chunked(1 << 20):
        total += len(chunk)
        peak = max(peak, rss_mib())
    assert total == size
    assert peak - before < 64, f"resident memory grew {peak - before:.0f} MiB"


async def test_large_download_with_length_keeps_it(proxied: Client) -> None:
    """A streamed body with a declared Content-Length keeps that length downstream."""
    resp = await proxied.get("/v1/elr/big?n=500000&length=1")
    assert resp.headers["Content-Length"] == "500000"
    assert len(await resp.read()) == 500_000


async def test_event_stream_is_relayed_as_it_arrives(proxied: Client) -> None:
    """SSE events arrive before the upstream stream ends (no buffering)."""
    resp = await proxied.get("/v1/elr/events")
    assert resp.headers["Content-Type"] == "text/event-stream"
    got = b""
    while got.count(b"\n\n") < 3:
        got += await resp.content.readany()
    assert b"id: 2\nevent: tick\ndata: 2\n\n" in got
    resp.close()


async def test_chunked_upload_streams(proxied: Client, echo_app: tuple[str, Control]) -> None:
    """A chunked upload larger than the small-body limit arrives whole."""

    async def body() -> Any:
        for _ in range(20):
            yield b"u" * 10000

    resp = await proxied.post("/v1/elr/upload", data=body())
    assert resp.status == 200
    assert await resp.json() == {"received": 200000}


async def test_upstream_with_base_path_and_strip_prefix(
        gateway: Callable[..., Any], aiohttp_server: Callable[..., Any]) -> None:
    """strip_prefix and rewrite change only the prefix; a base path on the URL is kept."""
    app = create_upstream_app()
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    client = await gateway(
        upstreams={"memory": base + "/api", "reports": base},
        auth={"enabled": False},
        routes=[{"prefix": "/v1/elr", "upstream": "memory", "strip_prefix": True},
                {"prefix": "/v1/reports", "upstream": "reports", "rewrite": "/internal/r"}])
    echoed = await (await client.get("/v1/elr/items?k=1")).json()
    assert echoed["raw_path"] == "/api/items?k=1"
    echoed = await (await client.get("/v1/reports/generate")).json()
    assert echoed["raw_path"] == "/internal/r/generate"


async def test_longest_prefix_wins(gateway: Callable[..., Any],
                                   aiohttp_server: Callable[..., Any]) -> None:
    """/v1/elr/admin routes to its own upstream even though /v1/elr also matches."""
    first = await aiohttp_server(create_upstream_app())
    second = web.Application()

    async def marker(request: web.Request) -> web.Response:
        """Identifies the second upstream."""
        return web.Response(text="second")

    second.router.add_route("*", "/{tail:.*}", marker)
    second_server = await aiohttp_server(second)
    client = await gateway(
        upstreams={"memory": str(first.make_url("")).rstrip("/"),
                   "reports": str(second_server.make_url("")).rstrip("/")},
        auth={"enabled": False},
        routes=[{"prefix": "/v1/elr", "upstream": "memory"},
                {"prefix": "/v1/elr/admin", "upstream": "reports"}])
    assert await (await client.get("/v1/elr/admin/x")).text() == "second"
    assert (await (await client.get("/v1/elr/items")).json())["path"] == "/v1/elr/items"


async def test_upstream_metrics(proxied: Client) -> None:
    """Requests and durations are counted per upstream and status."""
    await proxied.get("/v1/elr/items")
    text = await (await proxied.get("/metrics")).text()
    assert 'luki_upstream_requests_total{status="200",upstream="memory"} 1.0' in text
    assert 'luki_upstream_duration_seconds_count{upstream="memory"} 1.0' in text
    assert 'luki_upstream_circuit_state{upstream="memory"} 0.0' in text


async def test_token_subject_with_line_break_cannot_split_the_request(
        gateway: Callable[..., Any], echo_app: tuple[str, Control]) -> None:
    """A signed token whose subject carries CRLF gets 400, and nothing reaches the upstream."""
    client = await gateway(upstreams={"memory": echo_app[0]})
    before = echo_app[1].requests
    resp = await client.get("/v1/elr/items",
                            headers=bearer("alice\r\nX-Evil: 1", ("elr:read",)))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["message"] == "a header value cannot be forwarded"
    assert echo_app[1].requests == before


async def test_sequential_requests_share_one_upstream_connection(
        proxied: Client, echo_app: tuple[str, Control]) -> None:
    """Keep-alive to the upstream: ten requests, one pooled connection, none left in use."""
    for i in range(10):
        resp = await proxied.get(f"/v1/elr/items?i={i}")
        assert resp.status == 200
        await resp.read()
    pool = proxied.app[UPSTREAMS].get("memory").pool
    assert pool.idle == 1 and pool.in_use == 0


@pytest.mark.parametrize("raw", ["/v1/elr//admin/secret", "/v1/elr/x/../admin/secret",
                                 "/v1/elr/./admin/secret", "/v1/elr/a/%2e%2e/admin/secret"])
async def test_a_path_that_normalises_into_a_nested_route_is_refused(
        gateway: Callable[..., Any], aiohttp_server: Callable[..., Any], raw: str) -> None:
    """The router matches the raw path: /v1/elr//admin came in under /v1/elr, whose scope
    the caller holds. Normalised it belongs to /v1/elr/admin: refused (404), never
    forwarded with only /v1/elr's scope checked."""
    upstream = await aiohttp_server(create_upstream_app())
    client = await gateway(
        upstreams={"memory": str(upstream.make_url("")).rstrip("/")},
        routes=[{"prefix": "/v1/elr", "upstream": "memory", "scopes": {"*": ["elr:read"]}},
                {"prefix": "/v1/elr/admin", "upstream": "memory",
                 "scopes": {"*": ["admin:write"]}}])
    reader = bearer("bob", ("elr:read",))
    assert (await client.get("/v1/elr/admin/secret", headers=reader)).status == 403
    answer = await raw_exchange(client, (
        f"GET {raw} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        f"Authorization: {reader['Authorization']}\r\n\r\n").encode())
    assert answer.split(b" ", 2)[1] == b"404", answer
    assert b'"path": "/v1/elr/admin' not in answer
    # Within its own route a normalised path is still forwarded.
    assert (await client.get("/v1/elr/items//x", headers=reader)).status == 200
