"""The relay's fast path: token blocks passed through as bytes, connections kept alive."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from luki_gateway.devstack.agent import create_agent_app
from luki_gateway.upstream.agent import NativeDialect
from luki_gateway.upstream.sse import SseParser, SseProtocolError
from tests.chat.conftest import Agent
from tests.chat.sse_client import read_events
from tests.conftest import bearer


def _token_block(data: bytes) -> bytes:
    return b"event: token\ndata: " + data


@pytest.mark.parametrize("text", [
    "plain ", "caf\u00e9 \u00fc\u00df ", "\U0001f600", 'say "hi"', "back\\slash", "line\nbreak",
    "tab\there", "\u2028", "",
])
def test_token_fast_path_equals_full_decode(text: str) -> None:
    """Whatever the token text, the block yields that text and one line of JSON for it."""
    for data in (json.dumps({"text": text}), json.dumps({"text": text}, ensure_ascii=False)):
        [event] = NativeDialect().translate_block(_token_block(data.encode()), SseParser())
        assert event.kind == "token"
        assert event.value == text
        assert b"\n" not in event.data
        assert json.loads(event.data) == {"text": text}


def test_token_fast_path_passes_bytes_through() -> None:
    """The usual block is forwarded byte for byte (no decode, no re-encode)."""
    data = b'{"text": "listening "}'
    [event] = NativeDialect().translate_block(_token_block(data), SseParser())
    assert event.data is not None and event.data == data


def test_token_block_with_bad_utf8_is_refused() -> None:
    """Undecodable text is a protocol error on the fast path too."""
    with pytest.raises(SseProtocolError):
        NativeDialect().translate_block(_token_block(b'{"text": "\xff\xfe"}'), SseParser())


async def test_agent_connection_is_reused_across_turns(upstream: Callable[..., Any],
                                                       chat_gateway: Callable[..., Any]
                                                       ) -> None:
    """A turn that ended cleanly hands its upstream connection back to the keep-alive pool."""
    app = create_agent_app(tokens=3, tokens_per_s=500.0)
    peers: list[Any] = []

    async def record_peer(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/v1/chat/stream" and request.transport is not None:
            peers.append(request.transport.get_extra_info("peername"))

    app.on_response_prepare.append(record_peer)
    agent = Agent(url=await upstream(app), app=app)
    client = await chat_gateway(agent)
    for _ in range(3):
        resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
        assert [e.event for e in await read_events(resp)] == ["token"] * 3 + ["done"]
    assert len(peers) == 3
    assert len(set(peers)) == 1


async def test_finished_turn_keeps_only_its_events(start_agent: Callable[..., Any],
                                                   chat_gateway: Callable[..., Any]) -> None:
    """A turn kept for resumes after its end holds no listener and no relay."""
    from luki_gateway.hub.turns import TURNS

    agent = await start_agent(tokens=2)
    client = await chat_gateway(agent)
    resp = await client.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    assert [e.event for e in await read_events(resp)] == ["token", "token", "done"]
    turn = client.server.app[TURNS].local(resp.headers["X-LUKi-Turn-Id"])
    assert turn is not None and turn.finished
    assert [e.event for e in turn.events] == ["token", "token", "done"]
    assert turn.listeners == [] and turn.abandon is None
