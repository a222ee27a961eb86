"""Configuration: the environment names of the public contract, and the projects file.

One source of truth: every TOUCHPOINT_* variable is read here and nowhere else.
"""

from __future__ import annotations

import os
import secrets
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration is invalid; the message names the setting and the fix."""


@dataclass(frozen=True)
class Stage:
    """A stage of the customer journey map and the touchpoints (steps) that belong to it."""

    name: str
    touchpoints: tuple[str | dict[str, str], ...]


@dataclass(frozen=True)
class Project:
    """One tracked property (a brand, an app family) with its keys and defaults."""

    id: str
    write_keys: tuple[str, ...]
    api_keys: tuple[str, ...]
    allowed_origins: tuple[str, ...] = ()
    goals: tuple[str, ...] = ()
    session_timeout_minutes: int = 30
    anonymize_ip: bool = True
    stages: tuple[Stage, ...] = ()
    abandonment_webhook: str = ""  # POSTed each abandonment signal (best effort; the API has them all)
    webhook_secret: str = ""  # signs each webhook body: X-Touchpoint-Signature: sha256=<HMAC hex>


@dataclass(frozen=True)
class Projects:
    """The projects, indexed by their keys for constant-time auth checks."""

    items: tuple[Project, ...]
    by_write_key: Mapping[str, Project] = field(default_factory=dict)
    by_api_key: Mapping[str, Project] = field(default_factory=dict)

    @classmethod
    def of(cls, items: list[Project]) -> Projects:
        by_write: dict[str, Project] = {}
        by_api: dict[str, Project] = {}
        for project in items:
            for key in project.write_keys:
                if key in by_write:
                    raise ConfigError(f"write key {key!r} is used by two projects")
                by_write[key] = project
            for key in project.api_keys:
                if key in by_api or key in by_write:
                    raise ConfigError(f"api key {key!r} is used twice or is also a write key")
                by_api[key] = project
        return cls(tuple(items), by_write, by_api)

    def get(self, project_id: str) -> Project | None:
        return next((p for p in self.items if p.id == project_id), None)


@dataclass(frozen=True)
class Settings:
    """Everything a Touchpoint process needs to know, read once at start."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./data")
    kafka_bootstrap: str | None = None
    kafka_topic: str = "touchpoint.events"
    kafka_dead_letter_topic: str = "touchpoint.rejected"
    kafka_partitions: int = 6
    kafka_group: str = "touchpoint-sessionizer"
    clickhouse_url: str = ""
    config_path: Path | None = None
    produce_timeout_s: float = 5.0
    batch_max_events: int = 50_000
    batch_max_seconds: float = 1.0
    batch_max_bytes: int = 48 << 20
    max_open_sessions: int = 2_000_000
    max_body_bytes: int = 1 << 20
    log_level: str = "info"
    ingest_id: str = "touchpoint-ingest"
    kafka_producers: int = 4
    kafka_compression: str = "zstd"
    ingest_workers: int = 1
    collect_prefix: str = ""
    allowed_lateness_s: int = 7 * 86_400
    retention_days: int | None = None  # None: keep everything
    query_timeout_s: float = 30.0
    query_max_rows: int = 2_000_000_000
    geoip_mmdb: str | None = None
    max_batch_events: int = 10_000
    max_event_bytes: int = 64 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("TOUCHPOINT_DATA_DIR", "./data")).resolve()
        default_ch = f"chdb://{data_dir / 'clickhouse'}"
        config = env.get("TOUCHPOINT_CONFIG")
        return cls(
            host=env.get("TOUCHPOINT_HOST", "127.0.0.1"),
            port=_int(env, "TOUCHPOINT_PORT", 8080),
            data_dir=data_dir,
            kafka_bootstrap=env.get("TOUCHPOINT_KAFKA_BOOTSTRAP") or None,
            kafka_topic=env.get("TOUCHPOINT_KAFKA_TOPIC", "touchpoint.events"),
            kafka_dead_letter_topic=env.get("TOUCHPOINT_KAFKA_DEAD_LETTER_TOPIC")
            or env.get("TOUCHPOINT_KAFKA_TOPIC", "touchpoint.events") + ".rejected",
            kafka_partitions=_int(env, "TOUCHPOINT_KAFKA_PARTITIONS", 6),
            kafka_group=env.get("TOUCHPOINT_KAFKA_GROUP", "touchpoint-sessionizer"),
            clickhouse_url=env.get("TOUCHPOINT_CLICKHOUSE_URL") or default_ch,
            config_path=Path(config).resolve() if config else None,
            produce_timeout_s=_float(env, "TOUCHPOINT_PRODUCE_TIMEOUT_SECONDS", 5.0),
            batch_max_events=_int(env, "TOUCHPOINT_BATCH_MAX_EVENTS", 50_000),
            batch_max_seconds=_float(env, "TOUCHPOINT_BATCH_MAX_SECONDS", 1.0),
            batch_max_bytes=_int(env, "TOUCHPOINT_BATCH_MAX_BYTES", 48 << 20),
            max_open_sessions=_int(env, "TOUCHPOINT_MAX_OPEN_SESSIONS", 2_000_000),
            max_body_bytes=_int(env, "TOUCHPOINT_MAX_BODY_BYTES", 1 << 20),
            log_level=env.get("TOUCHPOINT_LOG_LEVEL", "info").lower(),
            geoip_mmdb=env.get("TOUCHPOINT_GEOIP_MMDB") or None,
            allowed_lateness_s=_int(env, "TOUCHPOINT_ALLOWED_LATENESS_SECONDS", 7 * 86_400),
            retention_days=_retention(env),
            query_timeout_s=_float(env, "TOUCHPOINT_QUERY_TIMEOUT_SECONDS", 30.0),
            query_max_rows=_int(env, "TOUCHPOINT_QUERY_MAX_ROWS", 2_000_000_000),
            collect_prefix=_prefix(env.get("TOUCHPOINT_COLLECT_PREFIX", "")),
            max_batch_events=_int(env, "TOUCHPOINT_MAX_BATCH_EVENTS", 10_000),
            max_event_bytes=_int(env, "TOUCHPOINT_MAX_EVENT_BYTES", 64 * 1024),
            kafka_producers=_int(env, "TOUCHPOINT_KAFKA_PRODUCERS", 2),
            kafka_compression=_choice(env, "TOUCHPOINT_KAFKA_COMPRESSION", "zstd", ("none", "gzip", "lz4", "zstd")),
            ingest_workers=_int(env, "TOUCHPOINT_INGEST_WORKERS", 1),
            ingest_id=env.get("TOUCHPOINT_INGEST_ID")
            or f"touchpoint-ingest-{socket.gethostname()}-{_int(env, 'TOUCHPOINT_PORT', 8080)}",
        )

    @property
    def embedded_log_dir(self) -> Path:
        return self.data_dir / "log"


