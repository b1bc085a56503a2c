"""In-memory limiter (embedded default, one process): the same sliding-window log as Redis.

Algorithm (both backends): a sliding-window *log*. Every admitted unit is recorded with its
time; a window admits a request of cost ``c`` when the units recorded in the last
``window_s`` seconds plus ``c`` do not exceed ``limit``. The bound is exact: any interval of
length ``window_s`` contains at most ``limit`` units, so there is no double burst at window
boundaries (unlike fixed windows, GCRA with a burst, or the sliding-counter approximation,
which admit up to 2x in the worst case). Burst behaviour: a fresh window admits ``limit``
units at once; after that capacity returns unit by unit as old entries age out. Memory is
O(limit) per active key, and keys vanish once their entries have aged out.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .decision import Decision, Window, WindowState

# Sweep idle keys every so many decisions so unseen IPs/users do not accumulate.
_SWEEP_EVERY = 4096


@dataclass(slots=True)
class _Log:
    window_s: float
    entries: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0

    def prune(self, now: float) -> None:
        horizon = now - self.window_s
        entries = self.entries
        while entries and entries[0][0] <= horizon:
            self.total -= entries.popleft()[1]

    def wait_for(self, units: int, now: float) -> float:
        """Seconds until ``units`` recorded units have aged out."""
        freed = 0
        for at, cost in self.entries:
            freed += cost
            if freed >= units:
                return self._until(at, now)
        return self.window_s

    def reset_s(self, now: float) -> float:
        return self._until(self.entries[0][0], now) if self.entries else 0.0

    def _until(self, at: float, now: float) -> float:
        """Seconds until an entry recorded at ``at`` ages out. Clamped: ``at + window - now``
        can exceed the window by float error when ``at == now``, and the headers round up
        (a reset of 3601 in a 3600 s window)."""
        return min(self.window_s, at + self.window_s - now)


class MemoryLimiter:
    """Sliding-window log in a dict; the clock is injectable for boundary tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._logs: dict[str, _Log] = {}
        self._since_sweep = 0

    def _log(self, window: Window) -> _Log:
        found = self._logs.get(window.key)
        if found is None:
            found = self._logs[window.key] = _Log(window.window_s)
        return found

    def _evaluate(self, windows: tuple[Window, ...], cost: int, commit: bool) -> Decision:
        now = self.clock()
        logs = [self._log(w) for w in windows]
        rejected: Window | None = None
        retry = 0.0
        for window, entry in zip(windows, logs, strict=True):
            entry.prune(now)
            if rejected is None and entry.total + cost > window.limit:
                rejected = window
                retry = (window.window_s if cost > window.limit
                         else entry.wait_for(entry.total + cost - window.limit, now))
        allowed = rejected is None
        if allowed and commit and cost > 0:
            for entry in logs:
                entry.entries.append((now, cost))
                entry.total += cost
        states = tuple(
            WindowState(w, max(0, w.limit - e.total), e.reset_s(now))
            for w, e in zip(windows, logs, strict=True))
        for window, entry in zip(windows, logs, strict=True):
            if not entry.entries:
                self._logs.pop(window.key, None)
        self._maybe_sweep(now)
        return Decision(allowed, states, rejected, retry)

    def _maybe_sweep(self, now: float) -> None:
        self._since_sweep += 1
        if self._since_sweep < _SWEEP_EVERY:
            return
        self._since_sweep = 0
        for key, entry in list(self._logs.items()):
            entry.prune(now)
            if not entry.entries:
                del self._logs[key]

    @property
    def key_count(self) -> int:
        """Keys currently held (for tests: idle keys do not accumulate)."""
        return len(self._logs)

    async def decide(self, windows: tuple[Window, ...], cost: int) -> Decision:
        """Charge ``cost`` to every window if all have room; else charge none."""
        return self._evaluate(windows, cost, commit=True)

    async def peek(self, windows: tuple[Window, ...]) -> Decision:
        """Current state without charging."""
        return self._evaluate(windows, 0, commit=False)

    async def close(self) -> None:
        """Nothing to release."""
