"""The request flow: no middleware frame outlives the handshake; every request is recorded once."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

import luki_gateway.middlewares as middlewares
from luki_gateway.app import create_app
from luki_gateway.routes.access import PUBLIC, declare
from luki_gateway.settings import Settings

from ..conftest import bearer
from ..hub.streams import wait_until

MIDDLEWARES_DIR = str(Path(middlewares.__file__).parent)


def suspended_coroutines(directory: str) -> list[str]:
    """Names of live, suspended coroutines whose code is in ``directory``."""
    gc.collect()
    return [obj.cr_code.co_name for obj in gc.get_objects()
            if inspect.iscoroutine(obj) and obj.cr_frame is not None
            and obj.cr_code.co_filename.startswith(directory)]


async def test_idle_websocket_keeps_no_middleware_frame(gateway: Callable[..., Any]) -> None:
    """Authenticated idle sockets keep their handler's frame but none of the middlewares'."""
    client = await gateway()
    sockets = [await client.ws_connect("/v1/ws", headers=bearer("alice", ("chat:write",)))
               for _ in range(3)]
    for ws in sockets:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    routes_dir = str(Path(middlewares.__file__).parent.parent / "routes")
    assert suspended_coroutines(routes_dir).count("ws_handler") == 3  # the check can see them
    assert suspended_coroutines(MIDDLEWARES_DIR) == []
    for ws in sockets:
        await ws.close()


async def test_websocket_access_line_when_the_socket_closes(
        gateway: Callable[..., Any], captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """The access line of a WebSocket (status 101, principal) is written when it closes."""
    client = await gateway(access_log=True)
    ws = await client.ws_connect("/v1/ws", headers=bearer("alice", ("chat:write",)))
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"

    def ws_lines() -> list[dict[str, Any]]:
        return [line for line in captured_logs()
                if line["event"] == "request" and line["route"] == "/v1/ws"]

    await asyncio.sleep(0.05)
    assert ws_lines() == []  # still open
    await ws.close()
    await wait_until(lambda: bool(ws_lines()))
    [line] = ws_lines()
    assert line["status"] == 101 and line["principal"] == "jwt:alice"
    assert line["request_id"] and line["duration_ms"] >= 50


async def test_client_gone_mid_request_is_499(
        aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings],
        captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """A handler cancelled because the client left is counted and logged as 499, once."""
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(30)
        return web.Response(text="late")

    app = create_app(make_settings(access_log=True))
    declare(app, app.router.add_get("/test/slow", slow), PUBLIC)
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    request = asyncio.ensure_future(client.get("/test/slow"))
    await started.wait()
    request.cancel()

    def slow_lines() -> list[dict[str, Any]]:
        return [line for line in captured_logs()
                if line["event"] == "request" and line["route"] == "/test/slow"]

    await wait_until(lambda: bool(slow_lines()), within=5)
    assert [line["status"] for line in slow_lines()] == [499]
    text = await (await client.get("/metrics")).text()
    assert 'route="/test/slow",status="499"' in text


async def test_redirects_pass_through_and_are_counted(
        serve_app: Callable[..., Any], make_settings: Callable[..., Settings]) -> None:
    """An aiohttp redirect raised by a handler is the answer (not an error) and counted so."""

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/healthz")

    async def awaitable_handler(request: web.Request) -> web.Response:
        future: asyncio.Future[web.Response] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, web.Response(text="later"))
        return await future

    app = create_app(make_settings())
    declare(app, app.router.add_get("/test/moved", moved), PUBLIC)
    declare(app, app.router.add_get("/test/later", awaitable_handler), PUBLIC)
    client = await serve_app(app)
    resp = await client.get("/test/moved", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/healthz"
    assert resp.headers["X-Request-ID"]
    resp = await client.get("/test/later")
    assert resp.status == 200 and await resp.text() == "later"
    text = await (await client.get("/metrics")).text()
    assert 'route="/test/moved",status="302"' in text
    assert 'route="/test/later",status="200"' in text
