"""JWKS: the identity provider's signing keys, fetched with aiohttp and cached.

Cached for the response's ``Cache-Control: max-age`` (default 5 min). An unknown ``kid``
triggers a refetch at most once per cooldown, and concurrent callers share one fetch, so a
flood of random ``kid`` values cannot hammer the IdP. A failed fetch keeps the last good keys.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import structlog

log = structlog.get_logger("luki.auth.jwks")

# Only asymmetric algorithms may come from a URL: an "oct" key in a JWKS would let anyone
# who can read the JWKS sign tokens.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                   "ES256", "ES384", "ES512", "EdDSA"})
DEFAULT_TTL_S = 300.0
MAX_TTL_S = 86400.0
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)")
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\b")
_MAX_JWKS_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key a token may be verified with, and the only algorithm it is used with."""

    kid: str | None
    algorithm: str
    key: Any


def ttl_from_cache_control(value: str | None, default: float = DEFAULT_TTL_S) -> float:
    """Seconds to keep a JWKS response, from its Cache-Control header."""
    if not value:
        return default
    if _NO_CACHE.search(value.lower()):
        return 0.0
    match = _MAX_AGE.search(value.lower())
    if match is None:
        return default
    return min(float(match[1]), MAX_TTL_S)


def parse_jwks(data: Any) -> dict[str, VerificationKey]:
    """Usable signing keys of a JWKS document by kid (unusable entries are skipped)."""
    keys: dict[str, VerificationKey] = {}
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' list")
    for entry in data["keys"]:
        if not isinstance(entry, Mapping):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(dict(entry))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        if jwk.algorithm_name not in ASYMMETRIC_ALGORITHMS:
            continue
        keys[kid] = VerificationKey(kid=kid, algorithm=jwk.algorithm_name, key=jwk.key)
    return keys


class JwksCache:
    """The JWKS of one URL: cached keys, rate-limited refetches, last good keys kept."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, cooldown_s: float,
                 timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._session = session
        self._url = url
        self._cooldown_s = cooldown_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._keys: dict[str, VerificationKey] = {}
        self._fresh_until = float("-inf")
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0

    @property
    def keys(self) -> Mapping[str, VerificationKey]:
        """The current keys by kid."""
        return self._keys

    def _may_fetch(self) -> bool:
        if self._last_attempt is None:
            return True
        return self._clock() - self._last_attempt >= self._cooldown_s

    async def refresh(self) -> None:
        """Fetch now, sharing one in-flight fetch among concurrent callers."""
        if self._inflight is None or self._inflight.done():
            self._last_attempt = self._clock()
            self._inflight = asyncio.create_task(self._fetch(), name="luki-jwks-fetch")
        # shield: one caller's cancellation (client left) must not cancel the shared fetch
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            async with self._session.get(self._url, timeout=self._timeout,
                                         allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"JWKS endpoint answered {resp.status}")
                body = await resp.content.read(_MAX_JWKS_BYTES + 1)
                if len(body) > _MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
                keys = parse_jwks(json.loads(body))
                ttl = ttl_from_cache_control(resp.headers.get("Cache-Control"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("jwks fetch failed; keeping the last good keys",
                        error=type(exc).__name__, detail=str(exc)[:200],
                        kept=len(self._keys))
            return
        self._keys = keys
        self._fresh_until = self._clock() + ttl
        log.info("jwks loaded", keys=len(keys), ttl_s=ttl)

    async def key_for(self, kid: str | None) -> VerificationKey | None:
        """The key for ``kid`` (refetching when stale or unknown, within the cooldown)."""
        stale = self._clock() >= self._fresh_until
        known = kid is not None and kid in self._keys
        if (stale or not known) and self._may_fetch():
            await self.refresh()
        if kid is None:
            # No kid: usable only when the IdP publishes exactly one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)
