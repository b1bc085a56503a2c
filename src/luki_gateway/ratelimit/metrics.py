"""Rate-limit metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..metrics import child


@dataclass(frozen=True, slots=True)
class RateLimitMetrics:
    """Decisions per policy and outcome, backend errors, and open stream leases."""

    decisions: Counter
    backend_errors: Counter
    leases: Gauge
    # Label children per (policy, outcome) and per lease kind (see metrics.child()).
    _children: dict[tuple[str, ...], Counter] = field(default_factory=dict)
    _lease_children: dict[tuple[str, ...], Gauge] = field(default_factory=dict)

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

    def lease_held(self, kind: str, delta: int) -> None:
        """One more (1) or one fewer (-1) lease of ``kind`` held by this process."""
        child(self._lease_children, self.leases, kind).inc(delta)

    def decision(self, policy: str, outcome: str) -> None:
        """Count one decision of ``policy`` with ``outcome``."""
        child(self._children, self.decisions, policy, outcome).inc()

    def count_backend_errors(self, count: int) -> None:
        """Callback for ScriptBatch: ``count`` calls failed."""
        self.backend_errors.inc(count)


RATELIMIT_METRICS = web.AppKey("ratelimit_metrics", RateLimitMetrics)
