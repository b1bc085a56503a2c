"""SSE chat relay through the real gateway against the reference agent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

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


@pytest.mark.parametrize("first_token_delay_s", [0.0, 0.3])
async def test_every_block_is_an_event_with_an_id(first_token_delay_s: float,
                                                  start_agent: Callable[..., Any],
                                                  chat_gateway: Callable[..., Any]) -> None:
    """The retry hint is a field of the first event's block, never a block of its own:
    clients that surface every block (httpx-sse, fetch-event-source) must not see an empty
    event without an id before the first token (agent fast, or slower than the head)."""
    agent = await start_agent(tokens=3, first_token_delay_s=first_token_delay_s)
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    turn_id = resp.headers["X-LUKi-Turn-Id"]
    blocks = (await resp.read()).decode().split("\n\n")
    assert blocks.pop() == ""
    assert blocks[0].startswith(f"retry: 3000\nid: {turn_id}:1\nevent: token\n")
    ids = [[line for line in block.split("\n") if line.startswith("id: ")] for block in blocks]
    assert ids == [[f"id: {turn_id}:{seq}"] for seq in range(1, 5)]
    assert sum("retry:" in b for b in blocks) == 1


async def test_cross_origin_script_may_read_the_turn_id(start_agent: Callable[..., Any],
                                                       chat_gateway: Callable[..., Any]
                                                       ) -> None:
    """A page on another (allowed) origin that POSTs a turn with fetch can read
    X-LUKi-Turn-Id, which it needs to resume the stream with ?turn_id=."""
    agent = await start_agent(tokens=2)
    client = await chat_gateway(agent, cors_origins=["https://app.example"])
    resp = await client.post("/v1/chat/stream", json={"message": "hi"},
                             headers={**bearer(), "Origin": "https://app.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert "x-luki-turn-id" in exposed
    assert [e.event for e in await read_events(resp)] == ["token", "token", "done"]


async def test_head_waits_briefly_for_the_first_token_never_for_long(
        start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]) -> None:
    """The head goes out with the first event when the agent answers at once, and on its
    own after HEAD_WAIT_S when the agent is slow to start: a client is never left without
    a response head for the agent's whole thinking time."""
    agent = await start_agent(tokens=2, first_token_delay_s=1.5)
    client = await chat_gateway(agent)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.post("/v1/chat/stream", json={"message": "slow"}, headers=bearer())
    head_s = loop.time() - started
    assert resp.status == 200
    assert head_s < 1.0, f"head took {head_s:.2f} s: it waited for the first token"
    assert await resp.content.readline() == b"retry: 3000\n"
    events = await read_events(resp)
    assert [e.event for e in events] == ["token", "token", "done"]
    assert loop.time() - started >= 1.5


async def test_get_stream_with_message_query(start_agent: Callable[..., Any],
                                             chat_gateway: Callable[..., Any]) -> None:
    """GET /v1/chat/stream?message=... (for EventSource) relays the same way."""
    agent = await start_agent(tokens=3)
    client = await chat_gateway(agent)
    resp = await client.get("/v1/chat/stream", params={"message": "hi"}, headers=bearer())
    assert resp.status == 200
    events = await read_events(resp)
    assert [e.event for e in events] == ["token", "token", "token", "done"]


async def test_tool_call_is_relayed_before_done(start_agent: Callable[..., Any],
                                                chat_gateway: Callable[..., Any]) -> None:
    """A tool_call event is forwarded whole and the turn ends with finish_reason tool_calls."""
    agent = await start_agent(tokens=2, tool_call=True)
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", json={"message": "remember"},
                             headers=bearer())
    events = await read_events(resp)
    assert [e.event for e in events] == ["token", "token", "tool_call", "done"]
    assert events[2].data["name"] == "lookup_memory"
    assert events[2].data["arguments"] == {"query": "remember", "limit": 3}
    assert events[-1].data["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(("body", "status"), [
    ({}, 422),
    ({"message": ""}, 422),
    ({"message": 5}, 422),
    ({"message": "x" * 40000}, 422),
    ({"message": "hi", "context": [1, 2]}, 422),
    ({"message": "hi", "context": {"blob": "x" * 70000}}, 422),
    ({"message": "hi", "surprise": True}, 422),
])
async def test_stream_refuses_bad_bodies(start_agent: Callable[..., Any],
                                         chat_gateway: Callable[..., Any],
                                         body: dict[str, Any], status: int) -> None:
    """Malformed or oversized bodies get VALIDATION_ERROR before any upstream call."""
    agent = await start_agent()
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", json=body, headers=bearer())
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == "VALIDATION_ERROR"
    assert agent.log.streams == []


