"""Both API key stores (file and real Redis) pass one suite: add, get, list, revoke,
batched last-used, and revocation seen by a second process's store."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from luki_gateway.auth.api_keys import open_store
from luki_gateway.auth.key_record import (
    ApiKeyRecord,
    KeyStore,
    display_of,
    generate_key,
    hash_key,
    key_env_of,
    new_record,
)
from luki_gateway.settings import Settings

PEPPER = "test-pepper"


@pytest.fixture
async def stores(auth_settings: Callable[..., Settings]) -> AsyncIterator[
        Callable[[], KeyStore]]:
    """A factory of independent stores over one backing (like separate processes)."""
    opened: list[KeyStore] = []
    settings = auth_settings(auth={"key_cache_s": 0.2})

    def make() -> KeyStore:
        store = open_store(settings)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


def record(owner: str = "alice", **kw: object) -> tuple[str, ApiKeyRecord]:
    """A fresh key and its record."""
    key = generate_key("live")
    return key, new_record(key, pepper=PEPPER, owner=owner, scopes=("chat:write",),
                           **kw)  # type: ignore[arg-type]


def test_key_format_has_256_random_bits() -> None:
    """sk_<env>_<43 base64url chars>; distinct every time; env parsed; display masks."""
    keys = {generate_key("test") for _ in range(200)}
    assert len(keys) == 200
    key = keys.pop()
    assert key.startswith("sk_test_") and len(key) == len("sk_test_") + 43
    assert key_env_of(key) == "test"
    assert key_env_of(key[:-1]) is None
    assert key_env_of(key.replace("sk_test_", "sk_prod_")) is None
    shown = display_of(key)
    assert shown.startswith("sk_test_") and shown.endswith(key[-4:])
    assert key[12:-4] not in shown
    with pytest.raises(ValueError):
        generate_key("prod")  # type: ignore[arg-type]


def test_hash_is_peppered_hmac() -> None:
    """The stored hash depends on the pepper and never contains the key."""
    key = generate_key()
    assert hash_key(key, "a") != hash_key(key, "b")
    assert len(hash_key(key, "a")) == 64
    assert key not in new_record(key, pepper="a", owner="o", scopes=()).as_json().values()


async def test_add_get_list(backend: str, stores: Callable[[], KeyStore]) -> None:
    """A stored record comes back by hash and in the listing; unknown hashes are None."""
    store = stores()
    key, rec = record()
    await store.add(rec)
    got = await store.get(hash_key(key, PEPPER))
    assert got is not None and got.owner == "alice" and got.scopes == ("chat:write",)
    assert got.display == display_of(key)
    assert await store.get("0" * 64) is None
    assert [r.id for r in await store.list()] == [rec.id]


async def test_revoke_by_id_and_by_hash(backend: str, stores: Callable[[], KeyStore]) -> None:
    """Revoke takes the id or the whole hash; unknown ids and glob characters match nothing."""
    store = stores()
    _, first = record("a")
    _, second = record("b")
    await store.add(first)
    await store.add(second)
    assert await store.revoke("ffffffffffffffff") is None
    assert await store.revoke("*") is None
    assert await store.revoke("") is None
    revoked = await store.revoke(first.id)
    assert revoked is not None and revoked.revoked and revoked.revoked_at
    again = await store.revoke(second.key_hash)
    assert again is not None and again.owner == "b"
    statuses = {r.owner: r.status(time.time()) for r in await store.list()}
    assert statuses == {"a": "revoked", "b": "revoked"}


async def test_revocation_reaches_another_process_within_1s(
        backend: str, stores: Callable[[], KeyStore]) -> None:
    """A key revoked through one store is refused by another store instance within 1 s."""
    reader, writer = stores(), stores()
    key, rec = record()
    await writer.add(rec)
    key_hash = hash_key(key, PEPPER)
    seen = await reader.get(key_hash)
    assert seen is not None and not seen.revoked
    await writer.revoke(rec.id)
    start = time.monotonic()
    while True:
        current = await reader.get(key_hash)
        assert current is not None
        if current.revoked:
            break
        assert time.monotonic() - start < 1.0, "revocation not visible within 1 s"
        await asyncio.sleep(0.02)


async def test_a_poll_learns_revocations_made_by_another_process(
        backend: str, stores: Callable[[], KeyStore]) -> None:
    """poll_revocations() tells the listeners which keys another store (the CLI) revoked,
    once each, and drops them from the cache: what ends the key's open streams."""
    reader, writer = stores(), stores()
    key, rec = record()
    _, other = record("bob")
    await writer.add(rec)
    await writer.add(other)
    key_hash = hash_key(key, PEPPER)
    assert (await reader.get(key_hash)) is not None  # cached as active
    heard: list[frozenset[str]] = []
    reader.revoked.listen(heard.append)
    await reader.poll_revocations()
    assert heard == []
    await writer.revoke(rec.id)
    await reader.poll_revocations()
    assert heard == [frozenset({key_hash})]
    assert key_hash in reader.revoked and other.key_hash not in reader.revoked
    cached = reader.cached(key_hash)
    assert cached is None or cached.revoked  # the next use sees the revocation
    await reader.poll_revocations()
    assert heard == [frozenset({key_hash})]  # heard once


