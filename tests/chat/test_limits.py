"""Chat turns hold a stream lease and pay their output tokens into the daily quota."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.chat.sse_client import read_events
from tests.conftest import bearer


def _limits(**extra: Any) -> dict[str, Any]:
    return {"enabled": True, "per_min": 0, "per_hour": 0, "max_streams": 0,
            "max_ws_per_user": 0, **extra}


async def _usage(client: Any) -> dict[str, Any]:
    resp = await client.get("/v1/usage", headers=bearer())
    body: dict[str, Any] = await resp.json()
    return body


async def test_stream_lease_caps_concurrent_turns(backend: str,
                                                  start_agent: Callable[..., Any],
                                                  chat_gateway: Callable[..., Any]) -> None:
    """With max_streams 1 a second turn is 429 until the first ends and frees its lease."""
    agent = await start_agent(tokens=20, tokens_per_s=100.0)
    client = await chat_gateway(agent, ratelimit=_limits(max_streams=1))
    first = await client.post("/v1/chat/stream", json={"message": "one"}, headers=bearer())
    assert first.status == 200
    second = await client.post("/v1/chat/stream", json={"message": "two"}, headers=bearer())
    assert second.status == 429
    assert (await second.json())["error"]["details"]["kind"] == "concurrency"
    await read_events(first)
    third = await client.post("/v1/chat/stream", json={"message": "three"},
                              headers=bearer())
    assert third.status == 200
    assert (await read_events(third))[-1].event == "done"


async def test_output_tokens_are_charged_and_enforced(backend: str,
                                                      start_agent: Callable[..., Any],
                                                      chat_gateway: Callable[..., Any]) -> None:
    """Each turn's output tokens count; once the budget is spent new turns get 429."""
    agent = await start_agent(tokens=4)
    client = await chat_gateway(agent, ratelimit=_limits(daily_output_tokens=6))
    for _ in range(2):
        resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
        await read_events(resp)
    assert (await _usage(client))["tokens"]["used"] == 8
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    assert resp.status == 429
    assert (await resp.json())["error"]["details"]["kind"] == "tokens"
    resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
    assert resp.status == 429


async def test_abandoned_turn_pays_what_was_streamed(start_agent: Callable[..., Any],
                                                     chat_gateway: Callable[..., Any]) -> None:
    """A client that leaves mid-turn is charged for the tokens relayed until the cancel."""
    agent = await start_agent(tokens=1000, tokens_per_s=50.0)
    client = await chat_gateway(agent, chat={"resume": False},
                                ratelimit=_limits(daily_output_tokens=100000))
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    await read_events(resp, stop_after=3)
    resp.close()
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 3.0)
    relayed = agent.log.cancelled[0].tokens_sent
    for _ in range(50):
        used = (await _usage(client))["tokens"]["used"]
        if used:
            break
        await agent.log.wait_for(lambda log: True, 0.1)
    assert 3 <= used <= relayed
