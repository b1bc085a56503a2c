"""RouteTable: the declarative proxy routes, matched by longest path prefix.

Built once from ``settings.routes``; each :class:`Route` carries everything the proxy and
the auth/rate-limit middlewares need (upstream, methods, scopes, timeout, body limit,
cost, retries), resolved against the global defaults so nothing is looked up per request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..settings import RouteConfig, Settings

# Methods safe to send twice (RFC 9110 9.2.2); only these are ever retried.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True, slots=True)
class Route:
    """One resolved proxy route."""

    prefix: str
    upstream: str
    methods: frozenset[str]
    scopes: Mapping[str, tuple[str, ...]]
    timeout_s: float
    max_body_bytes: int
    cost: int
    retries: bool
    strip_prefix: bool
    rewrite: str | None

    @property
    def allow_header(self) -> str:
        """The ``Allow`` header value for a 405 on this route."""
        return ", ".join(sorted(self.methods))

    def owns(self, path: str) -> bool:
        """True when ``path`` is the prefix itself or below it (``/v1/elrx`` is not)."""
        prefix = self.prefix
        return path == prefix or (path.startswith(prefix)
                                  and (prefix == "/" or path[len(prefix)] == "/"))

    def upstream_path(self, path: str) -> str:
        """The path sent upstream: unchanged, prefix stripped, or prefix rewritten."""
        if self.rewrite is not None:
            return self.rewrite.rstrip("/") + path[len(self.prefix):] or "/"
        if self.strip_prefix:
            return path[len(self.prefix):] or "/"
        return path


def _resolve(config: RouteConfig, settings: Settings) -> Route:
    prefix = config.prefix.rstrip("/") or "/"
    methods = frozenset(m.upper() for m in config.methods)
    if "GET" in methods:
        methods |= {"HEAD"}  # HEAD is GET without the body, as everywhere else
    limit = config.max_body_bytes
    scopes = {k.upper() if k != "*" else k: v for k, v in config.scopes.items()}
    if "GET" in scopes and "HEAD" not in scopes:
        scopes["HEAD"] = scopes["GET"]  # reading headers needs what reading the body needs
    return Route(
        prefix=prefix,
        upstream=config.upstream,
        methods=methods,
        scopes=scopes,
        timeout_s=config.timeout_s or settings.upstream.timeout_s,
        # A route may lower the global limit, never raise it past what aiohttp accepts.
        max_body_bytes=min(limit, settings.max_body_bytes) if limit else settings.max_body_bytes,
        cost=config.cost,
        retries=config.retries,
        strip_prefix=config.strip_prefix,
        rewrite=config.rewrite,
    )


class RouteTable:
    """All proxy routes; :meth:`match` picks the longest prefix owning a path."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Sequence[Route]) -> None:
        # Longest prefix first, so the first owner found is the most specific.
        self._routes = tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteTable:
        """The table for ``settings.routes`` with defaults filled in from ``settings``."""
        return cls([_resolve(r, settings) for r in settings.routes])

    def match(self, path: str) -> Route | None:
        """The most specific route owning ``path``, or None."""
        for route in self._routes:
            if route.owns(path):
                return route
        return None

    def __iter__(self) -> Iterator[Route]:
        """Routes, most specific first (the order they must be registered in)."""
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)
