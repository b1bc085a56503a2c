"""A histogram cheap enough to observe once per relayed token.

prometheus-client's Histogram takes a lock and walks its buckets in Python on every
observation; the relay observes every inter-token gap, on the event loop only. This one
counts into a plain list (one C bisect per observation) and is read by the registry's
collector at scrape time, with the same exposition as a Histogram.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class GapHistogram(Collector):
    """An unlabelled histogram observed from the event loop thread only."""

    __slots__ = ("_bounds", "_counts", "_sum", "documentation", "name")

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(sorted(buckets))
        # One slot per bucket, plus +Inf.
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    @classmethod
    def create(cls, name: str, documentation: str, buckets: Sequence[float],
               registry: CollectorRegistry) -> GapHistogram:
        """A new histogram registered on ``registry``."""
        histogram = cls(name, documentation, buckets)
        registry.register(histogram)
        return histogram

    def observe(self, amount: float) -> None:
        """Count one observation (hot path: a bisect and two additions)."""
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The histogram as the registry exposes it (cumulative ``le`` buckets)."""
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self._bounds, None), self._counts, strict=True):
            total += count
            cumulative.append(("+Inf" if bound is None else repr(float(bound)), total))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, self._sum)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        """The family without samples (lets the registry check names at register time)."""
        yield HistogramMetricFamily(self.name, self.documentation)
