"""Streaming contenders: the gateway hub, the naive aiohttp hub, the raw frame loop, bare."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .gateway import GatewayVariant, start_gateway
from .httpload import Connection, build_request, connect
from .procs import Server, free_port, python_cmd, start_server

CHANNEL = "broadcast:bench"


@dataclass
class HubTarget:
    """A started streaming server and where its endpoints are."""

    server: Server
    headers: dict[str, str]
    ws_path: str
    sse_path: str
    publish_path: str
    stop: Callable[[], None]


_BASELINE_MODULES = {"naive-hub": "bench.baselines.naive_hub",
                     "raw-loop": "bench.baselines.raw_hub",
                     "bare-aiohttp": "bench.baselines.bare_ws"}


async def start_hub(name: str, core: int | None) -> HubTarget:
    """Start ``gw-hub`` (auth on with a JWT, in-memory hub) or one of the baselines."""
    if name == "gw-hub":
        gw = await start_gateway(name, GatewayVariant(auth=True), core)
        return HubTarget(gw.server, gw.headers, "/v1/ws", f"/v1/events?channel={CHANNEL}",
                         "/v1/events/publish", gw.stop)
    port = free_port()
    server = await start_server(Server(name, python_cmd(_BASELINE_MODULES[name], "--port",
                                                        str(port)), port, core))
    return HubTarget(server, {}, "/ws", f"/events?channel={CHANNEL}", "/publish", server.stop)


def event_data(seq: int, size: int = 100) -> dict[str, Any]:
    """An event whose JSON ``data`` is exactly ``size`` bytes (for small seq)."""
    base = len(json.dumps({"seq": seq, "pad": ""}))
    return {"seq": seq, "pad": "x" * max(0, size - base)}


class Publisher:
    """Publishes over one keep-alive connection (so publishing costs the server little)."""

    def __init__(self, hub: HubTarget) -> None:
        self.hub = hub
        self.conn: Connection | None = None

    async def publish(self, seq: int) -> tuple[int, bytes]:
        """POST one event; returns (status, body)."""
        body = json.dumps({"channel": CHANNEL, "event": "bench",
                           "data": event_data(seq)}).encode()
        headers = {**self.hub.headers, "Content-Type": "application/json"}
        raw = build_request("POST", self.hub.publish_path, f"127.0.0.1:{self.hub.server.port}",
                            headers, body)
        if self.conn is None or self.conn.lost:
            self.conn = await connect(self.hub.server.port)
        return await self.conn.request(raw)

    def close(self) -> None:
        """Drop the connection."""
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()
