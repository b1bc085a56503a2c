"""CircuitBreaker state machine, driven by an injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from luki_gateway.errors import CircuitOpen
from luki_gateway.upstream.breaker import CircuitBreaker


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A hand-driven clock starting at t=1000."""
    return FakeClock()


def make(clock: FakeClock, **kw: float) -> CircuitBreaker:
    """A breaker with small thresholds on the fake clock."""
    options: dict[str, float] = {"failures": 3, "failure_ratio": 0.5, "window": 10,
                                 "cooldown_s": 5.0, "half_open_probes": 1, **kw}
    return CircuitBreaker("memory", clock=clock, **options)  # type: ignore[arg-type]


def test_opens_after_consecutive_failures(clock: FakeClock) -> None:
    """N consecutive failures open the circuit; the next request is refused at once."""
    breaker = make(clock)
    for _ in range(2):
        breaker.before_request()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.before_request()
    breaker.record_failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen) as info:
        breaker.before_request()
    assert info.value.status == 503
    assert info.value.headers["Retry-After"] == "5"


def test_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    """Failures separated by successes do not trip the consecutive rule."""
    breaker = make(clock, failure_ratio=0)
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state == "closed"


def test_opens_on_failure_ratio_over_window(clock: FakeClock) -> None:
    """Half of the last 10 outcomes failing opens it, even without 3 in a row."""
    breaker = make(clock)
    for _ in range(4):
        breaker.record_success()
        breaker.record_failure()
    breaker.record_success()
    assert breaker.state == "closed"  # window not full yet
    breaker.record_failure()
    assert breaker.state == "open"


def test_half_open_after_cooldown_admits_limited_probes(clock: FakeClock) -> None:
    """After the cool-down one probe goes through; a second concurrent one is refused."""
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 4.9
    assert breaker.state == "open"
    clock.now += 0.1
    assert breaker.state == "half_open"
    breaker.before_request()
    with pytest.raises(CircuitOpen):
        breaker.before_request()


def test_probe_success_closes(clock: FakeClock) -> None:
    """A successful probe closes the circuit and clears the history."""
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    breaker.before_request()
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_probe_failure_reopens_for_a_full_cooldown(clock: FakeClock) -> None:
    """A failed probe opens the circuit again, timed from the probe's failure."""
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    breaker.before_request()
    clock.now += 1
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 4.5
    assert breaker.state == "open"
    assert breaker.retry_after_s == pytest.approx(0.5)
    clock.now += 0.5
    assert breaker.state == "half_open"


def test_lost_probe_does_not_wedge_half_open(clock: FakeClock) -> None:
    """A probe whose outcome never arrives frees its slot after another cool-down."""
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    breaker.before_request()  # this probe's client leaves; nothing is recorded
    with pytest.raises(CircuitOpen):
        breaker.before_request()
    clock.now += 5
    breaker.before_request()
    breaker.record_success()
    assert breaker.state == "closed"


def test_late_outcomes_while_open_are_ignored(clock: FakeClock) -> None:
    """Requests admitted before opening and finishing after do not move an open circuit."""
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    breaker.record_success()
    assert breaker.state == "open"
    clock.now += 3
    breaker.record_failure()
    clock.now += 2
    assert breaker.state == "half_open"


def test_several_half_open_probes(clock: FakeClock) -> None:
    """half_open_probes=2 admits exactly two probes."""
    breaker = make(clock, half_open_probes=2)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    breaker.before_request()
    breaker.before_request()
    with pytest.raises(CircuitOpen):
        breaker.before_request()
