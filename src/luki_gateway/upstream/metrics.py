"""Upstream metrics: requests, latency, errors by kind and circuit state per upstream."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..metrics import LATENCY_BUCKETS, child

# kind label values of luki_upstream_errors_total
ERROR_KINDS = ("timeout", "connect", "reset", "circuit_open", "bad_response")


@dataclass(frozen=True, slots=True)
class UpstreamMetrics:
    """Collectors for every upstream call the gateway makes (proxy, chat, health aside)."""

    requests: Counter
    duration: Histogram
    errors: Counter
    circuit: Gauge
    # Label children (see metrics.child()). Bounded: upstream names x statuses.
    _answered: dict[tuple[str, ...], Counter] = field(default_factory=dict)
    _timed: dict[tuple[str, ...], Histogram] = field(default_factory=dict)

    def observe(self, upstream: str, status: int, seconds: float) -> None:
        """Count one upstream answer and its time to headers."""
        child(self._answered, self.requests, upstream, str(status)).inc()
        child(self._timed, self.duration, upstream).observe(seconds)

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
