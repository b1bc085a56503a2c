"""Chat over /v1/ws: turns tagged by id, several at once, cancel, resume, socket close."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import ClientWebSocketResponse, web

from luki_gateway.devstack.agent import reply_tokens
from luki_gateway.hub.turns import LOST_SEQ
from tests.chat.dead_owner import turn_of_a_dead_process
from tests.chat.sse_client import Received, read_events
from tests.conftest import bearer


async def _connect(client: Any, sub: str = "alice") -> ClientWebSocketResponse:
    ws: ClientWebSocketResponse = await client.ws_connect("/v1/ws", headers=bearer(sub))
    welcome = await ws.receive_json(timeout=5)
    assert welcome["type"] == "welcome"
    return ws


async def _until_end(ws: ClientWebSocketResponse, client_id: str,
                     other: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Messages of turn ``client_id`` up to its done/error (others go to ``other``)."""
    out: list[dict[str, Any]] = []
    while True:
        msg = await ws.receive_json(timeout=5)
        if msg.get("id") != client_id:
            if other is not None:
                other.append(msg)
            continue
        out.append(msg)
        if msg["type"] in ("done", "error"):
            return out


async def _resume_sse(client: Any, turn_id: str, seq: int) -> list[Received]:
    resp = await client.get("/v1/chat/stream", params={"turn_id": turn_id},
                            headers={**bearer(), "Last-Event-ID": f"{turn_id}:{seq}"})
    assert resp.status == 200
    return await read_events(resp)


async def _dropped_elsewhere(chat_gateway: Callable[..., Any], agent: Any, redis_url: str,
                             message: str, seen: int) -> tuple[Any, list[dict[str, Any]]]:
    """Start a WS turn on one gateway, read ``seen`` messages, close that socket; returns a
    second gateway on the same Redis (another process) and the messages read."""
    first_gw = await chat_gateway(agent, redis_url=redis_url)
    second_gw = await chat_gateway(agent, redis_url=redis_url)
    ws = await _connect(first_gw)
    await ws.send_json({"type": "chat", "id": "c", "message": message})
    first = [await ws.receive_json(timeout=5) for _ in range(seen)]
    await ws.close()
    return second_gw, first


async def test_ws_chat_turn(start_agent: Callable[..., Any],
                            chat_gateway: Callable[..., Any]) -> None:
    """chat {id, message}: tokens tagged with id and turn_id, then one done."""
    agent = await start_agent(tokens=4)
    client = await chat_gateway(agent)
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "c1", "message": "hello"})
    msgs = await _until_end(ws, "c1")
    assert [m["type"] for m in msgs] == ["token"] * 4 + ["done"]
    assert len({m["turn_id"] for m in msgs}) == 1
    assert [m["seq"] for m in msgs] == [1, 2, 3, 4, 5]
    assert "".join(m["text"] for m in msgs[:-1]) == "".join(reply_tokens("hello", 4))
    assert msgs[-1]["finish_reason"] == "stop"
    assert msgs[-1]["usage"] == {"input_tokens": 1, "output_tokens": 4}
    await ws.close()


async def test_ws_several_turns_at_once(start_agent: Callable[..., Any],
                                        chat_gateway: Callable[..., Any]) -> None:
    """Two turns on one socket interleave; each is complete under its own id."""
    agent = await start_agent(tokens=6, tokens_per_s=100.0)
    client = await chat_gateway(agent)
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "a", "message": "first"})
    await ws.send_json({"type": "chat", "id": "b", "message": "second one"})
    seen: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    ended = 0
    while ended < 2:
        msg = await ws.receive_json(timeout=5)
        seen[msg["id"]].append(msg)
        ended += msg["type"] in ("done", "error")
    for cid in ("a", "b"):
        assert [m["type"] for m in seen[cid]] == ["token"] * 6 + ["done"]
    assert seen["a"][0]["turn_id"] != seen["b"][0]["turn_id"]
    await ws.close()


