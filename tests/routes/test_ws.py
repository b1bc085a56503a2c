"""GET /v1/ws: the JSON protocol, its refusals, resume and heartbeat, on the real app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from luki_gateway.app import create_app
from luki_gateway.hub.hub import HUB
from luki_gateway.routes.ws_protocol import WS_MESSAGE_HANDLERS, WsConnection
from luki_gateway.settings import load_settings

from ..hub.streams import wait_until

OPEN = {"auth": {"enabled": False}}


async def _connect(client: TestClient[Any, Any]) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect("/v1/ws")
    welcome = await ws.receive_json(timeout=5)
    assert welcome["type"] == "welcome" and welcome["connection_id"]
    return ws


async def _publish(client: TestClient[Any, Any], channel: str, data: Any,
                   event: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": channel, "data": data}
    if event:
        body["event"] = event
    resp = await client.post("/v1/events/publish", json=body)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def test_subscribe_receive_unsubscribe(gateway: Callable[..., Any], backend: str) -> None:
    """A subscriber gets published events with channel, id and data, and none after leaving."""
    client = await gateway(**OPEN)
    ws = await _connect(client)
    await ws.send_json({"type": "subscribe", "channel": "broadcast:news"})
    assert await ws.receive_json(timeout=5) == {"type": "subscribed", "channel": "broadcast:news"}
    published = await _publish(client, "broadcast:news", {"n": 1}, event="headline")
    assert published["delivered_local"] == 1
    message = await ws.receive_json(timeout=5)
    assert message == {"type": "event", "channel": "broadcast:news", "id": published["id"],
                       "event": "headline", "data": {"n": 1}}
    await ws.send_json({"type": "unsubscribe", "channel": "broadcast:news"})
    assert (await ws.receive_json(timeout=5))["type"] == "unsubscribed"
    await _publish(client, "broadcast:news", {"n": 2})
    await ws.send_json({"type": "ping", "id": 7})
    assert await ws.receive_json(timeout=5) == {"type": "pong", "id": 7}
    await ws.close()


async def test_malformed_input_answers_errors_and_keeps_socket(gateway: Callable[..., Any]
                                                              ) -> None:
    """Bad JSON, non-objects, unknown types and bad channels get VALIDATION_ERROR; socket stays."""
    client = await gateway(**OPEN)
    ws = await _connect(client)
    bad = ["{not json", "[1,2]", '{"type": 5}', '{"type":"nope"}', "\"str\"",
           '{"type":"subscribe","channel":"nochannel"}',
           '{"type":"subscribe","channel":"user:a b"}',
           '{"type":"subscribe","channel":"broadcast:x","last_id":"yesterday"}',
           '{"type":"subscribe"}']
    for text in bad:
        await ws.send_str(text)
        message = await ws.receive_json(timeout=5)
        assert message["type"] == "error", text
        assert message["error"]["code"] == "VALIDATION_ERROR"
        assert message["error"]["trace_id"]
    await ws.send_bytes(b"\x00\x01")
    assert (await ws.receive_json(timeout=5))["error"]["code"] == "VALIDATION_ERROR"
    # A refusal names the message it answers, whatever was wrong with it.
    for text in ['{"type":"frobnicate","id":"u1"}', '{"type":"subscribe","id":"u1"}']:
        await ws.send_str(text)
        assert (await ws.receive_json(timeout=5))["id"] == "u1", text
    await ws.send_json({"type": "ping"})
    assert await ws.receive_json(timeout=5) == {"type": "pong"}
    assert not ws.closed
    await ws.close()


async def test_lone_surrogate_message_is_malformed(gateway: Callable[..., Any]) -> None:
    """A message with an unpaired surrogate escape is VALIDATION_ERROR (not JSON a reply can
    be made of); the socket stays open and a paired one is fine."""
    client = await gateway(**OPEN)
    ws = await _connect(client)
    await ws.send_str('{"type":"ping","id":"\\ud800"}')
    message = await ws.receive_json(timeout=5)
    assert message["type"] == "error" and message["error"]["code"] == "VALIDATION_ERROR"
    await ws.send_str('{"type":"ping","id":"\\ud83d\\ude00"}')
    assert await ws.receive_json(timeout=5) == {"type": "pong", "id": "\U0001f600"}
    await ws.close()


async def test_too_many_malformed_messages_close_1008(gateway: Callable[..., Any]) -> None:
    """Past the malformed budget the socket is closed with 1008."""
    client = await gateway(hub={"ws_max_malformed": 3}, **OPEN)
    ws = await _connect(client)
    for _ in range(4):
        await ws.send_str("not json")
    kinds = []
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type is not WSMsgType.TEXT:
            break
        kinds.append(msg.json()["type"])
    assert kinds == ["error"] * 4
    assert msg.type is WSMsgType.CLOSE
    assert ws.close_code == 1008


async def test_oversized_message_closes_1009(gateway: Callable[..., Any]) -> None:
    """A message over the frame limit closes the socket with 1009 (message too big): the
    limit is ws_max_message_bytes, or what the largest valid chat needs if more."""
    client = await gateway(hub={"ws_max_message_bytes": 1024},
                           chat={"max_message_chars": 100, "max_context_bytes": 100}, **OPEN)
    ws = await _connect(client)
    await ws.send_str('{"type":"ping","pad":"' + "x" * 8192 + '"}')
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE
    assert ws.close_code == 1009


async def test_subscribe_twice_and_unknown_unsubscribe(gateway: Callable[..., Any]) -> None:
    """Subscribing twice and unsubscribing an unknown channel are refused, socket kept."""
    client = await gateway(**OPEN)
    ws = await _connect(client)
    await ws.send_json({"type": "subscribe", "channel": "broadcast:a"})
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    await ws.send_json({"type": "subscribe", "channel": "broadcast:a"})
    again = await ws.receive_json(timeout=5)
    assert again["error"]["details"]["reason"] == "already_subscribed"
    await ws.send_json({"type": "unsubscribe", "channel": "broadcast:zzz"})
    unknown = await ws.receive_json(timeout=5)
    assert unknown["error"]["details"]["reason"] == "not_subscribed"
    # Still subscribed exactly once: one publish, one event.
    await _publish(client, "broadcast:a", {"once": True})
    assert (await ws.receive_json(timeout=5))["data"] == {"once": True}
    await ws.send_json({"type": "ping"})
    assert (await ws.receive_json(timeout=5))["type"] == "pong"
    await ws.close()


async def test_subscription_limit(gateway: Callable[..., Any]) -> None:
    """A connection cannot hold more than ws_max_subscriptions channels."""
    client = await gateway(hub={"ws_max_subscriptions": 2}, **OPEN)
    ws = await _connect(client)
    for name in ("a", "b", "c"):
        await ws.send_json({"type": "subscribe", "channel": f"broadcast:{name}"})
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    refused = await ws.receive_json(timeout=5)
    assert refused["error"]["details"]["reason"] == "too_many_subscriptions"
    await ws.close()


async def test_resume_with_last_id(gateway: Callable[..., Any], backend: str) -> None:
    """subscribe {channel, last_id} replays exactly the missed events in order, then live."""
    client = await gateway(**OPEN)
    ids = [(await _publish(client, "broadcast:r", {"n": n}))["id"] for n in range(10)]
    ws = await _connect(client)
    await ws.send_json({"type": "subscribe", "channel": "broadcast:r", "last_id": ids[3]})
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    replayed = [await ws.receive_json(timeout=5) for _ in range(6)]
    assert [m["data"]["n"] for m in replayed] == [4, 5, 6, 7, 8, 9]
    assert [m["id"] for m in replayed] == ids[4:]
    await _publish(client, "broadcast:r", {"n": 10})
    assert (await ws.receive_json(timeout=5))["data"] == {"n": 10}
    await ws.close()


async def test_resume_too_old_gets_gap(gateway: Callable[..., Any]) -> None:
    """A last_id older than the kept history yields an explicit gap notice, then what is left."""
    client = await gateway(hub={"history_size": 5}, **OPEN)
    ids = [(await _publish(client, "broadcast:g", {"n": n}))["id"] for n in range(12)]
    ws = await _connect(client)
    await ws.send_json({"type": "subscribe", "channel": "broadcast:g", "last_id": ids[0]})
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    gap = await ws.receive_json(timeout=5)
    assert gap == {"type": "gap", "channel": "broadcast:g", "last_id": ids[0]}
    rest = [await ws.receive_json(timeout=5) for _ in range(5)]
    assert [m["data"]["n"] for m in rest] == [7, 8, 9, 10, 11]
    await ws.send_json({"type": "subscribe", "channel": "broadcast:other",
                        "last_id": "1-0"})
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    assert (await ws.receive_json(timeout=5))["type"] == "reset"
    await ws.close()


async def test_chat_handlers_are_dispatched(aiohttp_client: Callable[..., Any]) -> None:
    """Types registered in WS_MESSAGE_HANDLERS reach their handler; a crash is INTERNAL_ERROR."""
    seen: list[dict[str, Any]] = []

    async def echo(conn: WsConnection, message: dict[str, Any]) -> None:
        seen.append(message)
        conn.send_json({"type": "echo", "id": message.get("id"), "who": conn.principal.id})

    async def boom(conn: WsConnection, message: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    app = create_app(load_settings(environ={}, overrides={**OPEN, "log_level": "WARNING"}))
    app[WS_MESSAGE_HANDLERS]["echo"] = echo
    app[WS_MESSAGE_HANDLERS]["boom"] = boom
    client = await aiohttp_client(app)
    ws = await _connect(client)
    await ws.send_json({"type": "echo", "id": "c1"})
    assert await ws.receive_json(timeout=5) == {"type": "echo", "id": "c1", "who": "anonymous"}
    await ws.send_json({"type": "boom", "id": "c2"})
    failed = await ws.receive_json(timeout=5)
    assert failed["error"]["code"] == "INTERNAL_ERROR"
    assert failed["id"] == "c2"
    assert "handler bug" not in str(failed)
    await ws.close()
    assert seen == [{"type": "echo", "id": "c1"}]


async def test_heartbeat_closes_silent_peer(gateway: Callable[..., Any]) -> None:
    """The hub's sweep pings; a peer that never answers is closed after the next sweep."""
    client = await gateway(hub={"ws_heartbeat_s": 0.2}, **OPEN)
    ws = await client.ws_connect("/v1/ws", autoping=False)
    await ws.receive_json(timeout=5)
    ping = await ws.receive(timeout=5)
    assert ping.type is WSMsgType.PING
    # No pong sent: the gateway gives up on the next sweep.
    msg = await ws.receive(timeout=5)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
    hub = client.app[HUB] if client.app is not None else None
    assert hub is not None
    await wait_until(lambda: not hub.connections)


