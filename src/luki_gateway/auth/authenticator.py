"""The Authenticator: one place that turns a presented credential into a Principal.

Used by the auth middleware (headers, ``?ticket=``, WebSocket subprotocol) and by the
WebSocket endpoint for first-message auth and ``auth`` refreshes. Every refusal is counted
in ``luki_auth_failures_total{reason}``.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from collections.abc import Callable

import structlog
from aiohttp import web

from ..bounded import remember
from ..errors import DownstreamUnavailable
from ..metrics import REGISTRY
from ..settings import SETTINGS, Settings
from .api_keys import KEY_STORE
from .failure import AuthFailure
from .jwt import JwtVerifier
from .key_record import ApiKeyRecord, KeyStore, StoreUnavailable, hash_key, key_env_of
from .metrics import AUTH_METRICS, AuthMetrics, FailureReason
from .principal import Principal, ScopeSets
from .service_tokens import ServiceTokens
from .tickets import PREFIX as TICKET_PREFIX
from .tickets import TicketSigner

log = structlog.get_logger("luki.auth")
_PRINCIPAL_CACHE = 10_000  # API-key principals kept for reuse (cleared when full)


class Authenticator:
    """Resolves API keys, JWTs, service tokens and tickets to principals."""

    def __init__(self, settings: Settings, *, store: KeyStore, verifier: JwtVerifier,
                 metrics: AuthMetrics, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._store = store
        self._verifier = verifier
        self._services = ServiceTokens(settings.auth.service_tokens)
        self._tickets = TicketSigner(settings.auth.api_key_pepper,
                                     ttl_s=settings.auth.ticket_ttl_s,
                                     max_bytes=settings.auth.max_token_bytes, clock=clock)
        self._metrics = metrics
        self._clock = clock
        self._scope_sets = ScopeSets()
        # Principals of API keys by key hash, with the record they were built from: reused
        # while the store hands back that same record (its cache), rebuilt when it changes.
        self._principals: dict[str, tuple[ApiKeyRecord, Principal]] = {}
        self._hashes: dict[str, str] = {}

    def fail(self, reason: FailureReason) -> None:
        """Count a refusal decided outside (missing credentials, scope, origin)."""
        self._metrics.fail(reason)

    async def authenticate_token(self, token: str) -> Principal:
        """The principal for a bearer token (API key, JWT or service token).

        Raises ``errors.Unauthenticated`` (an AuthFailure) when it is not valid, and
        ``DownstreamUnavailable`` when the key store cannot be asked.
        """
        try:
            return await self._resolve(token.strip())
        except AuthFailure as failure:
            self._refused(failure.reason)
            raise

    async def authenticate_ticket(self, ticket: str) -> Principal:
        """The principal a ``?ticket=`` stands for (re-checking an API key's revocation)."""
        try:
            principal = self._tickets.verify(ticket)
            if principal.key_hash is not None:
                await self._active_record(principal.key_hash)
            # A ticket's principal lives as long as its stream: share the scope set.
            return dataclasses.replace(principal, scopes=self._scope_sets(principal.scopes))
        except AuthFailure as failure:
            self._refused(failure.reason)
            raise

    async def recheck(self, principal: Principal) -> None:
        """Raise AuthFailure when an open connection's API key is no longer active
        (revoked or expired since it authenticated), as a new request with it would be.

        No I/O while the store holds the record (its cache). When the store cannot be
        asked, the connection keeps the credentials it opened with: it is refused once the
        store answers again, not for an outage.
        """
        key_hash = principal.key_hash
        if key_hash is None:
            return
        record = self._store.cached(key_hash)
        if record is None:
            try:
                record = await self._store.get(key_hash)
            except StoreUnavailable:
                return
        try:
            self._check_record(record, key_hash)
        except AuthFailure as failure:
            self._refused(failure.reason)
            raise

    def mint_ticket(self, principal: Principal) -> tuple[str, int]:
        """A stream ticket for ``principal`` and its lifetime in seconds."""
        return self._tickets.mint(principal)

    def known(self, token: str) -> Principal | None:
        """The principal of a credential verified before and still good, without any I/O
        (an API key whose record the store holds unchanged and active, or a JWT verified
        recently and in date); None means: verify it the full way."""
        if token.startswith("sk_"):
            return self._known_api_key(token)
        return self._verifier.known(token)

    def _known_api_key(self, key: str) -> Principal | None:
        key_hash = self._hashes.get(key)
        if key_hash is None:
            return None
        known = self._principals.get(key_hash)
        if known is None:
            return None
        record, principal = known
        if self._store.cached(key_hash) is not record:
            return None
        now = self._clock()
        if record.status(now) != "active":
            return None  # the full path refuses it with the right reason
        self._store.touch(key_hash, now)
        return principal

    def _refused(self, reason: FailureReason) -> None:
        self._metrics.fail(reason)
        log.info("credential refused", reason=reason)

    async def _resolve(self, token: str) -> Principal:
        if not token:
            raise AuthFailure("malformed", "credentials missing")
        if len(token) > self._settings.auth.max_token_bytes:
            raise AuthFailure("too_long", "token too long")
        if token.startswith("sk_"):
            return await self._api_key(token)
        if token.startswith(TICKET_PREFIX):
            raise AuthFailure("invalid_ticket",
                              "tickets are accepted only as ?ticket= on stream endpoints")
        if self._services:
            service = self._services.principal_for(token)
            if service is not None:
                return service
        if token.count(".") == 2:
            known = self._verifier.known(token)
            if known is not None:
                return known
            return await self._verifier.verify(token)
        raise AuthFailure("unknown_key" if self._services else "malformed",
                          "credentials not recognised")

    async def _active_record(self, key_hash: str) -> ApiKeyRecord:
        try:
            record = await self._store.get(key_hash)
        except StoreUnavailable:
            self._metrics.fail("store_unavailable")
            log.warning("api key store unavailable")
            raise DownstreamUnavailable("credential store unavailable") from None
        return self._check_record(record, key_hash)

    def _check_record(self, record: ApiKeyRecord | None, key_hash: str) -> ApiKeyRecord:
        """``record`` if it is the active record of ``key_hash``; AuthFailure otherwise."""
        # The lookup is by hash; compare in constant time anyway (defence in depth).
        if record is None or not hmac.compare_digest(record.key_hash, key_hash):
            raise AuthFailure("unknown_key", "API key not valid")
        status = record.status(self._clock())
        if status == "revoked":
            raise AuthFailure("revoked", "API key revoked")
        if status == "expired":
            raise AuthFailure("key_expired", "API key expired")
        return record

    async def _api_key(self, key: str) -> Principal:
        env = key_env_of(key)
        if env is None:
            raise AuthFailure("malformed", "API key malformed")
        auth = self._settings.auth
        if (env != "live" and self._settings.is_production
                and not auth.allow_test_keys_in_production):
            raise AuthFailure("test_key_in_production",
                              f"sk_{env}_ keys are not accepted in production")
        # The peppered hash of a key seen before comes from memory, not another HMAC. The
        # process holds each request's key anyway; this keeps at most _PRINCIPAL_CACHE.
        key_hash = self._hashes.get(key)
        if key_hash is None:
            key_hash = remember(self._hashes, key, hash_key(key, auth.api_key_pepper),
                                _PRINCIPAL_CACHE)
        record = await self._active_record(key_hash)
        self._store.touch(key_hash, self._clock())
        known = self._principals.get(key_hash)
        if known is not None and known[0] is record:
            return known[1]  # same stored record (the store's cache): same principal
        principal = Principal(id=f"key:{record.id}", kind="api_key", subject=record.owner,
                              scopes=self._scope_sets(record.scopes), tenant=record.tenant,
                              user_id=record.owner, key_env=record.env,
                              expires_at=record.expires_at, display=record.display,
                              key_hash=key_hash)
        remember(self._principals, key_hash, (record, principal), _PRINCIPAL_CACHE)
        return principal


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)


def build_authenticator(app: web.Application, verifier: JwtVerifier) -> Authenticator:
    """Create the auth metrics and the Authenticator on ``app`` (key store must be open)."""
    metrics = AuthMetrics.create(app[REGISTRY])
    app[AUTH_METRICS] = metrics
    authenticator = Authenticator(app[SETTINGS], store=app[KEY_STORE], verifier=verifier,
                                  metrics=metrics)
    app[AUTHENTICATOR] = authenticator
    return authenticator
