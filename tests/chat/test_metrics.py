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
