"""Small statistics over runs: percentiles, median and spread of interleaved rounds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[rank])


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    """Median, min, max and relative spread ((max-min)/median) of per-round figures."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"median": None, "min": None, "max": None, "spread": None, "n": 0}
    med = statistics.median(vals)
    spread = (max(vals) - min(vals)) / med if med else None
    return {"median": med, "min": min(vals), "max": max(vals), "spread": spread,
            "n": len(vals)}


def cdf_points(values: Sequence[float], points: int = 200) -> list[tuple[float, float]]:
    """(value, fraction) pairs thinned to about ``points`` for plotting a CDF."""
    if not values:
        return []
    ordered = sorted(values)
    step = max(1, len(ordered) // points)
    out = [(float(ordered[i]), (i + 1) / len(ordered)) for i in range(0, len(ordered), step)]
    out.append((float(ordered[-1]), 1.0))
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b
