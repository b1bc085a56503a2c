"""What the limiter is asked (windows) and what it answers (a decision)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class Window:
    """One limit a request counts against: ``limit`` units per ``window_s`` under ``key``."""

    policy: str      # name in headers and metrics: "minute", "hour", "global", "ip"
    scope: str       # whose budget: "user", "key", "service", "ip", "global"
    key: str         # storage key without the Redis prefix, e.g. "rl:user:alice:60"
    limit: int
    window_s: float
    # Derived once per window (windows are reused per caller): the RateLimit-Policy item
    # and the "limit,window_ms" spec the Redis script reads.
    policy_item: str = field(init=False, repr=False, compare=False)
    spec: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy_item",
                           f'"{self.policy}";q={self.limit};w={int(self.window_s)}')
        object.__setattr__(self, "spec", f"{self.limit},{int(self.window_s * 1000)}")


class WindowState(NamedTuple):
    """A window after the decision: units left and seconds until the next unit frees.

    Immutable like the frozen dataclasses here, but built per request on the hot path,
    where a NamedTuple costs a fraction of a frozen dataclass's __init__.
    """

    window: Window
    remaining: int
    reset_s: float

    @property
    def reset_header(self) -> int:
        """``reset_s`` as whole seconds for headers (rounded up)."""
        return max(0, math.ceil(self.reset_s))


class Decision(NamedTuple):
    """The answer for one request: allowed (and charged to every window) or not (to none)."""

    allowed: bool
    states: tuple[WindowState, ...]
    rejected_by: Window | None = None
    retry_after_s: float = 0.0

    @property
    def tightest(self) -> WindowState | None:
        """The most restrictive window: fewest units left, then the longest wait."""
        states = self.states
        if len(states) < 2:
            return states[0] if states else None
        return min(states, key=_tightness)


def _tightness(state: WindowState) -> tuple[int, float]:
    return state.remaining, -state.reset_s


class Limiter(Protocol):
    """A rate-limit backend (memory or Redis); both pass the same test suite."""

    async def decide(self, windows: tuple[Window, ...], cost: int) -> Decision:
        """Charge ``cost`` to every window if all have room, atomically; else charge none."""

    async def peek(self, windows: tuple[Window, ...]) -> Decision:
        """The windows' current state without charging anything."""

    async def close(self) -> None:
        """Release resources (round trips in flight)."""