async def test_last_used_is_batched(backend: str, stores: Callable[[], KeyStore]) -> None:
    """touch() writes nothing until flush; one flush records the latest use."""
    store, other = stores(), stores()
    key, rec = record()
    await store.add(rec)
    key_hash = hash_key(key, PEPPER)
    for i in range(100):
        store.touch(key_hash, 1000.0 + i)
    before = await other.list()
    assert before[0].last_used_at is None
    await store.flush_last_used()
    after = await other.list()
    assert after[0].last_used_at == 1099.0


async def test_expired_key_status(backend: str, stores: Callable[[], KeyStore]) -> None:
    """A record past its expiry reports 'expired'."""
    store = stores()
    _, rec = record(expires_at=time.time() - 1)
    await store.add(rec)
    (listed,) = await store.list()
    assert listed.status(time.time()) == "expired"


async def test_file_store_is_atomic_json_with_private_mode(tmp_path: Path) -> None:
    """The file store writes valid JSON (0600) by rename, and a second writer merges."""
    path = tmp_path / "keys.json"
    from luki_gateway.auth.key_file_store import FileKeyStore

    one, two = FileKeyStore(str(path)), FileKeyStore(str(path))
    _, a = record("a")
    _, b = record("b")
    await one.add(a)
    await two.add(b)  # re-reads under the lock: does not drop a
    data = json.loads(path.read_text())
    assert {k["owner"] for k in data["keys"]} == {"a", "b"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert {r.owner for r in await one.list()} == {"a", "b"}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".keys.json.")]


async def test_file_store_without_path_is_in_memory() -> None:
    """No API_KEYS_FILE: keys live in memory only (bare `make run`)."""
    from luki_gateway.auth.key_file_store import FileKeyStore

    store = FileKeyStore(None)
    key, rec = record()
    await store.add(rec)
    assert await store.get(hash_key(key, PEPPER)) is not None


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_layout_and_ttls(backend: str, redis_url: str,
                                     stores: Callable[[], KeyStore]) -> None:
    """lgw:key:<hash>; keys with expiry or revoked carry a TTL, others are kept until revoked."""
    store = stores()
    forever_key, forever = record("forever")
    _, expiring = record("expiring", expires_at=time.time() + 3600)
    _, gone = record("gone")
    for r in (forever, expiring, gone):
        await store.add(r)
    await store.revoke(gone.id)
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ttl(f"lgw:key:{forever.key_hash}") == -1
        assert await client.ttl(f"lgw:key:{expiring.key_hash}") > 3600
        assert await client.ttl(f"lgw:key:{gone.key_hash}") > 0
        raw = await client.hget(f"lgw:key:{forever.key_hash}", "record")
        assert forever_key[8:-4].encode() not in raw
    finally:
        await client.aclose()


async def test_a_keys_file_beside_redis_is_said_to_be_ignored(
        redis_url: str, tmp_path: Path, gateway: Callable[..., Any],
        captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """With Redis configured the keys live there: an api_keys_file that is also set is
    named at start-up, so keys created into it are not a mystery 401."""
    keys_file = str(tmp_path / "keys.json")
    await gateway(redis_url=redis_url, auth={"enabled": True, "api_keys_file": keys_file})
    warned = [line for line in captured_logs() if "api_keys_file is ignored" in line["event"]]
    assert warned and warned[0]["api_keys_file"] == keys_file
