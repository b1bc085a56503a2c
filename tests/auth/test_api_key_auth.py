"""API keys through the real app on both stores: accepted, revoked, expired, malformed,
test keys in production, store down, batched last-used, and what the logs show."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from luki_gateway.auth.api_keys import KEY_STORE, open_store
from luki_gateway.auth.key_record import generate_key

from ..redis_server import RedisServer
from .probe import Probe

PROD = {"environment": "production",
        "auth": {"api_key_pepper": "prod-pepper-0123456789", "jwt_secret": ""}}


def auth(key: str) -> dict[str, str]:
    """Bearer header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


async def refused(p: Probe, key: str, path: str = "/t/chat") -> str:
    """Assert ``key`` is refused with 401 and nothing ran; return the error message."""
    resp = await p.client.post(path, headers=auth(key))
    assert resp.status == 401, await resp.text()
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="luki", error="invalid_token"'
    assert p.calls == []
    message: str = (await resp.json())["error"]["message"]
    return message


async def test_valid_key_authenticates(backend: str, probe: Callable[..., Any]) -> None:
    """A live key reaches the handler as an api_key principal owned by its owner."""
    p: Probe = await probe()
    key = await p.add_key(owner="svc-a", scopes=("chat:write",))
    resp = await p.client.post("/t/chat", headers=auth(key))
    assert resp.status == 200
    principal = (await resp.json())["principal"]
    assert principal["kind"] == "api_key"
    assert principal["subject"] == "svc-a"
    assert principal["key_env"] == "live"
    assert principal["display"].endswith(key[-4:]) and key not in principal["display"]


async def test_key_scopes_are_enforced(backend: str, probe: Callable[..., Any]) -> None:
    """A key without chat:write gets 403 INSUFFICIENT_SCOPE on the chat probe."""
    p: Probe = await probe()
    key = await p.add_key(scopes=("elr:read",))
    resp = await p.client.post("/t/chat", headers=auth(key))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "INSUFFICIENT_SCOPE"


async def test_revoked_key_is_refused(backend: str, probe: Callable[..., Any]) -> None:
    """A key revoked through a separate store (another process, the CLI) is refused in 1 s."""
    p: Probe = await probe()
    key = await p.add_key()
    assert (await p.client.post("/t/chat", headers=auth(key))).status == 200
    p.calls.clear()
    other = open_store(p.settings)
    try:
        (record,) = await other.list()
        await other.revoke(record.id)
    finally:
        await other.close()
    deadline = time.monotonic() + 1.0
    while True:
        resp = await p.client.post("/t/chat", headers=auth(key))
        if resp.status == 401:
            break
        assert time.monotonic() < deadline, "revocation not effective within 1 s"
        await asyncio.sleep(0.05)
    p.calls.clear()
    assert "revoked" in await refused(p, key)


async def test_expired_key_is_refused(backend: str, probe: Callable[..., Any]) -> None:
    """A key past its expiry is refused."""
    p: Probe = await probe()
    key = await p.add_key(expires_at=time.time() - 1)
    assert "expired" in await refused(p, key)


async def test_key_expiring_after_use_is_refused(backend: str,
                                                 probe: Callable[..., Any]) -> None:
    """A key accepted (and remembered) before its expiry is refused once it has expired."""
    p: Probe = await probe()
    key = await p.add_key(expires_at=time.time() + 0.5)
    for _ in range(2):  # the second use takes the remembered-key path
        assert (await p.client.post("/t/chat", headers=auth(key))).status == 200
    await asyncio.sleep(0.6)
    p.calls.clear()
    assert "expired" in await refused(p, key)


async def test_unknown_key_is_refused(backend: str, probe: Callable[..., Any]) -> None:
    """A well-formed key that was never stored is refused."""
    p: Probe = await probe()
    await refused(p, generate_key())


@pytest.mark.parametrize("mangle", [
    lambda k: k[:-1],                       # too short
    lambda k: k + "A",                      # too long
    lambda k: k.replace("sk_live_", "sk_prod_"),
    lambda k: k.replace("sk_live_", "pk_live_"),
    lambda k: k.replace("sk_live_", "SK_LIVE_"),
    lambda k: k[:20] + "!" + k[21:],        # not base64url
    lambda k: "sk_",
    lambda k: "sk_live_" + "A" * 5000,
])
async def test_wrong_prefix_or_length_is_refused(probe: Callable[..., Any],
                                                 mangle: Callable[[str], str]) -> None:
    """Keys with a wrong prefix, length or alphabet never reach the store or a handler."""
    p: Probe = await probe()
    key = await p.add_key()
    await refused(p, mangle(key))


async def test_test_key_refused_in_production(backend: str, probe: Callable[..., Any]) -> None:
    """sk_test_ and sk_dev_ keys are refused with ENVIRONMENT=production; live keys work."""
    p: Probe = await probe(**PROD)
    test_key = await p.add_key(env="test")
    dev_key = await p.add_key(env="dev")
    live_key = await p.add_key(env="live")
    assert "production" in await refused(p, test_key)
    await refused(p, dev_key)
    assert (await p.client.post("/t/chat", headers=auth(live_key))).status == 200


async def test_test_key_allowed_in_production_when_configured(
        probe: Callable[..., Any]) -> None:
    """allow_test_keys_in_production lets sk_test_ keys through."""
    p: Probe = await probe(environment="production", auth={
        "api_key_pepper": "prod-pepper-0123456789", "jwt_secret": "",
        "allow_test_keys_in_production": True})
    key = await p.add_key(env="test")
    assert (await p.client.post("/t/chat", headers=auth(key))).status == 200


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_down_is_503_not_401(backend: str, probe: Callable[..., Any],
                                         redis_server: RedisServer) -> None:
    """With the Redis key store unreachable an API key gets 503 (not a bogus 401)."""
    p: Probe = await probe(auth={"key_cache_s": 0})
    key = await p.add_key()
    redis_server.pause()
    try:
        resp = await p.client.post("/t/chat", headers=auth(key))
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "DOWNSTREAM_UNAVAILABLE"
        assert p.calls == []
    finally:
        redis_server.resume()
    assert (await p.client.post("/t/chat", headers=auth(key))).status == 200


async def test_last_used_not_written_per_request(backend: str,
                                                 probe: Callable[..., Any]) -> None:
    """50 requests leave last_used unset in the store until the batched flush."""
    p: Probe = await probe()
    key = await p.add_key()
    for _ in range(50):
        assert (await p.client.post("/t/chat", headers=auth(key))).status == 200
    other = open_store(p.settings)
    try:
        assert (await other.list())[0].last_used_at is None
        await p.app[KEY_STORE].flush_last_used()
        used = (await other.list())[0].last_used_at
        assert used is not None and abs(used - time.time()) < 60
    finally:
        await other.close()


async def test_logs_show_display_never_the_key(backend: str, probe: Callable[..., Any]) -> None:
    """The access log carries the key's prefix…last4; the key itself appears nowhere."""
    p: Probe = await probe(access_log=True)
    key = await p.add_key()
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as logs:
        await p.client.post("/t/chat", headers=auth(key))
        await p.client.post("/t/chat", headers=auth(key[:-1] + "x"))
    lines = [e for e in logs if e.get("event") == "request"]
    assert lines and lines[0]["principal"].endswith(key[-4:])
    assert key[8:-4] not in repr(logs)  # neither key (nor the mangled one) is logged
