"""The reference agent speaks both protocols, paces tokens and records cancels."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp

from luki_gateway.devstack.agent import AGENT_LOG, AgentBehaviour, create_agent_app


async def test_native_stream_is_paced(upstream: Callable[..., Any]) -> None:
    """Tokens arrive at about the configured rate, then done with usage."""
    app = create_agent_app(tokens=6, tokens_per_s=50.0)
    url = await upstream(app)
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        async with session.post(f"{url}/v1/chat/stream", json={"message": "hi"}) as resp:
            body = await resp.text()
        elapsed = time.monotonic() - start
    assert body.count("event: token") == 6
    assert 'event: done\ndata: {"finish_reason": "stop", "usage": {"input_tokens": 1, ' \
           '"output_tokens": 6}}' in body
    assert elapsed >= 5 / 50.0 * 0.9
    assert app[AGENT_LOG].streams[0].outcome == "completed"


async def test_openai_mode_and_health(upstream: Callable[..., Any]) -> None:
    """chat/completions streams data chunks ending in [DONE]; /health answers."""
    url = await upstream(create_agent_app(tokens=2, tokens_per_s=500.0))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "yo"}], "stream": True,
                "stream_options": {"include_usage": True}}) as resp:
            body = await resp.text()
        async with session.get(f"{url}/health") as resp:
            assert (await resp.json())["status"] == "healthy"
    assert body.rstrip().endswith("data: [DONE]")
    assert '"completion_tokens": 2' in body
    assert '"finish_reason": "stop"' in body


async def test_overrides_ignore_bad_values(upstream: Callable[..., Any]) -> None:
    """context.agent overrides apply; unknown names and wrong types are ignored."""
    base = AgentBehaviour()
    merged = base.merged({"tokens": 3, "tokens_per_s": 100, "failure": "nope", "x": 1,
                          "tool_call": "yes"})
    assert (merged.tokens, merged.tokens_per_s, merged.failure, merged.tool_call) == (
        3, 100.0, "none", False)
    url = await upstream(create_agent_app())
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/chat/stream", data=b"[") as resp:
        assert resp.status == 400


async def test_client_cancel_is_recorded(upstream: Callable[..., Any]) -> None:
    """A client leaving mid-stream is recorded as cancelled with the tokens sent."""
    app = create_agent_app(tokens=100, tokens_per_s=50.0)
    url = await upstream(app)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{url}/v1/chat/stream", json={"message": "hi"})
        await resp.content.readuntil(b"\n\n")
        resp.close()
    await app[AGENT_LOG].wait_for(lambda log: len(log.cancelled) == 1, 2.0)
    assert 1 <= app[AGENT_LOG].cancelled[0].tokens_sent < 100
