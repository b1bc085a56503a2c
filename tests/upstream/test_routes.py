"""RouteTable: resolution of route settings and longest-prefix matching."""

from __future__ import annotations

from collections.abc import Callable

from luki_gateway.settings import Settings
from luki_gateway.upstream.routes import RouteTable


def test_default_table_matches_luki_routes(make_settings: Callable[..., Settings]) -> None:
    """The built-in table sends each LUKi prefix to its upstream with its scopes."""
    table = RouteTable.from_settings(make_settings())
    elr = table.match("/v1/elr/items/1")
    assert elr is not None
    assert elr.upstream == "memory"
    assert elr.scopes["GET"] == ("elr:read",)
    assert elr.scopes["*"] == ("elr:write",)
    reports = table.match("/v1/reports/generate")
    assert reports is not None
    assert reports.cost == 5
    assert table.match("/v1/chat") is None
    assert table.match("/v1/elrx") is None


def test_head_inherits_get_scopes(make_settings: Callable[..., Settings]) -> None:
    """HEAD is allowed wherever GET is, and needs GET's scopes unless it has its own."""
    route = RouteTable.from_settings(make_settings()).match("/v1/activities/recommend")
    assert route is not None
    assert "HEAD" in route.methods
    assert route.scopes["HEAD"] == ("activities:read",)


def test_longest_prefix_first(make_settings: Callable[..., Settings]) -> None:
    """A more specific prefix wins regardless of declaration order."""
    settings = make_settings(routes=[
        {"prefix": "/v1", "upstream": "agent"},
        {"prefix": "/v1/elr/", "upstream": "memory"},
        {"prefix": "/v1/elr/admin", "upstream": "reports"},
    ])
    table = RouteTable.from_settings(settings)
    assert [r.prefix for r in table] == ["/v1/elr/admin", "/v1/elr", "/v1"]
    assert table.match("/v1/elr/admin/x").upstream == "reports"  # type: ignore[union-attr]
    assert table.match("/v1/elr/adminx").upstream == "memory"  # type: ignore[union-attr]
    assert table.match("/v1/other").upstream == "agent"  # type: ignore[union-attr]
    assert table.match("/v2") is None


def test_defaults_resolved_from_settings(make_settings: Callable[..., Settings]) -> None:
    """Timeout and body limit fall back to the global ones; a route may only lower the limit."""
    settings = make_settings(max_body_bytes=5000, upstream={"timeout_s": 7.0}, routes=[
        {"prefix": "/a", "upstream": "memory"},
        {"prefix": "/b", "upstream": "memory", "max_body_bytes": 100, "timeout_s": 1.5},
        {"prefix": "/c", "upstream": "memory", "max_body_bytes": 10**9},
    ])
    table = RouteTable.from_settings(settings)
    a, b, c = (table.match(p) for p in ("/a", "/b", "/c"))
    assert a is not None and b is not None and c is not None
    assert (a.timeout_s, a.max_body_bytes) == (7.0, 5000)
    assert (b.timeout_s, b.max_body_bytes) == (1.5, 100)
    assert c.max_body_bytes == 5000


def test_upstream_path_rewrites(make_settings: Callable[..., Settings]) -> None:
    """strip_prefix drops the prefix; rewrite replaces it; default keeps the path."""
    settings = make_settings(routes=[
        {"prefix": "/keep", "upstream": "memory"},
        {"prefix": "/strip", "upstream": "memory", "strip_prefix": True},
        {"prefix": "/old", "upstream": "memory", "rewrite": "/new/"},
    ])
    table = RouteTable.from_settings(settings)
    keep, strip, old = (table.match(p) for p in ("/keep", "/strip", "/old"))
    assert keep is not None and strip is not None and old is not None
    assert keep.upstream_path("/keep/x") == "/keep/x"
    assert strip.upstream_path("/strip/x/y") == "/x/y"
    assert strip.upstream_path("/strip") == "/"
    assert old.upstream_path("/old/x") == "/new/x"
