"""GET /health: concurrent probes of every upstream, brief cache, healthy/degraded/unhealthy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from luki_gateway.settings import Settings
from luki_gateway.upstream.health import HealthCascade, verdict
from luki_gateway.upstream.sessions import UPSTREAMS, build_upstreams

from ..conftest import closed_port_url

NAMES = ("agent", "memory", "cognitive", "engagement", "reports")


@dataclass(slots=True)
class Backends:
    """How each fake backend's /health answers, and how often it was asked."""

    status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 200))
    delay_s: dict[str, float] = field(default_factory=dict)
    probes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    # When set, every probe waits until this many probes are in flight at once.
    barrier: int = 0
    arrived: int = 0
    all_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    base: str = ""

    def urls(self, **overrides: str) -> dict[str, str]:
        """Upstream URLs (one server, a base path per backend), some replaced."""
        return {name: overrides.get(name, f"{self.base}/{name}") for name in NAMES}


BACKENDS = web.AppKey("backends", Backends)


async def backend_health(request: web.Request) -> web.Response:
    """/<name>/health as configured in Backends."""
    backends = request.app[BACKENDS]
    name = request.match_info["name"]
    backends.probes[name] += 1
    if backends.barrier:
        backends.arrived += 1
        if backends.arrived >= backends.barrier:
            backends.all_arrived.set()
        await asyncio.wait_for(backends.all_arrived.wait(), 2)
    delay = backends.delay_s.get(name)
    if delay:
        await asyncio.sleep(delay)
    return web.json_response({"status": "ok"}, status=backends.status[name])


@pytest.fixture
async def backends(aiohttp_server: Callable[..., Any]) -> Backends:
    """One real server standing in for all five backends under /<name>/."""
    app = web.Application()
    state = Backends()
    app[BACKENDS] = state
    app.router.add_get("/{name}/health", backend_health)
    server: TestServer = await aiohttp_server(app)
    state.base = str(server.make_url("")).rstrip("/")
    return state


async def test_all_up_is_healthy(gateway: Callable[..., Any], backends: Backends) -> None:
    """Every backend answering 2xx: 200 healthy with the documented body."""
    client = await gateway(upstreams=backends.urls())
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy"
    assert body["uptime_s"] >= 0
    assert isinstance(body["version"], str)
    assert set(body["services"]) == set(NAMES)
    memory = body["services"]["memory"]
    assert memory["status"] == "healthy"
    assert memory["status_code"] == 200
    assert memory["response_time_ms"] >= 0
    assert memory["circuit"] == "closed"


async def test_non_critical_down_is_degraded(gateway: Callable[..., Any],
                                             backends: Backends) -> None:
    """A non-critical backend refusing connections: 200 degraded, that service unhealthy."""
    client = await gateway(upstreams=backends.urls(engagement=closed_port_url()))
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "degraded"
    engagement = body["services"]["engagement"]
    assert engagement["status"] == "unhealthy"
    assert engagement["status_code"] is None
    assert engagement["error"] == "connect"
    assert body["services"]["memory"]["status"] == "healthy"


