"""Resumable turns: reconnect with Last-Event-ID and get every event exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from luki_gateway.devstack.agent import reply_tokens
from luki_gateway.hub.turns import LOST_SEQ, MAX_TURN_STREAMS, TURNS, TurnLost, TurnRegistry
from luki_gateway.settings import ChatSettings
from tests.chat.dead_owner import turn_of_a_dead_process
from tests.chat.sse_client import Received, read_events
from tests.conftest import bearer


def _tokens(events: list[Received]) -> list[str]:
    return [e.data["text"] for e in events if e.event == "token"]


async def _start(client: Any, headers: dict[str, str], n: int) -> tuple[str, list[Received]]:
    """Start a turn and read its first ``n`` events, then drop the connection."""
    resp = await client.post("/v1/chat/stream", json={"message": "tell me"}, headers=headers)
    assert resp.status == 200
    turn_id: str = resp.headers["X-LUKi-Turn-Id"]
    first = await read_events(resp, stop_after=n)
    resp.close()
    return turn_id, first


async def _pair(chat_gateway: Callable[..., Any], agent: Any, redis_url: str,
                chat: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Two gateways sharing one Redis: two processes of one deployment."""
    return (await chat_gateway(agent, redis_url=redis_url, chat=chat),
            await chat_gateway(agent, redis_url=redis_url, chat=chat))


async def _resume_on(client: Any, turn_id: str, seq: int) -> Any:
    """GET the rest of ``turn_id`` after ``seq`` (an SSE reconnect) from ``client``."""
    return await client.get("/v1/chat/stream", params={"turn_id": turn_id},
                            headers={**bearer(), "Last-Event-ID": f"{turn_id}:{seq}"})


async def test_resume_on_the_same_process(backend: str, start_agent: Callable[..., Any],
                                          chat_gateway: Callable[..., Any]) -> None:
    """Disconnect mid-turn, resume with Last-Event-ID: the rest once, in order, one done."""
    agent = await start_agent(tokens=30, tokens_per_s=60.0)
    client = await chat_gateway(agent)
    turn_id, first = await _start(client, bearer(), 5)
    resp = await client.get("/v1/chat/stream", params={"turn_id": turn_id},
                            headers={**bearer(), "Last-Event-ID": f"{turn_id}:5"})
    assert resp.status == 200
    rest = await read_events(resp)
    events = first + rest
    assert [e.id for e in events] == [f"{turn_id}:{i}" for i in range(1, 32)]
    assert _tokens(events) == reply_tokens("tell me", 30)
    assert [e.event for e in events].count("done") == 1
    assert events[-1].data["finish_reason"] == "stop"
    assert agent.log.cancelled == []


async def test_resume_past_the_buffer_size_keeps_the_newest_events(
        backend: str, start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]) -> None:
    """The buffer keeps the newest ``resume_max_events`` (as the Redis copy does): a client
    that dropped late in a long turn gets every event after its last one; one that asks
    for events that fell out gets 404, not a stream with a hole."""
    agent = await start_agent(tokens=30, tokens_per_s=200.0)
    client = await chat_gateway(agent, chat={"resume_max_events": 8})
    turn_id, first = await _start(client, bearer(), 26)
    resp = await _resume_on(client, turn_id, 26)
    assert resp.status == 200
    events = first + await asyncio.wait_for(read_events(resp), 10)
    assert [e.id for e in events] == [f"{turn_id}:{i}" for i in range(1, 32)]
    assert _tokens(events) == reply_tokens("tell me", 30)
    # Seq 2..23 fell out of the buffer (31 events, 8 kept): resuming after 1 cannot be whole.
    gone = await _resume_on(client, turn_id, 1)
    assert gone.status == 404 and (await gone.json())["error"]["code"] == "NOT_FOUND"
    # After 23 is the oldest point the buffer still covers.
    resp = await _resume_on(client, turn_id, 23)
    assert resp.status == 200
    rest = await asyncio.wait_for(read_events(resp), 10)
    assert [e.id for e in rest] == [f"{turn_id}:{i}" for i in range(24, 32)]


