"""What every scenario is given: the profile, the core layout and the tools found."""

from __future__ import annotations

from dataclasses import dataclass

from .procs import cpu_count
from .profile import Profile
from .wrk import wrk_binary


@dataclass(frozen=True)
class Context:
    """Core layout: the server under test alone on ``server_core``; load, upstreams and
    subscriber clients on ``load_core`` (this process is pinned there too)."""

    profile: Profile
    server_core: int | None
    load_core: int | None
    use_wrk: bool

    @classmethod
    def create(cls, profile: Profile, *, allow_wrk: bool = True) -> Context:
        """Pick cores: 0 for servers, 1 for everything else (no pinning on one core)."""
        if cpu_count() >= 2:
            return cls(profile, 0, 1, allow_wrk and wrk_binary() is not None)
        return cls(profile, None, None, allow_wrk and wrk_binary() is not None)
