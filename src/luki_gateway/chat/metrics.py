"""The chat relay's metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..metrics import child
from .gap_histogram import GapHistogram

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
    gap: GapHistogram
    tokens: Counter
    active: Gauge
    # Label children (see metrics.child()): transport x outcome, and the two directions.
    _turns: dict[tuple[str, ...], Counter] = field(default_factory=dict)
    _tokens: dict[tuple[str, ...], Counter] = field(default_factory=dict)

    def turn_ended(self, transport: str, outcome: str, usage: dict[str, int]) -> None:
        """Count one ended turn and its tokens."""
        child(self._turns, self.turns, transport, outcome).inc()
        child(self._tokens, self.tokens, "input").inc(usage["input_tokens"])
        child(self._tokens, self.tokens, "output").inc(usage["output_tokens"])

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
            gap=GapHistogram.create("luki_chat_inter_token_gap_seconds",
                                    "Time between consecutive tokens of one turn",
                                    GAP_BUCKETS, registry),
            tokens=Counter("luki_chat_tokens", "Tokens of chat turns (usage)",
                           ["direction"], registry=registry),
            active=Gauge("luki_chat_active_turns", "Turns with a running upstream request",
                         registry=registry),
        )


CHAT_METRICS = web.AppKey("chat_metrics", ChatMetrics)
