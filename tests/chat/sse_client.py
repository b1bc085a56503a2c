"""Reading a gateway SSE response in tests with the gateway's own parser."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from luki_gateway.upstream.sse import SseParser


@dataclass
class Received:
    """One event as a client saw it."""

    event: str
    id: str | None
    data: Any


async def read_events(resp: aiohttp.ClientResponse, stop_after: int | None = None
                      ) -> list[Received]:
    """Every event of an SSE response until it closes (or ``stop_after`` events)."""
    parser = SseParser()
    out: list[Received] = []
    async for chunk in resp.content.iter_any():
        for ev in parser.feed(chunk):
            out.append(Received(ev.event, ev.id, json.loads(ev.data)))
            if stop_after is not None and len(out) >= stop_after:
                return out
    return out
