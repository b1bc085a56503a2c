"""Stream tickets and service tokens through the real app: POST /v1/auth/ticket, ?ticket=
on GET stream routes only, reuse until expiry, revocation, and service principals."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from luki_gateway.auth.api_keys import KEY_STORE
from luki_gateway.auth.failure import AuthFailure
from luki_gateway.auth.principal import Principal
from luki_gateway.auth.tickets import TicketSigner
from luki_gateway.settings import SettingsError

from ..conftest import bearer
from .probe import Probe


async def mint(p: Probe, headers: dict[str, str]) -> dict[str, Any]:
    """POST /v1/auth/ticket with ``headers``; the JSON answer."""
    resp = await p.client.post("/v1/auth/ticket", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await resp.json()
    return body


async def test_ticket_is_minted_and_used_on_stream_route(backend: str,
                                                         probe: Callable[..., Any]) -> None:
    """A ticket stands for its principal on a GET stream route, reusable (reconnects)."""
    p: Probe = await probe()
    body = await mint(p, bearer("erin", ("chat:write",)))
    assert 0 < body["expires_in"] <= 600
    ticket = body["ticket"]
    for _ in range(3):  # EventSource reconnects reuse the same URL
        resp = await p.client.get("/t/stream", params={"ticket": ticket})
        assert resp.status == 200
        principal = (await resp.json())["principal"]
        assert principal["subject"] == "erin" and principal["kind"] == "jwt"


async def test_ticket_refused_outside_get_stream_routes(probe: Callable[..., Any]) -> None:
    """Not on normal routes, not for POST, not as a bearer token."""
    p: Probe = await probe()
    ticket = (await mint(p, bearer("erin", ("chat:write",))))["ticket"]
    assert (await p.client.get("/t/chat", params={"ticket": ticket})).status == 401
    assert (await p.client.post("/t/chat", params={"ticket": ticket})).status == 401
    resp = await p.client.post("/t/chat", headers={"Authorization": f"Bearer {ticket}"})
    assert resp.status == 401
    assert p.calls == []


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2],
    lambda t: t.replace("tk_", "tk_x"),
    lambda t: t.split(".")[0] + ".",
    lambda t: "tk_" + "A" * 7000,
    lambda t: "garbage",
    lambda t: "",
])
async def test_forged_tickets_refused(probe: Callable[..., Any],
                                      mangle: Callable[[str], str]) -> None:
    """Tampered, truncated, oversized or garbage tickets: 401, nothing runs."""
    p: Probe = await probe()
    ticket = (await mint(p, bearer("erin")))["ticket"]
    resp = await p.client.get("/t/stream", params={"ticket": mangle(ticket)})
    assert resp.status == 401
    assert p.calls == []


async def test_two_tickets_in_one_url_refused(probe: Callable[..., Any]) -> None:
    """?ticket=a&ticket=b is ambiguous and refused."""
    p: Probe = await probe()
    ticket = (await mint(p, bearer("erin")))["ticket"]
    resp = await p.client.get(f"/t/stream?ticket={ticket}&ticket={ticket}")
    assert resp.status == 401


async def test_ticket_expires_and_never_outlives_its_token() -> None:
    """With an injected clock: valid until its TTL, and capped at the JWT's exp."""
    now = [1000.0]
    signer = TicketSigner("pepper", ttl_s=600, clock=lambda: now[0])
    principal = Principal(id="jwt:a", kind="jwt", subject="a", scopes=frozenset({"x"}),
                          expires_at=1100.0)
    ticket, expires_in = signer.mint(principal)
    assert expires_in == 100
    assert signer.verify(ticket).subject == "a"
    now[0] = 1100.0
    with pytest.raises(AuthFailure):
        signer.verify(ticket)
    long_lived = Principal(id="k", kind="api_key", subject="b", scopes=frozenset())
    ticket, expires_in = signer.mint(long_lived)
    assert expires_in == 600
    now[0] += 599
    assert signer.verify(ticket).subject == "b"
    now[0] += 1
    with pytest.raises(AuthFailure):
        signer.verify(ticket)
    other = TicketSigner("other-pepper", ttl_s=600, clock=lambda: now[0])
    with pytest.raises(AuthFailure):
        other.verify(signer.mint(long_lived)[0])


async def test_ticket_of_revoked_key_is_refused(backend: str,
                                                probe: Callable[..., Any]) -> None:
    """Revoking the API key also ends its outstanding tickets."""
    p: Probe = await probe(auth={"key_cache_s": 0})
    key = await p.add_key(scopes=("chat:write",))
    ticket = (await mint(p, {"Authorization": f"Bearer {key}"}))["ticket"]
    assert (await p.client.get("/t/stream", params={"ticket": ticket})).status == 200
    (record,) = await p.app[KEY_STORE].list()
    await p.app[KEY_STORE].revoke(record.id)
    assert (await p.client.get("/t/stream", params={"ticket": ticket})).status == 401


async def test_ticket_needs_a_principal(probe: Callable[..., Any]) -> None:
    """POST /v1/auth/ticket without credentials is 401."""
    p: Probe = await probe()
    assert (await p.client.post("/v1/auth/ticket")).status == 401


async def test_service_token(probe: Callable[..., Any]) -> None:
    """A configured service token (stored as SHA-256) authenticates as kind=service."""
    token = "svc-agent-" + "s" * 32
    p: Probe = await probe(auth={"service_tokens": [
        {"name": "agent", "sha256": hashlib.sha256(token.encode()).hexdigest(),
         "scopes": ["events:publish", "chat:write"]}]})
    resp = await p.client.post("/t/chat", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    principal = (await resp.json())["principal"]
    assert principal["kind"] == "service" and principal["subject"] == "agent"
    assert principal["id"] == "svc:agent"
    resp = await p.client.post("/t/chat", headers={"Authorization": f"Bearer {token}x"})
    assert resp.status == 401
    # A JWT still works next to service tokens.
    assert (await p.client.post("/t/chat", headers=bearer("alice"))).status == 200


def test_malformed_service_token_hash_is_a_config_error(
        make_settings: Callable[..., Any]) -> None:
    """A service token configured with a non-SHA-256 value is refused at load, by key."""
    with pytest.raises(SettingsError, match=r"auth\.service_tokens\.0\.sha256"):
        make_settings(auth={"service_tokens": [{"name": "agent", "sha256": "9f86d0…"}]})
