"""Test signing keys: RSA, EC P-256 and Ed25519 pairs, as PEM files and JWKs, and raw
token assembly for tokens PyJWT refuses to make (alg none, algorithm confusion)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


@dataclass(frozen=True)
class KeyPair:
    """A private key, its algorithm and its public half as PEM and JWK."""

    algorithm: str
    private: Any

    @property
    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM of the public key."""
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return pem

    def write_pem(self, directory: Path) -> str:
        """Write the public PEM to a file; return its path."""
        path = directory / f"{self.algorithm}.pem"
        path.write_bytes(self.public_pem)
        return str(path)

    def jwk(self, kid: str) -> dict[str, Any]:
        """The public key as a JWK with ``kid`` and ``alg``."""
        algo: Any = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[
            self.algorithm]
        data: dict[str, Any] = algo.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, claims: dict[str, Any] | None = None, *, kid: str | None = None,
             algorithm: str | None = None, headers: dict[str, Any] | None = None,
             **extra: Any) -> str:
        """A token signed by this key (claims default to a valid chat:write token)."""
        all_headers = dict(headers or {})
        if kid is not None:
            all_headers["kid"] = kid
        return jwt.encode(claims if claims is not None else valid_claims(**extra),
                          self.private, algorithm=algorithm or self.algorithm,
                          headers=all_headers or None)


def make_pairs() -> dict[str, KeyPair]:
    """Fresh RS256, ES256 and EdDSA key pairs."""
    return {
        "RS256": KeyPair("RS256", rsa.generate_private_key(public_exponent=65537,
                                                          key_size=2048)),
        "ES256": KeyPair("ES256", ec.generate_private_key(ec.SECP256R1())),
        "EdDSA": KeyPair("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    }


def valid_claims(sub: str = "alice", scope: str = "chat:write", ttl_s: int = 3600,
                 **extra: Any) -> dict[str, Any]:
    """Claims of a currently valid token."""
    now = int(time.time())
    return {"sub": sub, "scope": scope, "iat": now, "exp": now + ttl_s, **extra}


def b64(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any],
              hmac_key: bytes | None = None, signature: str = "") -> str:
    """Assemble a token by hand (optionally HMAC-SHA256-signed with ``hmac_key``)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if hmac_key is not None:
        signature = b64(hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature}"