async def test_heartbeat_keeps_answering_peer(gateway: Callable[..., Any]) -> None:
    """A peer that answers pings stays connected across several sweeps."""
    client = await gateway(hub={"ws_heartbeat_s": 0.3}, **OPEN)
    ws = await client.ws_connect("/v1/ws")  # aiohttp answers pings itself
    await ws.receive_json(timeout=5)
    await ws.send_json({"type": "subscribe", "channel": "broadcast:hb"})
    await ws.receive_json(timeout=5)
    # aiohttp's client answers pings inside receive(); nothing else arrives meanwhile.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.receive(), 1.0)
    await _publish(client, "broadcast:hb", {"alive": True})
    assert (await ws.receive_json(timeout=5))["data"] == {"alive": True}
    await ws.close()


async def test_handshake_headers_are_dropped_once_sent(gateway: Callable[..., Any]) -> None:
    """The 101 carries trace and security headers; once it is out the socket keeps no copy."""
    import gc

    from aiohttp import web

    client = await gateway(**OPEN)
    handshake = await client.get("/v1/ws", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert handshake.status == 101
    assert handshake.headers["X-Request-ID"] and handshake.headers["traceparent"]
    assert handshake.headers["X-Content-Type-Options"] == "nosniff"
    handshake.close()
    ws = await client.ws_connect("/v1/ws")
    await ws.receive_json(timeout=5)
    open_sockets = [obj for obj in gc.get_objects() if isinstance(obj, web.WebSocketResponse)]
    assert open_sockets and all(len(obj.headers) == 0 for obj in open_sockets)
    await ws.close()
