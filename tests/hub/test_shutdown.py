"""Graceful shutdown: every open stream gets its reconnect hint and the app stops within 5 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType, web

from luki_gateway.app import create_app
from luki_gateway.settings import Settings

from ..redis_server import free_port
from .streams import SseReader

WS_COUNT = 600
SSE_COUNT = 100


async def test_shutdown_closes_streams_fast(make_settings: Callable[..., Settings]) -> None:
    """On shutdown WS clients get close 1012 and SSE clients a reconnect event, well within 5 s."""
    app = create_app(make_settings(auth={"enabled": False}))
    runner = web.AppRunner(app)  # aiohttp's default 60 s shutdown timeout stays in place
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        gate = asyncio.Semaphore(100)

        async def open_ws() -> aiohttp.ClientWebSocketResponse:
            async with gate:
                ws = await session.ws_connect(f"{base}/v1/ws")
                await ws.receive_json(timeout=10)
                return ws

        async def open_sse() -> aiohttp.ClientResponse:
            async with gate:
                return await session.get(f"{base}/v1/events",
                                         params={"channel": "broadcast:bye"})

        sockets = await asyncio.gather(*(open_ws() for _ in range(WS_COUNT)))
        streams = await asyncio.gather(*(open_sse() for _ in range(SSE_COUNT)))

        async def ws_close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
            msg = await ws.receive(timeout=10)
            assert msg.type is WSMsgType.CLOSE
            return ws.close_code

        async def sse_last_event(resp: aiohttp.ClientResponse) -> str:
            return (await SseReader(resp).next(within=10)).event

        waiters = [asyncio.create_task(ws_close_code(ws)) for ws in sockets]
        sse_waiters = [asyncio.create_task(sse_last_event(r)) for r in streams]
        started = time.monotonic()
        await runner.cleanup()
        elapsed = time.monotonic() - started
        assert elapsed < 5, elapsed
        assert set(await asyncio.gather(*waiters)) == {1012}
        assert set(await asyncio.gather(*sse_waiters)) == {"reconnect"}
        for resp in streams:
            resp.close()
