"""The Redis key store: one hash per key at ``<prefix>key:<hmac>``, shared by all processes.

Fields: ``record`` (JSON of the record) and ``last_used_at``. A key without expiry has no
TTL (it lives until revoked: that is its purpose); revoked and expired keys are kept for
``RETAIN_S`` for audit and listing, then Redis drops them.

Every revocation is also appended to the stream ``<prefix>keys:revoked`` (capped at
``FEED_MAX`` entries, gone ``FEED_TTL_S`` after the last one). Each gateway process reads
what is new there twice a second, one call whatever the number of open streams, and ends
the streams of those keys. (Not under ``<prefix>key:``: that pattern is scanned for
records.)
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..bounded import remember
from .key_record import (
    ApiKeyRecord,
    LastUsedBuffer,
    RevokedKeys,
    StoreUnavailable,
    matches_id,
)

RETAIN_S = 30 * 86400
# The revocation feed: a process away longer than FEED_TTL_S has no stream open from then.
FEED_MAX = 1000
FEED_TTL_S = 86400

# Set last_used_at only on keys that still exist (never resurrect a dropped record).
_CACHE_MAX = 10_000  # records cached per process (a flood of keys cannot grow it)
_TOUCH_EXISTING = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'last_used_at', ARGV[i]) end
end
return 0
"""


class RedisKeyStore(LastUsedBuffer):
    """API keys in Redis; positive lookups cached for ``cache_s`` (< 1 s revocation delay)."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, cache_s: float = 0.5,
                 owns_client: bool = False) -> None:
        super().__init__()
        self._redis = redis
        self._prefix = f"{prefix}key:"
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, ApiKeyRecord]] = {}
        self._owns_client = owns_client
        self.revoked = RevokedKeys()
        self._feed = f"{prefix}keys:revoked"
        self._feed_after = "0-0"  # the last feed entry read

    def _key(self, key_hash: str) -> str:
        return f"{self._prefix}{key_hash}"

    @staticmethod
    def _decode(fields: Mapping[Any, Any]) -> ApiKeyRecord | None:
        raw = fields.get(b"record")
        if raw is None:
            return None
        record = ApiKeyRecord.from_json(json.loads(raw))
        used = fields.get(b"last_used_at")
        if used is not None:
            record = replace(record, last_used_at=float(used))
        return record

    def cached(self, key_hash: str) -> ApiKeyRecord | None:
        """The record if this process read it less than the cache time ago."""
        cached = self._cache.get(key_hash)
        if cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1]
        return None

    async def get(self, key_hash: str) -> ApiKeyRecord | None:
        """The record for a hash (raises StoreUnavailable when Redis does not answer)."""
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        try:
            fields = await self._redis.hgetall(self._key(key_hash))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        record = self._decode(fields)
        if record is None:
            self._cache.pop(key_hash, None)
        else:
            remember(self._cache, key_hash, (now, record), _CACHE_MAX)
            if record.revoked:
                self.revoked.add((key_hash,))
        return record

    async def _put(self, record: ApiKeyRecord) -> None:
        key = self._key(record.key_hash)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "record", json.dumps(record.as_json()))
            if record.revoked:
                pipe.expire(key, RETAIN_S)
                pipe.xadd(self._feed, {"h": record.key_hash}, maxlen=FEED_MAX,
                          approximate=True)
                pipe.expire(self._feed, FEED_TTL_S)
            elif record.expires_at is not None:
                pipe.expireat(key, int(record.expires_at) + RETAIN_S)
            await pipe.execute()
        self._cache.pop(record.key_hash, None)
        if record.revoked:
            self.revoked.add((record.key_hash,))

    async def add(self, record: ApiKeyRecord) -> None:
        """Store a new record."""
        await self._put(record)

    async def list(self) -> list[ApiKeyRecord]:
        """Every record (SCAN, for the admin CLI; never on the request path)."""
        records: list[ApiKeyRecord] = []
        async for key in self._redis.scan_iter(match=f"{self._prefix}*", count=500):
            record = self._decode(await self._redis.hgetall(key))
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Revoke by id or hash; None when no record (or more than one) matches."""
        key_id = key_id.lower()
        if not key_id.isalnum():
            return None  # never let glob characters into the SCAN pattern
        found: list[ApiKeyRecord] = []
        async for key in self._redis.scan_iter(match=f"{self._prefix}{key_id}*", count=500):
            record = self._decode(await self._redis.hgetall(key))
            if record is not None and matches_id(record, key_id):
                found.append(record)
        if len(found) != 1:
            return None
        revoked = found[0] if found[0].revoked else found[0].revoked_now(time.time())
        await self._put(revoked)
        return revoked

    async def flush_last_used(self) -> None:
        """Write pending last-used times (only for keys that still exist)."""
        pending = self._take_pending()
        if not pending:
            return
        keys = [self._key(h) for h in pending]
        await self._redis.eval(_TOUCH_EXISTING, len(keys), *keys,
                               *(repr(when) for when in pending.values()))

    async def poll_revocations(self) -> None:
        """Read the revocation feed past the last entry seen; drop those keys' cached
        records (their next use reads the revoked record) and note them revoked."""
        try:
            found: Any = await self._redis.xread({self._feed: self._feed_after},
                                                count=FEED_MAX)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        hashes: list[str] = []
        for _stream, entries in found:
            for entry_id, fields in entries:
                self._feed_after = entry_id.decode()
                key_hash = fields.get(b"h")
                if key_hash is not None:
                    hashes.append(key_hash.decode())
        for key_hash in hashes:
            self._cache.pop(key_hash, None)
        self.revoked.add(hashes)

    async def close(self) -> None:
        """Flush pending last-used times; close the client if this store opened it."""
        # shutting down with Redis gone: last-used is best effort
        with contextlib.suppress(RedisError, OSError):
            await self.flush_last_used()
        if self._owns_client:
            await self._redis.aclose()