async def test_ws_turn_limit_per_socket(start_agent: Callable[..., Any],
                                        chat_gateway: Callable[..., Any]) -> None:
    """Past max_turns_per_socket a new chat is refused with RATE_LIMIT_EXCEEDED."""
    agent = await start_agent(tokens=50, tokens_per_s=20.0)
    client = await chat_gateway(agent, chat={"max_turns_per_socket": 1})
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "a", "message": "one"})
    await ws.send_json({"type": "chat", "id": "b", "message": "two"})
    msgs = await _until_end(ws, "b")
    assert msgs[-1]["type"] == "error"
    assert msgs[-1]["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    await ws.close()


async def test_ws_cancel_stops_the_upstream(start_agent: Callable[..., Any],
                                            chat_gateway: Callable[..., Any]) -> None:
    """cancel {id}: done cancelled, and the agent sees its stream dropped within 1 s."""
    agent = await start_agent(tokens=1000, tokens_per_s=20.0)
    client = await chat_gateway(agent)
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "c", "message": "long"})
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "token"
    await ws.send_json({"type": "cancel", "id": "c"})
    sent = time.monotonic()
    msgs = await _until_end(ws, "c")
    assert msgs[-1]["type"] == "done"
    assert msgs[-1]["finish_reason"] == "cancelled"
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 3.0)
    ended_at = agent.log.cancelled[0].ended_at
    assert ended_at is not None and ended_at - sent < 1.0
    await ws.close()


async def test_ws_bad_messages_get_errors_with_id(start_agent: Callable[..., Any],
                                                  chat_gateway: Callable[..., Any]) -> None:
    """Malformed chat/cancel/resume messages answer VALIDATION_ERROR or NOT_FOUND by id."""
    agent = await start_agent()
    client = await chat_gateway(agent)
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "x", "message": 7})
    msg = await ws.receive_json(timeout=5)
    assert (msg["type"], msg["id"], msg["error"]["code"]) == ("error", "x", "VALIDATION_ERROR")
    await ws.send_json({"type": "chat", "message": "no id"})
    msg = await ws.receive_json(timeout=5)
    assert msg["error"]["code"] == "VALIDATION_ERROR"
    await ws.send_json({"type": "cancel", "id": "nope"})
    msg = await ws.receive_json(timeout=5)
    assert (msg["id"], msg["error"]["code"]) == ("nope", "NOT_FOUND")
    await ws.send_json({"type": "resume", "turn_id": "t_unknown", "last_seq": 0})
    msg = await ws.receive_json(timeout=5)
    assert msg["error"]["code"] == "NOT_FOUND"
    await ws.send_json({"type": "resume", "turn_id": "t_x", "last_seq": "3"})
    msg = await ws.receive_json(timeout=5)
    assert msg["error"]["code"] == "VALIDATION_ERROR"
    assert agent.log.streams == []
    await ws.close()


async def test_ws_close_cancels_turn_without_resume(start_agent: Callable[..., Any],
                                                    chat_gateway: Callable[..., Any]) -> None:
    """Closing the socket mid-turn cancels the upstream within 1 s when resume is off."""
    agent = await start_agent(tokens=1000, tokens_per_s=20.0)
    client = await chat_gateway(agent, chat={"resume": False})
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "c", "message": "long"})
    await ws.receive_json(timeout=5)
    await ws.close()
    closed = time.monotonic()
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 3.0)
    ended_at = agent.log.cancelled[0].ended_at
    assert ended_at is not None and ended_at - closed < 1.0


async def test_ws_resume_after_reconnect(backend: str, start_agent: Callable[..., Any],
                                         chat_gateway: Callable[..., Any]) -> None:
    """Drop the socket mid-turn, resume {turn_id, last_seq} on a new one: rest once + done."""
    agent = await start_agent(tokens=30, tokens_per_s=60.0)
    client = await chat_gateway(agent)
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "c", "message": "resume me"})
    first = [await ws.receive_json(timeout=5) for _ in range(3)]
    turn_id = first[0]["turn_id"]
    await ws.close()
    ws = await _connect(client)
    await ws.send_json({"type": "resume", "id": "c", "turn_id": turn_id,
                        "last_seq": first[-1]["seq"]})
    rest = await _until_end(ws, "c")
    msgs = first + rest
    assert [m["seq"] for m in msgs] == list(range(1, 32))
    assert "".join(m["text"] for m in msgs[:-1]) == "".join(reply_tokens("resume me", 30))
    assert msgs[-1]["type"] == "done" and msgs[-1]["finish_reason"] == "stop"
    await ws.close()


