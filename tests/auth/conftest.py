"""Auth test fixtures: the probe gateway on either key store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from luki_gateway.settings import Settings

from .probe import Probe, start_probe


@pytest.fixture
def auth_settings(make_settings: Callable[..., Settings], backend_redis_url: str,
                  tmp_path: Path) -> Callable[..., Settings]:
    """Settings whose key store is the file store (memory backend) or Redis (redis backend)."""

    def build(**overrides: Any) -> Settings:
        auth = dict(overrides.pop("auth", {}))
        if not backend_redis_url:
            auth.setdefault("api_keys_file", str(tmp_path / "api_keys.json"))
        return make_settings(auth=auth, **overrides)

    return build


@pytest.fixture
def probe(aiohttp_client: Callable[..., Any], auth_settings: Callable[..., Settings]
          ) -> Callable[..., Any]:
    """Start the real app with /t/* probe routes; returns an async factory of Probe."""

    async def start(settings: Settings | None = None, **overrides: Any) -> Probe:
        return await start_probe(aiohttp_client, settings or auth_settings(**overrides))

    return start