def _prefix(raw: str) -> str:
    """A path prefix for first-party collection (e.g. ``/t``): leading slash, no trailing one."""
    raw = raw.strip().strip("/")
    if raw and not all(part.replace("-", "").replace("_", "").isalnum() for part in raw.split("/")):
        raise ConfigError(f"TOUCHPOINT_COLLECT_PREFIX={raw!r}: use letters, digits, '-', '_' and '/'")
    return f"/{raw}" if raw else ""


def _retention(env: Mapping[str, str]) -> int | None:
    name = "TOUCHPOINT_RETENTION_DAYS"
    if not env.get(name):
        return None
    days = _int(env, name, 0)
    if days < 1:
        raise ConfigError(f"{name} must be a number of days of at least 1 (unset it to keep everything), got {days}")
    return days


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def parse_projects(doc: Mapping[str, Any], source: str) -> Projects:
    """Validate the ``[[projects]]`` tables of a projects file."""
    raw = doc.get("projects")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: needs at least one [[projects]] table")
    items: list[Project] = []
    for i, table in enumerate(raw):
        where = f"{source}: projects[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        pid = table.get("id")
        if not isinstance(pid, str) or not pid:
            raise ConfigError(f"{where}.id must be a non-empty string")
        timeout = table.get("session_timeout_minutes", 30)
        if not isinstance(timeout, int) or timeout <= 0:
            raise ConfigError(f"{where}.session_timeout_minutes must be a positive integer")
        anonymize = table.get("anonymize_ip", True)
        if not isinstance(anonymize, bool):
            raise ConfigError(f"{where}.anonymize_ip must be true or false")
        webhook = table.get("abandonment_webhook", "")
        if not isinstance(webhook, str) or (webhook and not webhook.startswith(("http://", "https://"))):
            raise ConfigError(f"{where}.abandonment_webhook must be an http:// or https:// URL")
        secret = table.get("webhook_secret", "")
        if not isinstance(secret, str):
            raise ConfigError(f"{where}.webhook_secret must be a string")
        items.append(
            Project(
                id=pid,
                write_keys=_strings(table, "write_keys", where, required=True),
                api_keys=_strings(table, "api_keys", where, required=True),
                allowed_origins=_strings(table, "allowed_origins", where),
                goals=_strings(table, "goals", where),
                session_timeout_minutes=timeout,
                anonymize_ip=anonymize,
                stages=_stages(table.get("stages", []), f"{where}.stages"),
                abandonment_webhook=webhook,
                webhook_secret=secret,
            )
        )
    if len({p.id for p in items}) != len(items):
        raise ConfigError(f"{source}: project ids must be unique")
    return Projects.of(items)