async def test_ws_resume_on_another_app(redis_url: str, start_agent: Callable[..., Any],
                                        chat_gateway: Callable[..., Any]) -> None:
    """A WS resume on a second gateway sharing Redis follows the turn to its end."""
    agent = await start_agent(tokens=30, tokens_per_s=60.0)
    second_gw, first = await _dropped_elsewhere(chat_gateway, agent, redis_url, "resume me", 3)
    ws = await _connect(second_gw)
    await ws.send_json({"type": "resume", "id": "c", "turn_id": first[0]["turn_id"],
                        "last_seq": 3})
    rest = await _until_end(ws, "c")
    assert [m["seq"] for m in first + rest] == list(range(1, 32))
    assert rest[-1]["type"] == "done"
    await ws.close()


async def test_ws_resume_by_client_id_before_the_first_event(
        backend: str, start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]
        ) -> None:
    """The socket drops before the turn's first event (so the client never learnt its
    turn id): ``resume {id}`` finds it by the id the client started it with."""
    agent = await start_agent(tokens=3, first_token_delay_s=0.5)
    client = await chat_gateway(agent)
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "early", "message": "hi"})
    await asyncio.sleep(0.1)
    await ws.close()
    ws = await _connect(client)
    await ws.send_json({"type": "resume", "id": "early"})
    msgs = await _until_end(ws, "early")
    assert [m["type"] for m in msgs] == ["token"] * 3 + ["done"]
    assert [m["seq"] for m in msgs] == [1, 2, 3, 4]
    assert len({m["turn_id"] for m in msgs}) == 1
    assert len(agent.log.streams) == 1
    # Unknown here, or another principal's: nothing to resume.
    await ws.send_json({"type": "resume", "id": "never"})
    refused = await ws.receive_json(timeout=5)
    assert (refused["id"], refused["error"]["code"]) == ("never", "NOT_FOUND")
    other = await _connect(client, "bob")
    await other.send_json({"type": "resume", "id": "early"})
    assert (await other.receive_json(timeout=5))["error"]["code"] == "NOT_FOUND"
    await other.send_json({"type": "resume", "last_seq": 2})
    assert (await other.receive_json(timeout=5))["error"]["code"] == "VALIDATION_ERROR"
    await ws.close()
    await other.close()


async def test_ws_resume_by_client_id_on_another_app(redis_url: str,
                                                     start_agent: Callable[..., Any],
                                                     chat_gateway: Callable[..., Any]
                                                     ) -> None:
    """``resume {id}`` finds a turn started on another process (through Redis)."""
    agent = await start_agent(tokens=3, first_token_delay_s=0.5)
    second_gw, _ = await _dropped_elsewhere(chat_gateway, agent, redis_url, "hi", 0)
    ws = await _connect(second_gw)
    await ws.send_json({"type": "resume", "id": "c"})
    msgs = await _until_end(ws, "c")
    assert [(m["type"], m["seq"]) for m in msgs] == [("token", 1), ("token", 2),
                                                     ("token", 3), ("done", 4)]
    await ws.close()


async def test_ws_resume_refused_for_other_principal(start_agent: Callable[..., Any],
                                                     chat_gateway: Callable[..., Any]) -> None:
    """Another principal cannot follow someone's turn over WS (FORBIDDEN)."""
    agent = await start_agent(tokens=30, tokens_per_s=30.0)
    client = await chat_gateway(agent)
    ws = await _connect(client, "alice")
    await ws.send_json({"type": "chat", "id": "c", "message": "mine"})
    turn_id = (await ws.receive_json(timeout=5))["turn_id"]
    spy = await _connect(client, "mallory")
    await spy.send_json({"type": "resume", "turn_id": turn_id, "last_seq": 0})
    msg = await spy.receive_json(timeout=5)
    assert msg["error"]["code"] == "FORBIDDEN"
    await asyncio.gather(ws.close(), spy.close())


