"""SSE chat relay through the real gateway against the reference agent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.chat.sse_client import read_events
from tests.conftest import bearer


async def test_sse_relays_tokens_then_one_done(start_agent: Callable[..., Any],
                                               chat_gateway: Callable[..., Any]) -> None:
    """Every token arrives in order with ids <turn_id>:<seq>, then exactly one done."""
    agent = await start_agent(tokens=5)
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", json={"message": "hello there"},
                             headers=bearer())
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in resp.headers
    turn_id = resp.headers["X-LUKi-Turn-Id"]
    events = await read_events(resp)
    assert [e.event for e in events] == ["token"] * 5 + ["done"]
    assert [e.id for e in events] == [f"{turn_id}:{i}" for i in range(1, 7)]
    done = events[-1].data
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"input_tokens": 2, "output_tokens": 5}
    assert done["turn_id"] == turn_id
    assert done["trace_id"] == resp.headers["traceparent"].split("-")[1]
