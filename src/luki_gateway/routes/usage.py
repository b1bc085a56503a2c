"""GET /v1/usage (limits, remaining counts, open streams, token budget) and GET /v1/me.

Neither route is charged to the caller's rate limit (asking how much is left must not use
it up); /v1/usage still sends the rate-limit headers of the state it reports.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..auth.principal import Principal, principal_of
from ..ratelimit.batch import BackendUnavailable
from ..ratelimit.headers import RATE_DECISION
from ..ratelimit.leases import LEASES
from ..ratelimit.limiter import LIMITER, RATE_POLICIES
from ..ratelimit.policies import client_ip
from ..ratelimit.quotas import TOKEN_QUOTA
from ..settings import SETTINGS
from .access import RouteAccess, declare

# Any authenticated principal, no scope, not charged.
USAGE_ACCESS = RouteAccess(rate_limited=False)


def identity(principal: Principal) -> dict[str, Any]:
    """The principal as the caller may see it (no secrets: ``display`` is already masked)."""
    return {
        "id": principal.id,
        "kind": principal.kind,
        "subject": principal.subject,
        "scopes": sorted(principal.scopes),
        "tenant": principal.tenant,
        "user_id": principal.user_id,
        "key_env": principal.key_env,
        "expires_at": principal.expires_at,
        "display": principal.display,
    }


async def _rate_limits(request: web.Request, principal: Principal) -> dict[str, Any]:
    settings = request.app[SETTINGS].ratelimit
    policies = request.app[RATE_POLICIES]
    windows = policies.windows_for(principal, client_ip(request, policies.trusted))
    out: dict[str, Any] = {"enabled": settings.enabled, "failure_mode": settings.failure_mode}
    if not settings.enabled:
        out["policies"] = []
        return out
    try:
        decision = await request.app[LIMITER].peek(windows)
    except BackendUnavailable:
        out["backend"] = "unavailable"
        out["policies"] = [{"policy": w.policy, "scope": w.scope, "limit": w.limit,
                            "window_s": int(w.window_s), "remaining": None, "reset_s": None}
                           for w in windows]
        return out
    request[RATE_DECISION] = decision
    out["policies"] = [{"policy": s.window.policy, "scope": s.window.scope,
                        "limit": s.window.limit, "window_s": int(s.window.window_s),
                        "remaining": s.remaining, "reset_s": s.reset_header}
                       for s in decision.states]
    return out


async def _streams(request: web.Request, principal: Principal) -> dict[str, Any]:
    leases = request.app[LEASES]
    out: dict[str, Any] = {}
    for group, kind in (("streams", "sse"), ("ws", "ws")):
        try:
            held: int | None = await leases.open_count(principal, group)
        except BackendUnavailable:
            held = None
        out[group] = {"limit": leases.limit_for(kind), "open": held}
    return out


async def _tokens(request: web.Request, principal: Principal) -> dict[str, Any]:
    quota = request.app[TOKEN_QUOTA]
    if not quota.enabled:
        return {"daily_budget": 0}
    try:
        usage = await quota.usage(principal)
    except BackendUnavailable:
        return {"daily_budget": quota.budget, "used": None, "remaining": None,
                "reset_s": None}
    assert usage is not None
    return {"daily_budget": usage.budget, "used": usage.used, "remaining": usage.remaining,
            "reset_s": usage.reset_s}


async def get_usage(request: web.Request) -> web.Response:
    """The caller's rate-limit windows, open streams and token budget, right now."""
    principal = principal_of(request)
    return web.json_response({
        "principal": {"id": principal.id, "kind": principal.kind,
                      "subject": principal.subject},
        "rate_limits": await _rate_limits(request, principal),
        "streams": await _streams(request, principal),
        "tokens": await _tokens(request, principal),
    }, headers={"Cache-Control": "no-store"})


async def get_me(request: web.Request) -> web.Response:
    """Who the caller is, its scopes, and the limits that apply to it."""
    principal = principal_of(request)
    settings = request.app[SETTINGS].ratelimit
    limits = {
        "enabled": settings.enabled,
        "per_min": settings.per_min,
        "per_hour": settings.per_hour,
        "max_streams": settings.max_streams,
        "max_ws": settings.max_ws_per_user,
        "daily_output_tokens": settings.daily_output_tokens,
    }
    return web.json_response({"principal": identity(principal), "limits": limits},
                             headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    """Add the routes: GET /v1/usage and /v1/me."""
    declare(app, app.router.add_get("/v1/usage", get_usage), USAGE_ACCESS)
    declare(app, app.router.add_get("/v1/me", get_me), USAGE_ACCESS)
