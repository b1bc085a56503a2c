"""Settings as plain data round-trip exactly (how `serve --workers N` hands them to workers)."""

from __future__ import annotations

import pickle

from luki_gateway.settings import load_settings, settings_data


def test_defaults_round_trip() -> None:
    """Default settings survive settings_data -> load_settings unchanged."""
    settings = load_settings(environ={})
    assert load_settings(environ={}, overrides=settings_data(settings)) == settings


def test_rich_config_round_trips_through_pickle() -> None:
    """A config using every kind of field (tables, lists, nested entries) round-trips via pickle."""
    settings = load_settings(environ={"REDIS_URL": "redis://:pw@db:6379/1",
                                      "CORS_ORIGINS": "https://a,https://b"}, overrides={
        "environment": "staging",
        "upstreams": {"memory": "http://m:1", "agent": "http://a:2"},
        "routes": [{"prefix": "/v1/elr", "upstream": "memory", "methods": ["GET", "POST"],
                    "scopes": {"GET": ["elr:read"], "*": ["elr:write"]}, "timeout_s": 3.5,
                    "max_body_bytes": 1024, "cost": 2, "strip_prefix": True}],
        "auth": {"role_scopes": {"admin": ["admin:read"]},
                 "service_tokens": [{"name": "agent", "sha256": "ab" * 32,
                                     "scopes": ["events:publish"]}]},
        "hub": {"channel_policies": {"broadcast:*": "coalesce"}},
    })
    data = pickle.loads(pickle.dumps(settings_data(settings)))
    assert load_settings(environ={}, overrides=data) == settings
