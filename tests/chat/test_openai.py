"""The OpenAI-compatible agent dialect, end to end against the reference agent's mode."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from tests.chat.sse_client import read_events
from tests.conftest import bearer

OPENAI = {"agent_protocol": "openai"}


async def test_openai_stream_maps_to_tokens_and_done(start_agent: Callable[..., Any],
                                                     chat_gateway: Callable[..., Any]) -> None:
    """delta.content becomes token events, finish_reason and usage become done."""
    agent = await start_agent(tokens=4)
    client = await chat_gateway(agent, chat=OPENAI)
    resp = await client.post("/v1/chat/stream", json={"message": "hi there"},
                             headers=bearer())
    events = await read_events(resp)
    assert [e.event for e in events] == ["token"] * 4 + ["done"]
    assert events[0].data == {"text": "You said 8 characters. "}
    assert events[-1].data["finish_reason"] == "stop"
    assert events[-1].data["usage"] == {"input_tokens": 2, "output_tokens": 4}


async def test_openai_tool_call_fragments_are_joined(start_agent: Callable[..., Any],
                                                     chat_gateway: Callable[..., Any]) -> None:
    """Argument fragments are accumulated into one tool_call with parsed arguments."""
    agent = await start_agent(tokens=1, tool_call=True)
    client = await chat_gateway(agent, chat=OPENAI)
    resp = await client.post("/v1/chat/stream", json={"message": "recall"}, headers=bearer())
    events = await read_events(resp)
    assert [e.event for e in events] == ["token", "tool_call", "done"]
    assert events[1].data == {"id": "call_1", "name": "lookup_memory",
                              "arguments": {"query": "recall", "limit": 3}}
    assert events[-1].data["finish_reason"] == "tool_calls"


async def test_openai_without_usage_counts_tokens(start_agent: Callable[..., Any],
                                                  chat_gateway: Callable[..., Any]) -> None:
    """No usage chunk from the server: the gateway counts the tokens it relayed."""
    agent = await start_agent(tokens=3, report_usage=False)
    client = await chat_gateway(agent, chat=OPENAI)
    resp = await client.post("/v1/chat/stream", json={"message": "a b c d"}, headers=bearer())
    events = await read_events(resp)
    assert events[-1].data["usage"] == {"input_tokens": 4, "output_tokens": 3}


async def test_openai_early_close_and_garbage(start_agent: Callable[..., Any],
                                              chat_gateway: Callable[..., Any]) -> None:
    """No [DONE] nor finish_reason, or a chunk that is not JSON: DOWNSTREAM_ERROR."""
    for failure in ("early_close", "garbage", "error"):
        agent = await start_agent(tokens=3, failure=failure, after=1)
        client = await chat_gateway(agent, chat=OPENAI)
        resp = await client.post("/v1/chat/stream", json={"message": "x"}, headers=bearer())
        events = await read_events(resp)
        assert [e.event for e in events] == ["token", "error"], failure
        assert events[-1].data["error"]["code"] == "DOWNSTREAM_ERROR"


async def test_openai_sync_completion(start_agent: Callable[..., Any],
                                      chat_gateway: Callable[..., Any]) -> None:
    """POST /v1/chat over the OpenAI dialect maps the message and usage."""
    agent = await start_agent(tokens=2, tool_call=True)
    client = await chat_gateway(agent, chat=OPENAI)
    resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
    body = await resp.json()
    assert body["text"] == "You said 2 characters. LUKi "
    assert body["tool_calls"] == [{"id": "call_1", "name": "lookup_memory",
                                   "arguments": {"query": "hi", "limit": 3}}]
    assert body["meta"]["usage"] == {"input_tokens": 1, "output_tokens": 2}
    assert body["meta"]["finish_reason"] == "tool_calls"


async def test_openai_sync_finish_reason_is_kept(start_agent: Callable[..., Any],
                                                 chat_gateway: Callable[..., Any]) -> None:
    """A completion cut at max_tokens says so (meta.finish_reason, and the turn metric)."""
    agent = await start_agent(tokens=5, finish_reason="length")
    client = await chat_gateway(agent, chat=OPENAI)
    resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
    assert (await resp.json())["meta"]["finish_reason"] == "length"
    metrics = await (await client.get("/metrics")).text()
    assert 'luki_chat_turns_total{outcome="length",transport="sync"} 1.0' in metrics


async def _fake_openai(upstream: Callable[..., Any], gateway: Callable[..., Any],
                       answer: Callable[[], web.Response]) -> Any:
    """A gateway in OpenAI mode in front of a fake server answering each sync completion
    with ``answer()``."""

    async def completions(request: web.Request) -> web.Response:
        return answer()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return await gateway(upstreams={"agent": await upstream(app)}, chat=OPENAI)


async def test_openai_sync_garbage_is_a_downstream_error(upstream: Callable[..., Any],
                                                         gateway: Callable[..., Any]) -> None:
    """An OpenAI-style server whose sync answer has malformed tool calls or content: 502
    DOWNSTREAM_ERROR (the agent's fault), never a 500."""
    nested = "[" * 100_000 + "]" * 100_000
    answers = iter([
        {"choices": [{"message": {"content": "x", "tool_calls": ["notadict"]}}]},
        {"choices": [{"message": {"content": "x"}}], "usage": "NESTED"},
        {"choices": [{"message": {"content": "x", "tool_calls": [{"function": "f"}]}}]},
        {"choices": [{"message": {"content": "x", "tool_calls": {"a": 1}}}]},
        {"choices": [{"message": {"content": ["not", "text"]}}]},
    ])

    client = await _fake_openai(upstream, gateway, lambda: web.Response(
        text=json.dumps(next(answers)).replace('"NESTED"', nested),
        content_type="application/json"))
    for _ in range(5):
        resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "DOWNSTREAM_ERROR"


async def test_openai_tool_call_arguments_stay_json(upstream: Callable[..., Any],
                                                    gateway: Callable[..., Any]) -> None:
    """Tool-call arguments that are not strict JSON (NaN, 1e999, nested past the parser)
    are passed on as the model's text, never as NaN/Infinity nor as a 500."""
    args = iter(['{"x": NaN}', '{"x": 1e999}', "[" * 100_000 + "]" * 100_000])

    client = await _fake_openai(upstream, gateway, lambda: web.json_response(
        {"choices": [{"message": {"content": None, "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": next(args)}}]}}]}))
    for _ in range(3):
        resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
        assert resp.status == 200
        # Strict JSON: a bare NaN/Infinity in the answer fails the parse.
        call = json.loads(await resp.text(),
                          parse_constant=lambda c: pytest.fail(c))["tool_calls"][0]
        assert isinstance(call["arguments"], str)


