"""Which windows a request counts against, and how the client address is found."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs

from luki_gateway.app import create_app
from luki_gateway.auth.principal import ANONYMOUS, Principal
from luki_gateway.ratelimit.limiter import RATE_POLICIES
from luki_gateway.ratelimit.policies import RatePolicies, client_ip, parse_networks
from luki_gateway.routes.access import RouteAccess, declare
from luki_gateway.settings import RateLimitSettings, Settings


def test_parse_networks_skips_garbage() -> None:
    """Addresses become host networks, CIDRs stay, blanks and garbage are dropped."""
    nets = parse_networks(["10.0.0.0/8", " 192.168.1.5 ", "", "not-an-ip", "::1"])
    assert nets == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.5/32"),
                    ipaddress.ip_network("::1/128"))


def test_windows_per_principal_kind() -> None:
    """API keys by key id, JWT users by sub, services by name, anonymous by address."""
    policies = RatePolicies(RateLimitSettings(per_min=60, per_hour=1000, global_per_min=5,
                                              per_ip_per_min=7), ())
    key = Principal(id="key:k1", kind="api_key", subject="owner", scopes=frozenset())
    user = Principal(id="jwt:alice", kind="jwt", subject="alice", scopes=frozenset())
    svc = Principal(id="svc:reports", kind="service", subject="reports", scopes=frozenset())
    assert [w.key for w in policies.windows_for(key, "1.2.3.4")] == [
        "rl:global:60", "rl:ip:1.2.3.4:60", "rl:key:k1:60", "rl:key:k1:3600"]
    assert [w.key for w in policies.windows_for(user, "1.2.3.4")][2:] == [
        "rl:user:alice:60", "rl:user:alice:3600"]
    assert [w.scope for w in policies.windows_for(svc, "1.2.3.4")][2:] == ["service"] * 2
    anon = policies.windows_for(ANONYMOUS, "1.2.3.4")
    assert [w.key for w in anon][2:] == ["rl:anon:1.2.3.4:60", "rl:anon:1.2.3.4:3600"]
    assert [(w.policy, w.limit) for w in anon] == [("global", 5), ("ip", 7), ("minute", 60),
                                                  ("hour", 1000)]
    off = RatePolicies(RateLimitSettings(per_min=0, per_hour=0), ())
    assert off.windows_for(user, "1.2.3.4") == ()


async def test_client_ip_through_real_requests(aiohttp_client: Callable[..., Any],
                                               make_settings: Callable[..., Settings]) -> None:
    """The address seen through trusted proxies; garbled or untrusted chains fall back."""
    app = create_app(make_settings(trusted_proxies=["127.0.0.1", "10.0.0.0/8"]))

    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=client_ip(request, request.app[RATE_POLICIES].trusted))

    declare(app, app.router.add_get("/v1/test/ip", whoami), RouteAccess(public=True))
    client = await aiohttp_client(app)

    async def ip(xff: str | None) -> str:
        headers = {"X-Forwarded-For": xff} if xff is not None else {}
        return await (await client.get("/v1/test/ip", headers=headers)).text()

    assert await ip(None) == "127.0.0.1"
    assert await ip("198.51.100.4") == "198.51.100.4"
    assert await ip("6.6.6.6, 198.51.100.4, 10.1.2.3") == "198.51.100.4"  # spoofed head
    assert await ip("10.0.0.1, 10.0.0.2") == "10.0.0.1"  # all trusted: the first hop
    assert await ip("198.51.100.4:5555") == "198.51.100.4"
    assert await ip("[2001:db8::1]:443") == "2001:db8::1"
    assert await ip("garbage") == "127.0.0.1"
    assert await ip("") == "127.0.0.1"


async def test_per_process_limits_are_warned_about(aiohttp_client: Callable[..., Any],
                                                   make_settings: Callable[..., Settings]
                                                   ) -> None:
    """Several workers without Redis multiply the limits: start-up says so."""
    settings = make_settings(workers=2, ratelimit={"enabled": True})
    with capture_logs() as logs:
        await aiohttp_client(create_app(settings))
    assert any(e["event"] == "rate limits are per process without REDIS_URL" for e in logs)
    # So is chat resume, which then works only on the worker that runs the turn.
    assert any(e["event"].startswith("chat resume without REDIS_URL") for e in logs)
    with capture_logs() as quiet:
        await aiohttp_client(create_app(make_settings(workers=1, ratelimit={"enabled": True})))
    assert not any(e["event"].startswith(("rate limits are per process", "chat resume"))
                   for e in quiet)