async def test_critical_error_status_is_unhealthy(gateway: Callable[..., Any],
                                                  backends: Backends) -> None:
    """A critical backend (memory) answering 500: 503 unhealthy."""
    backends.status["memory"] = 500
    client = await gateway(upstreams=backends.urls())
    resp = await client.get("/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unhealthy"
    assert body["services"]["memory"]["status_code"] == 500


async def test_critical_set_is_configurable(gateway: Callable[..., Any],
                                            backends: Backends) -> None:
    """With critical = [reports], reports down is unhealthy and memory down only degraded."""
    backends.status["reports"] = 503
    client = await gateway(upstreams=backends.urls(), upstream={"critical": ["reports"]})
    assert (await client.get("/health")).status == 503
    backends.status["reports"] = 200
    backends.status["memory"] = 503
    client = await gateway(upstreams=backends.urls(), upstream={"critical": ["reports"]})
    resp = await client.get("/health")
    assert resp.status == 200
    assert (await resp.json())["status"] == "degraded"


async def test_slow_backend_times_out_quickly(gateway: Callable[..., Any],
                                              backends: Backends) -> None:
    """A backend slower than the probe timeout is reported as a timeout, not waited for."""
    backends.delay_s["cognitive"] = 10
    client = await gateway(upstreams=backends.urls(), upstream={"health_timeout_s": 0.2})
    resp = await client.get("/health")
    body = await resp.json()
    assert body["status"] == "degraded"
    assert body["services"]["cognitive"]["error"] == "timeout"
    assert body["services"]["cognitive"]["response_time_ms"] < 2000


async def test_probes_run_concurrently(gateway: Callable[..., Any],
                                       backends: Backends) -> None:
    """Every probe is in flight at once (each waits for all five; sequential would stall)."""
    backends.barrier = len(NAMES)
    client = await gateway(upstreams=backends.urls(), upstream={"health_timeout_s": 1.5})
    body = await (await client.get("/health")).json()
    assert body["status"] == "healthy"


async def test_flood_of_checks_probes_once(gateway: Callable[..., Any],
                                           backends: Backends) -> None:
    """Twenty concurrent and later /health calls within the cache time probe each backend once."""
    client = await gateway(upstreams=backends.urls(), upstream={"health_cache_s": 60})
    responses = await asyncio.gather(*(client.get("/health") for _ in range(20)))
    assert {r.status for r in responses} == {200}
    await client.get("/health")
    assert backends.probes == dict.fromkeys(NAMES, 1)


async def test_open_circuit_is_visible(gateway: Callable[..., Any], backends: Backends) -> None:
    """The breaker state of each upstream appears in its service entry."""
    client = await gateway(upstreams=backends.urls(), upstream={"breaker_failures": 1})
    client.app[UPSTREAMS].get("reports").breaker.record_failure()
    body = await (await client.get("/health")).json()
    assert body["services"]["reports"]["circuit"] == "open"
    assert body["services"]["memory"]["circuit"] == "closed"


@pytest.fixture
async def cascade_parts(make_settings: Callable[..., Settings], backends: Backends
                        ) -> AsyncIterator[tuple[Settings, Any]]:
    """Settings and live upstream sessions for driving HealthCascade directly."""
    settings = make_settings(upstreams=backends.urls(), upstream={"health_cache_s": 2.0})
    upstreams = build_upstreams(settings)
    yield settings, upstreams
    for upstream in upstreams:
        await upstream.session.close()


async def test_cache_expires_with_the_clock(cascade_parts: tuple[Settings, Any],
                                            backends: Backends) -> None:
    """Within health_cache_s the report is reused; after it a new round probes again."""
    settings, upstreams = cascade_parts
    now = [100.0]
    cascade = HealthCascade(settings, clock=lambda: now[0])
    first = await cascade.check(upstreams)
    now[0] += 1.9
    assert await cascade.check(upstreams) is first
    assert backends.probes["memory"] == 1
    now[0] += 0.2
    backends.status["memory"] = 500
    second = await cascade.check(upstreams)
    assert second.status == "unhealthy"
    assert backends.probes["memory"] == 2


def test_verdict_rules() -> None:
    """healthy / degraded / unhealthy from the down set and the critical names."""
    from luki_gateway.upstream.health import ServiceHealth

    up = ServiceHealth(True, 200, 1.0, "closed")
    down = ServiceHealth(False, None, 1.0, "open", "connect")
    assert verdict({"agent": up, "reports": up}, ("agent",)) == "healthy"
    assert verdict({"agent": up, "reports": down}, ("agent",)) == "degraded"
    assert verdict({"agent": down, "reports": up}, ("agent",)) == "unhealthy"
    assert verdict({}, ("agent",)) == "healthy"
