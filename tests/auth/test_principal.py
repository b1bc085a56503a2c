"""Principals stay small: equal grants share one interned scope set, ids are not copied."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from luki_gateway.auth.authenticator import AUTHENTICATOR
from luki_gateway.auth.principal import ScopeSets

from ..conftest import make_token


def test_scope_sets_are_shared_and_bounded() -> None:
    """Equal sets come back as one object; past the bound the table starts over."""
    sets = ScopeSets(max_sets=2)
    first = sets(["chat:write", "elr:read"])
    assert sets(("elr:read", "chat:write")) is first
    assert first == frozenset({"chat:write", "elr:read"})
    sets(["a"])
    sets(["b"])  # third distinct set: the table was cleared, not grown
    assert sets(["chat:write", "elr:read"]) is not first


async def test_jwt_principals_share_scopes_and_strings(gateway: Callable[..., Any]) -> None:
    """Two tokens with the same grants give principals that share their scope set and id."""
    client = await gateway()
    authenticator = client.app[AUTHENTICATOR]
    one = await authenticator.authenticate_token(make_token("alice", ("chat:write", "x:y")))
    two = await authenticator.authenticate_token(make_token("alice", ("x:y", "chat:write"),
                                                            ttl_s=60))
    assert one.scopes is two.scopes and one.id is two.id
    assert one.display is one.id == "jwt:alice"
    other = await authenticator.authenticate_token(make_token("bob", ("chat:write",)))
    assert other.scopes == frozenset({"chat:write"}) and other.subject == "bob"
