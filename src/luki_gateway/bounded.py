"""The size bound of the process's small lookup caches: a full cache starts over.

Used where a cache is keyed by something callers choose (tokens, keys, principals, scope
sets): a flood of distinct keys cannot grow it, and the next requests rebuild what is hot.
"""

from __future__ import annotations

from typing import TypeVar

_K = TypeVar("_K")
_V = TypeVar("_V")


def remember(cache: dict[_K, _V], key: _K, value: _V, limit: int) -> _V:
    """Store ``value`` under ``key`` and return it, emptying ``cache`` first when it holds
    ``limit`` entries."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value