def _stages(raw: Any, where: str) -> tuple[Stage, ...]:
    """``[[projects.stages]] name = "awareness", touchpoints = ["Ad Clicked", {type = "page", path = "/"}]``."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of tables")
    stages = []
    for i, table in enumerate(raw):
        name = table.get("name") if isinstance(table, dict) else None
        touchpoints = table.get("touchpoints") if isinstance(table, dict) else None
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}[{i}].name must be a non-empty string")
        valid = (
            isinstance(touchpoints, list)
            and touchpoints
            and all(
                isinstance(t, str) or (isinstance(t, dict) and all(isinstance(v, str) for v in t.values()))
                for t in touchpoints
            )
        )
        if not valid or not isinstance(touchpoints, list):
            raise ConfigError(f"{where}[{i}].touchpoints must be a list of names or step tables")
        stages.append(Stage(name, tuple(touchpoints)))
    return tuple(stages)


def _strings(table: Mapping[str, Any], name: str, where: str, required: bool = False) -> tuple[str, ...]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{name} must be a list of non-empty strings")
    if required and not value:
        raise ConfigError(f"{where}.{name} needs at least one key")
    return tuple(value)


DEFAULT_PROJECTS_FILE = "projects.toml"


def load_projects(settings: Settings) -> tuple[Projects, Path, bool]:
    """Load the projects file; without TOUCHPOINT_CONFIG, create a ``default`` project.

    The generated file lives in the data directory so keys stay the same across
    restarts and across services sharing that directory. Returns the projects,
    the file they came from, and whether it was just created.
    """
    path = settings.config_path
    created = False
    if path is None:
        path = settings.data_dir / DEFAULT_PROJECTS_FILE
        if not path.exists():
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            write_key = "wk_" + secrets.token_urlsafe(18)
            api_key = "ak_" + secrets.token_urlsafe(24)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(
                "# Created by Touchpoint because TOUCHPOINT_CONFIG was not set.\n"
                "[[projects]]\n"
                'id = "default"\n'
                f'write_keys = ["{write_key}"]\n'
                f'api_keys = ["{api_key}"]\n'
                'allowed_origins = ["*"]\n'
                "# Sessions that time out without one of these events are abandonment signals\n"
                '# (GET /v1/abandonments), e.g. goals = ["Order Completed"].\n'
                "goals = []\n"
                "session_timeout_minutes = 30\n"
            )
            tmp.replace(path)
            created = True
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"TOUCHPOINT_CONFIG: {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_projects(doc, str(path)), path, created
