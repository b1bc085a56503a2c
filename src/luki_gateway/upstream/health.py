"""The /health cascade: probe every upstream's health URL concurrently, briefly cached.

Probes share the upstreams' pooled sessions but bypass their breakers (a health check
is an observation, not traffic). One probe round runs at a time: concurrent callers
wait for the same round, and its result is reused for ``health_cache_s``, so a flood
of health checks never floods the backends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import web

from ..settings import Settings
from .sessions import Upstream, Upstreams

OverallStatus = Literal["healthy", "degraded", "unhealthy"]


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """One upstream's probe result."""

    healthy: bool
    status_code: int | None
    response_time_ms: float
    circuit: str
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The ``services.<name>`` object of the /health body."""
        body: dict[str, Any] = {
            "status": "healthy" if self.healthy else "unhealthy",
            "status_code": self.status_code,
            "response_time_ms": self.response_time_ms,
            "circuit": self.circuit,
        }
        if self.error is not None:
            body["error"] = self.error
        return body


@dataclass(frozen=True, slots=True)
class HealthReport:
    """One probe round: every service and the overall verdict."""

    status: OverallStatus
    services: Mapping[str, ServiceHealth]
    checked_at: float

    @property
    def http_status(self) -> int:
        """503 when a critical upstream is down, else 200 (degraded still serves)."""
        return 503 if self.status == "unhealthy" else 200


def verdict(services: Mapping[str, ServiceHealth], critical: tuple[str, ...]
            ) -> OverallStatus:
    """unhealthy if a critical service is down, degraded if any other is, else healthy."""
    down = {name for name, health in services.items() if not health.healthy}
    if down & set(critical):
        return "unhealthy"
    return "degraded" if down else "healthy"


class HealthCascade:
    """Runs and caches probe rounds over all upstreams."""

    __slots__ = ("_cache_s", "_cached", "_clock", "_critical", "_path", "_round",
                 "_timeout_s")

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        cfg = settings.upstream
        self._timeout_s = cfg.health_timeout_s
        self._cache_s = cfg.health_cache_s
        self._path = cfg.health_path
        self._critical = cfg.critical
        self._clock = clock
        self._cached: HealthReport | None = None
        self._round: asyncio.Task[HealthReport] | None = None

    async def check(self, upstreams: Upstreams) -> HealthReport:
        """The latest report: cached if fresh, else the running round or a new one."""
        cached = self._cached
        if cached is not None and self._clock() - cached.checked_at < self._cache_s:
            return cached
        if self._round is None or self._round.done():
            self._round = asyncio.create_task(self._probe_all(upstreams))
        # shield: a caller that gives up must not cancel the round others wait for
        report = await asyncio.shield(self._round)
        self._cached = report
        return report

    async def _probe_all(self, upstreams: Upstreams) -> HealthReport:
        results = await asyncio.gather(*(self._probe(u) for u in upstreams))
        services = {u.name: r for u, r in zip(upstreams, results, strict=True)}
        return HealthReport(status=verdict(services, self._critical), services=services,
                            checked_at=self._clock())

    async def _probe(self, upstream: Upstream) -> ServiceHealth:
        url = upstream.base_url.with_path(
            upstream.base_url.path.rstrip("/") + self._path, encoded=True)
        start = time.perf_counter()
        code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                async with upstream.session.get(url, allow_redirects=False) as resp:
                    code = resp.status
                    await resp.read()
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientConnectorError:
            error = "connect"
        except aiohttp.ClientError:
            error = "bad_response"
        elapsed_ms = round((time.perf_counter() - start) * 1000, 3)
        healthy = code is not None and 200 <= code < 300
        return ServiceHealth(healthy=healthy, status_code=code, response_time_ms=elapsed_ms,
                             circuit=upstream.breaker.state, error=error)


HEALTH_CASCADE = web.AppKey("health_cascade", HealthCascade)
