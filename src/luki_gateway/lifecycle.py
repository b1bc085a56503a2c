"""Process lifecycle as /ready sees it: starting, ready, draining; and the drain's deadline.

A shutdown gives the requests in flight ``shutdown_grace_s`` from the moment draining
starts. aiohttp alone cannot keep that: it waits its timeout for handlers, then only asks
them to stop (a handler that is not reading its body does not notice) and waits as long
again. So when the grace is over the lifecycle tells waiting handlers (``out_of_time``: a
sync chat answers 503) and, ANSWER_WAIT_S later, cancels what still runs (the task aiohttp
documents for this, ``request.task``): aiohttp's own wait then ends at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from .settings import SETTINGS

log = structlog.get_logger("luki.lifecycle")

# Once the grace is over: how long handlers told to stop get to send their answer.
ANSWER_WAIT_S = 0.5


@dataclass(slots=True)
class Lifecycle:
    """Readiness of this app: ready after start-up, not ready once shutdown begins."""

    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    draining: bool = False
    # The grace is over with requests in flight: a handler still waiting answers now.
    out_of_time: bool = False
    # The tasks (``request.task``) of the requests between the access record's begin and
    # end, streams included. A connection handles one request at a time.
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def uptime_s(self) -> float:
        """Seconds since the app was created."""
        return time.monotonic() - self.started_at

    def begin_drain(self, grace_s: float) -> None:
        """Not ready from now on; in-flight requests get ``grace_s`` (from the first call)."""
        self.ready = False
        if self.draining:
            return
        self.draining = True
        asyncio.get_running_loop().call_later(grace_s, self._grace_over)

    def _grace_over(self) -> None:
        if not self.in_flight:
            return
        log.warning("shutdown grace over; ending in-flight requests",
                    in_flight=len(self.in_flight))
        self.out_of_time = True
        asyncio.get_running_loop().call_later(ANSWER_WAIT_S, self._cut_stragglers)

    def _cut_stragglers(self) -> None:
        for task in list(self.in_flight):
            task.cancel()  # aiohttp then closes the connection


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)


async def mark_ready(app: web.Application) -> None:
    """on_startup (last): every cleanup context is open, so traffic may come."""
    app[LIFECYCLE].ready = True


async def mark_draining(app: web.Application) -> None:
    """on_shutdown (first): /ready answers 503 from here on; the grace starts."""
    app[LIFECYCLE].begin_drain(app[SETTINGS].shutdown_grace_s)
