"""The access line's ``bytes`` of streams that write to the transport themselves: chat SSE,
channel SSE and WebSocket count what they sent, not aiohttp's writer (which saw the head)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import bearer

# aiohttp ends a chunked body (b"0\r\n\r\n") after the handler returned: after the record.
_LAST_CHUNK = b"0\r\n\r\n"


async def _raw_exchange(client: TestClient[Any, Any], head: str, body: bytes = b"",
                        until: bytes | None = None) -> bytes:
    """Send one HTTP/1.1 request on a plain socket; the response body as it came on the
    wire (chunk framing included), read to the end or, with ``until``, to that mark."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head.encode() + b"\r\n" + body)
        received = b""
        async with asyncio.timeout(10):
            while not received.endswith(_LAST_CHUNK) and (until is None or until not in received):
                data = await reader.read(65536)
                if not data:
                    break
                received += data
    finally:
        writer.close()
    return received.split(b"\r\n\r\n", 1)[1]


async def _access_line(captured_logs: Callable[[], list[dict[str, Any]]], route: str
                       ) -> dict[str, Any]:
    """The access line of ``route``, once written (streams are recorded when they end)."""
    async with asyncio.timeout(5):
        while True:
            lines = [line for line in captured_logs()
                     if line["event"] == "request" and line["route"] == route]
            if lines:
                assert len(lines) == 1, lines
                return lines[0]
            await asyncio.sleep(0.02)  # the handler notices the client left on its own time


async def test_chat_sse_access_line_counts_the_stream(
        start_agent: Callable[..., Any], chat_gateway: Callable[..., Any],
        captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """A chat SSE turn logs the bytes of every event it sent (it logged 0)."""
    agent = await start_agent(tokens=5)
    client = await chat_gateway(agent, access_log=True)
    body = json.dumps({"message": "count my bytes"}).encode()
    auth = bearer()["Authorization"]
    sent = await _raw_exchange(client, (
        "POST /v1/chat/stream HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"), body)
    assert b"event: done" in sent
    line = await _access_line(captured_logs, "/v1/chat/stream")
    assert line["status"] == 200
    assert line["bytes"] == len(sent) - len(_LAST_CHUNK)


async def test_channel_sse_access_line_counts_the_stream(
        gateway: Callable[..., Any], captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """A /v1/events stream logs the bytes of its events (it logged 0)."""
    client = await gateway(access_log=True, auth={"enabled": False})
    reading = asyncio.create_task(_raw_exchange(
        client, "GET /v1/events?channel=broadcast:b HTTP/1.1\r\nHost: gw\r\n",
        until=b"second"))
    for n in ("first", "second"):
        while True:  # until the stream is subscribed: a publish before it reaches no one
            resp = await client.post("/v1/events/publish",
                                     json={"channel": "broadcast:b", "data": {"n": n}})
            assert resp.status == 200, await resp.text()
            if (await resp.json())["delivered_local"] or reading.done():
                break
            await asyncio.sleep(0.02)
    sent = await reading
    line = await _access_line(captured_logs, "/v1/events")
    assert line["status"] == 200
    assert b"second" in sent and line["bytes"] == len(sent)


async def test_websocket_access_line_counts_the_frames(
        start_agent: Callable[..., Any], chat_gateway: Callable[..., Any],
        captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """A WebSocket logs the bytes of the frames the gateway sent (it logged 0)."""
    agent = await start_agent(tokens=5)
    client = await chat_gateway(agent, access_log=True)
    ws = await client.ws_connect("/v1/ws", headers=bearer())
    messages = [await ws.receive_str(timeout=5)]
    await ws.send_json({"type": "chat", "id": "c1", "message": "count my frames"})
    while json.loads(messages[-1])["type"] != "done":
        messages.append(await ws.receive_str(timeout=5))
    await ws.close()
    line = await _access_line(captured_logs, "/v1/ws")
    assert line["status"] == 101
    # Server frames are unmasked: a 2-byte header, 4 from 126 bytes of payload on.
    framed = sum(len(m.encode()) + (2 if len(m.encode()) < 126 else 4) for m in messages)
    assert line["bytes"] == framed