async def test_resume_on_another_app_sharing_redis(redis_url: str,
                                                   start_agent: Callable[..., Any],
                                                   chat_gateway: Callable[..., Any]) -> None:
    """A second gateway on the same Redis resumes a turn the first one is running."""
    agent = await start_agent(tokens=40, tokens_per_s=50.0)
    first_gw = await chat_gateway(agent, redis_url=redis_url, chat={"resume_grace_s": 0.3})
    second_gw = await chat_gateway(agent, redis_url=redis_url, chat={"resume_grace_s": 0.3})
    turn_id, first = await _start(first_gw, bearer(), 4)
    resp = await second_gw.get("/v1/chat/stream", params={"turn_id": turn_id},
                               headers={**bearer(), "Last-Event-ID": f"{turn_id}:4"})
    assert resp.status == 200
    rest = await read_events(resp)
    events = first + rest
    assert [e.id for e in events] == [f"{turn_id}:{i}" for i in range(1, 42)]
    assert _tokens(events) == reply_tokens("tell me", 40)
    assert events[-1].event == "done" and events[-1].data["finish_reason"] == "stop"
    # The remote follower kept the turn alive past the first process's grace period.
    assert agent.log.cancelled == []


async def test_resume_a_finished_turn_from_redis(redis_url: str,
                                                 start_agent: Callable[..., Any],
                                                 chat_gateway: Callable[..., Any]) -> None:
    """A turn that ended meanwhile replays its missed tail and its done from Redis."""
    agent = await start_agent(tokens=6, tokens_per_s=200.0)
    first_gw = await chat_gateway(agent, redis_url=redis_url)
    second_gw = await chat_gateway(agent, redis_url=redis_url)
    turn_id, _ = await _start(first_gw, bearer(), 2)
    await agent.log.wait_for(lambda log: not log.running, 3.0)
    resp = await second_gw.get("/v1/chat/stream", params={"turn_id": turn_id},
                               headers={**bearer(), "Last-Event-ID": f"{turn_id}:2"})
    rest = await read_events(resp)
    assert [e.id for e in rest] == [f"{turn_id}:{i}" for i in range(3, 8)]
    assert rest[-1].event == "done"


async def test_only_the_owner_may_resume(backend: str, start_agent: Callable[..., Any],
                                         chat_gateway: Callable[..., Any]) -> None:
    """Another principal gets 403, an unknown turn 404, a malformed Last-Event-ID 400."""
    agent = await start_agent(tokens=20, tokens_per_s=50.0)
    client = await chat_gateway(agent)
    turn_id, _ = await _start(client, bearer("alice"), 1)
    resp = await client.get("/v1/chat/stream", params={"turn_id": turn_id},
                            headers=bearer("mallory"))
    assert resp.status == 403
    resp = await client.get("/v1/chat/stream", params={"turn_id": "t_nothere"},
                            headers=bearer("alice"))
    assert resp.status == 404
    resp = await client.get("/v1/chat/stream", params={"turn_id": turn_id},
                            headers={**bearer("alice"), "Last-Event-ID": "other:3"})
    assert resp.status == 400


async def test_other_principal_cannot_resume_remotely(redis_url: str,
                                                      start_agent: Callable[..., Any],
                                                      chat_gateway: Callable[..., Any]) -> None:
    """The owner check holds on another process too (the owner is kept in Redis)."""
    agent = await start_agent(tokens=20, tokens_per_s=50.0)
    first_gw = await chat_gateway(agent, redis_url=redis_url)
    second_gw = await chat_gateway(agent, redis_url=redis_url)
    turn_id, _ = await _start(first_gw, bearer("alice"), 1)
    resp = await second_gw.get("/v1/chat/stream", params={"turn_id": turn_id},
                               headers=bearer("mallory"))
    assert resp.status == 403


