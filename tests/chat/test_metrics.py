"""The chat metrics, read from the gateway's own /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.chat.sse_client import read_events
from tests.conftest import bearer


async def _samples(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await (await client.get("/metrics")).text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_turn_metrics(start_agent: Callable[..., Any],
                            chat_gateway: Callable[..., Any]) -> None:
    """Outcomes by transport, first-token times, gaps, tokens and active turns are exported."""
    agent = await start_agent(tokens=5)
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", json={"message": "a b"}, headers=bearer())
    await read_events(resp)
    resp = await client.post("/v1/chat/stream", json={"message": "x",
                                                      "context": {"agent": {"failure": "garbage"}}},
                             headers=bearer())
    await read_events(resp)
    s = await _samples(client)
    assert s[("luki_chat_turns_total", (("outcome", "stop"), ("transport", "sse")))] == 1
    assert s[("luki_chat_turns_total",
              (("outcome", "downstream_error"), ("transport", "sse")))] == 1
    assert s[("luki_chat_time_to_first_token_seconds_count", ())] == 1
    assert s[("luki_chat_upstream_ttft_seconds_count", ())] == 1
    assert s[("luki_chat_inter_token_gap_seconds_count", ())] == 4
    assert s[("luki_chat_tokens_total", (("direction", "output"),))] == 5
    assert s[("luki_chat_tokens_total", (("direction", "input"),))] == 3
    assert s[("luki_chat_active_turns", ())] == 0
    # The gateway's share of the first-token time is the gap between the two histograms.
    assert s[("luki_chat_time_to_first_token_seconds_sum", ())] >= s[
        ("luki_chat_upstream_ttft_seconds_sum", ())]


def test_first_token_times_keep_sub_millisecond_resolution_on_uvloop() -> None:
    """`serve` runs on uvloop, whose loop clock counts whole milliseconds: the first-token
    and gap metrics must not take their timestamps from it, or the gateway's own
    sub-millisecond share of the first token could never be seen."""
    import uvloop
    from aiohttp.test_utils import TestClient, TestServer

    from luki_gateway.app import create_app
    from luki_gateway.devstack.agent import create_agent_app
    from luki_gateway.settings import load_settings

    async def case() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        agent = TestServer(create_agent_app(tokens=3, tokens_per_s=500.0))
        await agent.start_server()
        settings = load_settings(environ={}, overrides={
            "log_level": "WARNING", "access_log": False,
            "ratelimit": {"enabled": False, "max_streams": 0, "max_ws_per_user": 0},
            "upstreams": {"agent": str(agent.make_url("")).rstrip("/")}})
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        try:
            for _ in range(3):
                resp = await client.post("/v1/chat/stream", json={"message": "hi"},
                                         headers=bearer())
                await read_events(resp)
            return await _samples(client)
        finally:
            await client.close()
            await agent.close()

    samples = uvloop.run(case())
    for name in ("luki_chat_time_to_first_token_seconds_sum",
                 "luki_chat_upstream_ttft_seconds_sum",
                 "luki_chat_inter_token_gap_seconds_sum"):
        total_ms = samples[(name, ())] * 1000
        assert total_ms > 0
        assert abs(total_ms - round(total_ms)) > 1e-6, f"{name} counts whole milliseconds"


async def test_agent_exchanges_are_upstream_metrics(start_agent: Callable[..., Any],
                                                    chat_gateway: Callable[..., Any],
                                                    gateway: Callable[..., Any]) -> None:
    """The agent is an upstream like the proxy's: its answers, times and failures by kind
    are in luki_upstream_*, so an agent outage shows where upstream alerts look."""
    agent = await start_agent(tokens=2)
    client = await chat_gateway(agent, chat={"first_token_timeout_s": 0.3},
                                upstream={"breaker_failures": 100, "breaker_window": 100})
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    await read_events(resp)
    assert (await client.post("/v1/chat", json={"message": "hi"}, headers=bearer())
            ).status == 200
    resp = await client.post("/v1/chat/stream", json={
        "message": "x", "context": {"agent": {"failure": "garbage", "after": 1}}},
        headers=bearer())
    await read_events(resp)
    resp = await client.post("/v1/chat/stream", json={
        "message": "x", "context": {"agent": {"first_token_delay_s": 3.0}}}, headers=bearer())
    await read_events(resp)
    resp = await client.post("/v1/chat/stream", json={
        "message": "x", "context": {"agent": {"failure": "http_error"}}}, headers=bearer())
    await read_events(resp)
    s = await _samples(client)
    agent_label = ("upstream", "agent")
    assert s[("luki_upstream_requests_total", (("status", "200"), agent_label))] == 4
    assert s[("luki_upstream_requests_total", (("status", "500"), agent_label))] == 1
    assert s[("luki_upstream_duration_seconds_count", (agent_label,))] == 5
    assert s[("luki_upstream_errors_total", (("kind", "bad_response"), agent_label))] == 1
    assert s[("luki_upstream_errors_total", (("kind", "timeout"), agent_label))] == 1

    down = await gateway(upstreams={"agent": "http://127.0.0.1:9"},
                         upstream={"breaker_failures": 1, "breaker_window": 1})
    for _ in range(2):
        resp = await down.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
        await read_events(resp)
    s = await _samples(down)
    assert s[("luki_upstream_errors_total", (("kind", "connect"), agent_label))] == 1
    assert s[("luki_upstream_errors_total", (("kind", "circuit_open"), agent_label))] == 1
