"""Chat fixtures: the reference agent on a real socket and a gateway pointed at it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from luki_gateway.devstack.agent import AGENT_LOG, AgentLog, create_agent_app


@dataclass
class Agent:
    """A running reference agent: its base URL and the log of its streams."""

    url: str
    app: web.Application

    @property
    def log(self) -> AgentLog:
        """Every stream this agent served, with how it ended."""
        return self.app[AGENT_LOG]


@pytest.fixture
async def start_agent(upstream: Callable[..., Any]) -> Callable[..., Any]:
    """Start a reference agent with the given behaviour (fast by default)."""

    async def start(**behaviour: Any) -> Agent:
        behaviour.setdefault("tokens_per_s", 500.0)
        app = create_agent_app(**behaviour)
        return Agent(url=await upstream(app), app=app)

    return start


@pytest.fixture
async def chat_gateway(gateway: Callable[..., Any]) -> Callable[..., Any]:
    """Start the real gateway with its agent upstream at ``agent.url``."""

    async def start(agent: Agent, chat: dict[str, Any] | None = None, **overrides: Any
                    ) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await gateway(
            upstreams={"agent": agent.url}, chat=chat or {}, **overrides)
        return client

    return start