async def test_abandoned_turn_is_cancelled_after_grace(backend: str,
                                                       start_agent: Callable[..., Any],
                                                       chat_gateway: Callable[..., Any]
                                                       ) -> None:
    """Nobody comes back: after the grace period the upstream is cancelled, and a late
    resume sees the turn's end as done client_gone."""
    agent = await start_agent(tokens=500, tokens_per_s=50.0)
    client = await chat_gateway(agent, chat={"resume_grace_s": 0.3})
    turn_id, _ = await _start(client, bearer(), 2)
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 3.0)
    resp = await client.get("/v1/chat/stream", params={"turn_id": turn_id},
                            headers={**bearer(), "Last-Event-ID": f"{turn_id}:2"})
    events = await read_events(resp)
    assert events[-1].event == "done"
    assert events[-1].data["finish_reason"] == "client_gone"
    assert [e.event for e in events].count("done") == 1


async def test_redis_down_does_not_stop_the_relay(redis_server: Any, redis_url: str,
                                                  start_agent: Callable[..., Any],
                                                  chat_gateway: Callable[..., Any]) -> None:
    """With Redis frozen the live stream still completes; a remote resume is a clean 503."""
    agent = await start_agent(tokens=10, tokens_per_s=100.0)
    first_gw = await chat_gateway(agent, redis_url=redis_url)
    second_gw = await chat_gateway(agent, redis_url=redis_url)
    redis_server.pause()
    try:
        resp = await first_gw.post("/v1/chat/stream", json={"message": "hi"},
                                   headers=bearer())
        events = await read_events(resp)
        assert [e.event for e in events] == ["token"] * 10 + ["done"]
        resp = await second_gw.get("/v1/chat/stream", params={"turn_id": "t_abc"},
                                   headers=bearer())
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "DOWNSTREAM_UNAVAILABLE"
    finally:
        redis_server.resume()


async def test_eventsource_reconnect_resumes_the_turn(backend: str,
                                                    start_agent: Callable[..., Any],
                                                    chat_gateway: Callable[..., Any]) -> None:
    """An EventSource comes back to the URL that started the turn, with Last-Event-ID: it
    gets the rest of that turn (not the question asked again), and once it has the done,
    204 (which tells EventSource to stop reconnecting)."""
    agent = await start_agent(tokens=30, tokens_per_s=60.0)
    client = await chat_gateway(agent)
    url = {"message": "tell me"}
    resp = await client.get("/v1/chat/stream", params=url, headers=bearer())
    turn_id = resp.headers["X-LUKi-Turn-Id"]
    first = await read_events(resp, stop_after=5)
    resp.close()
    resp = await client.get("/v1/chat/stream", params=url,
                            headers={**bearer(), "Last-Event-ID": f"{turn_id}:5"})
    assert resp.status == 200 and resp.headers["X-LUKi-Turn-Id"] == turn_id
    events = first + await read_events(resp)
    assert [e.id for e in events] == [f"{turn_id}:{i}" for i in range(1, 32)]
    assert _tokens(events) == reply_tokens("tell me", 30)
    assert [e.event for e in events].count("done") == 1
    # The reconnect after the done, on either URL: nothing more, and no new turn.
    for params in (url, {"turn_id": turn_id}):
        resp = await client.get("/v1/chat/stream", params=params,
                                headers={**bearer(), "Last-Event-ID": f"{turn_id}:31"})
        assert resp.status == 204
        assert await resp.read() == b""
    assert len(agent.log.streams) == 1


async def test_reconnect_refusals(backend: str, start_agent: Callable[..., Any],
                                  chat_gateway: Callable[..., Any]) -> None:
    """A reconnect with a malformed Last-Event-ID is a 400, to an unknown turn a 404, to
    another principal's turn a 403; none of them starts a turn."""
    agent = await start_agent(tokens=20, tokens_per_s=50.0)
    client = await chat_gateway(agent)
    turn_id, _ = await _start(client, bearer("alice"), 1)
    url = {"message": "again"}
    for last_event_id, sub, status, code in (
            ("garbage", "alice", 400, "VALIDATION_ERROR"),
            (f"{turn_id}:x", "alice", 400, "VALIDATION_ERROR"),
            (":3", "alice", 400, "VALIDATION_ERROR"),
            (f"{turn_id}:\u00b2", "alice", 400, "VALIDATION_ERROR"),  # a digit, not ASCII
            (f"{turn_id}:\uff13", "alice", 400, "VALIDATION_ERROR"),
            ("t_nothere:3", "alice", 404, "NOT_FOUND"),
            (f"{turn_id}:1", "mallory", 403, "FORBIDDEN")):
        resp = await client.get("/v1/chat/stream", params=url,
                                headers={**bearer(sub), "Last-Event-ID": last_event_id})
        assert resp.status == status, last_event_id
        assert (await resp.json())["error"]["code"] == code, last_event_id
    assert len(agent.log.streams) == 1


