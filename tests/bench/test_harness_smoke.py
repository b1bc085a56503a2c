"""The benchmark harness at tiny scale: every scenario runs, reports its shape, answers right.

No benchmark numbers are judged here (that is `make bench`); this shows the harness works
on this machine: processes start pinned, contenders answer correctly, JSON and Markdown are
written, and a contender that cannot run is reported as unavailable with its reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from bench.gateway import GatewayVariant, gateway_config, to_toml
from bench.run import SCENARIOS

from luki_gateway.settings import load_settings

REPO = Path(__file__).resolve().parents[2]

# Contenders that need nothing beyond the project's own dependencies: they must run.
ALWAYS = {
    "proxy": {"direct", "naive-aiohttp"},
    "fanout": {"naive-hub-ws", "raw-loop-ws", "naive-hub-sse", "raw-loop-sse"},
    "memory": {"naive-hub-ws", "bare-aiohttp-ws", "naive-hub-sse", "bare-aiohttp-sse"},
    "chat": {"agent-direct", "naive-relay"},
    "ratelimit": set(),
}
EXPECTED = {
    "proxy": {"direct", "nginx-proxy", "naive-aiohttp", "fastapi-httpx", "gw-proxy", "gw-full"},
    "fanout": {f"{h}-{k}" for h in ("gw-hub", "naive-hub", "raw-loop") for k in ("ws", "sse")},
    "memory": {f"{h}-{k}" for h in ("gw-hub", "naive-hub", "bare-aiohttp")
               for k in ("ws", "sse")},
    "chat": {"agent-direct", "naive-relay", "gw-chat"},
    "ratelimit": {"gw-full", "gw-full-nolimit", "gw-full-memory"},
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """Run `python -m bench.run --smoke` once (Python load generator) into a temp dir."""
    out = tmp_path_factory.mktemp("bench")
    report = out / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--no-wrk", "--no-plots",
         "--results-dir", str(out), "--report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {}
    for name in SCENARIOS:
        files = list(out.glob(f"*-{name}.json"))
        assert len(files) == 1, f"{name}: {files} / {done.stderr[-1500:]}"
        results[name] = json.loads(files[0].read_text())
    return results, report.read_text()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_report_shape(smoke_run: tuple[dict[str, Any], str], scenario: str) -> None:
    """Each result file names its scenario, profile, machine facts, contenders and targets."""
    result = smoke_run[0][scenario]
    assert result["scenario"] == scenario
    assert result["profile"] == "smoke"
    assert result["machine"]["versions"]["aiohttp"]
    assert result["machine"]["cores"] >= 1
    assert set(result["contenders"]) == EXPECTED[scenario]
    assert result["targets"], "every scenario prints its targets"
    for t in result["targets"]:
        assert t["mark"] in {"pass", "short-of", "n/a"}
        assert t["name"] and t["goal"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_contender_answered_correctly_or_says_why(
        smoke_run: tuple[dict[str, Any], str], scenario: str) -> None:
    """A contender either ran and answered correctly, or is unavailable with a reason."""
    result = smoke_run[0][scenario]
    for name, c in result["contenders"].items():
        assert c["status"] in {"ok", "unavailable"}, f"{name}: {c['status']}: {c['reason']}"
        if c["status"] == "ok":
            assert c["correct"] is True, f"{name}: {c['reason']} {c['check']}"
            assert c["runs"], name
        else:
            assert c["reason"], f"{name} is unavailable without a reason"
    for name in ALWAYS[scenario]:
        assert result["contenders"][name]["status"] == "ok", result["contenders"][name]


def test_markdown_report_has_every_scenario(smoke_run: tuple[dict[str, Any], str]) -> None:
    """The regenerated report has the targets table and a section per scenario."""
    text = smoke_run[1]
    assert "## Targets" in text
    for name in SCENARIOS:
        assert f"(`{name}`)" in text


def test_gateway_config_is_accepted_by_the_settings_loader(tmp_path: Path) -> None:
    """The TOML the harness writes for the gateway loads with the real settings loader."""
    variant = GatewayVariant(auth=True, ratelimit=True, redis_url="redis://127.0.0.1:1/0",
                             upstreams={"bench": "http://127.0.0.1:9"},
                             routes=[{"prefix": "/bench", "upstream": "bench",
                                      "scopes": {"*": ["bench:read"]}}])
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_config(variant, 8089, tmp_path)))
    assert tomllib.loads(path.read_text())["routes"][0]["scopes"] == {"*": ["bench:read"]}
    settings = load_settings(config_path=str(path), environ={})
    assert settings.port == 8089
    assert settings.routes[0].prefix == "/bench"
    assert settings.ratelimit.enabled and settings.auth.enabled
