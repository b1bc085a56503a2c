"""BENCHMARKS.md from the result files: targets, one table per scenario, plots, analysis.

The hand-written analysis lives in ``bench/analysis.md`` and is copied in verbatim, so
regenerating the report never loses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .plots import draw

ANALYSIS = Path(__file__).resolve().parent / "analysis.md"
MARKS = {"pass": "✅ pass", "short-of": "❌ short of", "n/a": "— n/a"}


def _f(value: Any, scale: float = 1.0, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value * scale:,.{digits}f}"


def _ms(value: Any, digits: int = 2) -> str:
    return _f(value, 1e3, digits)


def _x(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _spread(s: dict[str, Any] | None) -> str:
    if not s or s.get("spread") is None:
        return ""
    return f" ±{s['spread'] * 50:.0f}%"


def _med(s: dict[str, Any] | None, scale: float = 1.0, digits: int = 1) -> str:
    if not s:
        return "—"
    return _f(s.get("median"), scale, digits)


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _status(c: dict[str, Any]) -> str:
    if c["status"] == "ok":
        return "ok" if c.get("correct") else f"ok, **answers wrong**: {c.get('reason', '')}"
    return f"{c['status']}: {c.get('reason', '')}"


def _unavailable(result: dict[str, Any]) -> list[str]:
    bad = [c for c in result["contenders"].values() if c["status"] != "ok"]
    if not bad:
        return []
    return ["", "Not measured:", ""] + [f"- `{c['name']}` ({c['label']}): {_status(c)}"
                                        for c in bad]


def _proxy(result: dict[str, Any]) -> list[str]:
    rows = []
    for c in result["contenders"].values():
        s = c["summary"]
        if c["status"] != "ok" or not s:
            continue
        rows.append([f"`{c['name']}` {c['label']}",
                     _med(s["rps"], digits=0) + _spread(s["rps"]),
                     _x(s.get("rps_ratio_to_naive")),
                     _med(s["cpu_us_per_req"]), _med(s["p50_s"], 1e3, 2),
                     _med(s["p99_s"], 1e3, 2), _med(s["p999_s"], 1e3, 2),
                     _med(s.get("fixed_p99_s"), 1e3, 2), _med(s.get("added_p99_s"), 1e3, 2),
                     str(s.get("fixed_errors", "—")), "yes" if c.get("correct") else "NO"])
    p = result["params"]
    return [f"Closed loop: {p.get('load_tool')} at c={p.get('connections')} for "
            f"{p.get('duration_s')} s per round, {p.get('rounds')} interleaved rounds; then "
            f"an open-loop run at {p.get('fixed_rate'):.0f} req/s (latency from the scheduled "
            "send time; 'errors' = requests unanswered, as when a server cannot sustain "
            "the rate). "
            f"Upstream: {p.get('upstream')}. req/s is the median of rounds "
            "(± half the min-max spread); CPU is the server process's utime+stime per "
            "request.", "", *_table(
        ["contender", "req/s", "vs naive", "CPU µs/req", "p50 ms", "p99 ms", "p99.9 ms",
         "p99 @1k/s ms", "added p99 @1k/s ms", "errors @1k/s", "correct"], rows)]


def _fanout(result: dict[str, Any]) -> list[str]:
    rows = []
    for c in result["contenders"].values():
        if c["status"] != "ok":
            continue
        for level, e in sorted(c["summary"].get("levels", {}).items(), key=lambda i: int(i[0])):
            rows.append([f"`{c['name']}`", level,
                         _med(e["cpu_per_broadcast_s"], 1e3, 2)
                         + _spread(e["cpu_per_broadcast_s"]),
                         _med(e["cpu_per_subscriber_us"], 1.0, 1),
                         _x(e.get("cpu_ratio_to_naive")), _x(e.get("cpu_ratio_to_floor")),
                         _med(e["fanout_p50_s"], 1e3, 1), _med(e["fanout_p99_s"], 1e3, 1)])
    p = result["params"]
    return [f"{p.get('events')} events of {p.get('event_bytes')} bytes per level, published "
            f"one after another; {p.get('rounds')} rounds with the servers interleaved. "
            "Subscribers are raw-protocol clients in separate processes on the other core.",
            "", *_table(["contender", "subscribers", "CPU ms/broadcast", "CPU µs/subscriber",
                          "vs naive hub", "vs raw loop", "fan-out p50 ms", "fan-out p99 ms"],
                         rows)]


def _memory(result: dict[str, Any]) -> list[str]:
    levels = [str(lv) for lv in result["params"].get("levels", [])]
    rows = []
    for c in result["contenders"].values():
        if c["status"] != "ok":
            continue
        per = {str(r["level"]): r["per_connection_kb"] for r in c["runs"]}
        s = c["summary"]
        rows.append([f"`{c['name']}` {c['label']}", *[_f(per.get(lv)) for lv in levels],
                     _f(s.get("extra_kb_over_bare")), _x(s.get("ratio_to_naive"))])
    notes = " ".join(result.get("notes", []))
    return ["RSS growth of the server process divided by the open idle connections "
            f"(KB per connection; 1 KB = 1024 bytes). {notes}".rstrip(), "", *_table(
        ["server", *[f"KB/conn @{lv}" for lv in levels], "KB over bare @top", "vs naive"],
        rows)]


def _chat(result: dict[str, Any]) -> list[str]:
    rows = []
    for c in result["contenders"].values():
        if c["status"] != "ok":
            continue
        for level, e in sorted(c["summary"].get("levels", {}).items(), key=lambda i: int(i[0])):
            rows.append([f"`{c['name']}`", level, _med(e["ttft_p50_s"], 1e3, 2),
                         _med(e["added_ttft_p50_s"], 1e3, 2),
                         _med(e["added_ttft_p99_s"], 1e3, 2), _med(e["gap_p99_s"], 1e3, 1),
                         _med(e["added_gap_p99_s"], 1e3, 2), _med(e["cpu_us_per_token"]),
                         f"{e['complete']}/{e['turns']}"])
    own = [f"{level} turns: {_med(e.get('gw_own_ttft_mean_s'), 1e3, 2)} ms"
           for level, e in sorted(result["contenders"].get("gw-chat", {}).get("summary", {})
                                  .get("levels", {}).items(), key=lambda i: int(i[0]))]
    if own:
        rows.append(["gateway's own view: mean time from request to the upstream request "
                     "(`luki_chat_time_to_first_token_seconds` minus "
                     "`luki_chat_upstream_ttft_seconds`)", "; ".join(own), "", "", "", "", "",
                     "", ""])
    p = result["params"]
    single = (f"; at 1 turn, {p['single_turns']} turns one after another per round (the "
              "TTFT p50 of the round)" if "single_turns" in p else "")
    return [f"Reference agent streaming {p.get('tokens_per_turn')} tokens per turn at "
            f"{p.get('tokens_per_s'):.0f} tokens/s; N turns started together; "
            f"{p.get('rounds')} interleaved rounds{single}. 'Added' = this path minus the "
            "direct path in the same round.", "", *_table(
        ["path", "turns", "TTFT p50 ms", "added TTFT p50 ms", "added TTFT p99 ms",
         "gap p99 ms", "added gap p99 ms", "relay CPU µs/token", "complete"], rows)]


def _ratelimit(result: dict[str, Any]) -> list[str]:
    rows = []
    base = result["contenders"].get("gw-full-nolimit", {}).get("summary", {})
    base_rps = base.get("rps", {}).get("median") if base else None
    for c in result["contenders"].values():
        s = c["summary"]
        if c["status"] != "ok" or not s:
            continue
        rps = s["rps"]["median"]
        rows.append([f"`{c['name']}` {c['label']}", _f(rps, digits=0) + _spread(s["rps"]),
                     _x(rps / base_rps if rps and base_rps else None),
                     _med(s["cpu_us_per_req"]), _med(s["p99_s"], 1e3, 2),
                     _f(s.get("backend_errors"), digits=0), str(s.get("non_2xx", "—"))])
    return ["Same load as the proxy scenario; the limit (1e9/min) is never reached.", "",
            *_table(["contender", "req/s", "vs limits off", "CPU µs/req", "p99 ms",
                     "backend errors", "non-2xx"], rows)]


SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "proxy": _proxy, "fanout": _fanout, "memory": _memory, "chat": _chat,
    "ratelimit": _ratelimit}


def _pinning(m: dict[str, Any]) -> str:
    if m.get("server_core") is None:
        return "none: every process on the same core(s), not comparable with a pinned run"
    return (f"server under test on core {m.get('server_core')}; load generator, upstreams, "
            f"Redis and subscriber clients on core {m.get('load_core')}")


def _machine(results: list[dict[str, Any]]) -> list[str]:
    m = results[0]["machine"]
    v = m.get("versions", {})
    lines = [f"- Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_mb')} MB, "
             f"Linux {m.get('kernel')}; git `{m.get('git_commit')}`",
             f"- Pinning: {_pinning(m)}"]
    # Scenarios run apart (``--scenario``) may have run otherwise: each says so.
    for r in results[1:]:
        other = r["machine"]
        differs = []
        if other.get("git_commit") != m.get("git_commit"):
            differs.append(f"git `{other.get('git_commit')}`")
        if _pinning(other) != _pinning(m):
            differs.append(f"pinning {_pinning(other)}")
        if differs:
            lines.append(f"  - `{r['scenario']}`: " + ", ".join(differs))
    lines.append("- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    return lines


def latest_results(directory: Path, scenarios: Iterable[str]) -> list[dict[str, Any]]:
    """The newest result file of each scenario in ``directory`` (names start with the date)."""
    out = []
    for name in scenarios:
        files = sorted(directory.glob(f"*-{name}.json"))
        if files:
            out.append(json.loads(files[-1].read_text()))
    return out


def write_report(path: Path, results: list[dict[str, Any]], *, plot_dir: Path | None = None
                 ) -> None:
    """Regenerate the Markdown report (and its plots in ``plot_dir``, when given)."""
    if not results:
        return
    profile = results[0]["profile"]
    lines = ["# luki-gateway benchmarks", "",
             f"Generated by `python -m bench.run --{profile}` "
             f"({'`make bench`' if profile == 'full' else '`make bench-quick`'}); "
             f"run started {results[0]['started']} UTC. Raw numbers of every run: "
             "`bench/results/<date>-<scenario>.json`. Do not edit by hand: edit "
             "`bench/analysis.md` or the harness and regenerate.", "",
             "Method: every server under test runs alone on its own core (`taskset`), the "
             "load and the clients on the other; contenders are interleaved round by round; "
             "figures are medians of rounds with their spread; CPU is utime+stime of the "
             "server process from `/proc/<pid>/stat`. The machine is shared and noisy: "
             "compare ratios within one run, not absolute numbers across runs.", ""]
    lines += _machine(results)
    lines += ["", "## Targets", ""]
    rows = []
    for r in results:
        for t in r.get("targets", []):
            value = "—" if t["value"] is None else f"{t['value']:.2f} {t['unit']}".strip()
            rows.append([r["scenario"], t["name"], t["goal"], value, MARKS[t["mark"]]])
    lines += _table(["scenario", "target", "goal", "measured", "mark"], rows)
    for r in results:
        lines += ["", f"## {r['title']} (`{r['scenario']}`)", ""]
        lines += SECTIONS[r["scenario"]](r)
        lines += _unavailable(r)
        if plot_dir is not None:
            for png in draw(r, plot_dir):
                rel = os.path.relpath(png, path.parent)
                lines += ["", f"![{png.stem}]({rel})"]
    if ANALYSIS.exists():
        lines += ["", ANALYSIS.read_text().strip()]
    path.write_text("\n".join(lines) + "\n")
