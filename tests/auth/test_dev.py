"""`luki-gateway dev` credentials: a fresh sk_dev_ key and a dev JWT that both work."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from luki_gateway.auth.dev import dev_credentials, dev_keys_file, mint_dev_token
from luki_gateway.settings import Settings

from .probe import Probe, start_probe


async def test_dev_credentials_work_in_the_gateway(
        aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a store configured the key lands in the dev keys file the gateway then uses."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    creds = await asyncio.to_thread(dev_credentials, make_settings())
    assert creds.settings.auth.api_keys_file == str(dev_keys_file())
    assert dev_keys_file().is_relative_to(tmp_path)
    assert creds.api_key.startswith("sk_dev_")
    p: Probe = await start_probe(aiohttp_client, creds.settings)
    for credential in (creds.api_key, creds.token):
        resp = await p.client.post("/t/chat", headers={"Authorization": f"Bearer {credential}"})
        assert resp.status == 200
        assert (await resp.json())["principal"]["subject"] == "dev"
        resp = await p.client.post("/v1/auth/ticket",
                                   headers={"Authorization": f"Bearer {credential}"})
        assert resp.status == 200


def test_dev_credentials_refused_outside_development(
        make_settings: Callable[..., Settings]) -> None:
    """No dev keys or dev tokens in production (nor dev keys in staging)."""
    with pytest.raises(ValueError):
        dev_credentials(make_settings(environment="staging"))
    prod = make_settings(environment="production")
    with pytest.raises(ValueError):
        mint_dev_token(prod, sub="x")
