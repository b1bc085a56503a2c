"""JWT verification: keys from the dev secret, a PEM public key or a JWKS URL.

The algorithm is fixed per key (never taken from the token): the token's ``alg`` only picks
among our keys, and PyJWT is called with that key's one algorithm. ``jku``, ``x5u`` and
``jwk`` headers are never read. HS256 with the shared secret is refused in production.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..bounded import remember
from ..settings import DEFAULT_SECRET_MARK, SETTINGS, Settings
from .failure import AuthFailure
from .jwks import ASYMMETRIC_ALGORITHMS, JwksCache, VerificationKey
from .principal import Principal, ScopeSets

log = structlog.get_logger("luki.auth.jwt")

SUPPORTED_ALGORITHMS = ASYMMETRIC_ALGORITHMS | {"HS256"}
# kid values are looked up, never used as paths or queries; still, refuse anything odd early.
_SANE_KID = re.compile(r"[A-Za-z0-9._:+=-]{1,128}")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_MAX_SUBJECT = 256
_VERIFIED_TTL_S = 60.0   # longest a verified token is trusted without re-checking
_VERIFIED_MAX = 10_000   # verified tokens remembered per process (cleared when full)


def load_public_key(path: str) -> VerificationKey:
    """A PEM public key and its algorithm: RSA -> RS256, EC -> ES256/384/512, Ed25519 -> EdDSA."""
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"JWT_PUBLIC_KEY_PATH {path}: not a readable PEM public key "
                         f"({type(exc).__name__})") from None
    if isinstance(key, rsa.RSAPublicKey):
        algorithm = "RS256"
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        algorithm = _EC_ALGORITHMS[key.curve.name]
    elif isinstance(key, ed25519.Ed25519PublicKey):
        algorithm = "EdDSA"
    else:
        raise ValueError(f"JWT_PUBLIC_KEY_PATH {path}: unsupported key type")
    return VerificationKey(kid=None, algorithm=algorithm, key=key)


def hs256_enabled(settings: Settings) -> bool:
    """The shared-secret HS256 path: development, and staging with a secret of its own."""
    secret = settings.auth.jwt_secret
    if not secret or settings.is_production:
        return False
    # The default secret is public (it is in the source): never outside development.
    return settings.is_development or DEFAULT_SECRET_MARK not in secret


def static_keys(settings: Settings) -> list[VerificationKey]:
    """The keys configured directly: the dev secret (not in production) and the PEM key."""
    keys: list[VerificationKey] = []
    if hs256_enabled(settings):
        keys.append(VerificationKey(kid=None, algorithm="HS256",
                                    key=settings.auth.jwt_secret.encode()))
    if settings.auth.jwt_public_key_path:
        keys.append(load_public_key(settings.auth.jwt_public_key_path))
    return keys


def _strings(value: Any) -> list[str]:
    """A claim that may be a space-separated string or a list of strings."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v and " " not in v]
    return []