async def test_ws_resume_of_a_finished_turn_held_whole(redis_url: str,
                                                       start_agent: Callable[..., Any],
                                                       chat_gateway: Callable[..., Any]) -> None:
    """Resuming, on another app, a turn the client has to its done: nothing is sent and
    the id is free again at once (no follower left waiting for events that never come)."""
    agent = await start_agent(tokens=3, tokens_per_s=200.0)
    first_gw = await chat_gateway(agent, redis_url=redis_url)
    second_gw = await chat_gateway(agent, redis_url=redis_url)
    ws = await _connect(first_gw)
    await ws.send_json({"type": "chat", "id": "c", "message": "short"})
    msgs = await _until_end(ws, "c")
    await ws.close()
    assert msgs[-1]["type"] == "done"
    ws = await _connect(second_gw)
    await ws.send_json({"type": "resume", "id": "c", "turn_id": msgs[0]["turn_id"],
                        "last_seq": msgs[-1]["seq"]})
    await ws.send_json({"type": "chat", "id": "c", "message": "next"})
    again = await _until_end(ws, "c")
    assert again[-1]["type"] == "done" and again[0]["turn_id"] != msgs[0]["turn_id"]
    await ws.close()


async def test_ws_cancel_of_a_turn_resumed_on_another_app(redis_url: str,
                                                          start_agent: Callable[..., Any],
                                                          chat_gateway: Callable[..., Any]
                                                          ) -> None:
    """cancel {id} of a turn another process runs: that process stops the upstream (no
    waiting for the grace period) and the client gets the turn's own done (cancelled, with
    its turn_id, seq and usage)."""
    agent = await start_agent(tokens=400, tokens_per_s=20.0)
    second_gw, first = await _dropped_elsewhere(chat_gateway, agent, redis_url,
                                                "cancel me elsewhere", 2)
    turn_id = first[0]["turn_id"]
    ws = await _connect(second_gw)
    await ws.send_json({"type": "resume", "id": "r", "turn_id": turn_id, "last_seq": 2})
    assert (await ws.receive_json(timeout=5))["seq"] == 3
    cancelled_at = time.monotonic()
    await ws.send_json({"type": "cancel", "id": "r"})
    rest = await _until_end(ws, "r")
    done = rest[-1]
    assert done["type"] == "done" and done["finish_reason"] == "cancelled"
    assert done["turn_id"] == turn_id
    assert done["seq"] == rest[-2]["seq"] + 1 if len(rest) > 1 else done["seq"] > 3
    assert done["usage"]["output_tokens"] == done["seq"] - 1
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 3.0)
    assert time.monotonic() - cancelled_at < 2.5  # well before the 15 s grace period
    await ws.close()


async def test_ws_cancel_of_a_followed_turn_whose_process_died(
        redis_url: str, start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]
        ) -> None:
    """cancel {id} of a followed turn whose process is dead: nobody can stop it, so the
    client gets the turn's one stored end (the error every resume of it gets, with its
    seq), not a made-up done without seq or usage that a later resume contradicts."""
    async with turn_of_a_dead_process(redis_url):
        gw = await chat_gateway(await start_agent(), redis_url=redis_url)
        ws = await _connect(gw)
        await ws.send_json({"type": "resume", "id": "r", "turn_id": "t_dead", "last_seq": 2})
        assert (await ws.receive_json(timeout=5))["seq"] == 3
        await ws.send_json({"type": "cancel", "id": "r"})
        # The follower finds the owner dead once the turn has been quiet for ~5 s.
        rest = [await ws.receive_json(timeout=12)]
        assert [(m["type"], m.get("seq")) for m in rest] == [("error", LOST_SEQ)]
        assert rest[0]["error"]["code"] == "DOWNSTREAM_TIMEOUT"
        resumed = await _resume_sse(gw, "t_dead", 2)
        assert [e.id for e in resumed] == ["t_dead:3", f"t_dead:{LOST_SEQ}"]
        await ws.close()


