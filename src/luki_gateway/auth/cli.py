"""`keys create|list|revoke` and `token`: machine output on stdout, the rest on stderr."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.exceptions import RedisError

from ..settings import Settings
from .api_keys import open_store
from .dev import mint_dev_token
from .key_record import (
    KEY_ENVS,
    ApiKeyRecord,
    KeyEnv,
    KeyStore,
    StoreUnavailable,
    generate_key,
    hash_key,
    new_record,
)

T = TypeVar("T")

_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Longer lifetimes are typos; far enough out, an expiry is no date at all (year > 9999).
MAX_DURATION_S = 3650 * 86400


def parse_duration(text: str) -> int:
    """'30d', '12h', '15m', '90s' or plain seconds -> seconds (> 0, at most ten years)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30d, 12h, 3600)")
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if seconds > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(
            f"duration too long: {text!r} (at most {MAX_DURATION_S // 86400}d)")
    return seconds


def _store_call(settings: Settings, call: Callable[[KeyStore], Awaitable[T]]) -> T:
    """``call`` on the configured key store; one line and exit 1 when it is unusable
    (Redis down, a keys file that is not a key store), not a traceback."""
    async def run() -> T:
        store = open_store(settings)
        try:
            return await call(store)
        finally:
            with contextlib.suppress(Exception):
                await store.close()

    try:
        return asyncio.run(run())
    except (RedisError, StoreUnavailable, OSError) as exc:
        _err(f"key store unavailable: {exc}")
        raise SystemExit(1) from None


def _identity(value: str) -> str:
    """argparse type: a key owner or tenant, or a JWT subject (forwarded as a header, e.g.
    X-LUKi-Principal): printable, not blank, at most 256 characters."""
    if not value.strip() or not value.isprintable() or len(value) > 256:
        raise argparse.ArgumentTypeError("must be 1..256 printable characters, not blank")
    return value


def _scope(value: str) -> str:
    """argparse type: one scope: no spaces (X-LUKi-Scopes is space-separated)."""
    if not value or not value.isprintable() or any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError(
            "one scope per --scope, without spaces (repeat --scope for more)")
    return value


def _err(message: str) -> None:
    print(f"luki-gateway: {message}", file=sys.stderr)


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        # No date shows it (stored before durations were capped): the raw epoch seconds,
        # so the listing still works and shows what is stored.
        return str(ts)


def _settings(args: argparse.Namespace) -> Settings:
    from ..cli import settings_from_args  # the shared flag/env/TOML precedence

    extra: dict[str, Any] = {}
    if getattr(args, "keys_file", None):
        extra["auth"] = {"api_keys_file": args.keys_file}
    return settings_from_args(args, **extra)


def _no_store(settings: Settings) -> bool:
    """True (and said on stderr) when no key store is configured: without one, the CLI
    would talk to an empty in-memory store of its own, not the gateway's keys."""
    if settings.redis_url or settings.auth.api_keys_file:
        return False
    _err("no key store: set API_KEYS_FILE (or --keys-file) or REDIS_URL")
    return True


