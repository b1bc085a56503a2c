"""MAX_BODY_BYTES: 413 PAYLOAD_TOO_LARGE for declared lengths and for chunked uploads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from luki_gateway.app import create_app
from luki_gateway.routes.access import PUBLIC, declare
from luki_gateway.settings import Settings

LIMIT = 4096


async def read_all(request: web.Request) -> web.Response:
    """Test route: reads the whole body and says how long it was."""
    return web.json_response({"bytes": len(await request.read())})


async def start(serve_app: Callable[..., Any], make_settings: Callable[..., Settings]) -> Any:
    """The real app with a 4 KiB limit and a body-reading route."""
    app = create_app(make_settings(max_body_bytes=LIMIT))
    declare(app, app.router.add_post("/test/read", read_all), PUBLIC)
    return await serve_app(app)


async def test_body_at_the_limit_passes(serve_app: Callable[..., Any],
                                        make_settings: Callable[..., Settings]) -> None:
    """Exactly MAX_BODY_BYTES is accepted, declared or chunked."""
    client = await start(serve_app, make_settings)
    resp = await client.post("/test/read", data=b"x" * LIMIT)
    assert (resp.status, await resp.json()) == (200, {"bytes": LIMIT})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * (LIMIT // 4)

    resp = await client.post("/test/read", data=chunks())
    assert (resp.status, await resp.json()) == (200, {"bytes": LIMIT})


async def test_declared_length_over_limit_is_refused(serve_app: Callable[..., Any],
                                                     make_settings: Callable[..., Settings]
                                                     ) -> None:
    """Content-Length over the limit: 413 in the error shape, naming the limit."""
    client = await start(serve_app, make_settings)
    resp = await client.post("/test/read", data=b"x" * (LIMIT + 1))
    assert resp.status == 413
    error = (await resp.json())["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert error["details"] == {"max_bytes": LIMIT}


async def test_declared_length_is_refused_before_the_body_arrives(
        serve_app: Callable[..., Any], make_settings: Callable[..., Settings]) -> None:
    """A huge declared length is answered at once: the gateway does not wait for the upload."""
    client = await start(serve_app, make_settings)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"POST /test/read HTTP/1.1\r\nHost: gw\r\nContent-Length: 10000000000\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        assert status_line.startswith(b"HTTP/1.1 413 ")
    finally:
        writer.close()


async def test_chunked_upload_over_limit_is_refused(serve_app: Callable[..., Any],
                                                    make_settings: Callable[..., Settings]
                                                    ) -> None:
    """A chunked upload without Content-Length is cut at the limit with 413."""
    client = await start(serve_app, make_settings)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"z" * 1024

    resp = await client.post("/test/read", data=chunks())
    assert resp.status == 413
    error = (await resp.json())["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert error["details"] == {"max_bytes": LIMIT}
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_limit_applies_to_unknown_routes_too(serve_app: Callable[..., Any],
                                                   make_settings: Callable[..., Settings]) -> None:
    """An oversized declared body is refused even where no route matches (no work spent)."""
    client = await start(serve_app, make_settings)
    resp = await client.post("/no/such/route", data=b"x" * (LIMIT * 2))
    assert resp.status == 413
