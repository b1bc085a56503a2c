"""Development credentials: dev HS256 JWTs and the API key `luki-gateway dev` prints."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt

from ..settings import Settings
from .api_keys import open_store
from .jwt import hs256_enabled
from .key_record import generate_key, new_record

# Every scope the default route set and the built-in routes ask for.
DEV_SCOPES = ("chat:write", "events:publish", "elr:read", "elr:write", "activities:read",
              "activities:write", "reports:read", "reports:write", "cognitive:read",
              "cognitive:write")


def mint_dev_token(settings: Settings, *, sub: str, scopes: Iterable[str] = DEV_SCOPES,
                   roles: Iterable[str] = (), ttl_s: int = 3600) -> str:
    """An HS256 JWT signed with the dev secret; refused in production."""
    if settings.is_production:
        raise ValueError("dev tokens are refused in production (HS256 is development only)")
    if not settings.auth.jwt_secret:
        raise ValueError("JWT_SECRET is empty: no secret to sign dev tokens with")
    if not hs256_enabled(settings):
        raise ValueError(f"a {settings.environment} gateway refuses tokens signed with the "
                         "default JWT_SECRET: set JWT_SECRET to the gateway's own secret")
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, "scope": " ".join(scopes), "iat": now,
                                 "exp": now + ttl_s}
    role_list = list(roles)
    if role_list:
        claims["roles"] = role_list
    if settings.auth.jwt_issuer:
        claims["iss"] = settings.auth.jwt_issuer
    if settings.auth.jwt_audience:
        claims["aud"] = settings.auth.jwt_audience
    return jwt.encode(claims, settings.auth.jwt_secret, algorithm="HS256")


@dataclass(frozen=True, slots=True)
class DevCredentials:
    """What `luki-gateway dev` prints, and the settings that make the key valid."""

    settings: Settings
    api_key: str
    token: str


def dev_keys_file() -> Path:
    """Where a bare `make run` keeps its dev keys (shared by all dev workers)."""
    return Path(tempfile.gettempdir()) / "luki-gateway-dev" / "api_keys.json"


def dev_credentials(settings: Settings, *, owner: str = "dev") -> DevCredentials:
    """Create a fresh sk_dev_ key in the configured store (or a dev keys file) and a dev JWT.

    Call before the event loop starts. Without REDIS_URL or API_KEYS_FILE the key goes to
    ``dev_keys_file()`` and the returned settings point the gateway at it (an in-memory
    store would not survive into the gateway's workers).
    """
    if not settings.is_development:
        raise ValueError("dev credentials exist only with ENVIRONMENT=development")
    if not settings.redis_url and not settings.auth.api_keys_file:
        auth = dataclasses.replace(settings.auth, api_keys_file=str(dev_keys_file()))
        settings = settings.replace(auth=auth)
    key = generate_key("dev")

    async def store_key() -> None:
        store = open_store(settings)
        try:
            await store.add(new_record(key, pepper=settings.auth.api_key_pepper, owner=owner,
                                       scopes=DEV_SCOPES))
        finally:
            await store.close()

    asyncio.run(store_key())
    return DevCredentials(settings=settings, api_key=key,
                          token=mint_dev_token(settings, sub=owner, ttl_s=86400))
