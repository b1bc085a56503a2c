"""One persistent ClientSession and one lean keep-alive pool per upstream, and a breaker.

Both are opened in a cleanup context and closed at shutdown; nothing ever opens a session
or a connection per request. The proxy's hot path and the chat relay's agent streams use
the lean pool (upstream/http1.py); streamed uploads, HEAD, health probes and the sync chat
call use the aiohttp session. Bodies
pass through untouched (``auto_decompress=False``) and no cookies are kept (a shared
session must never carry one client's cookie to another).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass

import aiohttp
import yarl
from aiohttp import web

from ..errors import DownstreamUnavailable
from ..metrics import REGISTRY
from ..settings import SETTINGS, Settings, UpstreamSettings
from .breaker import STATE_VALUES, CircuitBreaker
from .http1 import Pool
from .metrics import UPSTREAM_METRICS, UpstreamMetrics

# aiohttp would otherwise add its own Accept/Accept-Encoding/User-Agent/Content-Type,
# changing what the upstream sees (and asking for gzip the client never asked for).
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


@dataclass(slots=True)
class Upstream:
    """One backend: its name, base URL, persistent session, lean pool and breaker."""

    name: str
    base_url: yarl.URL
    session: aiohttp.ClientSession
    pool: Pool
    breaker: CircuitBreaker

    @property
    def in_use(self) -> int:
        """Connections currently lent out by the session and the pool (0 when idle)."""
        connector = self.session.connector
        if connector is None:
            return self.pool.in_use
        # aiohttp keeps acquired connections per key; there is no public counter.
        return self.pool.in_use + sum(
            len(conns) for conns in connector._acquired_per_host.values())


class Upstreams:
    """Every configured upstream, by name."""

    __slots__ = ("_by_name",)

    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self._by_name = dict(upstreams)

    def get(self, name: str) -> Upstream:
        """The upstream called ``name``; 503 DOWNSTREAM_UNAVAILABLE when not configured."""
        found = self._by_name.get(name)
        if found is None:
            raise DownstreamUnavailable(details={"upstream": name})
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Upstream]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def items(self) -> Iterator[tuple[str, Upstream]]:
        """(name, upstream) pairs in configuration order."""
        return iter(self._by_name.items())


UPSTREAMS = web.AppKey("upstreams", Upstreams)


def make_session(cfg: UpstreamSettings) -> aiohttp.ClientSession:
    """A pooled keep-alive session: bounded connector, DNS cache, bodies untouched."""
    connector = aiohttp.TCPConnector(
        limit=cfg.limit_per_host,
        limit_per_host=cfg.limit_per_host,
        use_dns_cache=cfg.dns_cache_ttl_s > 0,
        ttl_dns_cache=cfg.dns_cache_ttl_s or None,
        keepalive_timeout=cfg.keepalive_s,
    )
    timeout = aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout_s,
                                    sock_read=cfg.idle_read_timeout_s)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        trust_env=False,
        raise_for_status=False,
    )


def make_pool(base_url: yarl.URL, cfg: UpstreamSettings) -> Pool:
    """The lean keep-alive pool for the proxy's hot path, bounded like the session."""
    return Pool(base_url, limit=cfg.limit_per_host, connect_timeout_s=cfg.connect_timeout_s,
                keepalive_s=cfg.keepalive_s, dns_ttl_s=cfg.dns_cache_ttl_s)


def make_breaker(name: str, cfg: UpstreamSettings) -> CircuitBreaker:
    """The breaker for upstream ``name`` from the configured thresholds."""
    return CircuitBreaker(name, failures=cfg.breaker_failures,
                          failure_ratio=cfg.breaker_failure_ratio, window=cfg.breaker_window,
                          cooldown_s=cfg.breaker_cooldown_s,
                          half_open_probes=cfg.breaker_half_open_probes)


def build_upstreams(settings: Settings) -> Upstreams:
    """Open a session and a breaker for every configured upstream (inside a running loop)."""
    cfg = settings.upstream
    upstreams = {}
    for name, url in settings.upstreams.items():
        base_url = yarl.URL(url.rstrip("/"))
        upstreams[name] = Upstream(name=name, base_url=base_url, session=make_session(cfg),
                                   pool=make_pool(base_url, cfg),
                                   breaker=make_breaker(name, cfg))
    return Upstreams(upstreams)


def _state_reader(upstream: Upstream) -> Callable[[], float]:
    return lambda: STATE_VALUES[upstream.breaker.state]


def _export_circuit(metrics: UpstreamMetrics, upstreams: Upstreams) -> None:
    for upstream in upstreams:
        # Read at scrape time, so a cool-down that passed shows as half_open.
        metrics.circuit.labels(upstream.name).set_function(_state_reader(upstream))


async def upstream_sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one persistent ClientSession per upstream, closed at shutdown."""
    metrics = UpstreamMetrics.create(app[REGISTRY])
    app[UPSTREAM_METRICS] = metrics
    upstreams = build_upstreams(app[SETTINGS])
    app[UPSTREAMS] = upstreams
    _export_circuit(metrics, upstreams)
    try:
        yield
    finally:
        for upstream in upstreams:
            upstream.pool.close()
            await upstream.session.close()
