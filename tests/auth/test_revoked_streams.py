"""Streams opened with an API key end when the key is revoked: WebSocket 4401, SSE an
``error`` event, on every process, whichever process (or the CLI) revoked it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from luki_gateway.auth.api_keys import KEY_STORE, open_store
from luki_gateway.hub.hub import HUB

from ..conftest import bearer
from ..hub.streams import SseReader
from ..redis_server import RedisServer
from .probe import Probe


def auth(key: str) -> dict[str, str]:
    """Bearer header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


async def revoke_elsewhere(p: Probe) -> None:
    """Revoke the only key through a store of its own (as `keys revoke` does)."""
    other = open_store(p.settings)
    try:
        (record,) = await other.list()
        assert await other.revoke(record.id) is not None
    finally:
        await other.close()


async def open_ws(p: Probe, headers: dict[str, str]) -> aiohttp.ClientWebSocketResponse:
    """A subscribed WebSocket (welcome and subscription confirmed)."""
    ws = await p.client.ws_connect("/v1/ws", headers=headers)
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    await ws.send_json({"type": "subscribe", "channel": "broadcast:news"})
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    return ws


async def assert_ws_revoked(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The socket's last words: UNAUTHENTICATED saying revoked, then close 4401."""
    message = await ws.receive_json(timeout=5)
    assert message["error"]["code"] == "UNAUTHENTICATED", message
    assert "revoked" in message["error"]["message"]
    assert (await ws.receive(timeout=5)).type is WSMsgType.CLOSE
    assert ws.close_code == 4401


async def assert_sse_revoked(reader: SseReader) -> None:
    """The stream's last event: error UNAUTHENTICATED saying revoked, then the end."""
    event = await reader.next(within=5)
    assert event.event == "error", event
    assert event.json()["error"]["code"] == "UNAUTHENTICATED"
    assert "revoked" in event.json()["error"]["message"]
    try:
        extra = await reader.next(within=5)
    except EOFError:
        return
    raise AssertionError(f"stream went on after the error: {extra}")


async def test_revoking_a_key_ends_its_streams_on_every_process(
        backend: str, probe: Callable[..., Any]) -> None:
    """WS and SSE (header and ?ticket=) on two gateways end within about a second of the
    revocation; a JWT's socket on the same gateway stays open."""
    first: Probe = await probe()
    second: Probe = await probe(settings=first.settings)  # same key store: two processes
    key = await first.add_key(owner="alice")
    ws = await open_ws(first, auth(key))
    jwt_ws = await open_ws(first, bearer("alice"))
    resp = await first.client.post("/v1/auth/ticket", headers=auth(key))
    ticket = (await resp.json())["ticket"]
    by_header = await second.client.get("/v1/events?channel=broadcast:news",
                                        headers=auth(key))
    by_ticket = await second.client.get("/v1/events", params={"channel": "broadcast:news",
                                                             "ticket": ticket})
    assert by_header.status == by_ticket.status == 200
    revoked_at = time.monotonic()
    await revoke_elsewhere(first)
    await assert_ws_revoked(ws)
    await assert_sse_revoked(SseReader(by_header))
    await assert_sse_revoked(SseReader(by_ticket))
    # The key store is polled every 0.5 s; then the streams end at once.
    assert time.monotonic() - revoked_at < 1.5
    await jwt_ws.send_json({"type": "ping"})
    assert (await jwt_ws.receive_json(timeout=5))["type"] == "pong"
    await jwt_ws.close()


async def test_a_message_on_a_socket_whose_key_was_revoked_is_refused(
        backend: str, probe: Callable[..., Any]) -> None:
    """A message is refused (and the socket closed 4401) once a request with the key would
    be, even before the hub has ended the socket."""
    p: Probe = await probe()
    key = await p.add_key(owner="alice")
    ws = await open_ws(p, auth(key))
    # Keep the hub from ending the socket by itself: only the message can notice.
    hub, store = p.app[HUB], p.app[KEY_STORE]
    store.revoked.unlisten(hub.close_revoked)
    hub.revoked = frozenset()
    await revoke_elsewhere(p)
    async with asyncio.timeout(2):  # the Redis store's cache may vouch for it ~0.5 s more
        while True:
            if (await p.client.get("/v1/me", headers=auth(key))).status == 401:
                break
            await asyncio.sleep(0.02)
    await ws.send_json({"type": "subscribe", "channel": "broadcast:other", "id": "s1"})
    await assert_ws_revoked(ws)


@pytest.mark.parametrize("backend", ["redis"])
async def test_an_open_socket_outlives_a_key_store_outage(
        backend: str, probe: Callable[..., Any], redis_server: RedisServer) -> None:
    """With the Redis store down a message is not refused: the socket keeps the key it
    authenticated with (only a known revocation ends it)."""
    p: Probe = await probe()
    key = await p.add_key(owner="alice")
    ws = await open_ws(p, auth(key))
    redis_server.kill()
    try:
        await asyncio.sleep(p.settings.auth.key_cache_s + 0.1)  # the cached record is stale
        await ws.send_json({"type": "ping", "id": "p1"})
        assert await ws.receive_json(timeout=5) == {"type": "pong", "id": "p1"}
    finally:
        redis_server.start()
    await ws.close()
