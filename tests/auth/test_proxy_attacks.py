"""The attack suite end to end through the proxy: each attack is refused with 401 and the
real upstream behind /v1/elr receives nothing; honest callers arrive with X-LUKi-* identity."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from luki_gateway.auth.api_keys import KEY_STORE

from ..conftest import make_token
from .probe import Probe
from .signing import KeyPair, make_pairs, raw_token, valid_claims


@pytest.fixture(scope="module")
def pairs() -> dict[str, KeyPair]:
    """Key pairs (made once)."""
    return make_pairs()


@pytest.fixture
async def recording_upstream(upstream: Callable[..., Any]) -> tuple[str, list[dict[str, str]]]:
    """A real upstream that records the headers of every request it receives."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return await upstream(app), seen


@pytest.fixture
async def elr_gateway(probe: Callable[..., Any], pairs: dict[str, KeyPair], tmp_path: Path,
                      recording_upstream: tuple[str, list[dict[str, str]]],
                      backend: str) -> Probe:
    """A production gateway proxying /v1/elr to the recording upstream (RS256 PEM, keys)."""
    url, _ = recording_upstream
    p: Probe = await probe(
        environment="production",
        upstreams={"memory": url},
        routes=[{"prefix": "/v1/elr", "upstream": "memory",
                 "scopes": {"GET": ["elr:read"], "*": ["elr:write"]}}],
        auth={"api_key_pepper": "prod-pepper-0123456789", "jwt_secret": "",
              "jwt_public_key_path": pairs["RS256"].write_pem(tmp_path), "key_cache_s": 0})
    return p


def attacks(pairs: dict[str, KeyPair]) -> dict[str, dict[str, str]]:
    """Name -> request headers of one attack."""
    rs = pairs["RS256"]
    now = int(time.time())
    token = rs.sign(scope="elr:read elr:write")
    head, body, sig = token.split(".")

    def bearer(value: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {value}"}

    return {
        "none": {},
        "alg_none": bearer(raw_token({"alg": "none"}, valid_claims(scope="elr:read"))),
        "alg_NoNe": bearer(raw_token({"alg": "NoNe"}, valid_claims(scope="elr:read"))),
        "confusion": bearer(raw_token({"alg": "HS256"}, valid_claims(scope="elr:read"),
                                      rs.public_pem)),
        "not_allowlisted": bearer(rs.sign(algorithm="PS256", scope="elr:read")),
        "bad_signature": bearer(f"{head}.{body}.{sig[::-1]}"),
        "truncated": bearer(token[:-10]),
        "garbage": bearer("x.y.z"),
        "expired": bearer(rs.sign({"sub": "a", "scope": "elr:read", "exp": now - 3600})),
        "not_yet_valid": bearer(rs.sign({"sub": "a", "scope": "elr:read",
                                         "exp": now + 7200, "nbf": now + 3600})),
        "iat_future": bearer(rs.sign({"sub": "a", "scope": "elr:read", "exp": now + 90000,
                                      "iat": now + 86000})),
        "no_exp": bearer(rs.sign({"sub": "a", "scope": "elr:read"})),
        "hostile_kid": bearer(rs.sign(kid="../../../../dev/null", scope="elr:read")),
        "dev_hs256": bearer(make_token("a", ("elr:read",))),
        "wrong_key_prefix": bearer("sk_prod_" + "A" * 43),
        "short_key": bearer("sk_live_" + "A" * 42),
        "forged_identity": {"X-LUKi-Principal": "admin", "X-LUKi-Scopes": "elr:read",
                            "X-LUKi-Auth-Type": "service"},
    }


NAMES = ["none", "alg_none", "alg_NoNe", "confusion", "not_allowlisted", "bad_signature",
         "truncated", "garbage", "expired", "not_yet_valid", "iat_future", "no_exp",
         "hostile_kid", "dev_hs256", "wrong_key_prefix", "short_key", "forged_identity"]


@pytest.mark.parametrize("backend", ["memory"])
@pytest.mark.parametrize("name", NAMES)
async def test_attack_never_reaches_upstream(
        elr_gateway: Probe, pairs: dict[str, KeyPair], name: str,
        recording_upstream: tuple[str, list[dict[str, str]]]) -> None:
    """Each attack: 401 UNAUTHENTICATED with the challenge, upstream saw nothing."""
    _, seen = recording_upstream
    headers = attacks(pairs)[name]
    for method in ("GET", "POST"):
        resp = await elr_gateway.client.request(method, "/v1/elr/items", headers=headers)
        assert resp.status == 401, (name, resp.status, await resp.text())
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="luki", error="invalid_token"'
    assert seen == []


async def test_key_attacks_never_reach_upstream(
        backend: str, elr_gateway: Probe,
        recording_upstream: tuple[str, list[dict[str, str]]]) -> None:
    """Revoked, expired and sk_test_ keys (both stores) and a query-string token: 401."""
    _, seen = recording_upstream
    p = elr_gateway
    revoked = await p.add_key(scopes=("elr:read",))
    (record,) = await p.app[KEY_STORE].list()
    await p.app[KEY_STORE].revoke(record.id)
    expired = await p.add_key(scopes=("elr:read",), expires_at=time.time() - 5)
    test_key = await p.add_key(scopes=("elr:read",), env="test")
    for key in (revoked, expired, test_key):
        resp = await p.client.get("/v1/elr/items", headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 401
    live = await p.add_key(scopes=("elr:read",))
    resp = await p.client.get(f"/v1/elr/items?access_token={live}")
    assert resp.status == 401
    assert seen == []


async def test_honest_callers_arrive_with_identity_not_credentials(
        backend: str, elr_gateway: Probe, pairs: dict[str, KeyPair],
        recording_upstream: tuple[str, list[dict[str, str]]]) -> None:
    """Valid JWT and API key pass; the upstream gets X-LUKi-* (forged copies replaced) and
    never the Authorization header; a missing scope is 403 and not forwarded."""
    _, seen = recording_upstream
    p = elr_gateway
    token = pairs["RS256"].sign(sub="alice", scope="elr:read")
    forged = {"X-LUKi-Principal": "admin", "X-LUKi-Scopes": "*"}
    resp = await p.client.get("/v1/elr/items",
                              headers={"Authorization": f"Bearer {token}", **forged})
    assert resp.status == 200, await resp.text()
    key = await p.add_key(owner="svc-mem", scopes=("elr:read",))
    resp = await p.client.get("/v1/elr/items", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    resp = await p.client.post("/v1/elr/items", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 403
    assert len(seen) == 2
    jwt_headers, key_headers = seen
    assert jwt_headers["X-LUKi-Principal"] == "alice"
    assert jwt_headers["X-LUKi-Scopes"] == "elr:read"
    assert jwt_headers["X-LUKi-Auth-Type"] == "jwt"
    assert key_headers["X-LUKi-Principal"] == "svc-mem"
    assert key_headers["X-LUKi-Auth-Type"] == "api_key"
    for headers in seen:
        assert "Authorization" not in headers


def test_every_attack_is_parametrized(pairs: dict[str, KeyPair]) -> None:
    """The parametrized names cover every attack built above."""
    assert sorted(NAMES) == sorted(attacks(pairs))
