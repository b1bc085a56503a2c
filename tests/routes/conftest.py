"""Fixtures shared by the proxy tests: the echo/misbehaving upstream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from .proxy_upstream import CONTROL, Control, create_upstream_app


@pytest.fixture
async def echo_app(aiohttp_server: Callable[..., Any]) -> tuple[str, Control]:
    """The echo/misbehaving upstream on a real socket: (base URL, its control)."""
    app = create_upstream_app()
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), app[CONTROL]
