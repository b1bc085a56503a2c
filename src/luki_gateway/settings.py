"""Settings: one frozen object, built once from defaults < TOML file < environment.

Each section is a frozen dataclass; a field's metadata names its environment variable
(``env``), marks secrets (``secret``) and adds marshmallow validators (``validate``).
The marshmallow schema is derived from the dataclasses, so adding a setting is one line.
TOML tables map to sections (``[ratelimit] per_min = 60``); top-level keys to ``Settings``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate

Environment = Literal["development", "staging", "production"]
DEFAULT_SECRET_MARK = "change-me"


class SettingsError(Exception):
    """A configuration value is wrong; the message names the key and the problem."""


def _field(default: Any, *, env: str | None = None, secret: bool = False,
           validators: Any = None) -> Any:
    meta: dict[str, Any] = {"env": env, "secret": secret, "validate": validators}
    if isinstance(default, Mapping):
        # Read-only mappings are shared safely; dataclasses only wants a factory for them.
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _positive() -> validate.Range:
    return validate.Range(min=0, min_inclusive=False)


def _non_negative() -> validate.Range:
    return validate.Range(min=0)


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RouteConfig:
    """One declarative proxy route (TOML ``[[routes]]``)."""

    prefix: str
    upstream: str
    methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")
    # method -> scopes required; "*" is the fallback for methods not listed.
    scopes: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    timeout_s: float | None = None
    max_body_bytes: int | None = None
    cost: int = 1
    retries: bool = True
    strip_prefix: bool = False
    rewrite: str | None = None


DEFAULT_UPSTREAMS: Mapping[str, str] = types.MappingProxyType({
    "agent": "http://127.0.0.1:9101",
    "memory": "http://127.0.0.1:9102",
    "cognitive": "http://127.0.0.1:9103",
    "engagement": "http://127.0.0.1:9104",
    "reports": "http://127.0.0.1:9105",
})

# Environment variable -> upstream name (names from the LUKi design).
UPSTREAM_ENV: Mapping[str, str] = types.MappingProxyType({
    "AGENT_URL": "agent",
    "MEMORY_URL": "memory",
    "COG_URL": "cognitive",
    "ENG_URL": "engagement",
    "REP_URL": "reports",
})

DEFAULT_ROUTES: tuple[RouteConfig, ...] = (
    RouteConfig(prefix="/v1/elr", upstream="memory",
                scopes={"GET": ("elr:read",), "HEAD": ("elr:read",), "*": ("elr:write",)}),
    RouteConfig(prefix="/v1/activities", upstream="engagement",
                scopes={"GET": ("activities:read",), "*": ("activities:write",)}),
    RouteConfig(prefix="/v1/reports", upstream="reports", cost=5,
                scopes={"GET": ("reports:read",), "*": ("reports:write",)}),
    RouteConfig(prefix="/v1/cognitive", upstream="cognitive",
                scopes={"GET": ("cognitive:read",), "*": ("cognitive:write",)}),
)


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """How upstreams are reached: sessions, timeouts, breakers and health probes."""

    timeout_s: float = _field(30.0, env="UPSTREAM_TIMEOUT_S", validators=_positive())
    connect_timeout_s: float = _field(2.0, validators=_positive())
    idle_read_timeout_s: float = _field(60.0, validators=_positive())
    limit_per_host: int = _field(1024, validators=_positive())
    # Idle upstream connections are closed after this long: shorter than the usual server
    # keep-alive (uvicorn and Node 5 s), so the gateway never writes into a connection the
    # upstream is closing (a POST cannot be retried safely after that race).
    keepalive_s: float = _field(4.0, validators=_positive())
    dns_cache_ttl_s: int = _field(60, validators=_non_negative())
    retries: int = _field(2, validators=_non_negative())
    retry_backoff_s: float = _field(0.05, validators=_non_negative())
    breaker_failures: int = _field(5, validators=_positive())
    breaker_failure_ratio: float = _field(0.5, validators=validate.Range(min=0, max=1))
    breaker_window: int = _field(20, validators=_positive())
    breaker_cooldown_s: float = _field(30.0, validators=_positive())
    breaker_half_open_probes: int = _field(1, validators=_positive())
    health_timeout_s: float = _field(2.0, validators=_positive())
    health_cache_s: float = _field(2.0, validators=_non_negative())
    health_path: str = _field("/health")
    critical: tuple[str, ...] = _field(("agent", "memory"))
    small_body_bytes: int = _field(65536, validators=_non_negative())


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceTokenConfig:
    """A static internal caller: its name, the SHA-256 hex of its token, its scopes."""

    name: str
    # A typo would never match and silently lock the service out: validate the shape.
    sha256: str = dataclasses.field(metadata={"validate": validate.Regexp(
        r"^[0-9a-fA-F]{64}$", error="must be 64 hex characters (sha256sum of the token)")})
    scopes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may call: API keys, JWTs, service tokens, tickets."""

    enabled: bool = _field(True, env="AUTH_ENABLED")
    api_keys_file: str = _field("", env="API_KEYS_FILE")
    api_key_pepper: str = _field(f"dev-pepper-{DEFAULT_SECRET_MARK}", env="API_KEY_PEPPER",
                                 secret=True)
    allow_test_keys_in_production: bool = _field(False)
    # >= 32 bytes: PyJWT warns about shorter HS256 secrets (RFC 7518 3.2).
    jwt_secret: str = _field(f"dev-jwt-secret-{DEFAULT_SECRET_MARK}-for-local-use-only",
                             env="JWT_SECRET", secret=True)
    jwt_public_key_path: str = _field("", env="JWT_PUBLIC_KEY_PATH")
    jwt_jwks_url: str = _field("", env="JWT_JWKS_URL")
    jwt_issuer: str = _field("", env="JWT_ISSUER")
    jwt_audience: str = _field("", env="JWT_AUDIENCE")
    jwt_leeway_s: int = _field(30, validators=_non_negative())
    jwt_require_exp: bool = _field(True)
    jwks_refetch_cooldown_s: float = _field(60.0, validators=_non_negative())
    role_scopes: Mapping[str, tuple[str, ...]] = _field(types.MappingProxyType({}))
    service_tokens: tuple[ServiceTokenConfig, ...] = _field(())
    ticket_ttl_s: int = _field(600, validators=_positive())
    ws_auth_timeout_s: float = _field(5.0, validators=_positive())
    jwks_timeout_s: float = _field(3.0, validators=_positive())
    # Positive API-key lookups are reused this long (revocation must land within 1 s).
    key_cache_s: float = _field(0.5, validators=validate.Range(min=0, max=1))
    # last_used is written at most this often per key (no store write per request).
    last_used_interval_s: float = _field(60.0, validators=_positive())
    max_token_bytes: int = _field(8192, validators=_positive())


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Request rate limits, concurrent-stream leases and token quotas."""

    enabled: bool = _field(True, env="RATE_LIMIT_ENABLED")
    per_min: int = _field(60, env="RATE_LIMIT_PER_MIN", validators=_non_negative())
    per_hour: int = _field(1000, env="RATE_LIMIT_PER_HOUR", validators=_non_negative())
    global_per_min: int = _field(0, validators=_non_negative())
    per_ip_per_min: int = _field(0, validators=_non_negative())
    failure_mode: str = _field("open", env="RATE_LIMIT_FAILURE_MODE",
                               validators=validate.OneOf(["open", "closed"]))
    publish_failure_mode: str = _field("closed", validators=validate.OneOf(["open", "closed"]))
    max_streams: int = _field(5, validators=_non_negative())
    max_ws_per_user: int = _field(2, validators=_non_negative())
    lease_ttl_s: float = _field(30.0, validators=_positive())
    daily_output_tokens: int = _field(0, validators=_non_negative())


def _slow_consumer_policies(value: Mapping[str, str]) -> None:
    unknown = sorted(set(value.values()) - {"coalesce", "drop_oldest", "disconnect"})
    if unknown:
        raise ValidationError(f"unknown policy {unknown[0]!r}: use coalesce, drop_oldest "
                              "or disconnect")


@dataclasses.dataclass(frozen=True, slots=True)
class HubSettings:
    """Channels, subscriber queues, history and the streaming endpoints."""

    queue_max_bytes: int = _field(1_048_576, validators=_positive())
    queue_max_messages: int = _field(1000, validators=_positive())
    slow_consumer_policy: str = _field(
        "drop_oldest", validators=validate.OneOf(["coalesce", "drop_oldest", "disconnect"]))
    # channel glob -> policy, e.g. {"broadcast:prices*" = "coalesce"}
    channel_policies: Mapping[str, str] = _field(types.MappingProxyType({}),
                                                 validators=_slow_consumer_policies)
    history_size: int = _field(100, validators=_non_negative())
    history_ttl_s: int = _field(300, validators=_positive())
    publish_max_bytes: int = _field(65536, validators=_positive())
    ws_max_message_bytes: int = _field(65536, validators=_positive())
    ws_heartbeat_s: float = _field(30.0, validators=_positive())
    ws_max_subscriptions: int = _field(100, validators=_positive())
    ws_max_malformed: int = _field(10, validators=_positive())
    sse_heartbeat_s: float = _field(15.0, validators=_positive())
    sse_retry_ms: int = _field(3000, validators=_positive())
    broadcast_subscribe: bool = _field(True)
    # Silent pub/sub link probed with PING after this long; no answer as long again: reconnect.
    redis_liveness_s: float = _field(5.0, validators=_positive())
    session_subscribe: str = _field("owner", validators=validate.OneOf(["owner", "any", "none"]))


@dataclasses.dataclass(frozen=True, slots=True)
class ChatSettings:
    """Agent turns: timeouts, resume, per-socket concurrency, upstream dialect."""

    agent_protocol: str = _field("native", env="AGENT_PROTOCOL",
                                 validators=validate.OneOf(["native", "openai"]))
    agent_model: str = _field("luki-agent")
    first_token_timeout_s: float = _field(30.0, validators=_positive())
    idle_timeout_s: float = _field(60.0, validators=_positive())
    resume: bool = _field(True)
    resume_grace_s: float = _field(15.0, validators=_non_negative())
    resume_ttl_s: int = _field(600, validators=_positive())
    resume_max_events: int = _field(10000, validators=_positive())
    max_turns_per_socket: int = _field(4, validators=_positive())
    max_message_chars: int = _field(32768, validators=_positive())
    max_context_bytes: int = _field(65536, validators=_positive())


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The whole effective configuration of one gateway process."""

    environment: str = _field("development", env="ENVIRONMENT", validators=validate.OneOf(
        ["development", "staging", "production"]))
    host: str = _field("127.0.0.1", env="HOST")
    port: int = _field(8080, env="PORT", validators=validate.Range(min=0, max=65535))
    workers: int = _field(1, env="WORKERS", validators=validate.Range(min=1, max=256))
    log_level: str = _field("INFO", env="LOG_LEVEL", validators=validate.OneOf(
        ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]))
    log_format: str = _field("auto", env="LOG_FORMAT",
                             validators=validate.OneOf(["auto", "json", "console"]))
    access_log: bool = _field(True, env="ACCESS_LOG")
    redis_url: str = _field("", env="REDIS_URL", secret=True)
    redis_prefix: str = _field("lgw:", env="REDIS_PREFIX")
    redis_timeout_s: float = _field(0.2, env="REDIS_TIMEOUT_S", validators=_positive())
    max_body_bytes: int = _field(10 * 1024 * 1024, env="MAX_BODY_BYTES",
                                 validators=_positive())
    cors_origins: tuple[str, ...] = _field((), env="CORS_ORIGINS")
    trusted_proxies: tuple[str, ...] = _field((), env="TRUSTED_PROXIES")
    shutdown_grace_s: float = _field(5.0, env="SHUTDOWN_GRACE_S", validators=_positive())
    # After SIGTERM the listener stays open this long (within the grace) with /ready at 503,
    # so a load balancer polling /ready takes the process out before connections are refused.
    shutdown_drain_s: float = _field(1.0, env="SHUTDOWN_DRAIN_S", validators=_non_negative())
    upstreams: Mapping[str, str] = _field(DEFAULT_UPSTREAMS)
    routes: tuple[RouteConfig, ...] = _field(DEFAULT_ROUTES)
    upstream: UpstreamSettings = dataclasses.field(default_factory=UpstreamSettings)
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)
    ratelimit: RateLimitSettings = dataclasses.field(default_factory=RateLimitSettings)
    hub: HubSettings = dataclasses.field(default_factory=HubSettings)
    chat: ChatSettings = dataclasses.field(default_factory=ChatSettings)

    @property
    def is_development(self) -> bool:
        """True when running with development conveniences (dev keys, console logs)."""
        return self.environment == "development"

    @property
    def is_production(self) -> bool:
        """True for ENVIRONMENT=production, where default secrets are refused."""
        return self.environment == "production"

    @property
    def effective_cors_origins(self) -> tuple[str, ...]:
        """CORS origins: the configured ones, or every origin in development only."""
        if self.cors_origins:
            return self.cors_origins
        return ("*",) if self.is_development else ()

    def replace(self, **changes: Any) -> Settings:
        """A copy with some top-level fields changed (sections are replaced whole)."""
        return dataclasses.replace(self, **changes)


