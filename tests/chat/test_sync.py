"""POST /v1/chat: one turn answered whole."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
