"""`keys` and `token` commands (placeholder until the auth issue lands)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_auth_commands(sub: Any, add_settings_flags: Callable[[argparse.ArgumentParser], None]
                      ) -> None:
    """Register `keys create|list|revoke` and `token` on the CLI."""
