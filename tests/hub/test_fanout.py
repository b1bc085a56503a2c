"""Fan-out at scale in one process, and the once-per-event encoding it relies on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from luki_gateway.hub.event import Event
from luki_gateway.hub.hub import HUB

SUBSCRIBERS = 1000
EVENTS = 100


async def test_thousand_subscribers_receive_a_burst(gateway: Callable[..., Any]) -> None:
    """1,000 WebSocket subscribers each receive all 100 events of a burst, in order."""
    client = await gateway(auth={"enabled": False})
    url = client.make_url("/v1/ws")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(100)

        async def join() -> aiohttp.ClientWebSocketResponse:
            async with gate:
                ws = await session.ws_connect(url)
                await ws.receive_json(timeout=10)
                await ws.send_json({"type": "subscribe", "channel": "broadcast:burst"})
                assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
                return ws

        sockets = await asyncio.gather(*(join() for _ in range(SUBSCRIBERS)))

        async def read_all(ws: aiohttp.ClientWebSocketResponse) -> list[int]:
            got = []
            for _ in range(EVENTS):
                msg = await ws.receive(timeout=30)
                got.append(int(msg.data.rsplit('"n":', 1)[1].rstrip("}")))
            return got

        readers = [asyncio.create_task(read_all(ws)) for ws in sockets]
        started = time.monotonic()
        for start in range(0, EVENTS, 50):
            batch = [{"channel": "broadcast:burst", "data": {"n": n}}
                     for n in range(start, start + 50)]
            resp = await session.post(client.make_url("/v1/events/publish"),
                                      json={"events": batch})
            assert resp.status == 200
            assert all(r["delivered_local"] == SUBSCRIBERS
                       for r in (await resp.json())["results"])
        results = await asyncio.gather(*readers)
        elapsed = time.monotonic() - started
        assert all(r == list(range(EVENTS)) for r in results)
        assert client.app is not None
        stats = client.app[HUB].stats()
        assert stats["events"]["delivered"] == SUBSCRIBERS * EVENTS
        assert stats["slow_consumer_actions"] == {}
        assert elapsed < 30
        await asyncio.gather(*(ws.close() for ws in sockets))


def test_event_encodings_are_built_once() -> None:
    """Every subscriber gets the very same bytes object: no per-subscriber serialisation."""
    event = Event("broadcast:x", "1-0", "update", '{"a":1}')
    assert event.ws is event.ws
    assert event.sse is event.sse
    # A text frame: FIN + opcode 1, unmasked length, then the JSON message.
    assert event.ws[:2] == bytes([0x81, len(event.ws) - 2])
    assert event.ws[2:] == (b'{"type":"event","channel":"broadcast:x","id":"1-0",'
                            b'"event":"update","data":{"a":1}}')
    assert event.sse.startswith(b"%x\r\nid: 1-0\nevent: update\ndata: " % (len(event.sse) - 6))
    assert Event.from_wire("broadcast:x", event.to_wire()).json_message() == \
        event.json_message()
