"""CircuitBreaker: stop sending to an upstream that keeps failing, then probe it back.

closed -> open after ``failures`` consecutive failures, or when the failure ratio over the
last ``window`` outcomes reaches ``failure_ratio``; open -> half_open once ``cooldown_s``
has passed; half_open admits ``half_open_probes`` requests: a success closes the circuit,
a failure opens it again. The clock is injected so tests drive time without sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from ..errors import CircuitOpen

BreakerState = Literal["closed", "open", "half_open"]

# Gauge values for luki_upstream_circuit_state (ordered by severity).
STATE_VALUES: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}


class CircuitBreaker:
    """One upstream's breaker; not thread-safe (one per event loop, like everything here)."""

    __slots__ = ("_clock", "_consecutive", "_cooldown_s", "_failures", "_opened_at",
                 "_outcomes", "_probe_started", "_probes", "_probes_in_flight", "_ratio",
                 "_state", "name")

    def __init__(self, name: str = "", *, failures: int = 5, failure_ratio: float = 0.5,
                 window: int = 20, cooldown_s: float = 30.0, half_open_probes: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._failures = failures
        # A ratio of 0 disables the ratio rule (it would open on the first full window).
        self._ratio = failure_ratio
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._cooldown_s = cooldown_s
        self._probes = half_open_probes
        self._clock = clock
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probe_started = 0.0

    @property
    def state(self) -> BreakerState:
        """The current state; an open circuit whose cool-down has passed reads half_open."""
        if self._state == "open" and self._clock() - self._opened_at >= self._cooldown_s:
            self._to_half_open()
        return self._state

    @property
    def retry_after_s(self) -> float:
        """Seconds until an open circuit admits a probe (0 when not open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._cooldown_s - (self._clock() - self._opened_at))

    def before_request(self) -> None:
        """Admit a request or raise :class:`CircuitOpen` without touching the upstream."""
        state = self.state
        if state == "closed":
            return
        if state == "half_open":
            # A probe whose outcome never came back (client left) must not wedge the circuit.
            if (self._probes_in_flight >= self._probes
                    and self._clock() - self._probe_started >= self._cooldown_s):
                self._probes_in_flight = 0
            if self._probes_in_flight < self._probes:
                self._probes_in_flight += 1
                self._probe_started = self._clock()
                return
        raise CircuitOpen(details={"upstream": self.name,
                                   "retry_after_s": round(self.retry_after_s, 3)},
                          headers={"Retry-After": str(max(1, round(self.retry_after_s)))})

    def record_success(self) -> None:
        """The upstream answered usefully."""
        state = self.state
        if state == "half_open":
            self._close()
        elif state == "closed":
            self._consecutive = 0
            self._outcomes.append(True)

    def record_failure(self) -> None:
        """The upstream failed (connect error, timeout, reset, 5xx from it)."""
        state = self.state
        if state == "half_open":
            self._open()
        elif state == "closed":
            self._consecutive += 1
            self._outcomes.append(False)
            if self._consecutive >= self._failures or self._ratio_tripped():
                self._open()
        # Outcomes of requests admitted before the circuit opened do not move it.

    def _ratio_tripped(self) -> bool:
        outcomes = self._outcomes
        if self._ratio <= 0 or outcomes.maxlen is None or len(outcomes) < outcomes.maxlen:
            return False
        failed = outcomes.maxlen - sum(outcomes)
        return failed / outcomes.maxlen >= self._ratio

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._probes_in_flight = 0

    def _to_half_open(self) -> None:
        self._state = "half_open"
        self._probes_in_flight = 0

    def _close(self) -> None:
        self._state = "closed"
        self._consecutive = 0
        self._outcomes.clear()
        self._probes_in_flight = 0
