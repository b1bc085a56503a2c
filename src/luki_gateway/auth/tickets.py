"""Stream tickets: short-lived signed stand-ins for a principal, for ``?ticket=`` URLs.

Browsers' EventSource cannot send headers, so a client trades its real credential for a
ticket (``POST /v1/auth/ticket``) and puts that in the URL. A ticket is stateless (any
process verifies it), reusable until it expires (EventSource reconnects reuse the URL) and
never outlives the credential it came from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from .failure import AuthFailure
from .principal import Principal

PREFIX = "tk_"
_VERSION = 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TicketSigner:
    """Mints and verifies tickets with a key derived from the server pepper."""

    def __init__(self, pepper: str, *, ttl_s: int, max_bytes: int = 8192,
                 clock: Callable[[], float] = time.time) -> None:
        # Derived, so a ticket signature can never double as an API key hash.
        self._key = hmac.new(pepper.encode(), b"luki-ticket-v1", hashlib.sha256).digest()
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._clock = clock

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def mint(self, principal: Principal) -> tuple[str, int]:
        """A ticket for ``principal`` and its lifetime in seconds."""
        now = self._clock()
        exp = now + self._ttl_s
        if principal.expires_at is not None:
            exp = min(exp, principal.expires_at)
        body: dict[str, Any] = {
            "v": _VERSION, "exp": int(exp), "n": secrets.token_urlsafe(8),
            "id": principal.id, "k": principal.kind, "s": principal.subject,
            "sc": sorted(principal.scopes), "t": principal.tenant, "u": principal.user_id,
            "e": principal.key_env, "d": principal.display, "h": principal.key_hash,
        }
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{PREFIX}{payload}.{self._sign(payload)}", max(0, int(exp - now))

    def verify(self, ticket: str) -> Principal:
        """The principal a valid, unexpired ticket stands for; AuthFailure otherwise."""
        if len(ticket) > self._max_bytes or not ticket.startswith(PREFIX):
            raise AuthFailure("invalid_ticket", "ticket invalid")
        payload, _, signature = ticket[len(PREFIX):].partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise AuthFailure("invalid_ticket", "ticket invalid")
        try:
            body = json.loads(_unb64(payload))
            if body["v"] != _VERSION:
                raise ValueError("version")
            expires_at = float(body["exp"])
            principal = Principal(
                id=str(body["id"]), kind=body["k"], subject=str(body["s"]),
                scopes=frozenset(str(s) for s in body["sc"]), tenant=body["t"],
                user_id=body["u"], key_env=body["e"], expires_at=expires_at,
                display=str(body["d"]), key_hash=body["h"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise AuthFailure("invalid_ticket", "ticket invalid") from None
        if self._clock() >= expires_at:
            raise AuthFailure("invalid_ticket", "ticket expired")
        return principal
