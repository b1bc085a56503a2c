"""Two gateway apps sharing one real Redis: cross-process fan-out, resume, Redis restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from luki_gateway.hub.hub import HUB, Hub

from ..redis_server import RedisServer
from .streams import SseReader, wait_until

Client = TestClient[Any, Any]


def _hub(client: Client) -> Hub:
    assert client.app is not None
    return client.app[HUB]


async def _pair(gateway: Callable[..., Any], redis_url: str, **extra: Any
                ) -> tuple[Client, Client]:
    settings = {"auth": {"enabled": False}, "redis_url": redis_url, **extra}
    return await gateway(**settings), await gateway(**settings)


async def _ws(client: Client, channel: str, last_id: str | None = None
              ) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect("/v1/ws")
    await ws.receive_json(timeout=5)
    message: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if last_id is not None:
        message["last_id"] = last_id
    await ws.send_json(message)
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    return ws


async def _publish(client: Client, channel: str, n: int) -> str:
    resp = await client.post("/v1/events/publish", json={"channel": channel, "data": {"n": n}})
    assert resp.status == 200, await resp.text()
    event_id: str = (await resp.json())["id"]
    return event_id


async def _ws_events(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[tuple[str, int]]:
    got = []
    while len(got) < count:
        message = await ws.receive_json(timeout=10)
        if message["type"] == "event":
            got.append((message["id"], message["data"]["n"]))
    return got


async def test_every_subscriber_on_both_gets_every_event_once_in_order(
        gateway: Callable[..., Any], redis_url: str) -> None:
    """WS and SSE subscribers on two apps see publishes from both, in one order, no duplicates."""
    a, b = await _pair(gateway, redis_url)
    channel = "broadcast:cluster"
    sockets = [await _ws(a, channel), await _ws(b, channel)]
    streams = [await c.get("/v1/events", params={"channel": channel}) for c in (a, b)]
    readers = [SseReader(s) for s in streams]
    await wait_until(lambda: _hub(a).local_count(channel) == 2
                     and _hub(b).local_count(channel) == 2)
    ids = []
    for n in range(60):
        ids.append(await _publish(a if n % 2 == 0 else b, channel, n))
    expected = list(zip(ids, range(60), strict=True))
    for ws in sockets:
        assert await _ws_events(ws, 60) == expected
    for reader in readers:
        got = await reader.take(60)
        assert [(e.id, e.json()["data"]["n"]) for e in got] == expected
    # Nothing extra arrives afterwards (no duplicates from the other process).
    await _publish(a, channel, 999)
    for ws in sockets:
        assert (await _ws_events(ws, 1))[0][1] == 999
    for ws in sockets:
        await ws.close()
    for stream in streams:
        stream.close()


async def test_resume_after_disconnect_gets_exactly_the_missed_events(
        gateway: Callable[..., Any], redis_url: str) -> None:
    """Disconnect on one app, 50 events published on the other, reconnect: exactly those 50."""
    a, b = await _pair(gateway, redis_url)
    channel = "broadcast:resume"
    ws = await _ws(a, channel)
    first = await _publish(b, channel, 0)
    assert await _ws_events(ws, 1) == [(first, 0)]
    await ws.close()
    missed = [await _publish(b, channel, n) for n in range(1, 51)]
    ws = await _ws(a, channel, last_id=first)
    assert await _ws_events(ws, 50) == list(zip(missed, range(1, 51), strict=True))
    live = await _publish(b, channel, 51)
    assert await _ws_events(ws, 1) == [(live, 51)]
    await ws.close()
    sse = await a.get("/v1/events", params={"channel": channel},
                      headers={"Last-Event-ID": missed[24]})
    got = await SseReader(sse).take(26)
    assert [e.id for e in got] == [*missed[25:], live]
    sse.close()


async def test_redis_restart_mid_run(gateway: Callable[..., Any], redis_url: str,
                                     redis_server: RedisServer) -> None:
    """Redis killed: local delivery continues; restarted: cross-process delivery resumes."""
    a, b = await _pair(gateway, redis_url)
    channel = "broadcast:outage"
    on_a, on_b = await _ws(a, channel), await _ws(b, channel)
    before = await _publish(b, channel, 0)
    assert (await _ws_events(on_a, 1))[0] == (before, 0)
    assert (await _ws_events(on_b, 1))[0] == (before, 0)

    redis_server.stop()
    await wait_until(lambda: not _hub(a).broker.connected and not _hub(b).broker.connected)
    # During the outage a publish still reaches its own process's subscribers.
    async with asyncio.timeout(5):
        local = await _publish(a, channel, 1)
    assert await _ws_events(on_a, 1) == [(local, 1)]

    redis_server.start()
    await wait_until(lambda: _hub(a).broker.connected and _hub(b).broker.connected,
                     within=10)
    # Subscribers are told their channel may have missed events while Redis was away.
    for ws in (on_a, on_b):
        assert await ws.receive_json(timeout=5) == {
            "type": "gap", "channel": channel, "reason": "broker_reconnected"}
    after = await _publish(b, channel, 2)
    assert await _ws_events(on_a, 1) == [(after, 2)]
    assert await _ws_events(on_b, 1) == [(after, 2)]
    # Clients resume from history written after the restart.
    resumed = await _ws(a, channel, last_id=before)
    replay = await _ws_events(resumed, 1)
    assert replay == [(after, 2)]
    for ws in (on_a, on_b, resumed):
        await ws.close()
    stats = (await (await a.get("/v1/stats")).json())["broker"]
    assert stats == {"kind": "redis", "connected": True, "reconnects": 1}


async def test_frozen_redis_is_noticed_and_recovered(gateway: Callable[..., Any],
                                                     redis_url: str,
                                                     redis_server: RedisServer) -> None:
    """Redis frozen (SIGSTOP): the silent link is probed and dropped; thawed: delivery resumes."""
    a, b = await _pair(gateway, redis_url, hub={"redis_liveness_s": 0.3})
    channel = "broadcast:frozen"
    on_a, on_b = await _ws(a, channel), await _ws(b, channel)
    redis_server.pause()
    try:
        await wait_until(lambda: not _hub(a).broker.connected
                         and not _hub(b).broker.connected, within=5)
        async with asyncio.timeout(5):
            local = await _publish(a, channel, 1)  # times out against Redis, delivered here
        assert await _ws_events(on_a, 1) == [(local, 1)]
    finally:
        redis_server.resume()
    await wait_until(lambda: _hub(a).broker.connected and _hub(b).broker.connected, within=10)
    after = await _publish(b, channel, 2)
    # The timed-out publish may still run once Redis thaws: wait for n=2 on both.
    for ws in (on_a, on_b):
        got = await _ws_events(ws, 1)
        while got[-1][1] != 2:
            got += await _ws_events(ws, 1)
        assert got[-1] == (after, 2)
    for ws in (on_a, on_b):
        await ws.close()


async def test_publish_delivered_locally_during_a_freeze_gaps_every_process(
        gateway: Callable[..., Any], redis_url: str, redis_server: RedisServer) -> None:
    """Redis frozen for less than the listeners' liveness (nobody reconnects): publishes on
    one app reach only its own subscribers; once Redis answers, subscribers of that channel
    on every app get gap broker_reconnected (events were lost for the other app's)."""
    a, b = await _pair(gateway, redis_url, hub={"redis_liveness_s": 60})
    channel, other = "broadcast:local-only", "broadcast:untouched"
    on_a, on_b = await _ws(a, channel), await _ws(b, channel)
    bystander = await _ws(b, other)
    redis_server.pause()
    try:
        async with asyncio.timeout(5):
            first = await _publish(a, channel, 1)  # sent, applied only when Redis thaws
            second = await _publish(a, channel, 2)  # never reaches Redis
        assert await _ws_events(on_a, 2) == [(first, 1), (second, 2)]
    finally:
        redis_server.resume()
    assert _hub(a).broker.connected and _hub(b).broker.connected  # no reconnect
    gap = {"type": "gap", "channel": channel, "reason": "broker_reconnected"}
    for ws in (on_a, on_b):
        async with asyncio.timeout(10):
            while (message := await ws.receive_json()) != gap:
                # Only the publish Redis had already read may still arrive (with its id).
                assert message["type"] == "event" and message["data"] == {"n": 1}, message
    # Only the channel that lost events is told.
    after = await _publish(b, other, 3)
    assert await bystander.receive_json(timeout=5) == {
        "type": "event", "channel": other, "id": after, "data": {"n": 3}}
    for ws in (on_a, on_b, bystander):
        await ws.close()
