"""JWKS through a real identity-provider double: keys by kid, rotation, the refetch
cooldown under a flood of unknown kids, the IdP down at start and mid-run."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from luki_gateway.auth.jwks import JwksCache, parse_jwks, ttl_from_cache_control

from .probe import Probe
from .signing import KeyPair, b64, make_pairs, raw_token, valid_claims

PROD_AUTH = {"api_key_pepper": "prod-pepper-0123456789", "jwt_secret": ""}


@dataclass
class Idp:
    """A JWKS endpoint whose keys, status and Cache-Control the test controls."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    cache_control: str = "max-age=300"
    fetches: int = 0
    url: str = ""

    def app(self) -> web.Application:
        """The aiohttp app serving /.well-known/jwks.json."""

        async def jwks(request: web.Request) -> web.Response:
            self.fetches += 1
            if self.status != 200:
                return web.Response(status=self.status, text="down")
            return web.json_response({"keys": self.keys},
                                     headers={"Cache-Control": self.cache_control})

        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", jwks)
        return app


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pairs() -> dict[str, KeyPair]:
    """Key pairs for the IdP (made once)."""
    return make_pairs()


@pytest.fixture
async def idp(upstream: Callable[..., Any], pairs: dict[str, KeyPair]) -> Idp:
    """A running IdP double publishing the RS256 key as kid k1."""
    double = Idp(keys=[pairs["RS256"].jwk("k1")])
    double.url = f"{await upstream(double.app())}/.well-known/jwks.json"
    return double


@pytest.fixture
def jwks_gateway(probe: Callable[..., Any], idp: Idp) -> Callable[..., Any]:
    """A production gateway trusting the IdP's JWKS."""

    async def start(**auth: Any) -> Probe:
        return await probe(environment="production", auth={  # type: ignore[no-any-return]
            **PROD_AUTH, "jwt_jwks_url": idp.url, **auth})

    return start


async def status_of(p: Probe, token: str) -> int:
    """The status the probe chat route answers ``token`` with."""
    resp = await p.client.post("/t/chat", headers={"Authorization": f"Bearer {token}"})
    await resp.release()
    return resp.status


async def test_token_signed_by_jwks_key_is_accepted(jwks_gateway: Callable[..., Any],
                                                    idp: Idp,
                                                    pairs: dict[str, KeyPair]) -> None:
    """A token with kid k1 verifies against the fetched JWKS; one fetch at start-up."""
    p: Probe = await jwks_gateway()
    assert await status_of(p, pairs["RS256"].sign(kid="k1")) == 200
    assert await status_of(p, pairs["RS256"].sign(kid="k1")) == 200
    assert idp.fetches == 1


async def test_unknown_kid_flood_respects_cooldown(jwks_gateway: Callable[..., Any], idp: Idp,
                                                   pairs: dict[str, KeyPair]) -> None:
    """1,000 requests with random kids: all 401, and the IdP sees at most one refetch."""
    p: Probe = await jwks_gateway()
    rs = pairs["RS256"]
    tokens = [rs.sign(kid=secrets.token_hex(8)) for _ in range(1000)]
    statuses = await asyncio.gather(*(status_of(p, t) for t in tokens))
    assert set(statuses) == {401}
    assert idp.fetches <= 2
    assert p.calls == []
    metrics = await (await p.client.get("/metrics")).text()
    assert 'luki_auth_failures_total{reason="unknown_kid"} 1000.0' in metrics


async def test_key_rotation_at_the_idp(jwks_gateway: Callable[..., Any], idp: Idp,
                                       pairs: dict[str, KeyPair]) -> None:
    """New kid accepted after a refetch; the old kid refused once the IdP drops it."""
    idp.cache_control = "max-age=0"
    p: Probe = await jwks_gateway(jwks_refetch_cooldown_s=0)
    old, new = pairs["RS256"], pairs["ES256"]
    assert await status_of(p, new.sign(kid="k2")) == 401
    idp.keys = [old.jwk("k1"), new.jwk("k2")]
    assert await status_of(p, new.sign(kid="k2")) == 200
    assert await status_of(p, old.sign(kid="k1")) == 200
    idp.keys = [new.jwk("k2")]
    assert await status_of(p, old.sign(kid="k1")) == 401
    assert await status_of(p, new.sign(kid="k2")) == 200


