"""The app-owned Prometheus registry and the HTTP-level metrics.

Every part of the gateway registers its collectors on ``app[REGISTRY]`` (never the global
registry), so each app, and each test, starts from a fresh set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = web.AppKey("registry", CollectorRegistry)

# Latency buckets tuned for a gateway: sub-millisecond up to long polls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class HttpMetrics:
    """Request counters for the whole HTTP surface (route = pattern, never a raw path)."""

    requests: Counter
    duration: Histogram
    in_flight: Gauge
    # Label children by value: skips prometheus-client's per-call label validation and lock.
    # Bounded: route is a pattern, method one of eight, status a status code.
    _children: dict[tuple[str, str, int], tuple[Any, Any]] = field(default_factory=dict)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and record its duration."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)),
                        self.duration.labels(route, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> HttpMetrics:
        """Register the HTTP collectors on ``registry``."""
        return cls(
            requests=Counter("luki_http_requests", "HTTP requests answered",
                             ["route", "method", "status"], registry=registry),
            duration=Histogram("luki_http_request_duration_seconds",
                               "Time from request to response end (streams: to close)",
                               ["route", "method"], buckets=LATENCY_BUCKETS,
                               registry=registry),
            in_flight=Gauge("luki_http_requests_in_flight", "Requests being handled now",
                            registry=registry),
        )


HTTP_METRICS = web.AppKey("http_metrics", HttpMetrics)
