"""Channel names, who may subscribe to them, and each channel's slow-consumer policy.

Names look like ``user:<subject>``, ``user:<subject>:<topic>``, ``session:<id>`` and
``broadcast:<name>``. The charset leaves out ``=``, ``,`` and spaces so a multi-channel SSE
``Last-Event-ID`` (``channel=id,channel=id``) can be parsed without escaping.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

from ..auth.principal import Principal
from ..errors import Forbidden, GatewayError, InsufficientScope, ValidationFailed
from ..settings import HubSettings

MAX_CHANNEL_LENGTH = 200
_CHANNEL = re.compile(r"(user|session|broadcast):[A-Za-z0-9_.@\-]+(:[A-Za-z0-9_.@\-]+)*")

Policy = Literal["coalesce", "drop_oldest", "disconnect"]
PUBLISH_SCOPE = "events:publish"


CHANNEL_EXPECTED = ("user:<id>, session:<id> or broadcast:<name>; "
                    f"[A-Za-z0-9_.@-] segments, at most {MAX_CHANNEL_LENGTH} chars")


def is_channel_name(name: str) -> bool:
    """True when ``name`` is a well-formed channel name."""
    return 0 < len(name) <= MAX_CHANNEL_LENGTH and _CHANNEL.fullmatch(name) is not None


def validate_channel(name: object) -> str:
    """The channel name if well formed; 400 VALIDATION_ERROR otherwise (subscribe paths;
    publishing checks names in its schema, 422)."""
    if not isinstance(name, str) or not name:
        raise ValidationFailed("channel must be a non-empty string")
    if not is_channel_name(name):
        raise ValidationFailed(
            "channel name is not valid",
            details={"channel": name[:MAX_CHANNEL_LENGTH], "expected": CHANNEL_EXPECTED})
    return name


def subscribe_refusal(principal: Principal, channel: str,
                      settings: HubSettings) -> GatewayError | None:
    """Why ``principal`` may not subscribe to ``channel`` (None when it may)."""
    kind, _, rest = channel.partition(":")
    if principal.has_scope("events:subscribe:*") or principal.kind == "anonymous":
        return None  # operators and auth-disabled deployments see every channel
    if kind == "user":
        owner = rest.split(":", 1)[0]
        if owner == principal.subject:
            return None
    elif kind == "broadcast":
        if settings.broadcast_subscribe:
            return None
    elif kind == "session":
        mode = settings.session_subscribe
        if mode == "any":
            return None
        if mode == "owner" and _owns_session(principal.subject, rest.split(":", 1)[0]):
            return None
    return Forbidden("not allowed to subscribe to this channel", details={"channel": channel})


def _owns_session(subject: str, session_id: str) -> bool:
    """True when ``session_id`` is ``<subject>`` or ``<subject>.<n>`` (n ascii digits).

    A bare prefix test would let ``john`` into ``john.smith``'s sessions: only a number may
    follow the subject's own dot (subjects may contain dots themselves).
    """
    if not subject:
        return False
    if session_id == subject:
        return True
    head, dot, tail = session_id.rpartition(".")
    return bool(dot) and head == subject and tail.isascii() and tail.isdigit()


def publish_refusal(principal: Principal) -> GatewayError | None:
    """Why ``principal`` may not publish (None when it holds ``events:publish``)."""
    if principal.has_scope(PUBLISH_SCOPE):
        return None
    return InsufficientScope.missing((PUBLISH_SCOPE,))


def policy_for(channel: str, settings: HubSettings) -> Policy:
    """The slow-consumer policy of ``channel``: first matching glob in config, else default."""
    for pattern, policy in settings.channel_policies.items():
        if fnmatch.fnmatchcase(channel, pattern):
            return policy  # type: ignore[return-value]  # validated in settings
    return settings.slow_consumer_policy  # type: ignore[return-value]
