"""/ready follows the app's lifecycle: 503 before start-up finished and while draining."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from luki_gateway.app import create_app
from luki_gateway.settings import Settings

from .redis_server import RedisServer


async def test_ready_before_during_and_after(make_settings: Callable[..., Settings]) -> None:
    """A real socket bound before start-up: /ready 503 while starting, 200, then 503 draining."""
    app = create_app(make_settings())
    startup_may_finish = asyncio.Event()

    async def slow_resource(_: web.Application) -> AsyncIterator[None]:
        await startup_may_finish.wait()
        yield

    app.cleanup_ctx.append(slow_resource)
    # Bind the app's own request handler before start-up (what AppRunner does after it), so
    # requests arrive while start-up runs; pre_freeze readies the middleware chain.
    loop = asyncio.get_running_loop()
    app._set_loop(loop)
    app.pre_freeze()
    handler = web.Server(app._handle, request_factory=app._make_request)  # type: ignore[arg-type]
    server = await loop.create_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    startup = asyncio.create_task(app.startup())
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/ready") as resp:
                assert resp.status == 503
                body: dict[str, Any] = await resp.json()
                assert body == {"status": "not_ready", "checks": {"startup": "pending"}}
            async with session.get(f"{url}/healthz") as resp:
                assert resp.status == 200  # alive, just not ready
            startup_may_finish.set()
            await asyncio.wait_for(startup, timeout=10)
            async with session.get(f"{url}/ready") as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] == "ready"
            await app.shutdown()  # what SIGTERM starts: on_shutdown handlers
            async with session.get(f"{url}/ready") as resp:
                assert resp.status == 503
                assert (await resp.json())["checks"]["startup"] == "draining"
    finally:
        startup_may_finish.set()
        if not startup.done():
            await startup
        server.close()
        await handler.shutdown(1)
        await server.wait_closed()
        await app.cleanup()


async def test_ready_reports_redis_down(gateway: Callable[..., Any], redis_url: str,
                                        redis_server: RedisServer) -> None:
    """With REDIS_URL set, /ready answers 503 while Redis is unreachable and 200 once back."""
    client = await gateway(redis_url=redis_url)
    assert (await client.get("/ready")).status == 200
    redis_server.kill()
    resp = await client.get("/ready")
    assert resp.status == 503
    assert (await resp.json())["checks"]["redis"].startswith("unreachable")
    redis_server.start()
    for _ in range(50):
        resp = await client.get("/ready")
        if resp.status == 200:
            break
    assert resp.status == 200


async def test_starts_with_redis_down_and_is_not_ready(gateway: Callable[..., Any], redis_url: str,
                                                       redis_server: RedisServer) -> None:
    """Redis down at start-up: the gateway still starts (alive) but is not ready."""
    redis_server.kill()
    client = await gateway(redis_url=redis_url)
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/ready")
    assert resp.status == 503
    assert (await resp.json())["checks"]["redis"].startswith("unreachable")