SETTINGS = web.AppKey("settings", Settings)

SECTIONS: Mapping[str, type[Any]] = types.MappingProxyType({
    "upstream": UpstreamSettings,
    "auth": AuthSettings,
    "ratelimit": RateLimitSettings,
    "hub": HubSettings,
    "chat": ChatSettings,
})


def ws_frame_limit(settings: Settings) -> int:
    """The largest WebSocket message read: ``hub.ws_max_message_bytes``, raised to fit the
    largest valid ``chat`` however its JSON is escaped (12 bytes for a character that
    ``json.dumps`` writes as a surrogate pair, 6 for any other escaped one)."""
    chat = settings.chat
    return max(settings.hub.ws_max_message_bytes,
               12 * chat.max_message_chars + 6 * chat.max_context_bytes + 4096)


# ---------------------------------------------------------------------------------------
# Schema derived from the dataclasses
# ---------------------------------------------------------------------------------------


def _marshmallow_field(tp: Any, validators: Any) -> fields.Field[Any]:
    kw: dict[str, Any] = {}
    if validators is not None:
        kw["validate"] = validators
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _marshmallow_field(inner[0], validators).__class__(allow_none=True, **kw)
    if tp is bool:
        return fields.Boolean(**kw)
    if tp is int:
        return fields.Integer(strict=False, **kw)
    if tp is float:
        return fields.Float(allow_nan=False, **kw)
    if tp is str:
        return fields.String(**kw)
    if origin is tuple:
        if isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
            return fields.List(fields.Nested(_schema_for(args[0])), **kw)
        return fields.List(_marshmallow_field(args[0], None), **kw)
    if origin in (Mapping, dict, typing.Mapping):
        value = args[1]
        value_field = (fields.List(fields.String()) if typing.get_origin(value) is tuple
                       else _marshmallow_field(value, None))
        return fields.Dict(keys=fields.String(), values=value_field, **kw)
    raise TypeError(f"unsupported settings type {tp!r}")


