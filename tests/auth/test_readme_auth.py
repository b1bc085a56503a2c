"""The README's Authenticating section stays true: its config example loads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from luki_gateway.settings import load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_authenticating_example_loads() -> None:
    """The [auth] TOML example is a valid config with the documented values."""
    text = README.read_text()
    start = text.index("## Authenticating\n")
    example = re.search(r"```toml\n(.*?)```", text[start:], re.S)
    assert example is not None
    settings = load_settings(environ={}, overrides=tomllib.loads(example[1]))
    assert settings.auth.jwt_audience == "luki"
    assert settings.auth.role_scopes["admin"] == ("admin:read", "admin:write")
    assert settings.auth.service_tokens[0].name == "agent"
