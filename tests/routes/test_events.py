"""GET /v1/events (SSE) and POST /v1/events/publish on the real app, both backends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from luki_gateway.hub.hub import HUB

from ..conftest import bearer
from ..hub.streams import (
    SseReader,
    resume_reading,
    stall_only_subscriber,
    stalled_sse,
    wait_until,
)

OPEN = {"auth": {"enabled": False}}


async def _publish(client: TestClient[Any, Any], channel: str, data: Any,
                   event: str | None = None) -> str:
    body: dict[str, Any] = {"channel": channel, "data": data}
    if event:
        body["event"] = event
    resp = await client.post("/v1/events/publish", json=body)
    assert resp.status == 200, await resp.text()
    event_id: str = (await resp.json())["id"]
    return event_id


async def test_sse_stream_headers_ids_and_events(gateway: Callable[..., Any], backend: str
                                                 ) -> None:
    """SSE answers with the streaming headers, a retry hint, and id + data on every event."""
    client = await gateway(hub={"sse_retry_ms": 1500}, **OPEN)
    resp = await client.get("/v1/events", params={"channel": "broadcast:s"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    reader = SseReader(resp)
    first = await _publish(client, "broadcast:s", {"n": 1})
    second = await _publish(client, "broadcast:s", {"n": 2}, event="update")
    one, two = await reader.take(2)
    assert reader.retry == 1500
    assert (one.id, one.event, one.json()) == (
        first, "message", {"channel": "broadcast:s", "id": first, "data": {"n": 1}})
    assert (two.id, two.event, two.json()["data"]) == (second, "update", {"n": 2})
    resp.close()


async def _blocks(resp: Any, count: int) -> list[list[str]]:
    """The next ``count`` SSE blocks of ``resp``, as their lines (comments included)."""
    blocks: list[list[str]] = []
    lines: list[str] = []
    async with asyncio.timeout(5):
        while len(blocks) < count:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line:
                lines.append(line)
            elif lines:
                blocks.append(lines)
                lines = []
    return blocks


@pytest.mark.parametrize("channels", [["broadcast:r"], ["broadcast:r", "broadcast:q"]])
async def test_every_block_is_an_event_with_an_id(gateway: Callable[..., Any],
                                                  channels: list[str]) -> None:
    """The retry hint rides on the first event, never alone: clients that surface every
    block (httpx-sse, fetch-event-source) see no empty event before the first one. With
    several channels the id is the composite one, the hint still on the first event."""
    client = await gateway(hub={"sse_retry_ms": 1500}, **OPEN)
    resp = await client.get("/v1/events", params=[("channel", c) for c in channels])
    assert resp.status == 200
    await wait_until(lambda: client.app[HUB].local_count("broadcast:r") == 1)
    first = await _publish(client, "broadcast:r", {"n": 1})
    second = await _publish(client, "broadcast:r", {"n": 2})
    one, two = await _blocks(resp, 2)
    prefix = "" if len(channels) == 1 else "broadcast:r="
    assert one[:2] == ["retry: 1500", f"id: {prefix}{first}"]
    assert two[0] == f"id: {prefix}{second}"
    assert all(any(line.startswith("data: ") for line in b) for b in (one, two))
    assert not any(line.startswith("retry:") for line in two)
    resp.close()


async def test_sse_resume_with_last_event_id(gateway: Callable[..., Any], backend: str) -> None:
    """Last-Event-ID (header) and last_event_id (query) replay exactly the missed events."""
    client = await gateway(**OPEN)
    ids = [await _publish(client, "broadcast:r", {"n": n}) for n in range(20)]
    resp = await client.get("/v1/events", params={"channel": "broadcast:r"},
                            headers={"Last-Event-ID": ids[4]})
    got = await SseReader(resp).take(15)
    assert [e.id for e in got] == ids[5:]
    resp.close()
    resp = await client.get("/v1/events", params={"channel": "broadcast:r",
                                                  "last_event_id": ids[17]})
    reader = SseReader(resp)
    assert [e.json()["data"]["n"] for e in await reader.take(2)] == [18, 19]
    live = await _publish(client, "broadcast:r", {"n": 20})
    assert (await reader.next()).id == live
    resp.close()


async def test_sse_multi_channel_composite_id_resumes_each(gateway: Callable[..., Any],
                                                           backend: str) -> None:
    """With several channels the id names every channel's position; resuming restores all."""
    client = await gateway(**OPEN)
    params = [("channel", "broadcast:a"), ("channel", "broadcast:b")]
    resp = await client.get("/v1/events", params=params)
    reader = SseReader(resp)
    a1 = await _publish(client, "broadcast:a", {"a": 1})
    b1 = await _publish(client, "broadcast:b", {"b": 1})
    first, second = await reader.take(2)
    assert first.id == f"broadcast:a={a1}"
    assert second.id == f"broadcast:a={a1},broadcast:b={b1}"
    resp.close()
    a2 = await _publish(client, "broadcast:a", {"a": 2})
    b2 = await _publish(client, "broadcast:b", {"b": 2})
    resp = await client.get("/v1/events", params=params, headers={"Last-Event-ID": second.id})
    resumed = await SseReader(resp).take(2)
    assert sorted(e.json()["id"] for e in resumed) == sorted([a2, b2])
    resp.close()


