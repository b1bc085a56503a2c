"""Liveness and readiness: /healthz and /live (no I/O), /ready (start-up, drain, Redis),
/health (the upstream cascade)."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from .. import __version__
from ..lifecycle import LIFECYCLE
from ..redis_client import redis_of
from ..settings import SETTINGS
from ..upstream.health import HEALTH_CASCADE, HealthCascade
from ..upstream.sessions import UPSTREAMS
from .access import PUBLIC, declare

_ALIVE = b'{"status":"ok"}'


async def live(request: web.Request) -> web.Response:
    """Process alive: answers without any I/O."""
    return web.Response(body=_ALIVE, content_type="application/json",
                        headers={"X-LUKi-Worker": str(os.getpid())})


async def ready(request: web.Request) -> web.Response:
    """Ready for traffic: started, not draining, and Redis answering when configured."""
    lifecycle = request.app[LIFECYCLE]
    checks: dict[str, str] = {"startup": "ok" if lifecycle.ready else "pending"}
    if lifecycle.draining:
        checks["startup"] = "draining"
    redis = redis_of(request.app)
    if redis is not None:
        try:
            await asyncio.wait_for(redis.ping(), timeout=1.0)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable ({type(exc).__name__})"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ok else "not_ready", "checks": checks},
                             status=200 if ok else 503)


async def health(request: web.Request) -> web.Response:
    """Every upstream probed concurrently (briefly cached): healthy, degraded or unhealthy."""
    app = request.app
    report = await app[HEALTH_CASCADE].check(app[UPSTREAMS])
    body = {"status": report.status, "uptime_s": round(app[LIFECYCLE].uptime_s, 3),
            "version": __version__,
            "services": {name: s.as_json() for name, s in report.services.items()}}
    return web.json_response(body, status=report.http_status,
                             headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    """Add the liveness, readiness and health-cascade routes (public)."""
    for path in ("/healthz", "/live"):
        declare(app, app.router.add_get(path, live, allow_head=True), PUBLIC)
    declare(app, app.router.add_get("/ready", ready, allow_head=True), PUBLIC)
    app[HEALTH_CASCADE] = HealthCascade(app[SETTINGS])
    declare(app, app.router.add_get("/health", health, allow_head=True), PUBLIC)
