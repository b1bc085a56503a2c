"""Bare aiohttp stream handlers (no hub, no auth): the RSS reference per idle connection."""

from __future__ import annotations

import asyncio

from aiohttp import web


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    """GET /ws: accept and read until the client leaves."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for _ in ws:
        pass
    return ws


async def sse_handler(request: web.Request) -> web.StreamResponse:
    """GET /events: an open, silent SSE stream."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b": open\n\n")
    # Idle until the client leaves (run with handler_cancellation: that cancels us).
    await asyncio.Event().wait()
    return resp


def create_app() -> web.Application:
    """Just the two stream handlers."""
    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/events", sse_handler)
    return app


if __name__ == "__main__":
    from .serve import parse_args, run

    run(create_app(), parse_args().port)