async def test_sse_gap_and_reset_notices(gateway: Callable[..., Any]) -> None:
    """An id older than the history gets a gap event; an unknown one a reset event."""
    client = await gateway(hub={"history_size": 3}, **OPEN)
    ids = [await _publish(client, "broadcast:g", {"n": n}) for n in range(8)]
    resp = await client.get("/v1/events", params={"channel": "broadcast:g"},
                            headers={"Last-Event-ID": ids[0]})
    reader = SseReader(resp)
    gap = await reader.next()
    assert gap.event == "gap" and gap.json() == {"channel": "broadcast:g", "last_id": ids[0]}
    # No id on a gap: the client's last id stays the last event it received (here the one
    # it resumed from); the hint rides on it as the first block.
    assert "id" not in gap.fields and reader.retry is not None
    rest = await reader.take(3)
    assert [e.json()["data"]["n"] for e in rest] == [5, 6, 7]
    assert [e.id for e in rest] == ids[5:]
    resp.close()
    for params in ({"channel": "broadcast:never"},
                   [("channel", "broadcast:never"), ("channel", "broadcast:g")]):
        resp = await client.get("/v1/events", params=params, headers={
            "Last-Event-ID": "12-0" if isinstance(params, dict) else
            f"broadcast:never=12-0,broadcast:g={ids[7]}"})
        reader = SseReader(resp)
        reset = await reader.next()
        assert reset.event == "reset" and reader.retry is not None
        # The lost position is cleared: an EventSource reconnecting with this id does not
        # ask for it again (and get the same reset); other channels keep theirs.
        assert reset.id == ("" if isinstance(params, dict) else f"broadcast:g={ids[7]}")
        resp.close()


