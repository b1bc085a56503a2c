"""The chat relay's metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Time to first token: sub-millisecond gateway overhead up to a slow model's start.
TTFT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0, 10.0, 30.0)
# Gaps between tokens: a fast model's few milliseconds up to a stall.
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


@dataclass(frozen=True, slots=True)
class ChatMetrics:
    """Turn outcomes, first-token latency (gateway and upstream), gaps, tokens, activity."""

    turns: Counter
    ttft: Histogram
    upstream_ttft: Histogram
    gap: Histogram
    tokens: Counter
    active: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ChatMetrics:
        """Register the chat collectors on ``registry``."""
        return cls(
            turns=Counter("luki_chat_turns", "Chat turns by transport and how they ended",
                          ["transport", "outcome"], registry=registry),
            ttft=Histogram("luki_chat_time_to_first_token_seconds",
                           "From the client's request to the first token sent to it",
                           buckets=TTFT_BUCKETS, registry=registry),
            upstream_ttft=Histogram("luki_chat_upstream_ttft_seconds",
                                    "From the upstream request to the first upstream token",
                                    buckets=TTFT_BUCKETS, registry=registry),
            gap=Histogram("luki_chat_inter_token_gap_seconds",
                          "Time between consecutive tokens of one turn",
                          buckets=GAP_BUCKETS, registry=registry),
            tokens=Counter("luki_chat_tokens", "Tokens of chat turns (usage)",
                           ["direction"], registry=registry),
            active=Gauge("luki_chat_active_turns", "Turns with a running upstream request",
                         registry=registry),
        )


CHAT_METRICS = web.AppKey("chat_metrics", ChatMetrics)