async def test_reconnect_after_the_end_on_another_app(redis_url: str,
                                                      start_agent: Callable[..., Any],
                                                      chat_gateway: Callable[..., Any]
                                                      ) -> None:
    """A turn another process finished: a reconnect that has its done gets 204 at once
    (not an open stream waiting for events that never come)."""
    agent = await start_agent(tokens=3, tokens_per_s=200.0)
    first_gw = await chat_gateway(agent, redis_url=redis_url)
    second_gw = await chat_gateway(agent, redis_url=redis_url)
    resp = await first_gw.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    events = await read_events(resp)
    turn_id = resp.headers["X-LUKi-Turn-Id"]
    assert events[-1].event == "done" and events[-1].id == f"{turn_id}:4"
    for params in ({"turn_id": turn_id}, {"message": "hi"}):
        resp = await second_gw.get("/v1/chat/stream", params=params,
                                   headers={**bearer(), "Last-Event-ID": f"{turn_id}:4"})
        assert resp.status == 204
    # One event short of the end: that event, from Redis.
    resp = await second_gw.get("/v1/chat/stream", params={"message": "hi"},
                               headers={**bearer(), "Last-Event-ID": f"{turn_id}:3"})
    assert [e.id for e in await read_events(resp)] == [f"{turn_id}:4"]
    assert len(agent.log.streams) == 1


async def test_remote_follower_that_has_the_end_stops(redis_url: str) -> None:
    """Following a turn kept in Redis from after its terminal event yields nothing and
    ends at once, instead of waiting for events until the idle timeout."""
    redis = aioredis.Redis.from_url(redis_url)
    registry = TurnRegistry(ChatSettings(), redis, "lgw:")
    try:
        turn = registry.create("t_finished", "alice")
        turn.publish("token", b'{"text": "a"}', "a")
        turn.publish("done", b'{"finish_reason": "stop"}', {"finish_reason": "stop"})
        await registry.flush()
        assert await registry.remote_end("t_finished") == 2
        async with asyncio.timeout(2):
            assert [e.seq async for e in registry.remote_events("t_finished", "alice", 1)] == [2]
            assert [e async for e in registry.remote_events("t_finished", "alice", 2)] == []
        live = registry.create("t_live", "alice")
        live.publish("token", b'{"text": "a"}', "a")
        await registry.flush()
        assert await registry.remote_end("t_live") is None
    finally:
        await redis.aclose()


async def test_remote_resume_waits_through_a_quiet_agent(redis_url: str,
                                                         start_agent: Callable[..., Any],
                                                         chat_gateway: Callable[..., Any]
                                                         ) -> None:
    """Following from another process while the agent is silent for longer than a Redis
    call may take (0.2 s): the follower keeps waiting and gets the rest, not an error."""
    agent = await start_agent(tokens=4, tokens_per_s=2.0)
    first_gw, second_gw = await _pair(chat_gateway, agent, redis_url)
    turn_id, first = await _start(first_gw, bearer(), 1)
    resp = await _resume_on(second_gw, turn_id, 1)
    assert resp.status == 200
    events = first + await read_events(resp)
    assert [e.id for e in events] == [f"{turn_id}:{i}" for i in range(1, 6)]
    assert _tokens(events) == reply_tokens("tell me", 4)
    assert events[-1].event == "done" and events[-1].data["finish_reason"] == "stop"