async def _fake_openai_stream(upstream: Callable[..., Any], gateway: Callable[..., Any],
                              chunks: list[dict[str, Any]]) -> Any:
    """A gateway in OpenAI mode in front of a fake server streaming ``chunks``."""
    async def completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return await gateway(upstreams={"agent": await upstream(app)}, chat=OPENAI)


def _call(call_id: str, name: str, arguments: str, **index: int) -> dict[str, Any]:
    return {"id": call_id, "type": "function", **index,
            "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("indexes", [{}, {"first": 0, "second": 0}],
                         ids=["no-index", "all-at-index-0"])
async def test_openai_parallel_tool_calls_without_distinct_indexes(
        upstream: Callable[..., Any], gateway: Callable[..., Any],
        indexes: dict[str, int]) -> None:
    """Ollama sends parallel tool calls without an index, or all at index 0: a new call
    id starts a new call instead of being glued onto the previous one."""
    first = {"index": indexes["first"]} if indexes else {}
    second = {"index": indexes["second"]} if indexes else {}
    client = await _fake_openai_stream(upstream, gateway, [
        {"choices": [{"delta": {"tool_calls": [
            _call("c1", "get_weather", '{"city": "Paris"}', **first)]}}]},
        {"choices": [{"delta": {"tool_calls": [
            _call("c2", "get_time", '{"tz": "CET"}', **second)]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ])
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    events = await read_events(resp)
    assert [(e.event, e.data.get("name"), e.data.get("arguments")) for e in events[:-1]] == [
        ("tool_call", "get_weather", {"city": "Paris"}),
        ("tool_call", "get_time", {"tz": "CET"})]
    assert events[-1].event == "done" and events[-1].data["finish_reason"] == "tool_calls"


async def test_openai_fragments_without_id_continue_their_call(
        upstream: Callable[..., Any], gateway: Callable[..., Any]) -> None:
    """The usual shape: the first fragment names the call, later ones carry only the index
    (or repeat the id) and more arguments; interleaved calls stay apart."""
    client = await _fake_openai_stream(upstream, gateway, [
        {"choices": [{"delta": {"tool_calls": [_call("a", "f", '{"x"', index=0),
                                               _call("b", "g", "[1", index=1)]}}]},
        {"choices": [{"delta": {"tool_calls": [
            {"index": 1, "function": {"arguments": ", 2]"}},
            {"index": 0, "id": "a", "function": {"arguments": ": 1}"}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ])
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    calls = [e.data for e in await read_events(resp) if e.event == "tool_call"]
    assert calls == [{"id": "a", "name": "f", "arguments": {"x": 1}},
                     {"id": "b", "name": "g", "arguments": [1, 2]}]


async def test_openai_chunk_with_a_null_error_is_not_an_error(
        upstream: Callable[..., Any], gateway: Callable[..., Any]) -> None:
    """``"error": null`` beside the content is no error; a real error object still is."""
    client = await _fake_openai_stream(upstream, gateway, [
        {"error": None, "choices": [{"delta": {"content": "hello"}}]},
        {"choices": [{"delta": {}, "finish_reason": "stop"}]},
    ])
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    assert [e.event for e in await read_events(resp)] == ["token", "done"]
    client = await _fake_openai_stream(upstream, gateway, [
        {"error": {"message": "overloaded", "type": "server_error"}},
    ])
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    events = await read_events(resp)
    assert [(e.event, e.data["error"]["code"]) for e in events] == [
        ("error", "DOWNSTREAM_ERROR")]
