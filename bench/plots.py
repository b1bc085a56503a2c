"""PNG plots for BENCHMARKS.md (matplotlib from the ``bench`` extra; skipped without it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> bool:
    """Lay out, write the PNG and free the figure; True = a plot was drawn."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _ok(contenders: dict[str, Any]) -> dict[str, Any]:
    return {n: c for n, c in contenders.items() if c["status"] == "ok" and c["summary"]}


def proxy_throughput(result: dict[str, Any], path: Path) -> bool:
    """Bars: median req/s per contender with min-max whiskers."""
    plt = _pyplot()
    cs = _ok(result["contenders"])
    if not cs:
        return False
    names = list(cs)
    med = [cs[n]["summary"]["rps"]["median"] or 0 for n in names]
    lo = [m - (cs[n]["summary"]["rps"]["min"] or m) for n, m in zip(names, med, strict=True)]
    hi = [(cs[n]["summary"]["rps"]["max"] or m) - m for n, m in zip(names, med, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names, med, yerr=[lo, hi], capsize=4, color="#4c72b0")
    ax.set_ylabel("req/s (median of rounds, min-max)")
    ax.set_title(f"REST proxy throughput, c={result['params'].get('connections')}")
    ax.tick_params(axis="x", rotation=25)
    return _save(plt, fig, path)


def proxy_latency_cdf(result: dict[str, Any], path: Path) -> bool:
    """Latency CDF at the fixed rate, one line per contender (last round)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = False
    for name, c in _ok(result["contenders"]).items():
        runs = [r for r in c["runs"] if "fixed_rate" in r]
        if not runs:
            continue
        pts = runs[-1]["fixed_rate"]["cdf"]
        ax.plot([p[0] * 1e3 for p in pts], [p[1] for p in pts], label=name)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Latency CDF at {result['params'].get('fixed_rate'):.0f} req/s (open loop)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def fanout(result: dict[str, Any], path: Path) -> bool:
    """Fan-out time (p50) and server CPU per broadcast vs subscribers."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    drawn = False
    for name, c in _ok(result["contenders"]).items():
        levels = sorted(c["summary"]["levels"], key=int)
        if not levels:
            continue
        xs = [int(lv) for lv in levels]
        style = "-" if name.endswith("-ws") else "--"
        ax1.plot(xs, [c["summary"]["levels"][lv]["fanout_p50_s"]["median"] * 1e3
                      for lv in levels], style, marker="o", label=name)
        ax2.plot(xs, [c["summary"]["levels"][lv]["cpu_per_broadcast_s"]["median"] * 1e3
                      for lv in levels], style, marker="o", label=name)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax1.set_title("time until the last subscriber has it (p50)")
    ax1.set_xlabel("subscribers")
    ax1.set_ylabel("ms")
    ax2.set_title("server CPU per broadcast")
    ax2.set_xlabel("subscribers")
    ax2.set_ylabel("ms CPU")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def memory(result: dict[str, Any], path: Path) -> bool:
    """RSS growth vs idle connections."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = False
    for name, c in result["contenders"].items():
        if c["status"] != "ok" or not c["runs"]:
            continue
        xs = [r["connections"] for r in c["runs"]]
        ys = [(r["rss_kb"] - r["rss_base_kb"]) / 1024 for r in c["runs"]]
        ax.plot(xs, ys, "-" if name.endswith("-ws") else "--", marker="o", label=name)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("idle connections")
    ax.set_ylabel("RSS growth, MiB")
    ax.set_title("Server RSS vs idle connections")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


PLOTS = {
    "proxy": (("proxy-throughput.png", proxy_throughput),
              ("proxy-latency-cdf.png", proxy_latency_cdf)),
    "fanout": (("fanout.png", fanout),),
    "memory": (("memory-rss.png", memory),),
}


def draw(result: dict[str, Any], directory: Path) -> list[Path]:
    """Every plot of one scenario; returns the files written (none without matplotlib)."""
    try:
        _pyplot()
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for filename, fn in PLOTS.get(result["scenario"], ()):
        path = directory / filename
        if fn(result, path):
            out.append(path)
    return out