async def test_remote_follower_that_leaves_lets_the_turn_go(redis_url: str,
                                                            start_agent: Callable[..., Any],
                                                            chat_gateway: Callable[..., Any]
                                                            ) -> None:
    """A client that resumed on another process and left again: that process stops
    following, so the owner abandons the turn after its grace period."""
    agent = await start_agent(tokens=400, tokens_per_s=10.0)
    first_gw, second_gw = await _pair(chat_gateway, agent, redis_url, {"resume_grace_s": 0.3})
    turn_id, _ = await _start(first_gw, bearer(), 2)
    resp = await _resume_on(second_gw, turn_id, 2)
    assert [e.id for e in await read_events(resp, stop_after=3)] == [
        f"{turn_id}:{i}" for i in (3, 4, 5)]
    resp.close()
    # The follower's watch key lives 3 s after its last refresh; then the grace runs out.
    await agent.log.wait_for(lambda log: len(log.cancelled) == 1, 6.0)


async def test_a_follower_that_loses_redis_says_so_without_skipping(
        redis_server: Any, redis_url: str, start_agent: Callable[..., Any],
        chat_gateway: Callable[..., Any]) -> None:
    """Redis freezes while another process follows a turn: its client gets an error
    numbered like the last event it got, so a later resume from that id misses nothing."""
    agent = await start_agent(tokens=100, tokens_per_s=20.0)
    first_gw, second_gw = await _pair(chat_gateway, agent, redis_url)
    turn_id, _ = await _start(first_gw, bearer(), 2)
    resp = await _resume_on(second_gw, turn_id, 2)
    got = await read_events(resp, stop_after=2)
    redis_server.pause()
    try:
        got += await read_events(resp)
    finally:
        redis_server.resume()
    assert got[-1].event == "error"
    assert got[-1].data["error"]["code"] == "DOWNSTREAM_UNAVAILABLE"
    assert got[-1].id == got[-2].id  # not the id of an event it never got
    assert [e.event for e in got[:-1]] == ["token"] * (len(got) - 1)


@pytest.mark.parametrize("client_has", [3, 5])
async def test_a_turn_whose_process_died_ends_once_for_everyone(
        client_has: int, redis_url: str, start_agent: Callable[..., Any],
        chat_gateway: Callable[..., Any]) -> None:
    """The process running a turn dies (here: a registry that stops writing, its last
    events maybe never flushed): the follower's client gets one error with a new id, and a
    reconnect with that id gets 204 — not the same error again after another wait."""
    async with turn_of_a_dead_process(redis_url):
        agent = await start_agent()
        gw = await chat_gateway(agent, redis_url=redis_url,
                                chat={"idle_timeout_s": 0.3, "resume_grace_s": 0.2})
        async with asyncio.timeout(10):
            resp = await _resume_on(gw, "t_dead", client_has)
            events = await read_events(resp)
        # Its id is past any event the dead process may have sent without storing it.
        assert [(e.event, e.id) for e in events] == [("error", f"t_dead:{LOST_SEQ}")]
        assert events[0].data["error"]["code"] == "DOWNSTREAM_TIMEOUT"
        assert (await _resume_on(gw, "t_dead", LOST_SEQ)).status == 204
        # A client further behind, or one that had more from the dead process than it
        # stored, gets the kept events it misses, then the same single end.
        for seq, ids in ((1, ["t_dead:2", "t_dead:3"]), (40, [])):
            resp = await _resume_on(gw, "t_dead", seq)
            assert [e.id for e in await read_events(resp)] == [*ids, f"t_dead:{LOST_SEQ}"]


async def test_a_turn_whose_process_died_before_its_first_event_ends_once(
        redis_url: str, start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]
        ) -> None:
    """The owner died before any event reached Redis (only its record did): the follower's
    error is stored all the same, so the reconnect after it gets 204."""
    redis = aioredis.Redis.from_url(redis_url)
    owner = TurnRegistry(ChatSettings(), redis, "lgw:")
    try:
        owner.create("t_silent", "jwt:alice")
        await owner.flush()
        agent = await start_agent()
        gw = await chat_gateway(agent, redis_url=redis_url,
                                chat={"idle_timeout_s": 0.3, "resume_grace_s": 0.2})
        async with asyncio.timeout(10):
            events = await read_events(await _resume_on(gw, "t_silent", 0))
        assert [(e.event, e.id) for e in events] == [("error", f"t_silent:{LOST_SEQ}")]
        assert (await _resume_on(gw, "t_silent", LOST_SEQ)).status == 204
    finally:
        await redis.aclose()


