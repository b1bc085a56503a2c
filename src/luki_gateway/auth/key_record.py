"""API keys: format, peppered hashing, the stored record and the store interface.

A key is ``sk_<env>_<43 base64url chars>`` (256 random bits). Only its HMAC-SHA256 under
the server pepper is stored, with a display prefix and the last 4 characters.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from ..bounded import remember

KeyEnv = Literal["live", "test", "dev"]
KEY_ENVS: tuple[KeyEnv, ...] = ("live", "test", "dev")
_RANDOM_BYTES = 32
_KEY_FORMAT = re.compile(r"sk_(live|test|dev)_[A-Za-z0-9_-]{43}")
ID_LENGTH = 16


def generate_key(env: KeyEnv = "live") -> str:
    """A new plaintext key (shown once, never stored)."""
    if env not in KEY_ENVS:
        raise ValueError(f"key environment must be one of {', '.join(KEY_ENVS)}")
    return f"sk_{env}_{secrets.token_urlsafe(_RANDOM_BYTES)}"


def key_env_of(key: str) -> KeyEnv | None:
    """The environment of a well-formed key, or None when the key is malformed."""
    match = _KEY_FORMAT.fullmatch(key)
    if match is None:
        return None
    env: KeyEnv = match[1]  # type: ignore[assignment]
    return env


def hash_key(key: str, pepper: str) -> str:
    """HMAC-SHA256 of the key under the server-side pepper (hex): what the stores keep."""
    # hmac.digest is OpenSSL's one-shot HMAC: same result as hmac.new(...).hexdigest(),
    # without building a Python HMAC object on every request.
    return hmac.digest(pepper.encode(), key.encode(), "sha256").hex()


def display_of(key: str) -> str:
    """What logs and listings show: ``sk_live_AbCd…wxyz``."""
    env_end = key.index("_", 3) + 1
    return f"{key[:env_end + 4]}…{key[-4:]}"


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One stored key: never the key itself, only its peppered hash and display parts."""

    key_hash: str
    owner: str
    scopes: tuple[str, ...]
    env: str
    display: str
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked: bool = False
    revoked_at: float | None = None
    tenant: str | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Public id for listings and revocation (a prefix of the hash, not of the key)."""
        return self.key_hash[:ID_LENGTH]

    def status(self, now: float) -> str:
        """active | revoked | expired."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def as_json(self) -> dict[str, Any]:
        """Plain data for storage."""
        data = asdict(self)
        data["scopes"] = list(self.scopes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApiKeyRecord:
        """Back from storage (unknown fields ignored, for forward compatibility)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["scopes"] = tuple(values.get("scopes") or ())
        values["meta"] = dict(values.get("meta") or {})
        return cls(**values)

    def revoked_now(self, now: float) -> ApiKeyRecord:
        """This record, revoked at ``now``."""
        return replace(self, revoked=True, revoked_at=now)


def new_record(key: str, *, pepper: str, owner: str, scopes: tuple[str, ...],
               expires_at: float | None = None, tenant: str | None = None,
               now: float | None = None) -> ApiKeyRecord:
    """The record to store for a freshly generated ``key``."""
    env = key_env_of(key)
    if env is None:
        raise ValueError("not a well-formed API key")
    return ApiKeyRecord(key_hash=hash_key(key, pepper), owner=owner, scopes=tuple(scopes),
                        env=env, display=display_of(key),
                        created_at=time.time() if now is None else now,
                        expires_at=expires_at, tenant=tenant)


class LastUsedBuffer:
    """Last-used times remembered per key and written in one batch per interval."""

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}

    def cached(self, key_hash: str) -> ApiKeyRecord | None:
        """The record if the store can vouch for it without waiting (None: ask get())."""

    def touch(self, key_hash: str, when: float) -> None:
        """Remember a use; never a write per request."""
        self._pending[key_hash] = when

    def _take_pending(self) -> dict[str, float]:
        """The uses remembered since the last flush (and forget them)."""
        pending, self._pending = self._pending, {}
        return pending


# Revoked keys remembered per process (more starts over: their streams were ended by then).
_REVOKED_MAX = 100_000


class RevokedKeys:
    """Hashes of the keys this process has seen revoked, and who to tell about new ones.

    Streams opened with a key live on after the request that authenticated them: the hub
    ends those of a key that shows up here (a set lookup per connection, no store call).
    """

    __slots__ = ("_hashes", "_listeners")

    def __init__(self) -> None:
        self._hashes: dict[str, None] = {}
        self._listeners: list[Callable[[frozenset[str]], None]] = []

    def __contains__(self, key_hash: object) -> bool:
        return key_hash in self._hashes

    def add(self, hashes: Iterable[str]) -> None:
        """Note revoked keys; the listeners hear of those not known before."""
        new = frozenset(h for h in hashes if h not in self._hashes)
        if not new:
            return
        for key_hash in new:
            remember(self._hashes, key_hash, None, _REVOKED_MAX)
        for listener in list(self._listeners):
            listener(new)

    def listen(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Call ``listener`` with every batch of newly revoked key hashes."""
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)


class StoreUnavailable(Exception):
    """The key store cannot be read right now (Redis down); not the caller's fault."""


def matches_id(record: ApiKeyRecord, key_id: str) -> bool:
    """True when ``key_id`` is this record's id or its whole hash."""
    return len(key_id) >= ID_LENGTH and record.key_hash.startswith(key_id.lower())


class KeyStore(Protocol):
    """What both stores (file, Redis) offer; they pass one test suite."""

    # Keys seen revoked by this process (by any writer: other processes, the CLI).
    revoked: RevokedKeys

    async def get(self, key_hash: str) -> ApiKeyRecord | None:
        """The record for a hash, or None (raises StoreUnavailable when it cannot tell)."""

    async def add(self, record: ApiKeyRecord) -> None:
        """Store a new record."""

    async def list(self) -> list[ApiKeyRecord]:
        """Every record, oldest first."""

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Revoke by id (hash prefix) or whole hash; the revoked record, or None if unknown."""

    def cached(self, key_hash: str) -> ApiKeyRecord | None:
        """The record if the store can vouch for it without waiting (None: ask get())."""

    def touch(self, key_hash: str, when: float) -> None:
        """Note a use; written in batches by ``flush_last_used``, never per request."""

    async def flush_last_used(self) -> None:
        """Write the pending last-used times."""

    async def poll_revocations(self) -> None:
        """Learn revocations made elsewhere into ``revoked`` (a cheap, periodic call)."""

    async def close(self) -> None:
        """Flush and release resources."""
