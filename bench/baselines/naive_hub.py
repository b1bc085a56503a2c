"""A naive aiohttp hub: WebSocket and SSE subscribers, publish loops ``await send`` per socket.

Speaks the same wire protocol as the gateway for what the benchmark uses: WS ``subscribe``
-> ``subscribed``, events as ``{"type":"event","channel","data"}``; SSE ``data:`` lines;
``POST /publish {channel, data}``.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Broadcast = Callable[[web.Request, str, list[web.StreamResponse], object], Awaitable[int]]


@dataclass
class HubState:
    """Subscribers per channel and the broadcast loop in use."""

    broadcast: Broadcast
    channels: defaultdict[str, set[web.StreamResponse]] = field(
        default_factory=lambda: defaultdict(set))


HUB = web.AppKey("hub", HubState)


def _subs(app: web.Application) -> defaultdict[str, set[web.StreamResponse]]:
    return app[HUB].channels


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    """GET /ws: subscribe messages add the socket to channels."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    joined: list[str] = []
    try:
        async for msg in ws:
            try:
                data = json.loads(msg.data)
            except (TypeError, ValueError):
                continue
            if isinstance(data, dict) and data.get("type") == "subscribe":
                channel = str(data.get("channel"))
                _subs(request.app)[channel].add(ws)
                joined.append(channel)
                await ws.send_str(json.dumps({"type": "subscribed", "channel": channel}))
    finally:
        for channel in joined:
            _subs(request.app)[channel].discard(ws)
    return ws


async def sse_handler(request: web.Request) -> web.StreamResponse:
    """GET /events?channel=X: an SSE stream of the channel's events."""
    channel = request.query.get("channel", "")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(b": subscribed\n\n")
    _subs(request.app)[channel].add(resp)
    try:
        # Idle until the client leaves (run with handler_cancellation: that cancels us).
        await asyncio.Event().wait()
    finally:
        _subs(request.app)[channel].discard(resp)
    return resp


async def naive_broadcast(request: web.Request, channel: str,
                          targets: list[web.StreamResponse], data: object) -> int:
    """Serialise once, then await a send on every subscriber in turn."""
    ws_text = json.dumps({"type": "event", "channel": channel, "data": data})
    sse = f"data: {json.dumps(data)}\n\n".encode()
    sent = 0
    for target in targets:
        try:
            if isinstance(target, web.WebSocketResponse):
                await target.send_str(ws_text)
            else:
                await target.write(sse)
            sent += 1
        except (ConnectionError, RuntimeError):
            pass
    return sent


async def publish(request: web.Request) -> web.Response:
    """POST /publish {channel, data}: deliver to every subscriber of the channel."""
    body = await request.json()
    channel = str(body.get("channel"))
    targets = list(_subs(request.app).get(channel, ()))
    delivered = await request.app[HUB].broadcast(request, channel, targets, body.get("data"))
    return web.json_response({"delivered_local": delivered})


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz."""
    return web.json_response({"status": "ok"})


def create_app(broadcast: Broadcast = naive_broadcast) -> web.Application:
    """The hub app with a pluggable broadcast loop."""
    app = web.Application()
    app[HUB] = HubState(broadcast)
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/events", sse_handler)
    app.router.add_post("/publish", publish)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    from .serve import parse_args, run

    run(create_app(), parse_args().port)