async def test_a_quiet_turn_that_moves_on_is_not_ended_by_its_follower(
        redis_url: str) -> None:
    """The follower only ends a turn nothing was added to since it looked."""
    redis = aioredis.Redis.from_url(redis_url)
    registry = TurnRegistry(ChatSettings(idle_timeout_s=0.2, resume_grace_s=0.1), redis,
                            "lgw:")
    try:
        turn = registry.create("t_slow", "alice")
        turn.publish("token", b'{"text": "a"}', "a")
        await registry.flush()
        got: list[Any] = []

        async def late_owner() -> None:
            # Quiet for longer than the follower waits, then the owner writes again (it
            # was alive, its Redis writes late): the follower follows on.
            await asyncio.sleep(0.6)
            turn.publish("token", b'{"text": "b"}', "b")
            turn.publish("done", b'{"finish_reason": "stop"}', {"finish_reason": "stop"})
            await registry.flush()

        writer = asyncio.create_task(late_owner())
        stream = registry.stream_key("t_slow")
        async with asyncio.timeout(10):
            entries = await redis.xrange(stream)
            lost_seen = entries[-1][0].decode()
            await writer
            # The stream moved on since "lost_seen": nothing is appended.
            assert not await registry._end_lost("t_slow", TurnLost(lost_seen), b"{}")
            await registry.follow("t_slow", "alice", 1, got.append, "trace")
        assert [(e.seq, e.event) for e in got] == [(2, "token"), (3, "done")]
        assert [f[b"e"] for _, f in await redis.xrange(stream)] == [b"token", b"token",
                                                                     b"done"]
    finally:
        await registry.close()
        await redis.aclose()


