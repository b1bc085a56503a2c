"""Which windows a request counts against: global, per IP, and per principal (key/user).

Policies come from ``[ratelimit]`` settings. The principal's own windows (``minute`` and
``hour``, stacked) are keyed by API key id for API keys, by ``sub`` for JWT users and by
name for service tokens; anonymous callers (auth disabled) by client IP (scope ``anon``). The
client IP is the socket peer unless that peer is a trusted proxy, in which case it is the
right-most ``X-Forwarded-For`` hop that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import structlog
from aiohttp import web

from ..auth.principal import Principal
from ..bounded import remember
from ..settings import RateLimitSettings
from .decision import Window

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

log = structlog.get_logger("luki.ratelimit")

_SCOPE_BY_KIND = {"api_key": "key", "jwt": "user", "service": "service"}
_WINDOW_CACHE = 10_000  # callers whose windows are kept


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Trusted proxies as networks (a bare address is a /32 or /128); bad entries skipped."""
    networks: list[IPNetwork] = []
    for entry in (e.strip() for e in entries if e.strip()):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            # Not trusting a garbled entry only means its X-Forwarded-For is not believed.
            log.warning("ignoring invalid trusted proxy", entry=entry)
    return tuple(networks)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]  # [v6]:port
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # v4:port
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def client_ip(request: web.BaseRequest, trusted: tuple[IPNetwork, ...]) -> str:
    """The caller's address, looking through trusted proxies only."""
    peer = request.remote or "unknown"
    if not trusted:
        return peer  # no trusted proxies: the peer is the client, nothing to parse
    peer_ip = _parse_ip(peer)
    if peer_ip is None or not any(peer_ip in net for net in trusted):
        return peer
    hops = [h for part in request.headers.getall("X-Forwarded-For", ())
            for h in part.split(",") if h.strip()]
    for hop in reversed(hops):
        ip = _parse_ip(hop)
        if ip is None:
            return peer  # a garbled chain is not trusted past our own proxy
        if not any(ip in net for net in trusted):
            return str(ip)
    return str(_parse_ip(hops[0])) if hops else peer


class RatePolicies:
    """Builds the windows for one request from the ``[ratelimit]`` settings."""

    def __init__(self, settings: RateLimitSettings, trusted_proxies: Iterable[str]) -> None:
        self.settings = settings
        self.trusted = parse_networks(trusted_proxies)
        # The same caller gets the same windows: built once, bounded (cleared when full).
        self._windows: dict[tuple[str, str, str, str], tuple[Window, ...]] = {}

    def principal_scope(self, principal: Principal, ip: str) -> tuple[str, str]:
        """(scope, identity) of the principal's own windows."""
        scope = _SCOPE_BY_KIND.get(principal.kind)
        if scope is None:
            return "anon", ip
        ident = principal.id.removeprefix("key:") if principal.kind == "api_key" \
            else principal.subject
        return scope, ident

    def windows_for(self, principal: Principal, ip: str) -> tuple[Window, ...]:
        """Every window this principal's request from ``ip`` counts against."""
        cache_key = (principal.kind, principal.id, principal.subject, ip)
        windows = self._windows.get(cache_key)
        if windows is None:
            windows = remember(self._windows, cache_key, self._build(principal, ip),
                               _WINDOW_CACHE)
        return windows

    def _build(self, principal: Principal, ip: str) -> tuple[Window, ...]:
        s = self.settings
        windows: list[Window] = []
        if s.global_per_min:
            windows.append(Window("global", "global", "rl:global:60", s.global_per_min, 60))
        if s.per_ip_per_min:
            windows.append(Window("ip", "ip", f"rl:ip:{ip}:60", s.per_ip_per_min, 60))
        scope, ident = self.principal_scope(principal, ip)
        if s.per_min:
            windows.append(Window("minute", scope, f"rl:{scope}:{ident}:60", s.per_min, 60))
        if s.per_hour:
            windows.append(Window("hour", scope, f"rl:{scope}:{ident}:3600", s.per_hour, 3600))
        return tuple(windows)
