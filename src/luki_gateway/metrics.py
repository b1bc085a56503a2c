"""The app-owned Prometheus registry and the HTTP-level metrics.

Every part of the gateway registers its collectors on ``app[REGISTRY]`` (never the global
registry), so each app, and each test, starts from a fresh set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = web.AppKey("registry", CollectorRegistry)

_Child = TypeVar("_Child", Counter, Gauge, Histogram)

# Latency buckets tuned for a gateway: sub-millisecond up to long polls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0)


def child(cache: dict[tuple[str, ...], _Child], metric: _Child, *values: str) -> _Child:
    """``metric.labels(*values)``, looked up once per values and kept in ``cache``.

    prometheus-client's ``labels()`` validates the values and takes a lock on every call,
    which the hot paths should not pay per request or per token. The caller keeps the
    label values bounded (route patterns, status codes, a fixed set of reasons).
    """
    found = cache.get(values)
    if found is None:
        found = cache[values] = metric.labels(*values)
    return found


@dataclass(frozen=True, slots=True)
class HttpMetrics:
    """Request counters for the whole HTTP surface (route = pattern, never a raw path)."""

    requests: Counter
    duration: Histogram
    in_flight: Gauge
    # Label children (see child()). Bounded: route is a pattern, method one of eight.
    _counted: dict[tuple[str, ...], Counter] = field(default_factory=dict)
    _timed: dict[tuple[str, ...], Histogram] = field(default_factory=dict)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and record its duration."""
        child(self._counted, self.requests, route, method, str(status)).inc()
        child(self._timed, self.duration, route, method).observe(seconds)

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
