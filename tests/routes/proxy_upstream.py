"""A real upstream that echoes, streams and misbehaves on command, for the proxy tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(slots=True)
class Control:
    """What the upstream saw and how it should behave next."""

    fail_status: int = 0
    # Connections to drop (without any answer) before answering normally again.
    drop_next: int = 0
    requests: int = 0
    uploads: list[int] = field(default_factory=list)
    upload_errors: int = 0
    upload_started: asyncio.Event = field(default_factory=asyncio.Event)
    request_ended: asyncio.Event = field(default_factory=asyncio.Event)
    stream_ended: asyncio.Event = field(default_factory=asyncio.Event)
    streams_cancelled: int = 0


CONTROL = web.AppKey("control", Control)


async def echo(request: web.Request) -> web.Response:
    """Everything the upstream received, as JSON."""
    control = request.app[CONTROL]
    control.requests += 1
    if control.drop_next > 0 and request.transport is not None:
        control.drop_next -= 1
        request.transport.close()
        return web.Response()
    if control.fail_status:
        return web.json_response({"failed": True}, status=control.fail_status)
    body = await request.read()
    return web.json_response({
        "method": request.method,
        "raw_path": request.raw_path,
        "path": request.rel_url.raw_path,
        "query": request.rel_url.raw_query_string,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body": body.decode("latin-1"),
        "host": request.host,
    }, headers={"X-Upstream": "echo"})


async def big(request: web.Request) -> web.StreamResponse:
    """``n`` bytes in 64 KiB chunks, chunked (``?length=1`` declares Content-Length)."""
    n = int(request.query.get("n", "1048576"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("length"):
        response.content_length = n
    await response.prepare(request)
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < n:
            piece = chunk[: min(len(chunk), n - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        request.app[CONTROL].streams_cancelled += 1
        raise
    finally:
        request.app[CONTROL].stream_ended.set()
    return response


async def events(request: web.Request) -> web.StreamResponse:
    """An SSE stream: three events, then silence until the client leaves."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        for i in range(3):
            await response.write(f"id: {i}\nevent: tick\ndata: {i}\n\n".encode())
        if await _idle_until_client_leaves(request, 30.0):
            request.app[CONTROL].streams_cancelled += 1
    except asyncio.CancelledError:  # test servers cancel handlers on disconnect
        request.app[CONTROL].streams_cancelled += 1
        raise
    finally:
        request.app[CONTROL].stream_ended.set()
    return response


async def _idle_until_client_leaves(request: web.Request, limit_s: float) -> bool:
    """Stay silent until the client closes (True) or ``limit_s`` passes (False)."""
    for _ in range(int(limit_s / 0.02)):
        transport = request.transport
        if transport is None or transport.is_closing():
            return True
        await asyncio.sleep(0.02)
    return False


async def slow_headers(request: web.Request) -> web.Response:
    """Answers after ``?s=`` seconds."""
    await _idle_until_client_leaves(request, float(request.query.get("s", "5")))
    return web.json_response({"late": True})


async def slow_body(request: web.Request) -> web.StreamResponse:
    """Headers and a first chunk at once, then nothing for ``?s=`` seconds."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    await response.write(b"first")
    try:
        if await _idle_until_client_leaves(request, float(request.query.get("s", "5"))):
            request.app[CONTROL].streams_cancelled += 1
            return response
        await response.write_eof()
    except asyncio.CancelledError:
        request.app[CONTROL].streams_cancelled += 1
        raise
    finally:
        request.app[CONTROL].stream_ended.set()
    return response


async def reset(request: web.Request) -> web.StreamResponse:
    """Promises 1 MiB, sends 100 KiB, then drops the connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = 1 << 20
    await response.prepare(request)
    await response.write(b"y" * 100_000)
    assert request.transport is not None
    request.transport.close()
    return response


async def reset_small(request: web.Request) -> web.StreamResponse:
    """Promises 1000 bytes, sends 10, then drops the connection (fast-path size)."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b"z" * 10)
    assert request.transport is not None
    request.transport.close()
    return response


async def upload(request: web.Request) -> web.Response:
    """Reads the body in a streaming way and records how much arrived."""
    control = request.app[CONTROL]
    control.upload_started.set()
    seen = 0
    try:
        async for chunk in request.content.iter_any():
            seen += len(chunk)
        # aiohttp may end the iteration quietly on a lost connection; the reason stays here.
        if request.content.exception() is not None:
            control.upload_errors += 1
    except BaseException:  # a lost connection may also cancel the handler
        control.upload_errors += 1
        raise
    finally:
        control.uploads.append(seen)
        control.request_ended.set()
    return web.json_response({"received": seen})


async def hop(request: web.Request) -> web.Response:
    """A response carrying hop-by-hop headers and two cookies."""
    response = web.Response(text="ok", headers={"Connection": "X-Private", "X-Private": "1",
                                                "Keep-Alive": "timeout=5",
                                                "Proxy-Authenticate": "Basic"})
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


async def gzipped(request: web.Request) -> web.Response:
    """A pre-compressed body with Content-Encoding: gzip."""
    import gzip

    return web.Response(body=gzip.compress(b"hello " * 100),
                        headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})


async def no_content(request: web.Request) -> web.Response:
    """204 with no body."""
    return web.Response(status=204)


def create_upstream_app() -> web.Application:
    """The misbehaving upstream, mounted under /v1/elr so the default route reaches it."""
    app = web.Application(client_max_size=1 << 30)
    app[CONTROL] = Control()
    p = "/v1/elr"
    app.router.add_get(p + "/big", big)
    app.router.add_get(p + "/events", events)
    app.router.add_get(p + "/slow-headers", slow_headers)
    app.router.add_get(p + "/slow-body", slow_body)
    app.router.add_get(p + "/reset", reset)
    app.router.add_get(p + "/reset-small", reset_small)
    app.router.add_post(p + "/upload", upload)
    app.router.add_get(p + "/hop", hop)
    app.router.add_get(p + "/gzip", gzipped)
    app.router.add_delete(p + "/nothing", no_content)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def garbage_server(reply: bytes = b"THIS IS NOT HTTP AT ALL\r\n\r\n"
                         ) -> AsyncIterator[str]:
    """A TCP server answering every request with ``reply`` and closing (base URL yielded)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()