async def test_ws_cancel_elsewhere_while_the_owner_still_has_a_listener(
        redis_url: str, start_agent: Callable[..., Any],
        chat_gateway: Callable[..., Any]) -> None:
    """The turn's first socket still listens on its own process; a second socket on
    another process resumes it and cancels: the turn stops where it runs, both sockets get
    its one done cancelled."""
    agent = await start_agent(tokens=400, tokens_per_s=20.0)
    first_gw = await chat_gateway(agent, redis_url=redis_url)
    second_gw = await chat_gateway(agent, redis_url=redis_url)
    owner_ws = await _connect(first_gw)
    await owner_ws.send_json({"type": "chat", "id": "c", "message": "two screens"})
    turn_id = (await owner_ws.receive_json(timeout=5))["turn_id"]
    ws = await _connect(second_gw)
    await ws.send_json({"type": "resume", "id": "r", "turn_id": turn_id, "last_seq": 1})
    await ws.receive_json(timeout=5)
    await ws.send_json({"type": "cancel", "id": "r"})
    here, there = await _until_end(ws, "r"), await _until_end(owner_ws, "c")
    assert here[-1]["finish_reason"] == there[-1]["finish_reason"] == "cancelled"
    assert here[-1]["seq"] == there[-1]["seq"]
    assert "usage" in here[-1]
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 3.0)
    await ws.close()
    await owner_ws.close()


async def test_ws_largest_valid_chat_fits_in_a_frame(start_agent: Callable[..., Any],
                                                     chat_gateway: Callable[..., Any]) -> None:
    """A chat at the limits (32768 four-byte characters, a 60 KB context) is a turn, not a
    1009 close of the whole socket; a context over 64 KB of UTF-8 is refused on its own."""
    agent = await start_agent(tokens=2)
    client = await chat_gateway(agent)
    ws = await _connect(client)
    context = {"pad": "a" * 60_000}
    await ws.send_json({"type": "chat", "id": "big", "message": "\U0001F600" * 32768,
                        "context": context}, dumps=lambda v: json.dumps(v, ensure_ascii=False))
    assert (await _until_end(ws, "big"))[-1]["type"] == "done"
    # The same limits as plain json.dumps writes them (every character escaped).
    await ws.send_json({"type": "chat", "id": "esc", "message": "\U0001F600" * 32768,
                        "context": {"pad": "\u00e9" * 32_000}})
    assert (await _until_end(ws, "esc"))[-1]["type"] == "done"
    # Two-byte characters count as two bytes: ~40 KB of UTF-8 passes, ~66 KB does not.
    await ws.send_json({"type": "chat", "id": "ok", "message": "hi",
                        "context": {"pad": "\u00e9" * 20_000}})
    assert (await _until_end(ws, "ok"))[-1]["type"] == "done"
    await ws.send_json({"type": "chat", "id": "no", "message": "hi",
                        "context": {"pad": "\u00e9" * 33_000}})
    refused = await ws.receive_json(timeout=5)
    assert refused["id"] == "no" and refused["error"]["code"] == "VALIDATION_ERROR"
    for bad in ("NaN", "1e999"):  # 1e999 would be forwarded as Infinity
        await ws.send_str('{"type": "chat", "id": "n", "message": "hi", "context": {"x": '
                          + bad + "}}")
        assert (await ws.receive_json(timeout=5))["error"]["code"] == "VALIDATION_ERROR"
    await ws.close()


async def test_ws_chat_needs_the_chat_scope(start_agent: Callable[..., Any],
                                            chat_gateway: Callable[..., Any]) -> None:
    """A socket whose principal lacks chat:write gets INSUFFICIENT_SCOPE for chat and
    resume, as the HTTP chat routes answer 403; the agent is never asked."""
    agent = await start_agent(tokens=2)
    client = await chat_gateway(agent)
    ws: ClientWebSocketResponse = await client.ws_connect(
        "/v1/ws", headers=bearer("alice", scopes=("events:publish",)))
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    await ws.send_json({"type": "chat", "id": "c", "message": "hi"})
    await ws.send_json({"type": "resume", "id": "r", "turn_id": "t_x", "last_seq": 0})
    for expected_id in ("c", "r"):
        msg = await ws.receive_json(timeout=5)
        assert msg["id"] == expected_id and msg["error"]["code"] == "INSUFFICIENT_SCOPE"
    assert agent.log.streams == []
    await ws.close()


