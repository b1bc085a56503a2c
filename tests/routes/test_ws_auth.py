"""Who may open streams and subscribe: WS/SSE credentials, channel rules, expiry, Origin."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from ..conftest import bearer, make_token
from ..hub.streams import SseReader


async def _welcome(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message: dict[str, Any] = await ws.receive_json(timeout=5)
    assert message["type"] == "welcome", message
    return message


async def test_ws_bearer_header_and_subprotocol(gateway: Callable[..., Any]) -> None:
    """A token in Authorization or in Sec-WebSocket-Protocol authenticates the socket."""
    client = await gateway()
    ws = await client.ws_connect("/v1/ws", headers=bearer("alice"))
    assert (await _welcome(ws))["principal"]["subject"] == "alice"
    await ws.close()
    ws = await client.ws_connect("/v1/ws", protocols=("bearer", make_token("bob")))
    assert ws.protocol == "bearer"  # only the chosen subprotocol is echoed, never the token
    assert (await _welcome(ws))["principal"]["subject"] == "bob"
    await ws.close()


async def test_ws_first_message_auth(gateway: Callable[..., Any]) -> None:
    """Without credentials the first message may authenticate; a bad one closes with 4401."""
    client = await gateway()
    ws = await client.ws_connect("/v1/ws")
    await ws.send_json({"type": "auth", "token": make_token("carol")})
    assert (await _welcome(ws))["principal"]["subject"] == "carol"
    await ws.close()
    ws = await client.ws_connect("/v1/ws")
    await ws.send_json({"type": "auth", "token": "garbage"})
    error = await ws.receive_json(timeout=5)
    assert error["error"]["code"] == "UNAUTHENTICATED"
    assert (await ws.receive(timeout=5)).type is WSMsgType.CLOSE
    assert ws.close_code == 4401
    ws = await client.ws_connect("/v1/ws")
    await ws.send_json({"type": "subscribe", "channel": "broadcast:x"})
    assert (await ws.receive_json(timeout=5))["error"]["code"] == "UNAUTHENTICATED"
    assert (await ws.receive(timeout=5)).type is WSMsgType.CLOSE
    assert ws.close_code == 4401


async def test_ws_auth_timeout(gateway: Callable[..., Any]) -> None:
    """A socket that never authenticates is closed 4401 after ws_auth_timeout_s."""
    client = await gateway(auth={"ws_auth_timeout_s": 0.2})
    ws = await client.ws_connect("/v1/ws")
    assert (await ws.receive_json(timeout=5))["error"]["code"] == "UNAUTHENTICATED"
    assert (await ws.receive(timeout=5)).type is WSMsgType.CLOSE
    assert ws.close_code == 4401


async def test_ws_origin_mismatch_refused(gateway: Callable[..., Any]) -> None:
    """An upgrade from a foreign Origin is refused before any WebSocket exists."""
    client = await gateway(cors_origins=["https://app.example"])
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/v1/ws", headers={**bearer("alice"),
                                                   "Origin": "https://evil.example"})
    assert refused.value.status == 403
    ws = await client.ws_connect("/v1/ws", headers={**bearer("alice"),
                                                    "Origin": "https://app.example"})
    await _welcome(ws)
    await ws.close()


async def test_channel_rules_on_ws(gateway: Callable[..., Any]) -> None:
    """Own user channels and broadcast are allowed; others' channels are FORBIDDEN, socket kept."""
    client = await gateway(hub={"broadcast_subscribe": False})
    ws = await client.ws_connect("/v1/ws", headers=bearer("alice"))
    await _welcome(ws)
    expected = {"user:alice": "subscribed", "user:alice:notes": "subscribed",
                "user:bob": "FORBIDDEN", "user:alicex": "FORBIDDEN",
                "broadcast:all": "FORBIDDEN", "session:alice": "subscribed",
                "session:bob": "FORBIDDEN"}
    for channel, outcome in expected.items():
        await ws.send_json({"type": "subscribe", "channel": channel})
        reply = await ws.receive_json(timeout=5)
        got = reply["type"] if reply["type"] == "subscribed" else reply["error"]["code"]
        assert got == outcome, channel
    await ws.send_json({"type": "ping"})
    assert (await ws.receive_json(timeout=5))["type"] == "pong"
    await ws.close()