async def _sse_blocks_until(reader: asyncio.StreamReader,
                            stop: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
    """Blocks (field -> value, comments skipped) of a raw chunked SSE body, up to ``stop``."""
    pending = b""
    blocks: list[dict[str, str]] = []
    async with asyncio.timeout(10):
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            assert size, "stream ended"
            pending += (await reader.readexactly(size + 2))[:-2]
            while b"\n\n" in pending:
                raw, pending = pending.split(b"\n\n", 1)
                fields = dict(line.partition(": ")[::2] for line in raw.decode().split("\n")
                              if line and not line.startswith(":"))
                if fields:
                    blocks.append(fields)
                    if stop(fields):
                        return blocks


async def test_sse_live_gap_then_reconnect_with_last_event_id_has_no_duplicates(
        gateway: Callable[..., Any], backend: str) -> None:
    """A stalled one-channel stream loses its oldest events (drop_oldest) and gets a gap;
    an EventSource that reconnects right after it, with the last id it holds, gets exactly
    the events it has not seen: none twice, none missing."""
    channel, total = "broadcast:live-gap", 300
    client = await gateway(hub={"slow_consumer_policy": "drop_oldest", "history_size": 1000,
                                "queue_max_messages": 20}, **OPEN)
    hub = client.app[HUB]
    reader, writer = await stalled_sse(client.host, client.port, f"/v1/events?channel={channel}")
    await stall_only_subscriber(hub, channel, writer)
    pad = "x" * 400
    ids: list[str] = []
    for start in range(0, total, 50):
        resp = await client.post("/v1/events/publish", json={"events": [
            {"channel": channel, "data": {"n": n, "pad": pad}} for n in range(start, start + 50)]})
        assert resp.status == 200
        ids += [r["id"] for r in (await resp.json())["results"]]
    assert hub.slow_actions["drop_oldest"] >= 1
    resume_reading(writer)
    blocks = await _sse_blocks_until(reader, lambda block: block.get("event") == "gap")
    writer.close()
    seen = [json.loads(b["data"])["id"] for b in blocks if "event" not in b]
    assert len(seen) >= 2 and seen == ids[:len(seen)]
    # What an EventSource holds: the last id field it was given.
    last_id = next(b["id"] for b in reversed(blocks) if "id" in b)
    resp = await client.get("/v1/events", params={"channel": channel},
                            headers={"Last-Event-ID": last_id})
    replayed = [e.id for e in await SseReader(resp).take(total - len(seen))]
    assert seen + replayed == ids
    assert "id" not in blocks[-1] and last_id == seen[-1]
    resp.close()


async def test_sse_refusals_before_streaming(gateway: Callable[..., Any]) -> None:
    """Missing/bad channels and bad ids are JSON errors, never a started stream."""
    client = await gateway(**OPEN)
    for params, code in [({}, 400), ({"channel": "nope"}, 400),
                         ({"channel": "user:" + "x" * 300}, 400),
                         ({"channel": "broadcast:a", "last_event_id": "garbage"}, 400)]:
        resp = await client.get("/v1/events", params=params)
        assert resp.status == code, params
        assert resp.headers["Content-Type"].startswith("application/json")
        assert (await resp.json())["error"]["code"] == "VALIDATION_ERROR"


async def test_owner_session_channels_of_a_longer_subject_are_refused(
        gateway: Callable[..., Any]) -> None:
    """Subject john may not read john.smith's sessions, on SSE (403) nor WebSocket (error)."""
    client = await gateway(hub={"session_subscribe": "owner"})
    john = bearer("john", ())
    for channel in ("session:john.smith", "session:john.smith.1"):
        resp = await client.get("/v1/events", params={"channel": channel}, headers=john)
        assert resp.status == 403, channel
        assert (await resp.json())["error"]["code"] == "FORBIDDEN"
    ws = await client.ws_connect("/v1/ws", headers=john)
    await ws.receive_json(timeout=5)
    for channel in ("session:john.smith", "session:john.smith.1"):
        await ws.send_json({"type": "subscribe", "channel": channel})
        message = await ws.receive_json(timeout=5)
        assert message["type"] == "error", channel
        assert message["error"]["code"] == "FORBIDDEN"
    # john's own numbered session still works on both.
    await ws.send_json({"type": "subscribe", "channel": "session:john.1"})
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    await ws.close()
    resp = await client.get("/v1/events", params={"channel": "session:john.1"}, headers=john)
    assert resp.status == 200
    resp.close()


async def test_sse_needs_credentials_when_auth_is_on(gateway: Callable[..., Any]) -> None:
    """Without credentials the stream is refused with 401 in the error shape."""
    client = await gateway()
    resp = await client.get("/v1/events", params={"channel": "broadcast:a"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "UNAUTHENTICATED"


async def test_sse_heartbeat_and_disconnect_frees_resources(gateway: Callable[..., Any]
                                                            ) -> None:
    """Heartbeat comments flow; a client that leaves is forgotten by the hub promptly."""
    client = await gateway(hub={"sse_heartbeat_s": 0.1}, **OPEN)
    resp = await client.get("/v1/events", params={"channel": "broadcast:h"})
    reader = SseReader(resp)
    hub = client.app[HUB] if client.app is not None else None
    assert hub is not None
    await _publish(client, "broadcast:h", {"n": 1})
    await reader.next()
    await wait_until(lambda: reader.comments >= 0 and len(hub.connections) == 1)
    raw = await resp.content.readuntil(b"\n\n")
    assert raw.startswith(b": ping")
    resp.close()
    await wait_until(lambda: not hub.connections, within=5)
    assert hub.local_count("broadcast:h") == 0


async def test_publish_validation(gateway: Callable[..., Any]) -> None:
    """Malformed bodies, wrong types, unknown fields, bad names and oversize data are refused."""
    client = await gateway(hub={"publish_max_bytes": 1024}, **OPEN)
    cases: list[tuple[Any, int]] = [
        (b"{not json", 400), (b"[1]", 400), (b"", 400),
        ({"channel": "broadcast:a"}, 422),
        ({"channel": "broadcast:a", "data": [1, 2]}, 422),
        ({"channel": "broadcast:a", "data": "text"}, 422),
        ({"channel": 5, "data": {}}, 422),
        ({"channel": "broadcast:a", "data": {}, "extra": 1}, 422),
        ({"channel": "broadcast:a", "data": {}, "event": "bad name\n"}, 422),
        # The gateway's own SSE notice names: a client could not tell them apart.
        *[({"channel": "broadcast:a", "data": {}, "event": name}, 422)
          for name in ("gap", "reset", "error", "reconnect")],
        # A final newline would end the SSE field early (and slip past the names above).
        ({"channel": "broadcast:a", "data": {}, "event": "gap\n"}, 422),
        ({"channel": "broadcast:a", "data": {}, "event": "update\n"}, 422),
        ({"channel": "nochannel", "data": {}}, 422),
        ({"channel": "broadcast:a", "data": {"x": "y" * 2000}}, 413),
        ({"events": []}, 422),
        ({"events": [{"channel": "broadcast:a", "data": {}}] * 101}, 422),
    ]
    for body, status in cases:
        if isinstance(body, bytes):
            resp = await client.post("/v1/events/publish", data=body,
                                     headers={"Content-Type": "application/json"})
        else:
            resp = await client.post("/v1/events/publish", json=body)
        assert resp.status == status, (body if len(str(body)) < 200 else "big", status)
        error = (await resp.json())["error"]
        assert error["code"] in ("VALIDATION_ERROR", "PAYLOAD_TOO_LARGE")
        assert error["trace_id"]


async def test_publish_lone_surrogate_is_400_not_500(gateway: Callable[..., Any]) -> None:
    """data with an unpaired surrogate escape is refused as not JSON (it was a 500 when the
    event was encoded); a paired one is published as its one character."""
    client = await gateway(**OPEN)
    resp = await client.post("/v1/events/publish", data=rb'{"channel":"broadcast:s",'
                             rb'"data":{"a":"\ud800"}}',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "VALIDATION_ERROR" and "lone surrogate" in error["message"]
    ws = await client.ws_connect("/v1/ws")
    await ws.receive_json(timeout=5)
    await ws.send_json({"type": "subscribe", "channel": "broadcast:s"})
    await ws.receive_json(timeout=5)
    resp = await client.post("/v1/events/publish", data=rb'{"channel":"broadcast:s",'
                             rb'"data":{"a":"\ud83d\ude00"}}',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 200
    assert (await ws.receive_json(timeout=5))["data"] == {"a": "\U0001f600"}
    await ws.close()


async def test_publish_bad_channel_is_a_refused_field(gateway: Callable[..., Any]) -> None:
    """A malformed channel name is 422 with details.fields naming it; in a batch, under the
    item's index (nothing of the batch is published)."""
    client = await gateway(**OPEN)
    resp = await client.post("/v1/events/publish", json={"channel": "nochannel", "data": {}})
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert list(error["details"]["fields"]) == ["channel"]
    assert "not valid" in error["details"]["fields"]["channel"][0]
    events = [{"channel": "broadcast:ok", "data": {"n": n}} for n in range(4)]
    events[2]["channel"] = "broadcast:a b"
    resp = await client.post("/v1/events/publish", json={"events": events})
    assert resp.status == 422
    fields = (await resp.json())["error"]["details"]["fields"]
    assert list(fields) == ["events"] and list(fields["events"]) == ["2"]
    assert list(fields["events"]["2"]) == ["channel"]
    assert client.app[HUB].published == 0


async def test_publish_batch_in_order(gateway: Callable[..., Any], backend: str) -> None:
    """A batch is published in order; each result has its id and local delivery count."""
    client = await gateway(**OPEN)
    ws = await client.ws_connect("/v1/ws")
    await ws.receive_json(timeout=5)
    await ws.send_json({"type": "subscribe", "channel": "broadcast:batch"})
    await ws.receive_json(timeout=5)
    events = [{"channel": "broadcast:batch", "data": {"n": n}} for n in range(5)]
    events.append({"channel": "broadcast:elsewhere", "data": {"n": 99}})
    resp = await client.post("/v1/events/publish", json={"events": events})
    assert resp.status == 200
    results = (await resp.json())["results"]
    assert [r["delivered_local"] for r in results] == [1, 1, 1, 1, 1, 0]
    got = [await ws.receive_json(timeout=5) for _ in range(5)]
    assert [m["data"]["n"] for m in got] == list(range(5))
    assert [m["id"] for m in got] == [r["id"] for r in results[:5]]
    await ws.close()


async def test_idle_sse_streams_have_no_task_or_headers_of_their_own(
        gateway: Callable[..., Any]) -> None:
    """Each open stream costs aiohttp's two tasks only (no ping task); its headers are freed."""
    import asyncio
    import gc

    from aiohttp import web

    client = await gateway(**OPEN)
    hub = client.app[HUB]
    before = len(asyncio.all_tasks())
    responses = [await client.get("/v1/events", params={"channel": "broadcast:idle"})
                 for _ in range(3)]
    for resp in responses:
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.status == 200
    await wait_until(lambda: hub.local_count("broadcast:idle") == 3)
    # aiohttp's connection task and request task per stream; aiohttp-sse added a third
    assert len(asyncio.all_tasks()) - before == 2 * len(responses)
    streams = [obj for obj in gc.get_objects()
               if isinstance(obj, web.StreamResponse) and obj.prepared
               and obj.status == 200 and not isinstance(obj, web.Response)]
    assert len(streams) == 3 and all(len(obj.headers) == 0 for obj in streams)
    for resp in responses:
        resp.close()
    await wait_until(lambda: not hub.connections, within=5)


async def test_head_on_the_event_stream_is_405(gateway: Callable[..., Any]) -> None:
    """HEAD cannot open a stream: 405 in the error shape, naming GET."""
    client = await gateway(**OPEN)
    resp = await client.head("/v1/events", params={"channel": "broadcast:a"})
    assert resp.status == 405 and "GET" in resp.headers["Allow"]