async def test_ws_id_of_a_running_turn_is_a_validation_error(
        start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]) -> None:
    """Reusing the id of a running turn is the client's mistake (VALIDATION_ERROR), not
    the gateway's (INTERNAL_ERROR); the running turn goes on."""
    agent = await start_agent(tokens=50, tokens_per_s=50.0)
    client = await chat_gateway(agent)
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "c", "message": "hi"})
    await ws.send_json({"type": "chat", "id": "c", "message": "again"})
    msgs = [await ws.receive_json(timeout=5)]
    while msgs[-1]["type"] != "done":
        msgs.append(await ws.receive_json(timeout=5))
    errors = [m for m in msgs if m["type"] == "error"]
    assert [e["error"]["code"] for e in errors] == ["VALIDATION_ERROR"]
    assert "turn_id" not in errors[0]  # not an event of the running turn
    assert [m["type"] for m in msgs].count("done") == 1
    await ws.close()


async def test_ws_chat_turns_count_against_the_rate_limit(start_agent: Callable[..., Any],
                                                          chat_gateway: Callable[..., Any]
                                                          ) -> None:
    """Each WS chat turn is charged like a POST /v1/chat/stream: once the per-minute window
    is spent a turn is refused with RATE_LIMIT_EXCEEDED (tagged with its id), the socket
    stays open and the agent is not asked."""
    agent = await start_agent(tokens=1)
    client = await chat_gateway(agent, ratelimit={"enabled": True, "per_min": 4})
    ws = await _connect(client)  # the handshake is one request of the four
    # A turn refused before it starts (acting for another user without the scope) is free.
    await ws.send_json({"type": "chat", "id": "other", "message": "hi", "user_id": "bob"})
    assert (await ws.receive_json(timeout=5))["error"]["code"] == "INSUFFICIENT_SCOPE"
    for i in range(3):
        await ws.send_json({"type": "chat", "id": f"c{i}", "message": "hi"})
        assert (await _until_end(ws, f"c{i}"))[-1]["type"] == "done"
    await ws.send_json({"type": "chat", "id": "over", "message": "hi"})
    refused = await ws.receive_json(timeout=5)
    assert refused["id"] == "over"
    assert refused["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert refused["error"]["details"]["policy"] == "minute"
    assert len(agent.log.streams) == 3
    await ws.send_json({"type": "ping", "id": "p"})
    assert (await ws.receive_json(timeout=5))["type"] == "pong"
    await ws.close()


async def test_an_agent_token_with_a_lone_surrogate_reaches_ws_clients(
        upstream: Callable[..., Any], gateway: Callable[..., Any]) -> None:
    """A token whose JSON holds a lone surrogate escape (no UTF-8 form) goes out escaped as
    the agent sent it, on WS as on SSE: it failed the whole turn with INTERNAL_ERROR (and
    every other stream of it) when the WS frame was encoded."""
    async def odd(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: token\ndata: {"text": "bad \\ud800 x"}\n\n'
                             b'event: done\ndata: {"finish_reason": "stop"}\n\n')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/stream", odd)
    client = await gateway(upstreams={"agent": await upstream(app)})
    ws = await _connect(client)
    await ws.send_json({"type": "chat", "id": "c", "message": "hi"})
    frames = []
    while not frames or json.loads(frames[-1])["type"] not in ("done", "error"):
        frames.append(await ws.receive_str(timeout=5))
    assert [json.loads(f)["type"] for f in frames] == ["token", "done"]
    assert '"bad \\ud800 x"' in frames[0] and json.loads(frames[0])["text"] == "bad \ud800 x"
    await ws.close()
