"""The real CLI in a subprocess: settings precedence, bad input, `config check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from luki_gateway.cli import main

SECRET_JWT = "a-jwt-secret-of-our-own-that-is-long-enough-1234"
SECRET_PEPPER = "a-pepper-of-our-own-5678"
SAFE_PRODUCTION = {"ENVIRONMENT": "production", "JWT_SECRET": SECRET_JWT,
                   "API_KEY_PEPPER": SECRET_PEPPER, "CORS_ORIGINS": "https://app.example"}


def run_cli(*args: str, env: Mapping[str, str] | None = None,
            timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run `python -m luki_gateway ARGS` with only the given environment variables."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
            "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "luki_gateway", *args],
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def effective(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON config `config check` printed on stdout."""
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    """defaults < TOML < environment < flags, key by key."""
    config = tmp_path / "gateway.toml"
    config.write_text('log_level = "DEBUG"\nmax_body_bytes = 1000\nroutes = []\n'
                      '[ratelimit]\nper_min = 10\nper_hour = 100\n'
                      '[upstreams]\nagent = "http://toml-agent:1"\nmemory = "http://toml-mem:2"\n')
    proc = run_cli("config", "check", "--config", str(config), "--rate-limit-hour", "300",
                   "--upstream", "memory=http://flag-mem:3", "--cors-origins", "https://a,https://b",
                   env={"RATE_LIMIT_PER_MIN": "20", "RATE_LIMIT_PER_HOUR": "200",
                        "MAX_BODY_BYTES": "2000", "MEMORY_URL": "http://env-mem:4",
                        "CORS_ORIGINS": "https://env", "LOG_FORMAT": "json"})
    assert proc.returncode == 0, proc.stderr
    conf = effective(proc)
    assert conf["port"] == 8080                        # default
    assert conf["log_level"] == "DEBUG"                # TOML over default
    assert conf["max_body_bytes"] == 2000              # env over TOML
    assert conf["ratelimit"]["per_min"] == 20          # env over TOML
    assert conf["ratelimit"]["per_hour"] == 300        # flag over env over TOML
    assert conf["upstreams"] == {"agent": "http://toml-agent:1", "memory": "http://flag-mem:3"}
    assert conf["cors_origins"] == ["https://a", "https://b"]  # flag over env
    assert conf["log_format"] == "json"                         # env over default


def test_luki_config_env_names_the_file(tmp_path: Path) -> None:
    """LUKI_CONFIG is read like --config; --config wins over it."""
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("port = 1111\n")
    b.write_text("port = 2222\n")
    assert effective(run_cli("config", "check", env={"LUKI_CONFIG": str(a)}))["port"] == 1111
    proc = run_cli("config", "check", "--config", str(b), env={"LUKI_CONFIG": str(a)})
    assert effective(proc)["port"] == 2222


