"""Principal: who is calling, as every part of the gateway sees it."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from ..bounded import remember
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


class ScopeSets:
    """Interned scope sets: principals holding the same grants share one frozenset.

    A principal lives as long as its connection, so thousands of sockets of a few kinds of
    caller would otherwise each keep their own copy of the same set and its strings.
    """

    __slots__ = ("_max", "_sets")

    def __init__(self, max_sets: int = 4096) -> None:
        self._sets: dict[frozenset[str], frozenset[str]] = {}
        self._max = max_sets

    def __call__(self, scopes: Iterable[str]) -> frozenset[str]:
        """The shared frozenset equal to ``scopes``."""
        wanted = frozenset(scopes)
        found = self._sets.get(wanted)
        if found is None:
            found = remember(self._sets, wanted, frozenset(sys.intern(s) for s in wanted),
                             self._max)
        return found


# With auth disabled (benchmarks, trusted networks) every request runs as this principal.
ANONYMOUS = Principal(id="anonymous", kind="anonymous", subject="anonymous",
                      scopes=frozenset({"*"}), display="anonymous")

PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    """The request's principal; 401 if authentication did not run or found none."""
    if PRINCIPAL not in request:
        raise Unauthenticated()
    return request[PRINCIPAL]
