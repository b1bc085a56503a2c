"""Authentication metrics: failures by a bounded set of reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from ..metrics import child

FailureReason = Literal[
    "missing",            # no credentials on a route that needs them
    "malformed",          # unparsable header, token, key or ticket
    "too_long",           # token over the size limit
    "token_in_query",     # a credential in the URL of a normal route
    "bad_signature",
    "algorithm",          # alg not allowed for the key (none, confusion, unknown)
    "unknown_kid",
    "expired",
    "not_yet_valid",      # nbf / iat in the future
    "claims",             # wrong iss / aud, missing exp or sub
    "unknown_key",        # API key or service token not found
    "revoked",
    "key_expired",
    "test_key_in_production",
    "invalid_ticket",
    "insufficient_scope",
    "forbidden_origin",
    "store_unavailable",  # key store (Redis) down
]

REASONS: tuple[str, ...] = get_args(FailureReason)


@dataclass(frozen=True, slots=True)
class AuthMetrics:
    """``luki_auth_failures_total{reason}``, every reason present from the start."""

    failures: Counter
    # Label children per reason (see metrics.child()).
    _children: dict[tuple[str, ...], Counter] = field(default_factory=dict)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AuthMetrics:
        """Register the collectors on ``registry``."""
        failures = Counter("luki_auth_failures", "Refused authentication or authorization",
                           ["reason"], registry=registry)
        for reason in REASONS:
            failures.labels(reason)
        return cls(failures=failures)

    def fail(self, reason: FailureReason) -> None:
        """Count one refusal."""
        child(self._children, self.failures, reason).inc()


AUTH_METRICS = web.AppKey("auth_metrics", AuthMetrics)
