"""A refused credential: 401 to the client, a bounded reason for metrics and logs."""

from __future__ import annotations

from ..errors import Unauthenticated
from .metrics import FailureReason


class AuthFailure(Unauthenticated):
    """401 UNAUTHENTICATED that also says why (the reason never carries a secret)."""

    def __init__(self, reason: FailureReason, message: str | None = None) -> None:
        super().__init__(message or "invalid credentials")
        self.reason: FailureReason = reason