@functools.cache  # one schema class per dataclass, derived once
def _schema_for(cls: type[Any]) -> type[Schema]:
    hints = typing.get_type_hints(cls)
    attrs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and tp in SECTIONS.values():
            attrs[f.name] = fields.Nested(_schema_for(tp))  # type: ignore[arg-type]
            continue
        fld = _marshmallow_field(tp, f.metadata.get("validate"))
        no_default = (f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING)
        fld.required = no_default
        attrs[f.name] = fld
    return Schema.from_dict(attrs, name=f"{cls.__name__}Schema")


def _build(cls: type[Any], data: Mapping[str, Any]) -> Any:
    """Turn validated plain data into (nested) frozen dataclasses."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        tp = hints[f.name]
        kwargs[f.name] = _convert(tp, value)
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value)  # type: ignore[arg-type]
    if origin is tuple:
        return tuple(_convert(args[0], v) for v in value)
    if origin in (Mapping, dict, typing.Mapping):
        return types.MappingProxyType({k: _convert(args[1], v) for k, v in value.items()})
    return value


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------


def _env_value(tp: Any, raw: str) -> Any:
    """Environment strings: comma lists for tuples, JSON-free scalars otherwise."""
    if typing.get_origin(tp) is tuple:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if tp is bool:
        return raw.strip().lower()
    return raw


def _from_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Collect settings from the environment; also return path -> env name for errors."""
    data: dict[str, Any] = {}
    names: dict[str, str] = {}
    for cls, section in [(Settings, None), *((c, n) for n, c in SECTIONS.items())]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            env = f.metadata.get("env") if f.metadata else None
            if not env or env not in environ:
                continue
            target = data if section is None else data.setdefault(section, {})
            target[f.name] = _env_value(hints[f.name], environ[env])
            names[f.name if section is None else f"{section}.{f.name}"] = env
    upstreams = {name: environ[env] for env, name in UPSTREAM_ENV.items() if environ.get(env)}
    if upstreams:
        data["upstreams"] = upstreams
        for env, name in UPSTREAM_ENV.items():
            if name in upstreams:
                names[f"upstreams.{name}"] = env
    return data, names


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file {path}: not found") from None
    except PermissionError:
        raise SettingsError(f"config file {path}: not readable (permission denied)") from None
    except IsADirectoryError:
        raise SettingsError(f"config file {path}: is a directory") from None
    except UnicodeDecodeError:
        raise SettingsError(f"config file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot read ({exc.strerror})") from None


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        mergeable = key in SECTIONS or key == "upstreams"
        if mergeable and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _first_error(messages: Any, prefix: str = "") -> tuple[str, str]:
    if isinstance(messages, Mapping):
        key, inner = next(iter(messages.items()))
        return _first_error(inner, f"{prefix}.{key}" if prefix else str(key))
    if isinstance(messages, list) and messages:
        if isinstance(messages[0], str):
            return prefix, messages[0]
        return _first_error(messages[0], prefix)
    return prefix, str(messages)


