"""Profile a contender under load with py-spy: ``python -m bench.profiling proxy gw-full``.

Starts the contender exactly as the scenario does, loads it, samples it with
``py-spy record --format raw`` (collapsed stacks) and prints the functions with the largest
inclusive and self share of samples. Used to write the analysis in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .context import Context
from .procs import Server, raise_fd_limit, start_server
from .profile import QUICK
from .redis import redis_server


def _samples(collapsed: str) -> Iterator[tuple[list[str], int]]:
    """(stack frames, sample count) of each line of py-spy's collapsed output."""
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack.split(";"), int(count_text)


def top_frames(collapsed: str, limit: int = 25) -> tuple[list[tuple[str, float]],
                                                          list[tuple[str, float]]]:
    """(inclusive, self) shares of samples per frame from py-spy's collapsed output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for frames, count in _samples(collapsed):
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return [], []
    return ([(f, n / total) for f, n in inclusive.most_common(limit)],
            [(f, n / total) for f, n in own.most_common(limit)])


def self_by_package(collapsed: str) -> list[tuple[str, float]]:
    """Self share of samples per top-level package (luki_gateway, aiohttp, redis, ...)."""
    own: Counter[str] = Counter()
    total = 0
    for frames, count in _samples(collapsed):
        total += count
        leaf = frames[-1]
        where = leaf[leaf.rfind("(") + 1:].split("/")[0] if "(" in leaf else "?"
        own[where] += count
    return [(pkg, n / total) for pkg, n in own.most_common(15)] if total else []


def _py_spy() -> str:
    """py-spy beside this interpreter (the virtualenv's bin/, often not on PATH), else PATH's."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


async def _record(server: Server, seconds: float) -> tuple[asyncio.subprocess.Process, str]:
    """Start py-spy sampling ``server`` for ``seconds`` (collapsed stacks); its output path."""
    out = tempfile.mktemp(suffix=".txt")
    spy = await asyncio.create_subprocess_exec(
        _py_spy(), "record", "--format", "raw", "--nonblocking", "-r", "200", "-d",
        str(int(seconds)), "-o", out, "-p", str(server.pid),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return spy, out


async def _load_proxy(ctx: Context, name: str, seconds: float) -> tuple[Server, str]:
    from .scenarios import proxy

    upstream = await proxy.start_upstream(ctx, ctx.load_core)
    redis = await start_server(redis_server(ctx.load_core))
    t = await proxy.start_contender(name, ctx, upstream, redis)
    spy, out = await _record(t.server, seconds)
    try:
        await proxy.closed_run(ctx, t, seconds + 1, 64)
        await spy.wait()
    finally:
        t.stop()
        upstream.stop()
        redis.stop()
    return t.server, out


async def _load_chat(ctx: Context, name: str, seconds: float) -> tuple[Server, str]:
    from .chatload import concurrent_turns
    from .procs import free_port, python_cmd
    from .scenarios import chat

    port = free_port()
    agent = await start_server(Server("agent", python_cmd(
        "bench.agent_server", "--port", str(port), "--tokens", "40", "--tokens-per-s", "20"),
        port, ctx.load_core))
    relay = await chat._start(name, ctx, agent)
    assert relay.server is not None
    spy, out = await _record(relay.server, seconds)
    try:
        while spy.returncode is None:
            await concurrent_turns(relay.port, chat.PATH, relay.headers, 200, 30)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.wait(), 0.01)
    finally:
        relay.stop()
        agent.stop()
    return relay.server, out


def _consume(path: Path) -> str:
    text = path.read_text()
    path.unlink()
    return text


async def main_async(args: argparse.Namespace) -> int:
    """Load, sample, print."""
    if shutil.which(_py_spy()) is None:
        print("py-spy is not installed (make bench installs it: pip install py-spy)",
              file=sys.stderr)
        return 1
    ctx = Context.create(QUICK)
    loader = _load_proxy if args.scenario == "proxy" else _load_chat
    _, out = await loader(ctx, args.contender, args.seconds)
    text = await asyncio.to_thread(_consume, Path(out))
    inclusive, own = top_frames(text, args.top)
    print(f"== {args.scenario}/{args.contender}: inclusive share of samples")
    for frame, share in inclusive:
        print(f"{share * 100:5.1f}%  {frame}")
    print("== self share")
    for frame, share in own:
        print(f"{share * 100:5.1f}%  {frame}")
    print("== self share by package")
    for pkg, share in self_by_package(text):
        print(f"{share * 100:5.1f}%  {pkg}")
    return 0


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.profiling")
    parser.add_argument("scenario", choices=["proxy", "chat"])
    parser.add_argument("contender")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    raise_fd_limit()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
