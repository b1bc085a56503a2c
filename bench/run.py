"""``python -m bench.run --quick|--full``: run the scenarios, write JSON, regenerate BENCHMARKS.md.

Every scenario writes ``bench/results/<date>-<scenario>.json`` (machine facts, versions,
every run's raw numbers). This process pins itself to the load core; servers under test get
the other core alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import json
import os
import sys
import time
from pathlib import Path

from .context import Context
from .machine import machine_facts
from .procs import REPO, cpu_count, raise_fd_limit
from .profile import PROFILES

SCENARIOS = ("proxy", "fanout", "memory", "chat", "ratelimit")
RESULTS = REPO / "bench" / "results"
REPORT = REPO / "BENCHMARKS.md"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_const", const="quick", dest="profile",
                       help="~2 minutes at small scale (default)")
    scale.add_argument("--full", action="store_const", const="full", dest="profile",
                       help="the published run (up to ~20 minutes)")
    scale.add_argument("--smoke", action="store_const", const="smoke", dest="profile",
                       help="tiny scale, ~1 s per scenario (the harness test)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only these (repeatable)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--report", type=Path, default=REPORT,
                        help="Markdown report to regenerate ('-' for none)")
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load generator")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    args.profile = args.profile or "quick"
    return args


def _pin_self(ctx: Context) -> None:
    if ctx.load_core is not None:
        os.sched_setaffinity(0, {ctx.load_core})


def _warn_if_confined() -> None:
    """Say so when this process may use fewer cores than the machine has (``taskset -c 1
    python -m bench.run`` confines every server it starts to that core as well)."""
    allowed, online = cpu_count(), os.cpu_count() or 1
    if allowed < min(2, online):
        print(f"bench: WARNING: this process may run on {allowed} of {online} cores "
              "(started under taskset or in a small cpuset?): the servers under test cannot "
              "get a core of their own, so every server, load generator and upstream shares "
              "one core and the figures are not comparable with a pinned run. Run it "
              "without taskset.", file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> list[Path]:
    _warn_if_confined()
    ctx = Context.create(PROFILES[args.profile], allow_wrk=not args.no_wrk)
    _pin_self(ctx)
    raise_fd_limit()
    facts = machine_facts(ctx)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    written: list[Path] = []
    for name in args.scenario or SCENARIOS:
        module = importlib.import_module(f"bench.scenarios.{name}")
        print(f"bench: {name} ({ctx.profile.name}) ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        result = await module.run(ctx)
        result.started = started
        result.finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        result.machine = facts
        path = args.results_dir / f"{stamp}-{name}.json"
        path.write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n")
        written.append(path)
        states = ", ".join(f"{c.name}={c.status}" for c in result.contenders.values())
        print(f"bench: {name} done in {time.monotonic() - t0:.0f} s: {states}",
              file=sys.stderr, flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = _parse(argv)
    try:
        import uvloop

        written = uvloop.run(_run(args))
    except ImportError:
        written = asyncio.run(_run(args))
    if str(args.report) != "-":
        from .report import latest_results, write_report

        # Scenarios not run this time keep their newest results in the report.
        write_report(args.report, latest_results(args.results_dir, SCENARIOS),
                     plot_dir=None if args.no_plots else args.results_dir / "plots")
        print(f"bench: wrote {args.report}", file=sys.stderr)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
