"""Rate-limit metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True, slots=True)
class RateLimitMetrics:
    """Decisions per policy and outcome, backend errors, and open stream leases."""

    decisions: Counter
    backend_errors: Counter
    leases: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RateLimitMetrics:
        """Register the collectors on ``registry``."""
        return cls(
            decisions=Counter("luki_ratelimit_decisions", "Rate-limit decisions",
                              ["policy", "outcome"], registry=registry),
            backend_errors=Counter("luki_ratelimit_backend_errors",
                                   "Rate-limit, lease and quota calls Redis failed to answer",
                                   registry=registry),
            leases=Gauge("luki_stream_leases", "Stream leases held by this process",
                         ["kind"], registry=registry),
        )

    def count_backend_errors(self, count: int) -> None:
        """Callback for ScriptBatch: ``count`` calls failed."""
        self.backend_errors.inc(count)


RATELIMIT_METRICS = web.AppKey("ratelimit_metrics", RateLimitMetrics)