def load_settings(
    *,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Effective settings: defaults < TOML (``config_path`` or ``LUKI_CONFIG``) < env < overrides.

    ``overrides`` (from CLI flags) use the TOML shape. Raises :class:`SettingsError` with
    one line naming the key and the problem.
    """
    environ = os.environ if environ is None else environ
    path = config_path or environ.get("LUKI_CONFIG") or None
    data: dict[str, Any] = _read_toml(path) if path else {}
    # A file's [upstreams] replaces the LUKi set; env and flags then override single names.
    if not isinstance(data.get("upstreams"), Mapping):
        data.setdefault("upstreams", dict(DEFAULT_UPSTREAMS))
    env_data, env_names = _from_env(environ)
    data = _merge(data, env_data)
    if overrides:
        data = _merge(data, overrides)
    if isinstance(data.get("log_level"), str):
        data = {**data, "log_level": data["log_level"].upper()}  # "debug" as well as "DEBUG"
    top_level = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(data) - top_level)
    if unknown:
        raise SettingsError(f"{unknown[0]}: unknown setting{_did_you_mean(unknown[0], top_level)}")
    for name, section_cls in SECTIONS.items():
        section = data.get(name)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise SettingsError(f"{name}: must be a table")
        known = {f.name for f in dataclasses.fields(section_cls)}
        extra = sorted(set(section) - known)
        if extra:
            raise SettingsError(
                f"{name}.{extra[0]}: unknown setting{_did_you_mean(extra[0], known)}")
    try:
        loaded = _schema_for(Settings)().load(data)
    except ValidationError as exc:
        key, problem = _first_error(exc.messages)
        env = env_names.get(key)
        label = f"{env} ({key})" if env else key
        value = _lookup(data, key)
        shown = "***" if _is_secret_path(key) else repr(value)
        raise SettingsError(f"{label}: {problem} (got {shown})") from None
    settings: Settings = _build(Settings, loaded)
    _check_routes(settings)
    return settings


def _did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def _is_secret_path(dotted: str) -> bool:
    parts = dotted.split(".")
    cls: Any = Settings
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return False
        match = next((f for f in dataclasses.fields(cls) if f.name == part), None)
        if match is None:
            return False
        if match.metadata.get("secret"):
            return True
        cls = typing.get_type_hints(cls).get(part)
    return False


ROUTE_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _check_routes(settings: Settings) -> None:
    if settings.redis_url and not settings.redis_url.startswith(REDIS_SCHEMES):
        raise SettingsError("REDIS_URL (redis_url): must be a redis://, rediss:// or unix:// "
                            "URL (got ***)")
    prefixes: set[str] = set()
    for i, route in enumerate(settings.routes):
        if not route.prefix.startswith("/"):
            raise SettingsError(f"routes.{i}.prefix: must start with '/' (got {route.prefix!r})")
        if "//" in route.prefix or any(seg in (".", "..") for seg in route.prefix.split("/")):
            raise SettingsError(f"routes.{i}.prefix: no empty, '.' or '..' segments "
                                f"(got {route.prefix!r})")
        same = route.prefix.rstrip("/") or "/"  # "/v1/a/" and "/v1/a" are one prefix
        if same in prefixes:
            raise SettingsError(f"routes.{i}.prefix: {route.prefix!r} is declared twice")
        prefixes.add(same)
        if route.cost < 0:
            raise SettingsError(f"routes.{i}.cost: must be 0 (free) or more (got {route.cost})")
        unknown = [m for m in route.methods if m.upper() not in ROUTE_METHODS]
        if unknown:
            raise SettingsError(f"routes.{i}.methods: unknown method {unknown[0]!r} "
                                f"(known: {', '.join(sorted(ROUTE_METHODS))})")
        if route.upstream not in settings.upstreams:
            raise SettingsError(
                f"routes.{i}.upstream: unknown upstream {route.upstream!r} "
                f"(known: {', '.join(sorted(settings.upstreams))})")
    for name, url in settings.upstreams.items():
        if not url.startswith(("http://", "https://")):
            env = next((e for e, n in UPSTREAM_ENV.items() if n == name), None)
            label = f"{env} (upstreams.{name})" if env else f"upstreams.{name}"
            raise SettingsError(f"{label}: must be an http:// or https:// URL (got {url!r})")


# ---------------------------------------------------------------------------------------
# Presentation and production checks
# ---------------------------------------------------------------------------------------


def _mask(value: Any) -> Any:
    if not value:
        return value
    if isinstance(value, str) and "://" in value:
        return _mask_url(value)
    return "***"


def _mask_url(value: str) -> str:
    """A URL stays useful masked: only its password is the secret."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return "***"
    if password is None:
        return value
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def as_dict(settings: Any, *, masked: bool = True) -> dict[str, Any]:
    """Plain-data view of settings (secrets masked), for ``config check``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if masked and f.metadata.get("secret"):
            value = _mask(value)
        out[f.name] = _plain(value, masked)
    return out


def _plain(value: Any, masked: bool) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_dict(value, masked=masked)
    if isinstance(value, Mapping):
        return {k: _plain(v, masked) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v, masked) for v in value]
    if masked and isinstance(value, str) and "://" in value and "@" in value:
        return _mask_url(value)  # an upstream or JWKS URL with credentials in it
    return value


def settings_data(settings: Settings) -> dict[str, Any]:
    """Unmasked plain data that ``load_settings(environ={}, overrides=...)`` turns back into
    equal settings (how ``serve --workers N`` hands them to worker processes)."""
    return as_dict(settings, masked=False)


def config_warnings(settings: Settings) -> list[str]:
    """Settings that are valid but cannot do what they look like they do."""
    warnings: list[str] = []
    limits = settings.ratelimit
    if limits.enabled:
        for i, route in enumerate(settings.routes):
            for name, limit in (("per_min", limits.per_min), ("per_hour", limits.per_hour)):
                if 0 < limit < route.cost:
                    warnings.append(f"routes.{i}.cost ({route.cost}) is above ratelimit.{name} "
                                    f"({limit}): every request to {route.prefix} is refused")
    return warnings


def production_problems(settings: Settings) -> list[str]:
    """What makes this config unsafe for production (empty when fine or not production)."""
    if not settings.is_production:
        return []
    problems: list[str] = []
    if DEFAULT_SECRET_MARK in settings.auth.api_key_pepper:
        problems.append("API_KEY_PEPPER (auth.api_key_pepper) keeps the default secret")
    if settings.auth.jwt_secret and DEFAULT_SECRET_MARK in settings.auth.jwt_secret:
        problems.append("JWT_SECRET (auth.jwt_secret) keeps the default secret; set your own, "
                        "or set it empty when JWT_PUBLIC_KEY_PATH / JWT_JWKS_URL verify tokens")
    if "*" in settings.cors_origins:
        problems.append("CORS_ORIGINS allows every origin ('*')")
    if not settings.auth.enabled:
        problems.append("auth is disabled (AUTH_ENABLED=false)")
    return problems
