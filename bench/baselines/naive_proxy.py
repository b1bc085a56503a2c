"""The proxy a user writes by hand: aiohttp, one shared ClientSession, ~20 lines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def proxy(request: web.Request) -> web.Response:
    """Forward the request, buffer the answer, return it."""
    async with request.app[SESSION].request(
            request.method, request.app[UPSTREAM] + request.path_qs,
            data=await request.read() or None,
            headers={"Content-Type": request.headers.get("Content-Type", "")}) as resp:
        body = await resp.read()
    return web.Response(body=body, status=resp.status,
                        content_type=resp.content_type or "application/octet-stream")


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One keep-alive session for every request."""
    async with aiohttp.ClientSession() as session:
        app[SESSION] = session
        yield


def create_app(upstream: str) -> web.Application:
    """The naive proxy forwarding everything to ``upstream``."""
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


if __name__ == "__main__":
    from .serve import parse_args, run

    args = parse_args([("upstream", str)])
    run(create_app(args.upstream), args.port)