async def test_token_expiry_closes_4401_unless_refreshed(gateway: Callable[..., Any]) -> None:
    """A credential that expires ends the socket with UNAUTHENTICATED/4401; auth refreshes it."""
    client = await gateway()
    short = await client.ws_connect("/v1/ws", headers=bearer("dave", ttl_s=1))
    refreshed = await client.ws_connect("/v1/ws", headers=bearer("dave", ttl_s=1))
    await _welcome(short)
    await _welcome(refreshed)
    await refreshed.send_json({"type": "auth", "token": make_token("dave", ttl_s=3600)})
    assert (await refreshed.receive_json(timeout=5))["type"] == "authenticated"
    await refreshed.send_json({"type": "auth", "token": make_token("eve")})
    assert (await refreshed.receive_json(timeout=5))["error"]["code"] == "FORBIDDEN"
    expired = await short.receive_json(timeout=5)
    assert expired["error"]["code"] == "UNAUTHENTICATED"
    assert (await short.receive(timeout=5)).type is WSMsgType.CLOSE
    assert short.close_code == 4401
    await refreshed.send_json({"type": "ping"})
    assert (await refreshed.receive_json(timeout=5))["type"] == "pong"
    await refreshed.close()


async def test_sse_ticket_and_channel_rules(gateway: Callable[..., Any]) -> None:
    """EventSource-style ?ticket= opens a stream; a foreign channel is 403 before streaming."""
    client = await gateway()
    resp = await client.post("/v1/auth/ticket", headers=bearer("alice"))
    ticket = (await resp.json())["ticket"]
    refused = await client.get("/v1/events", params={"channel": "user:bob",
                                                     "ticket": ticket})
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "FORBIDDEN"
    stream = await client.get("/v1/events", params={"channel": "user:alice",
                                                    "ticket": ticket})
    assert stream.status == 200
    publisher = bearer("svc", scopes=("events:publish",))
    sent = await client.post("/v1/events/publish", headers=publisher,
                             json={"channel": "user:alice", "data": {"hi": 1}})
    assert sent.status == 200
    event = await SseReader(stream).next()
    assert event.json()["data"] == {"hi": 1}
    stream.close()


async def test_sse_ticket_expiry_says_to_reconnect(gateway: Callable[..., Any]) -> None:
    """An SSE stream whose ticket expires ends with an error event that tells the client to
    reconnect with fresh credentials (it cannot send an ``auth`` message as a socket can)."""
    client = await gateway()
    resp = await client.post("/v1/auth/ticket", headers=bearer("alice", ttl_s=1))
    ticket = (await resp.json())["ticket"]
    stream = await client.get("/v1/events", params={"channel": "user:alice",
                                                    "ticket": ticket})
    assert stream.status == 200
    event = await SseReader(stream).next(within=5)
    assert event.event == "error"
    error = event.json()["error"]
    assert error["code"] == "UNAUTHENTICATED"
    assert "reconnect" in error["message"] and "auth message" not in error["message"]
    stream.close()


async def test_publish_and_stats_need_scopes(gateway: Callable[..., Any]) -> None:
    """Publishing needs events:publish and /v1/stats needs admin:read."""
    client = await gateway()
    body = {"channel": "broadcast:x", "data": {}}
    assert (await client.post("/v1/events/publish", json=body)).status == 401
    denied = await client.post("/v1/events/publish", json=body, headers=bearer("alice"))
    assert denied.status == 403
    assert (await denied.json())["error"]["code"] == "INSUFFICIENT_SCOPE"
    ok = await client.post("/v1/events/publish", json=body,
                           headers=bearer("svc", scopes=("events:publish",)))
    assert ok.status == 200
    assert (await client.get("/v1/stats", headers=bearer("alice"))).status == 403
    stats = await client.get("/v1/stats", headers=bearer("ops", scopes=("admin:read",)))
    assert stats.status == 200
    assert (await stats.json())["events"]["published"] == 1


async def test_concurrent_ws_lease_limit(gateway: Callable[..., Any]) -> None:
    """Over the per-user WebSocket limit the upgrade is refused with 429 concurrency."""
    client = await gateway(ratelimit={"enabled": True, "per_min": 0, "per_hour": 0,
                                      "max_ws_per_user": 1, "max_streams": 5})
    first = await client.ws_connect("/v1/ws", headers=bearer("frank"))
    await _welcome(first)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/v1/ws", headers=bearer("frank"))
    assert refused.value.status == 429
    await first.close()
    await asyncio.sleep(0)  # let the server side of the close run
    async with asyncio.timeout(5):
        while True:
            try:
                again = await client.ws_connect("/v1/ws", headers=bearer("frank"))
                break
            except aiohttp.WSServerHandshakeError:
                await asyncio.sleep(0.05)
    await _welcome(again)
    await again.close()
