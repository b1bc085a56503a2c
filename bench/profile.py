"""Scales of a benchmark run: ``smoke`` (the test suite), ``quick`` and ``full``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Every size and duration a run uses."""

    name: str
    rounds: int
    # REST proxy
    proxy_duration_s: float
    proxy_connections: int
    fixed_rate: float
    fixed_duration_s: float
    # Fan-out
    fanout_levels: tuple[int, ...]
    fanout_events: int
    fanout_rounds: int
    # Idle connection memory
    memory_levels: tuple[int, ...]
    # Chat relay
    chat_levels: tuple[int, ...]
    chat_tokens: int
    chat_rounds: int
    # Rate-limit overhead
    ratelimit_duration_s: float
    # Client processes share the subscribers of one level
    subscribers_per_process: int = 2500
    # A level of 1 concurrent turn runs this many turns one after another (TTFT samples)
    chat_single_turns: int = 5
    # Pause before reading RSS, so per-connection start-up work has finished
    settle_s: float = 1.0


SMOKE = Profile(
    name="smoke", rounds=1, proxy_duration_s=0.3, proxy_connections=8, fixed_rate=100,
    fixed_duration_s=0.3, fanout_levels=(20,), fanout_events=3, fanout_rounds=1,
    memory_levels=(20,), chat_levels=(2,), chat_tokens=4, chat_rounds=1,
    ratelimit_duration_s=0.3, settle_s=0.1, chat_single_turns=1)

QUICK = Profile(
    name="quick", rounds=3, proxy_duration_s=1.5, proxy_connections=64, fixed_rate=1000,
    fixed_duration_s=1.0, fanout_levels=(200, 1000), fanout_events=10, fanout_rounds=2,
    memory_levels=(500, 1000), chat_levels=(1, 50), chat_tokens=10, chat_rounds=2,
    ratelimit_duration_s=1.5, settle_s=0.5)

FULL = Profile(
    name="full", rounds=5, proxy_duration_s=5.0, proxy_connections=64, fixed_rate=1000,
    fixed_duration_s=2.0, fanout_levels=(1000, 3000, 10000), fanout_events=100,
    fanout_rounds=2, memory_levels=(1000, 5000, 18000), chat_levels=(1, 100, 300),
    chat_tokens=40, chat_rounds=3, ratelimit_duration_s=5.0, chat_single_turns=8)

PROFILES = {p.name: p for p in (SMOKE, QUICK, FULL)}
