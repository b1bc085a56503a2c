"""The streaming hub's Prometheus collectors, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FANOUT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class HubMetrics:
    """Connections, events, slow consumers, queue depth and fan-out time."""

    ws_connections: Gauge
    sse_connections: Gauge
    published: Counter
    delivered: Counter
    slow_consumers: Counter
    queue_depth: Gauge
    fanout: Histogram
    # delivered{transport}, bound once: fan-out counts every event without a labels() lookup
    delivered_ws: Counter
    delivered_sse: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> HubMetrics:
        """Register the hub collectors on ``registry``."""
        delivered = Counter("luki_hub_events_delivered",
                            "Events handed to subscriber connections", ["transport"],
                            registry=registry)
        return cls(
            ws_connections=Gauge("luki_ws_connections", "Open WebSocket connections",
                                 registry=registry),
            sse_connections=Gauge("luki_sse_connections", "Open SSE event streams",
                                  registry=registry),
            published=Counter("luki_hub_events_published", "Events published on this process",
                              registry=registry),
            delivered=delivered,
            slow_consumers=Counter("luki_hub_slow_consumers",
                                   "Slow-consumer policy actions taken", ["action"],
                                   registry=registry),
            queue_depth=Gauge("luki_hub_queue_depth",
                              "Deepest subscriber queue on this process (messages)",
                              registry=registry),
            fanout=Histogram("luki_hub_fanout_seconds",
                             "Time to hand one event to every local subscriber",
                             buckets=FANOUT_BUCKETS, registry=registry),
            delivered_ws=delivered.labels("ws"),
            delivered_sse=delivered.labels("sse"),
        )
