"""GET /v1/stats and the hub's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..conftest import bearer
from ..hub.streams import SseReader


async def test_stats_and_metrics_follow_traffic(gateway: Callable[..., Any]) -> None:
    """Connections, channels, published/delivered counts show in /v1/stats and /metrics."""
    client = await gateway()
    ops = bearer("ops", scopes=("admin:read", "events:publish"))
    ws = await client.ws_connect("/v1/ws", headers=bearer("alice"))
    await ws.receive_json(timeout=5)
    await ws.send_json({"type": "subscribe", "channel": "broadcast:m"})
    await ws.receive_json(timeout=5)
    sse = await client.get("/v1/events", params={"channel": "broadcast:m"},
                           headers=bearer("bob"))
    resp = await client.post("/v1/events/publish", headers=ops,
                             json={"channel": "broadcast:m", "data": {"x": 1}})
    assert (await resp.json())["delivered_local"] == 2
    await ws.receive_json(timeout=5)
    await SseReader(sse).next()

    stats = await (await client.get("/v1/stats", headers=ops)).json()
    assert stats["connections"] == {"ws": 1, "sse": 1}
    assert stats["channels"]["top"] == [{"channel": "broadcast:m", "subscribers": 2}]
    assert stats["events"] == {"published": 1, "delivered": 2}
    assert stats["queues"]["max_depth"] == 0
    assert stats["broker"]["kind"] == "memory"

    text = await (await client.get("/metrics")).text()
    for line in ("luki_ws_connections 1.0", "luki_sse_connections 1.0",
                 "luki_hub_events_published_total 1.0",
                 'luki_hub_events_delivered_total{transport="ws"} 1.0',
                 'luki_hub_events_delivered_total{transport="sse"} 1.0',
                 "luki_hub_fanout_seconds_count 1.0", "luki_hub_queue_depth"):
        assert line in text, line
    await ws.close()
    sse.close()