async def test_idp_down_at_start(jwks_gateway: Callable[..., Any], idp: Idp,
                                 pairs: dict[str, KeyPair]) -> None:
    """The gateway starts with the IdP down, refuses tokens, and recovers when it is back."""
    idp.status = 503
    p: Probe = await jwks_gateway(jwks_refetch_cooldown_s=0)
    token = pairs["RS256"].sign(kid="k1")
    assert (await p.client.get("/ready")).status == 200
    assert await status_of(p, token) == 401
    assert p.calls == []
    idp.status = 200
    assert await status_of(p, token) == 200


async def test_idp_down_mid_run_keeps_last_good_keys(jwks_gateway: Callable[..., Any],
                                                     idp: Idp,
                                                     pairs: dict[str, KeyPair]) -> None:
    """Stale keys and a failing IdP: the last good keys keep verifying tokens."""
    idp.cache_control = "no-store"
    p: Probe = await jwks_gateway(jwks_refetch_cooldown_s=0)
    token = pairs["RS256"].sign(kid="k1")
    assert await status_of(p, token) == 200
    idp.status = 500
    before = idp.fetches
    assert await status_of(p, token) == 200
    assert idp.fetches > before  # it did try, and failing changed nothing
    assert await status_of(p, pairs["RS256"].sign(kid="nope")) == 401


async def test_symmetric_keys_in_jwks_are_never_used(jwks_gateway: Callable[..., Any],
                                                     idp: Idp) -> None:
    """An 'oct' key published in the JWKS cannot be used to sign HS256 tokens."""
    secret = b"0123456789abcdef0123456789abcdef"
    idp.keys = [{"kty": "oct", "kid": "sym", "k": b64(secret), "alg": "HS256"}]
    p: Probe = await jwks_gateway(jwks_refetch_cooldown_s=0)
    token = raw_token({"alg": "HS256", "kid": "sym"}, valid_claims(), secret)
    assert await status_of(p, token) == 401


async def test_cache_cooldown_with_injected_clock(idp: Idp, pairs: dict[str, KeyPair]) -> None:
    """JwksCache: concurrent unknown kids share one fetch; the next waits for the cooldown;
    max-age expiry refetches; a failed refetch keeps the keys."""
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        cache = JwksCache(session, idp.url, cooldown_s=60, timeout_s=2, clock=clock)
        await cache.refresh()
        assert idp.fetches == 1 and set(cache.keys) == {"k1"}
        clock.now += 61
        found = await asyncio.gather(*(cache.key_for(f"x{i}") for i in range(1000)))
        assert found == [None] * 1000
        assert idp.fetches == 2
        clock.now += 30
        assert await cache.key_for("other") is None
        assert idp.fetches == 2  # within the cooldown
        assert (await cache.key_for("k1")) is not None
        clock.now += 300  # past max-age: stale, refetched on next use
        idp.status = 503
        assert (await cache.key_for("k1")) is not None
        assert idp.fetches == 3


def test_cache_control_parsing() -> None:
    """max-age / s-maxage, no-store and junk headers give sensible lifetimes."""
    assert ttl_from_cache_control("public, max-age=600") == 600
    assert ttl_from_cache_control("max-age=\"120\"") == 120
    assert ttl_from_cache_control("no-store") == 0
    assert ttl_from_cache_control("no-cache, max-age=60") == 0
    assert ttl_from_cache_control(None) == 300
    assert ttl_from_cache_control("garbage") == 300
    assert ttl_from_cache_control("max-age=999999999") == 86400


def test_parse_jwks_skips_unusable_entries(pairs: dict[str, KeyPair]) -> None:
    """Entries without kid, for encryption, malformed or symmetric are skipped."""
    good = pairs["EdDSA"].jwk("ed")
    doc = {"keys": [good, {"kty": "RSA"}, {**pairs["RS256"].jwk("enc"), "use": "enc"},
                    {"kty": "oct", "kid": "s", "k": "AAAA"}, "junk",
                    {**pairs["ES256"].jwk("x"), "kid": None}]}
    assert set(parse_jwks(doc)) == {"ed"}
    for bad in ({}, {"keys": "x"}, [], None):
        with pytest.raises(ValueError):
            parse_jwks(bad)
    assert jwt.PyJWK(good).algorithm_name == "EdDSA"
