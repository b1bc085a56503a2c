"""Property: whatever the agent and the client do, a turn ends cleanly and nothing leaks.

Random agent behaviour (size, chunking, early close, garbage, stalls, error events, slow
first token, tool calls, missing usage) meets random client behaviour (read to the end,
leave after k events, WS cancel after k events). The client sees either a well-formed
stream ending in exactly one terminal event, or it left; afterwards no turn, relay task,
upstream connection or agent stream is left running.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luki_gateway.app import create_app
from luki_gateway.chat.relay import RELAYS
from luki_gateway.devstack.agent import AGENT_LOG, FAILURES, create_agent_app
from luki_gateway.hub.turns import TURNS
from luki_gateway.settings import load_settings
from luki_gateway.upstream.sessions import UPSTREAMS
from tests.chat.sse_client import read_events
from tests.conftest import bearer

TERMINAL = {"done", "error"}


@dataclass(frozen=True)
class Case:
    """One random meeting of an agent and a client."""

    behaviour: dict[str, Any]
    protocol: str
    transport: str
    leave_after: int | None
    resume: bool


behaviours = st.fixed_dictionaries({
    "tokens": st.integers(0, 8),
    "failure": st.sampled_from(FAILURES),
    "after": st.integers(0, 8),
    "first_token_delay_s": st.sampled_from([0.0, 0.0, 0.5]),
    "tool_call": st.booleans(),
    "report_usage": st.booleans(),
    "chunk_bytes": st.sampled_from([0, 0, 1, 3, 7, 64]),
})
cases = st.builds(Case, behaviour=behaviours, protocol=st.sampled_from(["native", "openai"]),
                  transport=st.sampled_from(["sse", "ws"]),
                  leave_after=st.sampled_from([None, None, None, 0, 1, 2, 4, 6]),
                  resume=st.booleans())


def expected_end(b: dict[str, Any]) -> tuple[str, int]:
    """The oracle: the terminal event's code or finish reason, and the tokens before it."""
    if b["failure"] == "http_error":
        return "DOWNSTREAM_ERROR", 0
    if b["first_token_delay_s"] > 0.3:
        return "DOWNSTREAM_TIMEOUT", 0
    before = min(b["after"], b["tokens"])
    if b["failure"] == "stall":
        return "DOWNSTREAM_TIMEOUT", before
    if b["failure"] != "none":
        return "DOWNSTREAM_ERROR", before
    return ("tool_calls" if b["tool_call"] else "stop"), b["tokens"]


def _check_stream(kinds: list[str], seqs: list[int], last: dict[str, Any], case: Case,
                  may_be_cancelled: bool = False) -> None:
    """Well-formed: tokens/tool calls, then exactly one terminal event, numbered 1..n,
    and the end the agent's behaviour calls for."""
    assert kinds, "no event at all: a silent close"
    assert kinds[-1] in TERMINAL
    assert sum(k in TERMINAL for k in kinds) == 1
    assert set(kinds[:-1]) <= {"token", "tool_call"}
    assert seqs == list(range(1, len(kinds) + 1))
    end = last["error"]["code"] if kinds[-1] == "error" else last["finish_reason"]
    if may_be_cancelled and end == "cancelled":
        return
    code, tokens = expected_end(case.behaviour)
    assert (end, kinds.count("token")) == (code, tokens)
    if kinds[-1] == "done":
        usage = last["usage"]
        assert usage["output_tokens"] == tokens


async def _sse(client: TestClient[Any, Any], case: Case) -> None:
    resp = await client.post("/v1/chat/stream", headers=bearer(),
                             json={"message": "hi there"})
    assert resp.status == 200
    events = await read_events(resp, stop_after=case.leave_after)
    kinds = [e.event for e in events]
    if case.leave_after is not None and (not kinds or kinds[-1] not in TERMINAL):
        resp.close()  # the client leaves mid-turn
        assert sum(k in TERMINAL for k in kinds) == 0
        return
    _check_stream(kinds, [int(str(e.id).rsplit(":", 1)[1]) for e in events], events[-1].data,
                  case)


async def _ws(client: TestClient[Any, Any], case: Case) -> None:
    ws = await client.ws_connect("/v1/ws", headers=bearer())
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    await ws.send_json({"type": "chat", "id": "p", "message": "hi there"})
    kinds: list[str] = []
    seqs: list[int] = []
    cancelled = False
    msg: dict[str, Any] = {}
    while not kinds or kinds[-1] not in TERMINAL:
        msg = json.loads((await ws.receive(timeout=5)).data)
        assert msg["id"] == "p"
        kinds.append(msg["type"])
        seqs.append(msg.get("seq", 0))
        if case.leave_after is not None and len(kinds) >= case.leave_after and not cancelled:
            await ws.send_json({"type": "cancel", "id": "p"})
            cancelled = True
    # A cancel that raced the turn's own end is answered NOT_FOUND, never a second end.
    _check_stream(kinds, seqs, msg, case, may_be_cancelled=cancelled)
    await ws.close()


async def _quiet(check: Any, limit_s: float = 3.0) -> None:
    """Wait for ``check()`` (app state with no event to wait on), bounded by ``limit_s``."""
    async with asyncio.timeout(limit_s):
        while not check():  # noqa: ASYNC110 - polling app state that has no event
            await asyncio.sleep(0.02)


async def run_case(case: Case) -> None:
    """Run one case against a fresh agent and gateway; check the end and the leftovers."""
    agent_app = create_agent_app(tokens_per_s=2000.0, **case.behaviour)
    async with TestServer(agent_app) as agent:
        cfg = load_settings(environ={}, overrides={
            "log_level": "CRITICAL", "access_log": False,
            "ratelimit": {"enabled": False, "max_streams": 0, "max_ws_per_user": 0},
            "upstreams": {"agent": str(agent.make_url("")).rstrip("/")},
            "chat": {"agent_protocol": case.protocol, "first_token_timeout_s": 0.3,
                     "idle_timeout_s": 0.3, "resume": case.resume, "resume_grace_s": 0.1},
        })
        app = create_app(cfg)
        async with TestClient(TestServer(app)) as client:
            await (_sse(client, case) if case.transport == "sse" else _ws(client, case))
            log = agent_app[AGENT_LOG]
            await _quiet(lambda: not log.running)
            await _quiet(lambda: not app[RELAYS] and not app[TURNS].live)
            await _quiet(lambda: app[UPSTREAMS].get("agent").in_use == 0)
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not leftovers, leftovers


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=cases)
def test_every_turn_ends_cleanly(case: Case) -> None:
    """For random agent and client behaviour: one terminal event or a departed client, and
    no turn, task or upstream connection left behind."""
    asyncio.run(run_case(case))
