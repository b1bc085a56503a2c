"""POST /v1/chat: one turn answered whole."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.chat.test_end_of_stream import _closed_port
from tests.conftest import bearer


async def test_sync_chat_answers_text_and_meta(start_agent: Callable[..., Any],
                                               chat_gateway: Callable[..., Any]) -> None:
    """The answer has text, tool_calls and meta {trace_id, turn_id, usage}."""
    agent = await start_agent(tokens=4, tool_call=True)
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat", json={"message": "what did I do", "context": {}},
                             headers=bearer())
    assert resp.status == 200
    body = await resp.json()
    assert body["text"].startswith("You said 13 characters.")
    assert body["tool_calls"][0]["name"] == "lookup_memory"
    assert body["meta"]["trace_id"] == resp.headers["traceparent"].split("-")[1]
    assert body["meta"]["turn_id"].startswith("t_")
    assert body["meta"]["usage"] == {"input_tokens": 4, "output_tokens": 4}


async def test_sync_chat_upstream_failure_is_502(start_agent: Callable[..., Any],
                                                 chat_gateway: Callable[..., Any]) -> None:
    """An agent 500 becomes DOWNSTREAM_ERROR 502 in the one error shape."""
    agent = await start_agent(failure="http_error")
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "DOWNSTREAM_ERROR"


async def test_sync_chat_agent_down_is_503(gateway: Callable[..., Any]) -> None:
    """No agent listening: DOWNSTREAM_UNAVAILABLE 503."""
    client = await gateway(upstreams={"agent": f"http://127.0.0.1:{_closed_port()}"})
    resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "DOWNSTREAM_UNAVAILABLE"


async def test_sync_chat_slow_agent_is_504(start_agent: Callable[..., Any],
                                           chat_gateway: Callable[..., Any]) -> None:
    """An agent slower than the upstream timeout: DOWNSTREAM_TIMEOUT 504."""
    agent = await start_agent(first_token_delay_s=3.0)
    client = await chat_gateway(agent, upstream={"timeout_s": 0.3})
    resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "DOWNSTREAM_TIMEOUT"


async def test_sync_chat_validates(start_agent: Callable[..., Any],
                                   chat_gateway: Callable[..., Any]) -> None:
    """A wrong type is a 422 naming the field; the agent is not called."""
    agent = await start_agent()
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat", json={"message": ["a"]}, headers=bearer())
    assert resp.status == 422
    assert "message" in (await resp.json())["error"]["details"]["fields"]


async def test_sync_client_that_leaves_cancels_the_agent_request(
        upstream: Callable[..., Any], gateway: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """A sync caller that gives up: the agent's request is cancelled within a second, not
    left to run (and be paid for) to its end; the turn counts as client_gone. A caller
    that leaves is routine: no error log with a traceback (aiohttp's "Error handling
    request" for the handler's ConnectionResetError)."""
    left_at: list[float] = []
    left = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(5)  # aiohttp's test server cancels this when the caller leaves
        except asyncio.CancelledError:
            left_at.append(time.monotonic())
            left.set()
            raise
        return web.json_response({"text": "too late"})

    app = web.Application()
    app.router.add_post("/v1/chat", slow)
    client = await gateway(upstreams={"agent": await upstream(app)})
    with pytest.raises(TimeoutError):
        await client.post("/v1/chat", json={"message": "hi"}, headers=bearer(),
                          timeout=aiohttp.ClientTimeout(total=0.3))
    gave_up = time.monotonic()
    async with asyncio.timeout(3):
        await left.wait()
    assert left_at[0] - gave_up < 1.0
    gone = 'luki_chat_turns_total{outcome="client_gone",transport="sync"} 1.0'
    for _ in range(50):  # the handler ends just after the agent saw the cancel
        metrics = await (await client.get("/metrics")).text()
        if gone in metrics:
            break
        await asyncio.sleep(0.02)
    assert gone in metrics
    assert "luki_chat_active_turns 0.0" in metrics
    await asyncio.sleep(0.1)  # aiohttp logs after the handler returns
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
