"""The README stays true: every environment variable documented, its config example loads."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from luki_gateway.settings import SECTIONS, UPSTREAM_ENV, Settings, load_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    """The text of one `## title` section of the README."""
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def test_every_environment_variable_is_documented() -> None:
    """Each setting with an environment name appears in the Configuration table."""
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section("Configuration")))
    names = set(UPSTREAM_ENV) | {"LUKI_CONFIG"}
    for cls in (Settings, *SECTIONS.values()):
        names |= {f.metadata["env"] for f in dataclasses.fields(cls) if f.metadata.get("env")}
    assert names - documented == set()


def test_configuration_example_loads() -> None:
    """The TOML example of the Configuration section is a valid config."""
    example = re.search(r"```toml\n(.*?)```", section("Configuration"), re.S)
    assert example is not None
    settings = load_settings(environ={}, overrides=tomllib.loads(example[1]))
    assert settings.environment == "production"
    assert settings.routes[0].scopes["*"] == ("elr:write",)


def test_quick_start_comes_first_then_configuration_then_routes() -> None:
    """README order: Quick start, Configuration, then the route table; the parts follow."""
    titles = re.findall(r"^## (.+)$", README.read_text(), re.M)
    assert titles[:3] == ["Quick start", "Configuration", "Routes"]
