"""Rate limiting: charge each authenticated request to every applicable window, or 429.

Runs after auth: requests without a principal (public routes, deferred-auth handshakes) and
routes declared ``rate_limited=False`` pass untouched. When the backend fails the route's
failure mode decides: open (serve unlimited) for REST, closed (503) for publishing events.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable

from aiohttp import web

from ..auth.principal import PRINCIPAL, Principal
from ..errors import DownstreamUnavailable, RateLimitExceeded
from ..ratelimit.batch import BackendUnavailable
from ..ratelimit.decision import Decision, Window
from ..ratelimit.headers import RATE_DECISION
from ..ratelimit.limiter import LIMITER, RATE_POLICIES
from ..ratelimit.metrics import RATELIMIT_METRICS
from ..ratelimit.policies import client_ip
from ..routes.access import RouteAccess
from ..settings import SETTINGS, RateLimitSettings

PUBLISH_SCOPE = "events:publish"


def failure_mode(access: RouteAccess, method: str, settings: RateLimitSettings) -> str:
    """'open' or 'closed' for this route when the limiter backend is down."""
    if PUBLISH_SCOPE in access.scopes_for(method):
        return settings.publish_failure_mode
    return settings.failure_mode


def rejection(decision: Decision) -> RateLimitExceeded:
    """The 429 for a refused decision, naming the window that refused it."""
    window = decision.rejected_by
    assert window is not None
    retry_after = max(1, math.ceil(decision.retry_after_s))
    return RateLimitExceeded(
        f"rate limit exceeded: {window.policy} ({window.limit} per {int(window.window_s)} s)",
        retry_after=retry_after,
        details={"policy": window.policy, "scope": window.scope, "limit": window.limit,
                 "window_s": int(window.window_s), "retry_after_s": retry_after})


def rate_limit(request: web.Request, access: RouteAccess) -> Awaitable[None] | None:
    """Charge the request against every applicable policy; 429 when one is exhausted.

    Done at once for requests that are not charged; otherwise the awaitable of the decision.
    """
    app = request.app
    settings = app[SETTINGS].ratelimit
    if not settings.enabled or access.public or not access.rate_limited:
        return None
    principal = request.get(PRINCIPAL)
    if principal is None:
        return None
    policies = app[RATE_POLICIES]
    windows = policies.windows_for(principal, client_ip(request, policies.trusted))
    if not windows:
        return None
    return _decide(request, access, windows, settings)


async def _decide(request: web.Request, access: RouteAccess, windows: tuple[Window, ...],
                  settings: RateLimitSettings) -> None:
    decision = await _charge(request.app, windows, access.cost,
                             failure_mode(access, request.method, settings))
    if decision is not None:
        request[RATE_DECISION] = decision  # its headers go on the answer, a 429 included
        _enforce(request.app, decision, windows)


async def charge_message(app: web.Application, principal: Principal, ip: str,
                         access: RouteAccess) -> None:
    """Charge a WebSocket message that starts work (a chat turn) as one request to the
    HTTP route ``access`` describes: RateLimitExceeded when a window is exhausted."""
    settings = app[SETTINGS].ratelimit
    if not settings.enabled or not access.rate_limited:
        return
    windows = app[RATE_POLICIES].windows_for(principal, ip)
    if windows:
        decision = await _charge(app, windows, access.cost,
                                 failure_mode(access, "POST", settings))
        if decision is not None:
            _enforce(app, decision, windows)


async def _charge(app: web.Application, windows: tuple[Window, ...], cost: int, mode: str
                  ) -> Decision | None:
    """The limiter's decision, or None when its backend is down and ``mode`` is open."""
    metrics = app[RATELIMIT_METRICS]
    try:
        return await app[LIMITER].decide(windows, cost)
    except BackendUnavailable:
        for window in windows:
            metrics.decision(window.policy, f"failed_{mode}")
        if mode == "closed":
            raise DownstreamUnavailable(
                "rate limiter unavailable", details={"reason": "rate_limiter_unavailable"},
                headers={"Retry-After": "1"}) from None
        return None  # open: served unlimited


def _enforce(app: web.Application, decision: Decision, windows: tuple[Window, ...]) -> None:
    """Count the decision; raise the 429 when it refused."""
    metrics = app[RATELIMIT_METRICS]
    if not decision.allowed:
        assert decision.rejected_by is not None
        metrics.decision(decision.rejected_by.policy, "rejected")
        raise rejection(decision)
    for window in windows:
        metrics.decision(window.policy, "allowed")
