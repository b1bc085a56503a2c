"""What a scenario records: per contender its status, correctness check and every run."""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .gateway import Unavailable


@dataclass
class Contender:
    """One contender's outcome in one scenario."""

    name: str
    label: str
    status: str = "pending"  # ok | unavailable | failed
    reason: str = ""
    correct: bool | None = None
    check: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def unavailable(self, reason: str) -> None:
        """Mark as not runnable here, with the reason."""
        self.status = "unavailable"
        self.reason = reason[:500]

    def failed(self, reason: str) -> None:
        """Mark as crashed mid-run, with the reason."""
        self.status = "failed"
        self.reason = reason[:500]

    @property
    def ok(self) -> bool:
        """True while the contender is usable."""
        return self.status in ("ok", "pending")


@dataclass
class ScenarioResult:
    """A scenario's whole record, written as JSON."""

    scenario: str
    title: str
    profile: str
    contenders: dict[str, Contender] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: str = ""
    finished: str = ""
    machine: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, label: str) -> Contender:
        """Register a contender."""
        contender = Contender(name, label)
        self.contenders[name] = contender
        return contender

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


async def guarded(contender: Contender, step: Callable[[], Awaitable[Any]]) -> Any:
    """Run one step of a contender; turn its failure into a status instead of a crash."""
    if not contender.ok:
        return None
    try:
        return await step()
    except Unavailable as exc:
        contender.unavailable(str(exc))
    except FileNotFoundError as exc:
        contender.unavailable(str(exc))
    except ImportError as exc:
        contender.unavailable(f"missing dependency: {exc}")
    except Exception as exc:
        contender.failed(f"{type(exc).__name__}: {exc} "
                         f"[{traceback.format_exc(limit=2).splitlines()[-3].strip()}]")
    return None


def target(name: str, goal: str, value: float | None, passed: bool | None, unit: str = ""
           ) -> dict[str, Any]:
    """One target line: pass / short-of / n/a (value missing)."""
    return {"name": name, "goal": goal, "value": value, "unit": unit,
            "mark": "n/a" if passed is None else ("pass" if passed else "short-of")}