def _record_json(record: ApiKeyRecord, now: float) -> dict[str, Any]:
    return {"id": record.id, "display": record.display, "owner": record.owner,
            "scopes": list(record.scopes), "env": record.env, "tenant": record.tenant,
            "created_at": _when(record.created_at), "last_used_at": _when(record.last_used_at),
            "expires_at": _when(record.expires_at), "status": record.status(now)}


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create a key, print it once on stdout."""
    settings = _settings(args)
    if _no_store(settings):
        return 2
    env: KeyEnv = args.env
    if env != "live" and settings.is_production and not settings.auth.allow_test_keys_in_production:
        _err(f"warning: sk_{env}_ keys are refused by a production gateway")
    key = generate_key(env)
    now = time.time()
    record = new_record(key, pepper=settings.auth.api_key_pepper, owner=args.owner,
                        scopes=tuple(dict.fromkeys(args.scope)), tenant=args.tenant,
                        expires_at=now + args.expires if args.expires else None, now=now)

    _store_call(settings, lambda store: store.add(record))
    if args.json:
        print(json.dumps({"key": key, **_record_json(record, now)}))
    else:
        print(key)
        _err(f"created key {record.id} ({record.display}) for {record.owner}, scopes: "
             f"{' '.join(record.scopes) or '-'}; store it now, it is not shown again")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List keys: id, prefix…last4, owner, scopes, created, last used, status."""
    settings = _settings(args)
    if _no_store(settings):
        return 2
    records = _store_call(settings, lambda store: store.list())
    now = time.time()
    rows = [_record_json(r, now) for r in records]
    if args.json:
        print(json.dumps(rows))
        return 0
    columns = ("id", "display", "owner", "scopes", "created_at", "last_used_at", "status")
    table = [[",".join(row[c]) if c == "scopes" else str(row[c] or "-") for c in columns]
             for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in table]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)))
    if not rows:
        _err("no keys")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke by id or by the whole key."""
    settings = _settings(args)
    if _no_store(settings):
        return 2
    target: str = args.key_or_id.strip()
    if target.startswith("sk_"):
        target = hash_key(target, settings.auth.api_key_pepper)

    record = _store_call(settings, lambda store: store.revoke(target))
    if record is None:
        _err("no such key (give the id from `keys list` or the whole key)")
        return 1
    if args.json:
        print(json.dumps(_record_json(record, time.time())))
    else:
        _err(f"revoked key {record.id} ({record.display}) of {record.owner}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Mint a dev HS256 JWT (refused in production)."""
    settings = _settings(args)
    try:
        token = mint_dev_token(settings, sub=args.sub, scopes=args.scope or (),
                               roles=args.role or (), ttl_s=args.ttl)
    except ValueError as exc:
        _err(str(exc))
        return 1
    print(token)
    return 0


def add_auth_commands(sub: Any, add_settings_flags: Callable[[argparse.ArgumentParser], None]
                      ) -> None:
    """Register `keys create|list|revoke` and `token` on the CLI."""

    def store_flags(p: argparse.ArgumentParser) -> None:
        add_settings_flags(p)
        p.add_argument("--redis-url", help="Redis key store (also REDIS_URL)")
        p.add_argument("--keys-file", help="file key store (also API_KEYS_FILE)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")

    def keys_help(_: argparse.Namespace) -> int:
        keys.print_help(sys.stderr)
        return 2

    keys.set_defaults(func=keys_help)

    p = keys_sub.add_parser("create", help="create a key and print it (once)")
    store_flags(p)
    p.add_argument("--owner", required=True, type=_identity, help="who the key belongs to")
    p.add_argument("--scope", action="append", default=[], type=_scope,
                   help="granted scope (repeatable)")
    p.add_argument("--env", choices=KEY_ENVS, default="live", help="key environment")
    p.add_argument("--expires", type=parse_duration, metavar="DURATION",
                   help="lifetime, e.g. 30d, 12h")
    p.add_argument("--tenant", type=_identity, help="tenant the key belongs to")
    p.set_defaults(func=cmd_keys_create)

    p = keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    store_flags(p)
    p.set_defaults(func=cmd_keys_list)

    p = keys_sub.add_parser("revoke", help="revoke a key by id or by the whole key")
    store_flags(p)
    p.add_argument("key_or_id", metavar="ID_OR_KEY")
    p.set_defaults(func=cmd_keys_revoke)

    p = sub.add_parser("token", help="mint a development JWT (HS256; refused in production)")
    add_settings_flags(p)
    p.add_argument("--sub", default="dev", type=_identity, help="subject (default: dev)")
    p.add_argument("--scope", action="append", type=_scope, help="scope (repeatable)")
    p.add_argument("--role", action="append", help="role claim (repeatable)")
    p.add_argument("--ttl", type=parse_duration, default=3600, help="lifetime (default 1h)")
    p.set_defaults(func=cmd_token)
