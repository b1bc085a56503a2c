"""One persistent session per upstream, opened and closed with the app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from luki_gateway.errors import DownstreamUnavailable
from luki_gateway.upstream.sessions import UPSTREAMS


async def test_every_upstream_has_one_session_and_breaker(gateway: Callable[..., Any]) -> None:
    """The LUKi upstreams each get a session (no decompression, no cookies) and a breaker."""
    client = await gateway()
    upstreams = client.app[UPSTREAMS]
    assert {u.name for u in upstreams} == {"agent", "memory", "cognitive", "engagement",
                                           "reports"}
    memory = upstreams.get("memory")
    assert str(memory.base_url) == "http://127.0.0.1:9102"
    assert memory.session is upstreams.get("memory").session
    assert memory.session.auto_decompress is False
    assert memory.breaker.state == "closed"
    assert memory.in_use == 0
    assert len({id(u.session) for u in upstreams}) == len(upstreams)


async def test_unknown_upstream_is_unavailable(gateway: Callable[..., Any]) -> None:
    """Asking for an upstream that is not configured raises DOWNSTREAM_UNAVAILABLE."""
    client = await gateway()
    with pytest.raises(DownstreamUnavailable):
        client.app[UPSTREAMS].get("nope")


async def test_sessions_close_with_the_app(gateway: Callable[..., Any]) -> None:
    """Shutting the app down closes every upstream session."""
    client = await gateway()
    upstreams = client.app[UPSTREAMS]
    await client.close()
    assert all(u.session.closed for u in upstreams)
