"""The end-of-stream contract: exactly one done or error, whatever the agent does."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from tests.chat.sse_client import read_events
from tests.conftest import bearer


def _agent(**behaviour: Any) -> dict[str, Any]:
    return {"message": "hello", "context": {"agent": behaviour}}


@pytest.mark.parametrize(("behaviour", "code"), [
    ({"failure": "early_close", "after": 2}, "DOWNSTREAM_ERROR"),
    ({"failure": "early_close", "after": 0}, "DOWNSTREAM_ERROR"),
    ({"failure": "eof", "after": 2}, "DOWNSTREAM_ERROR"),
    ({"failure": "garbage", "after": 1}, "DOWNSTREAM_ERROR"),
    ({"failure": "bad_utf8", "after": 1}, "DOWNSTREAM_ERROR"),
    ({"failure": "error", "after": 3}, "DOWNSTREAM_ERROR"),
    ({"failure": "http_error"}, "DOWNSTREAM_ERROR"),
    ({"failure": "stall", "after": 2}, "DOWNSTREAM_TIMEOUT"),
    ({"failure": "stall", "after": 0}, "DOWNSTREAM_TIMEOUT"),
    ({"first_token_delay_s": 5.0}, "DOWNSTREAM_TIMEOUT"),
])
async def test_agent_failures_end_with_one_error(start_agent: Callable[..., Any],
                                                 chat_gateway: Callable[..., Any],
                                                 behaviour: dict[str, Any], code: str) -> None:
    """Each misbehaviour ends the stream with exactly one error event of the right code."""
    agent = await start_agent(tokens=5)
    client = await chat_gateway(agent, chat={"first_token_timeout_s": 0.4,
                                             "idle_timeout_s": 0.3})
    resp = await client.post("/v1/chat/stream", json=_agent(**behaviour), headers=bearer())
    assert resp.status == 200
    events = await read_events(resp)
    kinds = [e.event for e in events]
    assert kinds[-1] == "error"
    assert kinds.count("error") == 1 and "done" not in kinds
    assert set(kinds[:-1]) <= {"token"}
    error = events[-1].data["error"]
    assert error["code"] == code
    assert error["trace_id"] == resp.headers["traceparent"].split("-")[1]
    seqs = [int(e.id.rsplit(":", 1)[1]) for e in events if e.id]
    assert seqs == list(range(1, len(events) + 1))


async def test_stalled_agent_is_cancelled_after_timeout(start_agent: Callable[..., Any],
                                                        chat_gateway: Callable[..., Any]
                                                        ) -> None:
    """After an idle timeout the gateway drops the upstream request (the agent sees it)."""
    agent = await start_agent(tokens=5)
    client = await chat_gateway(agent, chat={"idle_timeout_s": 0.3})
    resp = await client.post("/v1/chat/stream", json=_agent(failure="stall", after=1),
                             headers=bearer())
    async with asyncio.timeout(2.0):  # the idle limit (0.3 s), not the first-token one (30 s)
        events = await read_events(resp)
    assert events[-1].data["error"]["code"] == "DOWNSTREAM_TIMEOUT"
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 2.0)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_agent_down_is_downstream_unavailable(gateway: Callable[..., Any]) -> None:
    """Nothing listening at AGENT_URL: the stream ends with DOWNSTREAM_UNAVAILABLE."""
    client = await gateway(upstreams={"agent": f"http://127.0.0.1:{_closed_port()}"})
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    events = await read_events(resp)
    assert [e.event for e in events] == ["error"]
    assert events[0].data["error"]["code"] == "DOWNSTREAM_UNAVAILABLE"


async def test_open_circuit_is_reported(gateway: Callable[..., Any]) -> None:
    """After repeated failures the breaker opens and turns end with CIRCUIT_OPEN."""
    client = await gateway(upstreams={"agent": f"http://127.0.0.1:{_closed_port()}"},
                           upstream={"breaker_failures": 2, "breaker_window": 2})
    codes = []
    for _ in range(4):
        resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
        codes.append((await read_events(resp))[-1].data["error"]["code"])
    assert codes[:2] == ["DOWNSTREAM_UNAVAILABLE"] * 2
    assert codes[-1] == "CIRCUIT_OPEN"


@pytest.mark.parametrize("resume", [False, True])
async def test_client_disconnect_cancels_upstream_within_1s(
        start_agent: Callable[..., Any], chat_gateway: Callable[..., Any],
        resume: bool) -> None:
    """The client leaving mid-stream cancels the upstream request within a second."""
    agent = await start_agent(tokens=1000, tokens_per_s=20.0)
    client = await chat_gateway(agent, chat={"resume": resume, "resume_grace_s": 0.0})
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    await read_events(resp, stop_after=2)
    resp.close()
    left = time.monotonic()
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 3.0)
    assert agent.log.cancelled[0].ended_at is not None
    assert agent.log.cancelled[0].ended_at - left < 1.0


async def test_client_disconnect_while_agent_is_silent(start_agent: Callable[..., Any],
                                                       chat_gateway: Callable[..., Any]
                                                       ) -> None:
    """Even with no token flowing (nothing to write), a gone client is noticed within 1 s."""
    agent = await start_agent(tokens=5)
    client = await chat_gateway(agent, chat={"resume": False})
    resp = await client.post("/v1/chat/stream", json=_agent(failure="stall", after=1),
                             headers=bearer())
    await read_events(resp, stop_after=1)
    resp.close()
    left = time.monotonic()
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 3.0)
    ended_at = agent.log.cancelled[0].ended_at
    assert ended_at is not None and ended_at - left < 1.0


async def test_heartbeat_comment_on_a_quiet_stream(start_agent: Callable[..., Any],
                                                   chat_gateway: Callable[..., Any]) -> None:
    """A quiet stream gets the keep-alive comment at the heartbeat interval."""
    agent = await start_agent(tokens=2, first_token_delay_s=0.8)
    client = await chat_gateway(agent, hub={"sse_heartbeat_s": 0.3})
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    raw = b""
    async with asyncio.timeout(5):
        async for chunk in resp.content.iter_any():
            raw += chunk
    assert b": keep-alive\n\n" in raw
    assert raw.count(b"event: done") == 1


@pytest.mark.parametrize(("status", "code"), [(503, "DOWNSTREAM_UNAVAILABLE"),
                                              (500, "DOWNSTREAM_ERROR")])
async def test_error_answer_that_looks_like_a_stream_is_not_relayed(
        upstream: Callable[..., Any], gateway: Callable[..., Any], status: int, code: str
        ) -> None:
    """The relay follows the agent's stream before its head arrives; an error status whose
    body happens to hold SSE tokens still ends the turn with one error and no token."""
    async def failing(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status,
                                      headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: token\ndata: {"text": "leaked"}\n\n'
                             b'event: done\ndata: {"finish_reason": "stop"}\n\n')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/stream", failing)
    client = await gateway(upstreams={"agent": await upstream(app)})
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    assert resp.status == 200
    events = await read_events(resp)
    assert [e.event for e in events] == ["error"]
    assert events[0].data["error"]["code"] == code


async def test_agent_closing_before_its_answer_counts_once_on_the_breaker(
        gateway: Callable[..., Any]) -> None:
    """The relay follows the stream before the head; an agent that reads the request and
    hangs up is still one failure for the breaker, not two (stream and head both see it)."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await gateway(upstreams={"agent": f"http://127.0.0.1:{port}"},
                               upstream={"breaker_failures": 2, "breaker_window": 2,
                                         "retries": 0})
        codes = []
        for _ in range(3):
            resp = await client.post("/v1/chat/stream", json={"message": "hi"},
                                     headers=bearer())
            codes.append((await read_events(resp))[-1].data["error"]["code"])
        # Reached, then hung up: a 502 as on the proxy routes (503 is "cannot reach").
        assert codes == ["DOWNSTREAM_ERROR", "DOWNSTREAM_ERROR", "CIRCUIT_OPEN"]
    finally:
        server.close()


