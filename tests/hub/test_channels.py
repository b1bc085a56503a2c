"""Channel names, subscribe rules and per-channel slow-consumer policies."""

from __future__ import annotations

import types

import pytest

from luki_gateway.auth.principal import ANONYMOUS, Principal
from luki_gateway.errors import Forbidden, InsufficientScope, ValidationFailed
from luki_gateway.hub.channels import (
    policy_for,
    publish_refusal,
    subscribe_refusal,
    validate_channel,
)
from luki_gateway.settings import HubSettings, SettingsError, load_settings


def _who(sub: str, *scopes: str) -> Principal:
    return Principal(id=f"jwt:{sub}", kind="jwt", subject=sub, scopes=frozenset(scopes))


@pytest.mark.parametrize("name", ["user:alice", "user:alice:notes", "session:s-1.2",
                                  "broadcast:news", "user:a@b.c"])
def test_valid_names(name: str) -> None:
    """Well-formed names of the three kinds pass unchanged."""
    assert validate_channel(name) == name


@pytest.mark.parametrize("name", ["", "alice", "user:", "user:a b", "user:a,b", "user:a=b",
                                  "other:x", "user:a\n", "user::x", "x" * 300, 5, None])
def test_invalid_names(name: object) -> None:
    """Wrong kinds, empty segments, separators and over-long names are VALIDATION_ERROR."""
    with pytest.raises(ValidationFailed):
        validate_channel(name)


def test_subscribe_rules() -> None:
    """Own user channels, owned sessions and broadcast (when enabled) only."""
    settings = HubSettings()
    alice = _who("alice")
    assert subscribe_refusal(alice, "user:alice", settings) is None
    assert subscribe_refusal(alice, "user:alice:feed", settings) is None
    assert isinstance(subscribe_refusal(alice, "user:bob", settings), Forbidden)
    assert isinstance(subscribe_refusal(alice, "user:alice2", settings), Forbidden)
    assert subscribe_refusal(alice, "broadcast:x", settings) is None
    assert subscribe_refusal(alice, "session:alice.7", settings) is None
    assert isinstance(subscribe_refusal(alice, "session:bob", settings), Forbidden)
    closed = HubSettings(broadcast_subscribe=False, session_subscribe="none")
    assert isinstance(subscribe_refusal(alice, "broadcast:x", closed), Forbidden)
    assert isinstance(subscribe_refusal(alice, "session:alice", closed), Forbidden)
    anyone = HubSettings(session_subscribe="any")
    assert subscribe_refusal(alice, "session:bob", anyone) is None
    assert subscribe_refusal(ANONYMOUS, "user:bob", settings) is None
    assert subscribe_refusal(_who("ops", "events:subscribe:*"), "user:bob", settings) is None


@pytest.mark.parametrize(("subject", "channel", "allowed"), [
    ("john", "session:john", True),
    ("john", "session:john.1", True),
    ("john", "session:john.42:notes", True),
    ("john", "session:john.smith", False),
    ("john", "session:john.smith.1", False),
    ("john", "session:john.", False),
    ("john", "session:john.1a", False),
    ("john", "session:john.\u0661", False),  # a non-ascii digit is not a session number
    ("john", "session:john.1.2", False),
    ("john.smith", "session:john.smith", True),
    ("john.smith", "session:john.smith.1", True),
    ("john.smith", "session:john", False),
    ("", "session:.1", False),
])
def test_owner_sessions_are_the_subject_or_subject_dot_number(subject: str, channel: str,
                                                              allowed: bool) -> None:
    """session:<sub> and session:<sub>.<n> only: no other subject's dotted sessions."""
    refusal = subscribe_refusal(_who(subject), channel, HubSettings(session_subscribe="owner"))
    assert (refusal is None) is allowed


def test_publish_needs_scope() -> None:
    """Publishing needs events:publish exactly (or an explicitly granted wildcard)."""
    assert isinstance(publish_refusal(_who("a", "events:publisher")), InsufficientScope)
    assert publish_refusal(_who("a", "events:publish")) is None
    assert publish_refusal(_who("a", "events:*")) is None


def test_policy_per_channel_pattern() -> None:
    """The first matching glob wins; the default applies otherwise."""
    settings = HubSettings(slow_consumer_policy="drop_oldest",
                           channel_policies=types.MappingProxyType(
                               {"broadcast:prices*": "coalesce", "user:*": "disconnect"}))
    assert policy_for("broadcast:prices.eur", settings) == "coalesce"
    assert policy_for("user:alice", settings) == "disconnect"
    assert policy_for("broadcast:news", settings) == "drop_oldest"


def test_unknown_policy_is_refused_at_load() -> None:
    """A typo in hub.channel_policies stops start-up with one line naming the key."""
    with pytest.raises(SettingsError, match=r"hub\.channel_policies"):
        load_settings(environ={}, overrides={"hub": {"channel_policies": {"user:*": "drop"}}})
