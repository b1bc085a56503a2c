"""Principal: who is calling, as every part of the gateway sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from ..errors import Unauthenticated

PrincipalKind = Literal["api_key", "jwt", "service", "anonymous"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: stable id, kind, subject and granted scopes."""

    id: str
    kind: PrincipalKind
    # The subject: the JWT ``sub``, the API key's owner, or the service token's name.
    subject: str
    scopes: frozenset[str]
    tenant: str | None = None
    user_id: str | None = None
    # live | test | dev for API keys
    key_env: str | None = None
    # Epoch seconds after which the credential is no longer valid (JWT exp), if any.
    expires_at: float | None = None
    # Shown in logs instead of the secret: key prefix + last 4, or the JWT sub.
    display: str = ""
    # API keys: the stored (peppered) hash, so tickets can re-check revocation. Not a secret.
    key_hash: str | None = field(default=None, repr=False)

    def has_scope(self, scope: str) -> bool:
        """Exact match, or a wildcard (``elr:*`` / ``*``) that was explicitly granted."""
        if scope in self.scopes or "*" in self.scopes:
            return True
        family, sep, _ = scope.partition(":")
        return bool(sep) and f"{family}:*" in self.scopes

    def missing_scopes(self, required: tuple[str, ...]) -> tuple[str, ...]:
        """The required scopes this principal does not hold."""
        return tuple(s for s in required if not self.has_scope(s))


# With auth disabled (benchmarks, trusted networks) every request runs as this principal.
ANONYMOUS = Principal(id="anonymous", kind="anonymous", subject="anonymous",
                      scopes=frozenset({"*"}), display="anonymous")

PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    """The request's principal; 401 if authentication did not run or found none."""
    if PRINCIPAL not in request:
        raise Unauthenticated()
    return request[PRINCIPAL]
