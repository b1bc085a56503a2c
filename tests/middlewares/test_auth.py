"""The auth middleware through the real app: public routes, 401/403, scopes, credential
sources (header, subprotocol, deferred), query tokens, WebSocket origins, auth disabled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luki_gateway.settings import Settings

from ..auth.probe import Probe, start_probe
from ..conftest import bearer, make_token

CHALLENGE = 'Bearer realm="luki", error="invalid_token"'


@pytest.fixture
def probe(aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings],
          tmp_path: Path) -> Callable[..., Any]:
    """Start the real app with /t/* probe routes and a file key store."""

    async def start(**overrides: Any) -> Probe:
        auth = {"api_keys_file": str(tmp_path / "keys.json"), **overrides.pop("auth", {})}
        return await start_probe(aiohttp_client, make_settings(auth=auth, **overrides))

    return start


async def assert_refused(resp: aiohttp.ClientResponse, probe: Probe) -> dict[str, Any]:
    """401 UNAUTHENTICATED with the challenge, and no handler ran."""
    assert resp.status == 401, await resp.text()
    assert resp.headers["WWW-Authenticate"] == CHALLENGE
    body: dict[str, Any] = await resp.json()
    assert body["error"]["code"] == "UNAUTHENTICATED"
    assert body["error"]["trace_id"]
    assert probe.calls == []
    return body


async def test_public_routes_need_nothing(probe: Callable[..., Any]) -> None:
    """Health and metrics answer without credentials, even with a garbage Authorization."""
    p = await probe()
    for path in ("/healthz", "/ready", "/metrics"):
        resp = await p.client.get(path, headers={"Authorization": "Bearer garbage"})
        assert resp.status == 200, path


async def test_missing_credentials_is_401_with_challenge(probe: Callable[..., Any]) -> None:
    """A private route without credentials: 401, WWW-Authenticate, handler never runs."""
    p = await probe()
    await assert_refused(await p.client.get("/t/any"), p)
    await assert_refused(await p.client.post("/t/chat", json={}), p)


async def test_valid_jwt_reaches_handler_with_principal(probe: Callable[..., Any]) -> None:
    """A dev JWT from conftest.make_token authenticates; the principal is the JWT sub."""
    p = await probe()
    resp = await p.client.post("/t/chat", headers=bearer("alice", ("chat:write",)))
    assert resp.status == 200
    principal = (await resp.json())["principal"]
    assert principal["kind"] == "jwt"
    assert principal["subject"] == "alice"
    assert principal["scopes"] == ["chat:write"]
    assert principal["expires_at"] is not None


@pytest.mark.parametrize("granted", [("chat:writer",), ("chat",), ("chat:read",),
                                     ("CHAT:WRITE",), ("chat:write:x",), ()])
async def test_scope_must_match_exactly(probe: Callable[..., Any],
                                        granted: tuple[str, ...]) -> None:
    """chat:write is never satisfied by chat:writer, chat, chat:read or other case: 403."""
    p = await probe()
    resp = await p.client.post("/t/chat", headers=bearer("alice", granted))
    assert resp.status == 403
    body = await resp.json()
    assert body["error"]["code"] == "INSUFFICIENT_SCOPE"
    assert "chat:write" in body["error"]["message"]
    assert body["error"]["details"]["missing_scopes"] == ["chat:write"]
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    assert p.calls == []


async def test_scopes_are_per_method(probe: Callable[..., Any]) -> None:
    """GET needs elr:read, POST needs elr:write."""
    p = await probe()
    reader = bearer("r", ("elr:read",))
    assert (await p.client.get("/t/elr", headers=reader)).status == 200
    assert (await p.client.post("/t/elr", headers=reader)).status == 403


async def test_wildcard_only_where_granted(probe: Callable[..., Any]) -> None:
    """elr:* grants elr:read and elr:write but not chat:write."""
    p = await probe()
    wild = bearer("w", ("elr:*",))
    assert (await p.client.get("/t/elr", headers=wild)).status == 200
    assert (await p.client.post("/t/elr", headers=wild)).status == 200
    assert (await p.client.post("/t/chat", headers=wild)).status == 403


@pytest.mark.parametrize("header", ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer ",
                                    "token abc", "bearer", "Bearer a b"])
async def test_malformed_authorization_header_is_401(probe: Callable[..., Any],
                                                     header: str) -> None:
    """Other schemes, empty bearer values and junk are refused with 401."""
    p = await probe()
    await assert_refused(await p.client.get("/t/any", headers={"Authorization": header}), p)


@pytest.mark.parametrize("param", ["access_token", "token", "api_key", "jwt", "ticket",
                                   "Access_Token"])
async def test_token_in_query_string_is_refused(probe: Callable[..., Any], param: str) -> None:
    """A credential in the URL of a normal route is refused even with a valid header."""
    p = await probe()
    token = make_token("alice", ("chat:write",))
    resp = await p.client.post(f"/t/chat?{param}={token}", headers=bearer("alice"))
    body = await assert_refused(resp, p)
    assert "URL" in body["error"]["message"]


async def test_credential_shaped_query_values_are_refused(probe: Callable[..., Any]) -> None:
    """A JWT or API key under any parameter name is refused; ordinary params are fine."""
    p = await probe()
    token = make_token("alice", ("chat:write",))
    key = "sk_live_" + "A" * 43
    for query in (f"key={key}", f"q={token}", f"auth={token}"):
        resp = await p.client.post(f"/t/chat?{query}", headers=bearer("alice"))
        await assert_refused(resp, p)
    resp = await p.client.post("/t/chat?key=user-42&page_token=abc&q=eyJ", headers=bearer())
    assert resp.status == 200


async def test_client_supplied_principal_header_is_ignored(probe: Callable[..., Any]) -> None:
    """X-LUKi-Principal / X-LUKi-Scopes from the client authenticate nobody."""
    p = await probe()
    forged = {"X-LUKi-Principal": "admin", "X-LUKi-Scopes": "*", "X-LUKi-Auth-Type": "service"}
    await assert_refused(await p.client.post("/t/chat", headers=forged), p)
    resp = await p.client.post("/t/chat", headers={**forged, **bearer("bob")})
    assert (await resp.json())["principal"]["subject"] == "bob"


async def test_auth_disabled_gives_anonymous(probe: Callable[..., Any]) -> None:
    """With auth.enabled = false every request runs as the anonymous principal."""
    p = await probe(auth={"enabled": False})
    resp = await p.client.post("/t/chat")
    assert resp.status == 200
    assert (await resp.json())["principal"]["kind"] == "anonymous"


async def test_websocket_subprotocol_bearer(probe: Callable[..., Any]) -> None:
    """Sec-WebSocket-Protocol: bearer, <token> authenticates; only 'bearer' is echoed."""
    p = await probe()
    token = make_token("carol", ("chat:write",))
    async with p.client.ws_connect("/t/ws", protocols=("bearer", token)) as ws:
        assert ws.protocol == "bearer"
        msg = await ws.receive_json(timeout=5)
    assert msg["principal"]["subject"] == "carol"


async def test_websocket_without_credentials_is_deferred(probe: Callable[..., Any]) -> None:
    """A deferred-auth route without credentials reaches the handler with no principal."""
    p = await probe()
    async with p.client.ws_connect("/t/ws") as ws:
        msg = await ws.receive_json(timeout=5)
    assert msg["principal"] is None


async def test_websocket_with_bad_subprotocol_token_is_401(probe: Callable[..., Any]) -> None:
    """A bad token in the subprotocol is refused before the upgrade."""
    p = await probe()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await p.client.ws_connect("/t/ws", protocols=("bearer", "eyJ.bad.token"))
    assert info.value.status == 401
    assert p.calls == []


async def test_websocket_foreign_origin_is_403(probe: Callable[..., Any]) -> None:
    """A WebSocket upgrade from an origin outside CORS_ORIGINS is refused (CSWSH)."""
    p = await probe(cors_origins=["https://app.example"])
    token = make_token("dave", ("chat:write",))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await p.client.ws_connect("/t/ws", protocols=("bearer", token),
                                  headers={"Origin": "https://evil.example"})
    assert info.value.status == 403
    assert p.calls == []
    async with p.client.ws_connect("/t/ws", protocols=("bearer", token),
                                   headers={"Origin": "https://app.example"}) as ws:
        assert (await ws.receive_json(timeout=5))["principal"]["subject"] == "dave"


async def test_failures_are_counted_by_reason(probe: Callable[..., Any]) -> None:
    """luki_auth_failures_total{reason} counts missing, malformed and scope refusals."""
    p = await probe()
    await p.client.get("/t/any")
    await p.client.get("/t/any", headers={"Authorization": "Bearer not-a-token"})
    await p.client.post("/t/chat", headers=bearer("x", ("chat:read",)))
    text = await (await p.client.get("/metrics")).text()
    assert 'luki_auth_failures_total{reason="missing"} 1.0' in text
    assert 'luki_auth_failures_total{reason="malformed"} 1.0' in text
    assert 'luki_auth_failures_total{reason="insufficient_scope"} 1.0' in text
    assert 'luki_auth_failures_total{reason="revoked"} 0.0' in text


_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                       max_size=300)


async def test_random_header_values_never_500(probe: Callable[..., Any]) -> None:
    """Hypothesis: arbitrary Authorization / subprotocol / ticket values never yield a 5xx."""
    p = await probe()
    examples: list[tuple[dict[str, str], dict[str, str]]] = []

    # Hypothesis drives a sync function; the examples are then sent through the real app.
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(auth=_HEADER_TEXT, proto=_HEADER_TEXT, ticket=_HEADER_TEXT,
           scheme=st.sampled_from(["Bearer ", "bearer ", "", "Basic "]))
    def collect(auth: str, proto: str, ticket: str, scheme: str) -> None:
        examples.append(({"Authorization": scheme + auth, "Sec-WebSocket-Protocol": proto},
                         {"ticket": ticket}))

    collect()
    statuses: list[int] = []
    for headers, params in examples:
        for path in ("/t/chat", "/t/stream", "/t/ws"):
            resp = await p.client.get(path, headers=headers)
            statuses.append(resp.status)
            await resp.release()
        resp = await p.client.get("/t/stream", params=params)
        statuses.append(resp.status)
        await resp.release()
    assert len(statuses) >= 400 and all(s < 500 for s in statuses), sorted(set(statuses))
