"""A naive aiohttp SSE relay: POST /v1/chat/stream forwarded to the agent, bytes copied back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
AGENT = web.AppKey("agent", str)


async def relay(request: web.Request) -> web.StreamResponse:
    """Open the agent's stream and copy each chunk to the client as it arrives."""
    body = await request.read()
    async with request.app[SESSION].post(
            request.app[AGENT] + "/v1/chat/stream", data=body,
            headers={"Content-Type": "application/json"}) as upstream:
        out = web.StreamResponse(status=upstream.status, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await out.prepare(request)
        async for chunk in upstream.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
    return out


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One session for all turns (no total timeout: streams are long)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        app[SESSION] = session
        yield


def create_app(agent: str) -> web.Application:
    """The relay in front of ``agent``."""
    app = web.Application()
    app[AGENT] = agent.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/stream", relay)
    return app


if __name__ == "__main__":
    from .serve import parse_args, run

    args = parse_args([("upstream", str)])
    run(create_app(args.upstream), args.port)