async def test_agent_error_events_do_not_open_the_breaker(start_agent: Callable[..., Any],
                                                          chat_gateway: Callable[..., Any]
                                                          ) -> None:
    """The agent's own error event (one user's bad turn) is an answer, not an outage:
    however many there are, other turns still reach the agent."""
    agent = await start_agent(tokens=2)
    client = await chat_gateway(agent, upstream={"breaker_failures": 2, "breaker_window": 2})
    for _ in range(4):
        resp = await client.post("/v1/chat/stream", json=_agent(failure="error", after=1),
                                 headers=bearer())
        assert (await read_events(resp))[-1].data["error"]["code"] == "DOWNSTREAM_ERROR"
    resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer("bob"))
    assert resp.status == 200
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer("bob"))
    assert (await read_events(resp))[-1].event == "done"
    metrics = await (await client.get("/metrics")).text()
    assert 'luki_upstream_circuit_state{upstream="agent"} 0.0' in metrics


async def _not_http_agent() -> tuple[asyncio.Server, str]:
    """An 'agent' that answers every request with something that is not HTTP."""
    async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.0\r\nthis is not http\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(ssh, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_an_answer_that_is_not_http_is_a_downstream_error(
        gateway: Callable[..., Any]) -> None:
    """Reached, but not speaking HTTP: 502 DOWNSTREAM_ERROR on every chat route, as on the
    proxy routes (503 DOWNSTREAM_UNAVAILABLE is for an agent that cannot be reached)."""
    server, url = await _not_http_agent()
    try:
        client = await gateway(upstreams={"agent": url})
        resp = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "DOWNSTREAM_ERROR"
        resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
        events = await read_events(resp)
        assert [(e.event, e.data["error"]["code"]) for e in events] == [
            ("error", "DOWNSTREAM_ERROR")]
    finally:
        server.close()


async def test_sync_chat_maps_an_agent_503_like_the_stream(upstream: Callable[..., Any],
                                                            gateway: Callable[..., Any]
                                                            ) -> None:
    """An agent answering 503 is DOWNSTREAM_UNAVAILABLE on the sync route too (503), not a
    502 DOWNSTREAM_ERROR; a 500 stays a 502."""
    async def busy(request: web.Request) -> web.Response:
        status = 503 if (await request.json())["message"] == "busy" else 500
        return web.json_response({"error": "busy"}, status=status)

    app = web.Application()
    app.router.add_post("/v1/chat", busy)
    client = await gateway(upstreams={"agent": await upstream(app)})
    resp = await client.post("/v1/chat", json={"message": "busy"}, headers=bearer())
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "DOWNSTREAM_UNAVAILABLE"
    assert body["error"]["details"] == {"upstream_status": 503}
    resp = await client.post("/v1/chat", json={"message": "broken"}, headers=bearer())
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "DOWNSTREAM_ERROR"
