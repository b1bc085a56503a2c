"""Service tokens: static secrets of internal callers, configured only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import re

from ..settings import ServiceTokenConfig
from .principal import Principal

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ServiceTokens:
    """Resolves a presented token to its configured service, comparing in constant time."""

    def __init__(self, configs: tuple[ServiceTokenConfig, ...]) -> None:
        for config in configs:
            if not _SHA256_HEX.fullmatch(config.sha256.strip().lower()):
                # A typo would otherwise never match, silently locking the service out.
                raise ValueError(f"auth.service_tokens {config.name!r}: sha256 must be "
                                 "64 hex characters (sha256sum of the token)")
        self._configs = tuple((c, c.sha256.strip().lower()) for c in configs)

    def __bool__(self) -> bool:
        return bool(self._configs)

    def principal_for(self, token: str) -> Principal | None:
        """The service principal whose hash matches ``token``, else None."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        found: ServiceTokenConfig | None = None
        for config, expected in self._configs:
            # every entry is compared (no early exit): timing says nothing about which matched
            if hmac.compare_digest(digest, expected):
                found = config
        if found is None:
            return None
        return Principal(id=f"svc:{found.name}", kind="service", subject=found.name,
                         scopes=frozenset(found.scopes), display=f"svc:{found.name}")