async def test_a_follower_that_finds_the_client_has_the_end_closes_the_stream(
        redis_url: str, start_agent: Callable[..., Any], chat_gateway: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The end is stored between the reconnect's check and its following (here: the check
    says no end yet): the follower finds the client has it, and the stream closes empty
    instead of staying open with nothing to come; a WS id is free again."""
    agent = await start_agent(tokens=2, tokens_per_s=200.0)
    first_gw, second_gw = await _pair(chat_gateway, agent, redis_url)
    resp = await first_gw.post("/v1/chat/stream", json={"message": "hi"}, headers=bearer())
    turn_id = resp.headers["X-LUKi-Turn-Id"]
    assert (await read_events(resp))[-1].id == f"{turn_id}:3"

    async def no_end_yet(*_: Any) -> bool:
        return False

    monkeypatch.setattr(TurnRegistry, "has_remote_end", no_end_yet)
    async with asyncio.timeout(5):
        resp = await _resume_on(second_gw, turn_id, 3)
        assert resp.status == 200
        assert await read_events(resp) == []
        ws = await second_gw.ws_connect("/v1/ws", headers=bearer())
        await ws.receive_json()
        for _ in range(2):  # nothing is sent, and the id is not left "still running"
            await ws.send_json({"type": "resume", "id": "r", "turn_id": turn_id,
                                "last_seq": 3})
            await asyncio.sleep(0.5)  # the follower reads Redis, finds the end, stops
            await ws.send_json({"type": "ping", "id": "p"})
            reply = await ws.receive_json()
            assert reply["type"] == "pong", reply
        await ws.close()


async def test_shutdown_ends_a_follower_stream_so_its_client_resumes_elsewhere(
        redis_url: str, start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]
        ) -> None:
    """A process that stops while it relays a turn another process runs ends that stream at
    once (no terminal event: the turn goes on), instead of relaying on until its shutdown
    times out and then cutting it mid-chunk; the client resumes on the other process."""
    agent = await start_agent(tokens=200, tokens_per_s=20.0)
    owner_gw, follower_gw = await _pair(chat_gateway, agent, redis_url)
    turn_id, _ = await _start(owner_gw, bearer(), 2)
    resp = await _resume_on(follower_gw, turn_id, 2)
    assert resp.status == 200
    got = await read_events(resp, stop_after=1)
    async with asyncio.timeout(3):
        closing = asyncio.create_task(follower_gw.server.close())
        got += await read_events(resp)
        await closing
    assert got and all(e.event == "token" for e in got)
    last = int(got[-1].id.rpartition(":")[2])
    resp = await _resume_on(owner_gw, turn_id, last)
    more = await read_events(resp, stop_after=1)
    assert more[0].id == f"{turn_id}:{last + 1}"


async def test_streams_of_one_turn_are_bounded_per_process(
        redis_url: str, start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]
        ) -> None:
    """Resumes share the turn's stream slot, so one process relays a turn to at most
    MAX_TURN_STREAMS streams, here and as a follower of another process: one more is 429
    (it was unbounded: every resume of one slot held a connection, and remotely a Redis
    read)."""
    agent = await start_agent(tokens=400, tokens_per_s=20.0)
    owner_gw, follower_gw = await _pair(chat_gateway, agent, redis_url)
    first = await owner_gw.post("/v1/chat/stream", json={"message": "many screens"},
                                headers=bearer())
    turn_id = first.headers["X-LUKi-Turn-Id"]
    await read_events(first, stop_after=1)
    for gw, already in ((owner_gw, 1), (follower_gw, 0)):
        held = [await _resume_on(gw, turn_id, 0) for _ in range(MAX_TURN_STREAMS - already)]
        assert [r.status for r in held] == [200] * len(held)
        refused = await _resume_on(gw, turn_id, 0)
        assert refused.status == 429
        body = await refused.json()
        assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert body["error"]["details"]["limit"] == MAX_TURN_STREAMS
        held[0].close()  # a stream that ends frees its place
        async with asyncio.timeout(5):
            while (again := await _resume_on(gw, turn_id, 0)).status == 429:  # noqa: ASYNC110 - the server notices the close
                await asyncio.sleep(0.1)
        assert again.status == 200
        for resp in [*held[1:], again]:
            resp.close()
    first.close()


async def test_streams_of_a_finished_turn_are_bounded_too(
        start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]) -> None:
    """A stream of a finished turn holds a connection while it writes (a client that does
    not read holds it long): it takes one of the turn's MAX_TURN_STREAMS places like a
    live one (here the places are taken by hand: such streams end too fast to hold)."""
    agent = await start_agent(tokens=3, tokens_per_s=200.0)
    client = await chat_gateway(agent)
    turn_id, events = await _start(client, bearer(), 10)
    assert events[-1].event == "done"
    registry = client.server.app[TURNS]
    with contextlib.ExitStack() as places:
        for _ in range(MAX_TURN_STREAMS):
            places.enter_context(registry.stream_slot(turn_id))
        assert (await _resume_on(client, turn_id, 0)).status == 429
    resp = await _resume_on(client, turn_id, 0)
    assert [e.event for e in await read_events(resp)][-1] == "done"


async def test_a_resume_elsewhere_past_the_buffer_is_404_before_the_stream(
        redis_url: str, start_agent: Callable[..., Any], chat_gateway: Callable[..., Any]
        ) -> None:
    """On a process that does not run the turn, a resume after events Redis no longer
    keeps is a 404 as on the owner's (an error event after a 200 made an EventSource
    reconnect with the same id every few seconds, for ever)."""
    # Redis trims approximately (whole nodes of 100 entries): a turn of a few hundred.
    agent = await start_agent(tokens=400, tokens_per_s=2000.0)
    owner_gw, other_gw = await _pair(chat_gateway, agent, redis_url,
                                     chat={"resume_max_events": 8})
    turn_id, events = await _start(owner_gw, bearer(), 500)
    assert events[-1].event == "done"
    for gw in (owner_gw, other_gw):
        gone = await _resume_on(gw, turn_id, 2)
        assert gone.status == 404 and (await gone.json())["error"]["code"] == "NOT_FOUND"
        kept = await _resume_on(gw, turn_id, 398)
        rest = [e.id for e in await read_events(kept)]
        assert rest == [f"{turn_id}:{i}" for i in (399, 400, 401)]