async def test_stream_refuses_non_json(start_agent: Callable[..., Any],
                                       chat_gateway: Callable[..., Any]) -> None:
    """A body that is not JSON is a 400 VALIDATION_ERROR."""
    agent = await start_agent()
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", data=b"{nope", headers=bearer())
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "VALIDATION_ERROR"


async def test_get_stream_refuses_long_query_message(start_agent: Callable[..., Any],
                                                     chat_gateway: Callable[..., Any]) -> None:
    """GET messages are for short prompts; long ones must be POSTed."""
    agent = await start_agent()
    client = await chat_gateway(agent)
    for chars in (3000, 32768):  # 32768: longer than aiohttp's default request line
        resp = await client.get("/v1/chat/stream", params={"message": "y" * chars},
                                headers=bearer())
        assert resp.status == 400
        body = await resp.json()  # the documented JSON error, not a plain-text parser 400
        assert body["error"]["code"] == "VALIDATION_ERROR"
        assert body["error"]["details"] == {"max_chars": 2000}


async def test_stream_needs_auth_and_scope(start_agent: Callable[..., Any],
                                           chat_gateway: Callable[..., Any]) -> None:
    """No token is 401; a token without chat:write is 403."""
    agent = await start_agent()
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", json={"message": "hi"})
    assert resp.status == 401
    resp = await client.post("/v1/chat/stream", json={"message": "hi"},
                             headers=bearer(scopes=("elr:read",)))
    assert resp.status == 403
    assert agent.log.streams == []


async def test_acting_for_another_user_needs_act_as(start_agent: Callable[..., Any],
                                                    chat_gateway: Callable[..., Any]) -> None:
    """user_id of someone else is refused without chat:act_as and allowed with it."""
    agent = await start_agent(tokens=1)
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", json={"message": "hi", "user_id": "bob"},
                             headers=bearer("alice"))
    assert resp.status == 403
    # The same refusal as any other missing scope: details.missing_scopes and the challenge.
    error = (await resp.json())["error"]
    assert (error["code"], error["details"]) == ("INSUFFICIENT_SCOPE",
                                                 {"missing_scopes": ["chat:act_as"]})
    assert resp.headers["WWW-Authenticate"] == (
        'Bearer realm="luki", error="insufficient_scope", scope="chat:act_as"')
    resp = await client.post("/v1/chat", json={"message": "hi", "user_id": "bob"},
                             headers=bearer("alice"))
    assert (await resp.json())["error"]["details"] == {"missing_scopes": ["chat:act_as"]}
    resp = await client.post("/v1/chat/stream", json={"message": "hi", "user_id": "alice"},
                             headers=bearer("alice"))
    assert [e.event for e in await read_events(resp)] == ["token", "done"]
    resp = await client.post("/v1/chat/stream", json={"message": "hi", "user_id": "bob"},
                             headers=bearer("alice", ("chat:write", "chat:act_as")))
    assert [e.event for e in await read_events(resp)] == ["token", "done"]


async def test_eventsource_get_with_ticket(start_agent: Callable[..., Any],
                                           chat_gateway: Callable[..., Any]) -> None:
    """A browser's EventSource cannot send headers: a stream ticket in the query works."""
    agent = await start_agent(tokens=2)
    client = await chat_gateway(agent)
    resp = await client.post("/v1/auth/ticket", headers=bearer())
    ticket = (await resp.json())["ticket"]
    resp = await client.get("/v1/chat/stream", params={"message": "hi", "ticket": ticket})
    assert resp.status == 200
    assert [e.event for e in await read_events(resp)] == ["token", "token", "done"]
    resp = await client.post("/v1/chat/stream", params={"ticket": ticket},
                             json={"message": "hi"})
    assert resp.status == 401


async def test_shutdown_ends_open_streams_with_done(start_agent: Callable[..., Any],
                                                    chat_gateway: Callable[..., Any]) -> None:
    """Stopping the gateway ends a running turn with done cancelled, not a cut stream."""
    agent = await start_agent(tokens=1000, tokens_per_s=20.0)
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    first = await read_events(resp, stop_after=1)
    closing = asyncio.create_task(client.server.close())
    rest = await read_events(resp)
    await closing
    events = first + rest
    assert events[-1].event == "done"
    assert events[-1].data["finish_reason"] == "cancelled"
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 3.0)