_FAILURES: tuple[tuple[type[Exception], Any, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "token expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "token not yet valid"),
    (jwt.InvalidIssuerError, "claims", "token issuer not accepted"),
    (jwt.InvalidAudienceError, "claims", "token audience not accepted"),
    (jwt.MissingRequiredClaimError, "claims", "token lacks a required claim"),
    (jwt.InvalidSignatureError, "bad_signature", "token signature invalid"),
    (jwt.InvalidAlgorithmError, "algorithm", "token algorithm not accepted"),
    (jwt.InvalidKeyError, "algorithm", "token algorithm not accepted"),
)


class JwtVerifier:
    """Verifies JWTs against the configured keys and turns their claims into a Principal."""

    def __init__(self, settings: Settings, keys: list[VerificationKey],
                 jwks: JwksCache | None = None) -> None:
        self._auth = settings.auth
        self._keys = keys
        self._jwks = jwks
        self._scope_sets = ScopeSets()
        # Tokens verified recently: token -> (principal, usable until, verifying key). A hit
        # skips the signature check (~10 µs HS256, ~50-100 µs RS/ES); the token's exp (plus
        # leeway) still ends it and no entry outlives _VERIFIED_TTL_S. Tokens of JWKS keys
        # count only while the JWKS still serves that same key (rotation is honoured).
        self._verified: dict[str, tuple[Principal, float, VerificationKey]] = {}

    async def _key_for(self, alg: str, kid: str | None) -> VerificationKey:
        for key in self._keys:
            if key.algorithm == alg and (key.kid is None or key.kid == kid):
                return key
        if self._jwks is not None and alg in ASYMMETRIC_ALGORITHMS:
            found = await self._jwks.key_for(kid)
            if found is None:
                raise AuthFailure("unknown_kid", "token signing key unknown")
            if found.algorithm != alg:
                raise AuthFailure("algorithm", "token algorithm not accepted")
            return found
        raise AuthFailure("algorithm", "token algorithm not accepted")

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; AuthFailure with a reason otherwise."""
        if len(token) > self._auth.max_token_bytes:
            raise AuthFailure("too_long", "token too long")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.DecodeError, ValueError, TypeError):
            raise AuthFailure("malformed", "token malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
            raise AuthFailure("algorithm", "token algorithm not accepted")  # none, None, NONE…
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not _SANE_KID.fullmatch(kid)):
            raise AuthFailure("malformed", "token key id malformed")
        key = await self._key_for(alg, kid)
        entry = self._verified.get(token)
        if entry is not None and entry[2] is key and time.time() < entry[1]:
            return entry[0]  # verified with this very key moments ago
        claims = self._decode(token, key)
        principal = self._principal(claims)
        self._remember(token, principal, key)
        return principal

    def known(self, token: str) -> Principal | None:
        """Without I/O: the principal of a token verified less than _VERIFIED_TTL_S ago by
        a configured (never rotating) key and still in date; None: call verify()."""
        entry = self._verified.get(token)
        if entry is None or entry[2] not in self._keys:
            return None
        if time.time() < entry[1]:
            return entry[0]
        del self._verified[token]
        return None

    def _remember(self, token: str, principal: Principal, key: VerificationKey) -> None:
        now = time.time()
        until = now + _VERIFIED_TTL_S
        if principal.expires_at is not None:
            until = min(until, principal.expires_at + self._auth.jwt_leeway_s)
        if until <= now:
            return
        remember(self._verified, token, (principal, until, key), _VERIFIED_MAX)

    def _decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        required = ["sub"] + (["exp"] if self._auth.jwt_require_exp else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[key.algorithm],
                audience=self._auth.jwt_audience or None,
                issuer=self._auth.jwt_issuer or None,
                leeway=self._auth.jwt_leeway_s,
                options={"require": required, "verify_aud": bool(self._auth.jwt_audience)},
            )
        except jwt.InvalidTokenError as exc:
            for cls, reason, message in _FAILURES:
                if isinstance(exc, cls):
                    raise AuthFailure(reason, message) from None
            raise AuthFailure("malformed", "token malformed") from None
        # PyJWT reads "exp": "1700000000" (or true) as a number, but a NumericDate is a JSON
        # number (RFC 7519) and every later check (token cache, tickets, the hub's expiry
        # sweep) reads only numbers: such a token would never expire there.
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool)
                                   or not isinstance(value, (int, float))):
                raise AuthFailure("claims", f"token {name} is not a number")
        return claims

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > _MAX_SUBJECT:
            raise AuthFailure("claims", "token subject invalid")
        scopes = set(_strings(claims.get("scope")))
        scopes.update(_strings(claims.get("scp")))
        scopes.update(_strings(claims.get("scopes")))
        for role in _strings(claims.get("roles")):
            scopes.update(self._auth.role_scopes.get(role, ()))
        tenant = claims.get("tenant", claims.get("tid"))
        exp = claims.get("exp")
        # Interned: the principal lives as long as a socket; its strings are shared by every
        # connection of the same subject (interned strings still die with their last user).
        sub = sys.intern(sub)
        principal_id = sys.intern(f"jwt:{sub}")
        return Principal(
            id=principal_id, kind="jwt", subject=sub, scopes=self._scope_sets(scopes),
            tenant=tenant if isinstance(tenant, str) else None, user_id=sub,
            expires_at=float(exp) if isinstance(exp, (int, float)) else None,
            display=principal_id)


async def jwks_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: JWT verification keys and the JWKS cache; then the Authenticator.

    The Authenticator is set here because this is the last auth resource to open (the key
    store opens just before), so every part it needs exists.
    """
    from .authenticator import build_authenticator

    settings = app[SETTINGS]
    if settings.is_production and settings.auth.jwt_secret:
        log.warning("JWT_SECRET is ignored in production (HS256 is development only); "
                    "use JWT_PUBLIC_KEY_PATH or JWT_JWKS_URL")
    session: aiohttp.ClientSession | None = None
    jwks: JwksCache | None = None
    if settings.auth.jwt_jwks_url:
        session = aiohttp.ClientSession()
        jwks = JwksCache(session, settings.auth.jwt_jwks_url,
                         cooldown_s=settings.auth.jwks_refetch_cooldown_s,
                         timeout_s=settings.auth.jwks_timeout_s)
        await jwks.refresh()  # down at start: logged, and retried on demand after cooldown
    try:
        verifier = JwtVerifier(settings, static_keys(settings), jwks)
        build_authenticator(app, verifier)
        yield
    finally:
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()
