"""Pieces of the benchmark harness against real servers: load generators, stats, profiles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bench.run as bench_run
from aiohttp import web
from bench.gateway import Unavailable
from bench.httpload import build_request, closed_loop, fetch, open_loop
from bench.profiling import self_by_package, top_frames
from bench.record import Contender, guarded
from bench.report import _machine
from bench.scenarios.chat import turn_orders
from bench.stats import percentile, summary


def _app() -> web.Application:
    async def fixed(request: web.Request) -> web.Response:
        return web.Response(body=b"fixed-body")

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for part in (b"one-", b"two-", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, body=b"down")

    app = web.Application()
    app.router.add_get("/fixed", fixed)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/broken", broken)
    return app


async def test_fetch_reads_length_and_chunked_bodies(aiohttp_server: Callable[..., Any]
                                                     ) -> None:
    """The raw client parses Content-Length and chunked responses to the exact body."""
    server = await aiohttp_server(_app())
    host = f"127.0.0.1:{server.port}"
    assert await fetch(server.port, build_request("GET", "/fixed", host)) == (200, b"fixed-body")
    assert await fetch(server.port, build_request("GET", "/chunked", host)) == (
        200, b"one-two-three")


async def test_closed_loop_counts_answers_and_flags_wrong_ones(
        aiohttp_server: Callable[..., Any]) -> None:
    """Closed loop counts every answer; non-2xx and unexpected bodies are counted apart."""
    server = await aiohttp_server(_app())
    host = f"127.0.0.1:{server.port}"
    good = await closed_loop(server.port, build_request("GET", "/fixed", host), connections=4,
                             duration_s=0.3, expect_body=b"fixed-body")
    assert good.requests > 10 and good.errors == 0 and good.non_2xx == 0
    assert good.bad_bodies == 0 and len(good.latencies_s) == good.requests
    wrong = await closed_loop(server.port, build_request("GET", "/fixed", host), connections=2,
                              duration_s=0.2, expect_body=b"other")
    assert wrong.bad_bodies == wrong.requests > 0
    down = await closed_loop(server.port, build_request("GET", "/broken", host), connections=2,
                             duration_s=0.2)
    assert down.non_2xx == down.requests > 0 and down.statuses.keys() == {503}


async def test_open_loop_sends_at_the_rate_and_counts_a_dead_server_as_errors(
        aiohttp_server: Callable[..., Any]) -> None:
    """Open loop sends rate x duration requests; a closed port yields errors, not latencies."""
    server = await aiohttp_server(_app())
    host = f"127.0.0.1:{server.port}"
    res = await open_loop(server.port, build_request("GET", "/fixed", host), rate=200,
                          duration_s=0.5, expect_body=b"fixed-body")
    assert res.requests == 100 and res.errors == 0
    port = server.port
    await server.close()
    dead = await open_loop(port, build_request("GET", "/fixed", host), rate=100, duration_s=0.2)
    assert dead.requests == 0 and dead.errors == 20


async def test_guarded_turns_failures_into_statuses() -> None:
    """A missing tool or feature marks a contender unavailable; a crash marks it failed."""
    c1, c2, c3 = Contender("a", "A"), Contender("b", "B"), Contender("c", "C")

    async def missing() -> None:
        raise FileNotFoundError("nginx is not installed")

    async def not_built() -> None:
        raise Unavailable("route answered 404")

    async def crash() -> None:
        raise ZeroDivisionError("boom")

    await guarded(c1, missing)
    await guarded(c2, not_built)
    await guarded(c3, crash)
    assert (c1.status, c1.reason) == ("unavailable", "nginx is not installed")
    assert (c2.status, c2.reason) == ("unavailable", "route answered 404")
    assert c3.status == "failed" and "ZeroDivisionError: boom" in c3.reason
    ran: list[int] = []

    async def step() -> None:
        ran.append(1)

    await guarded(c1, step)
    assert ran == [], "no further steps run for an unavailable contender"


def test_percentiles_and_round_summary() -> None:
    """Nearest-rank percentiles; the summary's spread is (max-min)/median of the rounds."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    s = summary([90.0, 100.0, 110.0])
    assert s["median"] == 100.0 and s["spread"] == 0.2 and s["n"] == 3
    assert summary([])["median"] is None


def test_collapsed_stacks_are_attributed() -> None:
    """py-spy's collapsed stacks give inclusive, self and per-package shares."""
    collapsed = ("main (a/x.py:1);handle (aiohttp/web.py:2);mw (luki_gateway/m.py:3) 3\n"
                 "main (a/x.py:1);handle (aiohttp/web.py:2) 1\n")
    inclusive, own = top_frames(collapsed)
    assert dict(inclusive)["handle (aiohttp/web.py:2)"] == 1.0
    assert dict(own) == {"mw (luki_gateway/m.py:3)": 0.75, "handle (aiohttp/web.py:2)": 0.25}
    assert dict(self_by_package(collapsed)) == {"luki_gateway": 0.75, "aiohttp": 0.25}


def test_a_confined_run_warns_and_says_so_in_the_report(
        monkeypatch: Any, capsys: Any) -> None:
    """Started under ``taskset -c 1`` (one core of two), the runner warns that nothing can
    be pinned apart, and the report names the scenario that ran that way."""
    monkeypatch.setattr(bench_run, "cpu_count", lambda: 1)
    monkeypatch.setattr(bench_run.os, "cpu_count", lambda: 2)
    bench_run._warn_if_confined()
    assert "WARNING: this process may run on 1 of 2 cores" in capsys.readouterr().err
    monkeypatch.setattr(bench_run, "cpu_count", lambda: 2)
    bench_run._warn_if_confined()
    assert capsys.readouterr().err == ""

    pinned = {"server_core": 0, "load_core": 1, "git_commit": "abc"}
    confined = {"server_core": None, "load_core": None, "git_commit": "abc"}
    lines = _machine([{"scenario": "proxy", "machine": pinned},
                      {"scenario": "fanout", "machine": pinned},
                      {"scenario": "chat", "machine": confined}])
    assert "- Pinning: server under test on core 0" in lines[1]
    assert [line for line in lines if line.startswith("  - ")] == [
        "  - `chat`: pinning none: every process on the same core(s), not comparable "
        "with a pinned run"]


def test_chat_turn_order_balances_who_follows_whom() -> None:
    """Over a round each relay follows each other path equally often, whatever the start.

    A relay's turn right after another relay's is slower (shared core, cold caches).
    """
    names = ["agent-direct", "naive-relay", "gw-chat"]
    for rnd in range(3):
        orders = turn_orders(names, rnd, 8)
        assert all(sorted(order) == sorted(names) for order in orders)
        sequence = [name for order in orders for name in order]
        follows: dict[tuple[str, str], int] = {}
        for before, after in zip(sequence, sequence[1:] + sequence[:1], strict=True):
            follows[(after, before)] = follows.get((after, before), 0) + 1
        for name in names:
            counts = [n for (after, _), n in follows.items() if after == name]
            assert len(counts) == 2 and counts[0] == counts[1], (rnd, name, follows)
