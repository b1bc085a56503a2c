"""Command line: serve, dev, keys, token, config check.

Machine-readable output goes to stdout; progress and messages to stderr. A bad setting
stops with one line naming the key and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .settings import (
    Settings,
    SettingsError,
    as_dict,
    config_warnings,
    load_settings,
    production_problems,
)

EXIT_CONFIG = 2


def _err(message: str) -> None:
    print(f"luki-gateway: {message}", file=sys.stderr)


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (also LUKI_CONFIG)")


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    _add_settings_flags(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT)")
    p.add_argument("--redis-url", help="Redis for shared limits, keys, fan-out, history")
    p.add_argument("--rate-limit-minute", type=int, metavar="N", help="requests per minute")
    p.add_argument("--rate-limit-hour", type=int, metavar="N", help="requests per hour")
    p.add_argument("--cors-origins", metavar="LIST", help="comma-separated allowed origins")
    p.add_argument("--upstream", action="append", default=[], metavar="NAME=URL",
                   help="point an upstream at a URL (repeatable), e.g. memory=http://mem:8000")
    p.add_argument("--log-level", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags in the TOML shape; flags beat the environment."""
    out: dict[str, Any] = {}
    for flag, key in (("host", "host"), ("port", "port"), ("workers", "workers"),
                      ("redis_url", "redis_url"), ("log_level", "log_level")):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    ratelimit: dict[str, Any] = {}
    if getattr(args, "rate_limit_minute", None) is not None:
        ratelimit["per_min"] = args.rate_limit_minute
    if getattr(args, "rate_limit_hour", None) is not None:
        ratelimit["per_hour"] = args.rate_limit_hour
    if ratelimit:
        out["ratelimit"] = ratelimit
    if getattr(args, "cors_origins", None):
        out["cors_origins"] = [o.strip() for o in args.cors_origins.split(",") if o.strip()]
    upstreams: dict[str, str] = {}
    for item in getattr(args, "upstream", None) or []:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise SettingsError(f"--upstream {item!r}: expected NAME=URL")
        upstreams[name.strip()] = url.strip()
    if upstreams:
        out["upstreams"] = upstreams
    return out


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Effective settings for a command: defaults < TOML < env < flags < ``extra``."""
    overrides = _overrides(args)
    overrides.update(extra)
    return load_settings(config_path=getattr(args, "config", None), overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway (production entry point)."""
    from .serving import serve

    settings = settings_from_args(args)
    problems = production_problems(settings)
    if problems:
        # Production never starts with a default secret, open CORS or auth off.
        raise SettingsError(f"unsafe for production: {problems[0]} "
                            "(see `luki-gateway config check`)")
    for warning in config_warnings(settings):
        _err(f"warning: {warning}")
    return serve(settings)


def cmd_dev(args: argparse.Namespace) -> int:
    """Run the gateway in development mode with the reference upstreams."""
    from .devstack.run import run_dev

    extra: dict[str, Any] = {}
    if not getattr(args, "config", None):
        extra["environment"] = "development"
    return run_dev(settings_from_args(args, **extra))


def cmd_config_check(args: argparse.Namespace) -> int:
    """Print the effective config (secrets masked); exit 1 if production-unsafe."""
    settings = settings_from_args(args)
    print(json.dumps(as_dict(settings), indent=2, sort_keys=False))
    for warning in config_warnings(settings):
        _err(f"warning: {warning}")
    problems = production_problems(settings)
    for problem in problems:
        _err(f"unsafe for production: {problem}")
    if problems:
        return 1
    print(f"config ok ({settings.environment})", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="luki-gateway",
        description="Streaming-first API gateway for the LUKi assistant.")
    parser.add_argument("--version", action="version", version=f"luki-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway")
    _add_serve_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("dev", help="run the gateway with local reference upstreams")
    _add_serve_flags(p)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("config", help="inspect configuration")
    config_sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND")

    def config_help(_: argparse.Namespace, parser: argparse.ArgumentParser = p) -> int:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG

    p.set_defaults(func=config_help)
    c = config_sub.add_parser("check", help="print the effective config, secrets masked")
    _add_serve_flags(c)
    c.set_defaults(func=cmd_config_check)

    from .auth.cli import add_auth_commands

    add_auth_commands(sub, _add_settings_flags)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``luki-gateway`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        result: int = func(args)
    except SettingsError as exc:
        _err(f"configuration error: {exc}")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `keys list | head`: the reader left; nothing more to say, and nowhere to say it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # e.g. the port is taken: one line, not a traceback
        _err(f"cannot start: {exc}")
        return 1
    return result