def _bad_config_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Case name -> (config path, text the error line must contain)."""
    (tmp_path / "broken.toml").write_text("port = = 1\n")
    (tmp_path / "latin1.toml").write_bytes(b'log_level = "\xe9"\n')
    (tmp_path / "unknown.toml").write_text("colour = 'blue'\n")
    (tmp_path / "unknown_in_section.toml").write_text("[ratelimit]\nper_minute = 5\n")
    (tmp_path / "wrong_type.toml").write_text('port = "eighty"\n')
    (tmp_path / "section_not_table.toml").write_text("hub = 5\n")
    (tmp_path / "bad_route.toml").write_text('[[routes]]\nprefix = "/x"\nupstream = "nope"\n')
    route = '[[routes]]\nprefix = "{}"\nupstream = "memory"\n'
    (tmp_path / "negative_cost.toml").write_text(route.format("/x") + "cost = -1\n")
    (tmp_path / "bad_method.toml").write_text(route.format("/x") + 'methods = ["FOO"]\n')
    (tmp_path / "dot_prefix.toml").write_text(route.format("/v1/x/../y"))
    (tmp_path / "twice.toml").write_text(route.format("/x") + route.format("/x/"))
    (tmp_path / "a_dir").mkdir()
    return {
        "missing": (str(tmp_path / "nope.toml"), "not found"),
        "directory": (str(tmp_path / "a_dir"), "is a directory"),
        "invalid TOML": (str(tmp_path / "broken.toml"), "invalid TOML"),
        "not UTF-8": (str(tmp_path / "latin1.toml"), "not UTF-8"),
        "unknown key": (str(tmp_path / "unknown.toml"), "colour: unknown setting"),
        "unknown section key": (str(tmp_path / "unknown_in_section.toml"),
                                "ratelimit.per_minute: unknown setting (did you mean 'per_min'?)"),
        "wrong type": (str(tmp_path / "wrong_type.toml"), "port: Not a valid integer"),
        "section not a table": (str(tmp_path / "section_not_table.toml"),
                                "hub: must be a table"),
        "route to unknown upstream": (str(tmp_path / "bad_route.toml"),
                                      "routes.0.upstream: unknown upstream 'nope'"),
        "negative cost": (str(tmp_path / "negative_cost.toml"), "routes.0.cost: must be 0"),
        "unknown method": (str(tmp_path / "bad_method.toml"),
                           "routes.0.methods: unknown method 'FOO'"),
        "dot segment in prefix": (str(tmp_path / "dot_prefix.toml"), "routes.0.prefix: no"),
        "prefix twice": (str(tmp_path / "twice.toml"),
                         "routes.1.prefix: '/x/' is declared twice"),
    }


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    """Exit 2, nothing on stdout, exactly one stderr line naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("luki-gateway: configuration error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def run_many(calls: list[tuple[tuple[str, ...], dict[str, str]]]
             ) -> list[subprocess.CompletedProcess[str]]:
    """Run several CLI invocations concurrently (each is mostly interpreter start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: run_cli(*call[0], env=call[1]), calls))


def test_bad_config_files_stop_with_one_line(tmp_path: Path) -> None:
    """Missing, unreadable, invalid and unknown-key files: exit 2, one line, no traceback."""
    cases = list(_bad_config_files(tmp_path).values())
    procs = run_many([(("config", "check", "--config", path), {}) for path, _ in cases])
    for proc, (_, needle) in zip(procs, cases, strict=True):
        assert_one_line_error(proc, needle)


BAD_ENVIRONMENTS = [
    ({"RATE_LIMIT_PER_MIN": "abc"}, "RATE_LIMIT_PER_MIN (ratelimit.per_min): Not a valid integer"),
    ({"RATE_LIMIT_PER_HOUR": "-5"}, "RATE_LIMIT_PER_HOUR (ratelimit.per_hour)"),
    ({"ENVIRONMENT": "prod"}, "ENVIRONMENT (environment): Must be one of"),
    ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES (max_body_bytes)"),
    ({"UPSTREAM_TIMEOUT_S": "soon"}, "UPSTREAM_TIMEOUT_S (upstream.timeout_s)"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL (log_level)"),
    ({"AGENT_URL": "ftp://agent"}, "AGENT_URL (upstreams.agent): must be an http"),
    ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL (redis_url): must be a redis://"),
    ({"AUTH_ENABLED": "maybe"}, "AUTH_ENABLED (auth.enabled): Not a valid boolean"),
    ({"LUKI_CONFIG": "/nonexistent/luki.toml"}, "config file /nonexistent/luki.toml: not found"),
    ({"ENVIRONMENT": "production"}, "unsafe for production: API_KEY_PEPPER"),
]
BAD_FLAGS = [
    (("--workers", "0"), "workers: Must be greater than or equal to 1"),
    (("--upstream", "memory"), "--upstream 'memory': expected NAME=URL"),
    (("--upstream", "memory=localhost:9"), "upstreams.memory"),
    (("--workers", "2", "--port", "0"), "workers: more than one worker needs a fixed port"),
]


def test_bad_environment_and_flags_stop_serve_with_one_line() -> None:
    """`serve` with a bad environment value or flag: exit 2 and one line naming it.

    A production config with default secrets counts as bad: `serve` refuses to start it.
    """
    calls = [(("serve", "--port", "0"), env) for env, _ in BAD_ENVIRONMENTS]
    calls += [(("serve", *flags), {}) for flags, _ in BAD_FLAGS]
    needles = [needle for _, needle in BAD_ENVIRONMENTS] + [needle for _, needle in BAD_FLAGS]
    for proc, needle in zip(run_many(calls), needles, strict=True):
        assert_one_line_error(proc, needle)


def test_config_check_masks_secrets() -> None:
    """Secrets never appear in `config check` output; a Redis URL keeps all but its password."""
    proc = run_cli("config", "check", env={
        **SAFE_PRODUCTION, "REDIS_URL": "redis://:hunter2-redis@db:6379/0",
        "MEMORY_URL": "http://user:hunter2-mem@mem:80", "JWT_JWKS_URL": "https://u:pw2@idp/j"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    for secret in (SECRET_JWT, SECRET_PEPPER, "hunter2-redis", "hunter2-mem", "pw2"):
        assert secret not in out
    conf = effective(proc)
    assert conf["auth"]["jwt_secret"] == "***"
    assert conf["auth"]["api_key_pepper"] == "***"
    assert conf["redis_url"] == "redis://:***@db:6379/0"
    assert conf["upstreams"]["memory"] == "http://user:***@mem:80"
    assert "config ok (production)" in proc.stderr


PRODUCTION_CASES: list[tuple[dict[str, str], str | None]] = [
    ({"ENVIRONMENT": "production"}, "API_KEY_PEPPER (auth.api_key_pepper) keeps the default"),
    ({**SAFE_PRODUCTION, "JWT_SECRET": ""}, None),
    ({**SAFE_PRODUCTION, "API_KEY_PEPPER": "dev-pepper-change-me"}, "API_KEY_PEPPER"),
    ({key: v for key, v in SAFE_PRODUCTION.items() if key != "JWT_SECRET"}, "JWT_SECRET"),
    ({**SAFE_PRODUCTION, "CORS_ORIGINS": "https://app.example,*"}, "CORS_ORIGINS allows every"),
    ({**SAFE_PRODUCTION, "AUTH_ENABLED": "false"}, "auth is disabled"),
    ({**SAFE_PRODUCTION, "ENVIRONMENT": "staging", "AUTH_ENABLED": "false"}, None),
]


def test_config_check_refuses_unsafe_production() -> None:
    """Production with a default secret, '*' CORS or auth off: exit 1 naming the problem."""
    procs = run_many([(("config", "check"), env) for env, _ in PRODUCTION_CASES])
    for proc, (_, problem) in zip(procs, PRODUCTION_CASES, strict=True):
        if problem is None:
            assert proc.returncode == 0, proc.stderr
            assert "unsafe" not in proc.stderr
        else:
            assert proc.returncode == 1, proc.stderr
            assert f"unsafe for production: {problem}" in proc.stderr
            effective(proc)  # the config is still printed, masked


def test_python_m_is_the_cli() -> None:
    """`python -m luki_gateway --version` answers like the console script; no command = usage."""
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("luki-gateway ")
    proc = run_cli()
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_config_without_a_subcommand_shows_its_own_help(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`config` alone lists its subcommands (not the top-level help); log levels are the
    same set as LOG_LEVEL's, in any case."""
    assert main(["config"]) == 2
    assert "usage: luki-gateway config" in capsys.readouterr().err
    assert main(["config", "check", "--log-level", "critical"]) == 0
    assert '"log_level": "CRITICAL"' in capsys.readouterr().out
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert main(["config", "check"]) == 0
    assert '"log_level": "DEBUG"' in capsys.readouterr().out


def test_config_check_warns_of_a_route_no_request_can_pass(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A route costing more than a whole window is valid but refuses every request: said."""
    config = tmp_path / "luki.toml"
    config.write_text('[ratelimit]\nper_min = 4\n[[routes]]\nprefix = "/v1/x"\n'
                      'upstream = "reports"\ncost = 5\n')
    assert main(["config", "check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert ("warning: routes.0.cost (5) is above ratelimit.per_min (4): every request to "
            "/v1/x is refused") in err
