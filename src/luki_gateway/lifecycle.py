"""Process lifecycle as /ready sees it: starting, ready, draining."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(slots=True)
class Lifecycle:
    """Readiness of this app: ready after start-up, not ready once shutdown begins."""

    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    draining: bool = False

    @property
    def uptime_s(self) -> float:
        """Seconds since the app was created."""
        return time.monotonic() - self.started_at


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)


async def mark_ready(app: web.Application) -> None:
    """on_startup (last): every cleanup context is open, so traffic may come."""
    app[LIFECYCLE].ready = True


async def mark_draining(app: web.Application) -> None:
    """on_shutdown (first): /ready answers 503 from here on."""
    app[LIFECYCLE].ready = False
    app[LIFECYCLE].draining = True
