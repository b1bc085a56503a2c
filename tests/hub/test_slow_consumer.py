"""One client stops reading: everyone else still gets every event; the slow one meets policy."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from luki_gateway.hub.hub import HUB, Hub

from .streams import (
    resume_reading,
    stall_only_subscriber,
    stalled_sse,
    stalled_ws,
    stop_reading,
    wait_until,
    ws_client_frame,
)

CHANNEL = "broadcast:load"
EVENTS = 300
QUEUE_BYTES = 64 * 1024


def _hub(client: TestClient[Any, Any]) -> Hub:
    assert client.app is not None
    return client.app[HUB]


async def _fast_reader(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[int]:
    got = []
    while len(got) < count:
        message = await ws.receive_json(timeout=10)
        if message["type"] == "event":
            got.append(message["data"]["n"])
    return got


async def _drain_raw(reader: asyncio.StreamReader, stop: bytes) -> bytes:
    """Everything the stalled peer was sent, up to and including ``stop`` (or EOF)."""
    seen = bytearray()
    async with asyncio.timeout(10):
        while stop not in seen:
            chunk = await reader.read(65536)
            if not chunk:
                break
            seen += chunk
    return bytes(seen)


async def _setup(gateway: Callable[..., Any], policy: str
                 ) -> tuple[TestClient[Any, Any], list[aiohttp.ClientWebSocketResponse],
                            asyncio.StreamReader, asyncio.StreamWriter]:
    client = await gateway(auth={"enabled": False},
                           hub={"slow_consumer_policy": policy, "queue_max_bytes": QUEUE_BYTES,
                                "queue_max_messages": 100})
    fast = []
    for _ in range(3):
        ws = await client.ws_connect("/v1/ws")
        await ws.receive_json(timeout=5)
        await ws.send_json({"type": "subscribe", "channel": CHANNEL})
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        fast.append(ws)
    reader, writer = await stalled_ws(client.host, client.port)
    writer.write(ws_client_frame(json.dumps({"type": "subscribe", "channel": CHANNEL}).encode()))
    await writer.drain()
    hub = _hub(client)
    await wait_until(lambda: hub.local_count(CHANNEL) == 4)
    # Small kernel buffers on both ends: the backlog reaches the gateway's queue quickly.
    stalled = list(hub.connections.values())[-1]
    stalled.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stop_reading(writer)
    return client, fast, reader, writer


async def _publish_burst(client: TestClient[Any, Any], hub: Hub) -> int:
    """Publish EVENTS events of ~4 KB in batches; returns the largest queue seen (bytes)."""
    worst = 0
    pad = "x" * 4000
    for start in range(0, EVENTS, 50):
        batch = [{"channel": CHANNEL, "data": {"n": n, "pad": pad}}
                 for n in range(start, start + 50)]
        resp = await client.post("/v1/events/publish", json={"events": batch})
        assert resp.status == 200
        worst = max([worst, *(sub.queued_bytes for sub in hub.connections.values())])
    return worst


@pytest.mark.parametrize("policy", ["disconnect", "drop_oldest", "coalesce"])
async def test_slow_consumer_never_slows_the_others(gateway: Callable[..., Any],
                                                    policy: str) -> None:
    """Fast readers get all events in order; the stalled one is bounded and handled by policy."""
    client, fast, reader, writer = await _setup(gateway, policy)
    hub = _hub(client)
    readers = [asyncio.create_task(_fast_reader(ws, EVENTS)) for ws in fast]
    worst = await _publish_burst(client, hub)
    for task in readers:
        assert await task == list(range(EVENTS))
    assert worst <= QUEUE_BYTES
    assert hub.slow_actions[policy] >= 1
    last = b'"n":%d,' % (EVENTS - 1)
    if policy == "disconnect":
        assert len(hub.connections) == 3
        resume_reading(writer)
        seen = await _drain_raw(reader, b"\x88")
        assert b"SLOW_CONSUMER" in seen
    else:
        assert len(hub.connections) == 4
        resume_reading(writer)
        seen = await _drain_raw(reader, last)
        assert last in seen
        assert seen.count(b'"type":"event"') < EVENTS
        if policy == "drop_oldest":
            assert b'"type":"gap"' in seen
    writer.close()
    for ws in fast:
        await ws.close()


async def test_slow_sse_stream_is_disconnected_with_a_final_error(
        gateway: Callable[..., Any]) -> None:
    """A stalled SSE reader gets an error event SLOW_CONSUMER and the end of the body."""
    client = await gateway(auth={"enabled": False},
                           hub={"slow_consumer_policy": "disconnect",
                                "queue_max_bytes": QUEUE_BYTES, "queue_max_messages": 100})
    hub = _hub(client)
    reader, writer = await stalled_sse(client.host, client.port, f"/v1/events?channel={CHANNEL}")
    await stall_only_subscriber(hub, CHANNEL, writer)
    worst = await _publish_burst(client, hub)
    assert worst <= QUEUE_BYTES
    assert hub.slow_actions["disconnect"] == 1
    assert not hub.connections
    resume_reading(writer)
    seen = await _drain_raw(reader, b"\r\n0\r\n\r\n")
    assert b"event: error" in seen and b"SLOW_CONSUMER" in seen
    assert seen.endswith(b"\r\n0\r\n\r\n")
    writer.close()


async def test_reply_to_a_backlogged_socket_drops_old_events_not_the_socket(
        gateway: Callable[..., Any]) -> None:
    """A ping (any reply) to a socket whose queue is full of droppable events takes the
    place of the oldest of them: the socket stays open and gets a gap, then the pong."""
    client = await gateway(auth={"enabled": False},
                           hub={"slow_consumer_policy": "drop_oldest", "queue_max_messages": 10,
                                "queue_max_bytes": 10_000_000})
    hub = _hub(client)
    reader, writer = await stalled_ws(client.host, client.port)
    writer.write(ws_client_frame(json.dumps({"type": "subscribe", "channel": CHANNEL}).encode()))
    await writer.drain()
    stalled = await stall_only_subscriber(hub, CHANNEL, writer)
    pad = "x" * 400
    for start in range(0, EVENTS, 50):
        resp = await client.post("/v1/events/publish", json={"events": [
            {"channel": CHANNEL, "data": {"n": n, "pad": pad}} for n in range(start, start + 50)]})
        assert resp.status == 200
    assert stalled.queue_depth == 10  # full by count: the reply needs a slot of its own
    writer.write(ws_client_frame(json.dumps({"type": "ping", "id": "p1"}).encode()))
    await writer.drain()
    await wait_until(lambda: stalled.closed or (stalled._queue is not None
                                                and stalled._queue[-1][0] is None))
    assert not stalled.closed and len(hub.connections) == 1
    assert hub.slow_actions["disconnect"] == 0
    resume_reading(writer)
    seen = await _drain_raw(reader, b'"type":"pong"')
    assert b'{"type":"pong","id":"p1"}' in seen and b"SLOW_CONSUMER" not in seen
    assert b'"type":"gap"' in seen
    # The newest events were kept, and came before the pong.
    assert seen.index(b'"n":%d,' % (EVENTS - 1)) < seen.index(b'"type":"pong"')
    writer.close()


async def _backlogged_ws(gateway: Callable[..., Any]
                         ) -> tuple[Hub, Any, asyncio.StreamReader, asyncio.StreamWriter]:
    """A WS peer with a deep backlog (nothing dropped) whose heartbeat the test drives."""
    # No timed pings: the test calls hub.sweep(ping=True) itself, so ticks are not raced.
    client = await gateway(auth={"enabled": False},
                           hub={"slow_consumer_policy": "drop_oldest", "ws_heartbeat_s": 3600,
                                "queue_max_messages": 1000, "queue_max_bytes": 8_000_000})
    hub = _hub(client)
    reader, writer = await stalled_ws(client.host, client.port)
    writer.write(ws_client_frame(json.dumps({"type": "subscribe", "channel": CHANNEL}).encode()))
    await writer.drain()
    sub = await stall_only_subscriber(hub, CHANNEL, writer)
    pad = "x" * 4000
    for start in range(0, 600, 50):
        resp = await client.post("/v1/events/publish", json={"events": [
            {"channel": CHANNEL, "data": {"n": n, "pad": pad}} for n in range(start, start + 50)]})
        assert resp.status == 200
    assert sub.queue_depth > 300 and not sub.closed
    return hub, sub, reader, writer


async def test_backlogged_peer_that_stopped_reading_is_dropped_by_the_heartbeat(
        gateway: Callable[..., Any]) -> None:
    """A peer that neither reads its backlog nor sends anything for a whole heartbeat
    interval is dropped like one that missed its pong (it held a full queue forever)."""
    hub, sub, _, writer = await _backlogged_ws(gateway)
    for _ in range(5):  # the first tick may still see frames the kernel took late
        hub.sweep(ping=True)
        if sub.closed:
            break
        await asyncio.sleep(0.05)
    assert sub.closed and not hub.connections
    assert sub.transport.is_closing()
    writer.close()


async def test_backlogged_peer_that_still_reads_is_kept(gateway: Callable[..., Any]) -> None:
    """A slow peer that sends nothing but keeps taking its backlog is slow, not dead."""
    hub, sub, reader, writer = await _backlogged_ws(gateway)
    resume_reading(writer)
    for _ in range(4):
        async with asyncio.timeout(5):
            while not sub._drained:  # read until the gateway could send it a little more
                assert await reader.read(4096)
        hub.sweep(ping=True)
        assert not sub.closed
        assert sub.queue_depth > 0  # still backlogged: no ping was sent to answer
    assert sub.awaiting_pong
    writer.close()


async def test_backlogged_peer_reading_too_little_to_resume_the_transport_is_kept(
        gateway: Callable[..., Any]) -> None:
    """A peer that reads a little between ticks (the transport stays paused, so no frame
    leaves the queue) is slow, not dead: fewer bytes waiting in the transport show it. It
    was dropped at the second tick."""
    hub, sub, reader, writer = await _backlogged_ws(gateway)
    hub.sweep(ping=True)
    resume_reading(writer)
    for _ in range(4):
        taken = 0
        while taken < 4096:
            taken += len(await asyncio.wait_for(reader.read(4096 - taken), 5))
        stop_reading(writer)
        await asyncio.sleep(0.05)  # the gateway's loop moves more into the kernel's buffer
        assert sub.protocol._paused and not sub._drained  # no frame left the queue
        hub.sweep(ping=True)
        assert not sub.closed
        resume_reading(writer)
    writer.close()
