"""Upstream metrics: requests, latency, errors by kind and circuit state per upstream."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..metrics import LATENCY_BUCKETS

# kind label values of luki_upstream_errors_total
ERROR_KINDS = ("timeout", "connect", "reset", "circuit_open", "bad_response")


@dataclass(frozen=True, slots=True)
class UpstreamMetrics:
    """Collectors for every upstream call the gateway makes (proxy, chat, health aside)."""

    requests: Counter
    duration: Histogram
    errors: Counter
    circuit: Gauge
    # Label children cached per (upstream, status): labels() takes a lock and builds keys,
    # which the proxy's hot path should not pay on every request. Bounded: statuses x names.
    _answered: dict[tuple[str, int], Counter] = field(default_factory=dict)
    _timed: dict[str, Histogram] = field(default_factory=dict)

    def observe(self, upstream: str, status: int, seconds: float) -> None:
        """Count one upstream answer and its time to headers."""
        counter = self._answered.get((upstream, status))
        if counter is None:
            counter = self._answered[(upstream, status)] = self.requests.labels(
                upstream, str(status))
        counter.inc()
        histogram = self._timed.get(upstream)
        if histogram is None:
            histogram = self._timed[upstream] = self.duration.labels(upstream)
        histogram.observe(seconds)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> UpstreamMetrics:
        """Register the upstream collectors on ``registry``."""
        return cls(
            requests=Counter("luki_upstream_requests", "Upstream responses by status",
                             ["upstream", "status"], registry=registry),
            duration=Histogram("luki_upstream_duration_seconds",
                               "Time from sending the request to the upstream's headers",
                               ["upstream"], buckets=LATENCY_BUCKETS, registry=registry),
            errors=Counter("luki_upstream_errors", "Upstream failures by kind "
                           "(timeout|connect|reset|circuit_open|bad_response)",
                           ["upstream", "kind"], registry=registry),
            circuit=Gauge("luki_upstream_circuit_state",
                          "Circuit breaker state: 0 closed, 1 half_open, 2 open",
                          ["upstream"], registry=registry),
        )


UPSTREAM_METRICS = web.AppKey("upstream_metrics", UpstreamMetrics)
