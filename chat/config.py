"""Settings read once from the environment (SPEC §1). Secrets never appear in repr().

The environment is parsed and validated by `EnvSettings` (pydantic-settings): a bad value is one
line naming the variable and the fix (`ConfigError`), and `Settings.from_env` turns the validated
values into the frozen `Settings` the rest of the code uses (tests construct it directly).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///backstage.db"
DEFAULT_FCM_ENDPOINT = "https://fcm.googleapis.com"
MIN_JWT_SECRET_CHARS = 32


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


class ConfigError(Exception):
    """Bad settings: one line per bad variable, each naming the variable and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def report_config_errors(problems: list[str]) -> None:
    """One line per bad variable on stderr, as JSON when LOG_FORMAT=json (as the log would be)."""
    as_json = os.environ.get("LOG_FORMAT", "").strip() == "json"
    for line in problems:
        if as_json:
            print(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "level": "ERROR",
                              "logger": "backstage.config", "message": f"configuration error: {line}",
                              "variable": line.split("=", 1)[0].split(":", 1)[0]}), file=sys.stderr)
        else:
            print(f"configuration error: {line}", file=sys.stderr)


# Per-variable advice, used when pydantic's own message would not say what to write instead.
_HINTS = {
    "PORT": "must be a TCP port number 1-65535, e.g. PORT=8080",
    "LOG_LEVEL": "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    "LOG_FORMAT": "must be text or json",
    "PUSH_WORKER": "must be inline (pushes sent by the web process) or external "
                   "(run `python -m notifications.worker`)",
    "PUSH_WORKER_THREAD": "must be 1 or 0 (true/false, yes/no also work)",
    "WEBHOOK_WORKER": "must be inline (webhooks sent by the web process) or external "
                      "(run `python -m notifications.worker`)",
}
MIN_WEBHOOK_SECRET_CHARS = 32

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


def _env(name: str, default: Any = None, **kw: Any) -> Any:
    return Field(default, validation_alias=AliasChoices(name), **kw)


class EnvSettings(BaseSettings):
    """The environment variables of SPEC §1 (and the documented tuning ones), validated."""

    # Only the mapping handed to from_env is read (os.environ by default): no .env file, no
    # secrets dir, so what a test passes is exactly what is parsed.
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=True, populate_by_name=False)

    host: str = _env("HOST", "127.0.0.1")
    port: int = _env("PORT", 8080, ge=1, le=65535)
    database_url: str = _env("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url: str | None = _env("REDIS_URL")
    redis_prefix: str = _env("REDIS_PREFIX", "backstage")
    jwt_secret: SecretStr | None = _env("JWT_SECRET")
    jwt_public_key: SecretStr | None = _env("JWT_PUBLIC_KEY")
    api_keys: SecretStr | None = _env("API_KEYS")
    firebase_credentials: str | None = _env("FIREBASE_CREDENTIALS")
    fcm_endpoint: str = _env("FCM_ENDPOINT", DEFAULT_FCM_ENDPOINT)
    push_worker: Literal["inline", "external"] = _env("PUSH_WORKER", "inline")
    allowed_origins: str | None = _env("ALLOWED_ORIGINS")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _env("LOG_LEVEL", "INFO")
    log_format: Literal["text", "json"] = _env("LOG_FORMAT", "text")
    presence_heartbeat_s: PositiveFloat = _env("PRESENCE_HEARTBEAT_S", 5.0)
    presence_dead_after_s: PositiveFloat = _env("PRESENCE_DEAD_AFTER_S", 20.0)
    presence_window_s: Annotated[float, Field(ge=0)] = _env("PRESENCE_WINDOW_S", 0.0)
    room_linger_s: Annotated[float, Field(ge=0)] = _env("ROOM_LINGER_S", 30.0)
    ping_interval: PositiveFloat = _env("SOCKETIO_PING_INTERVAL_S", 25.0)
    ping_timeout: PositiveFloat = _env("SOCKETIO_PING_TIMEOUT_S", 20.0)
    push_worker_thread: bool = _env("PUSH_WORKER_THREAD", True)
    connect_timeout_s: PositiveFloat = _env("SOCKETIO_CONNECT_TIMEOUT_S", 10.0)
    setup_concurrency: Annotated[int, Field(ge=0)] = _env("SOCKETIO_SETUP_CONCURRENCY", 200)
    setup_hold_s: PositiveFloat = _env("SOCKETIO_SETUP_HOLD_S", 3.0)
    listen_backlog: PositiveInt = _env("LISTEN_BACKLOG", 4096)
    max_sockets_per_user: PositiveInt = _env("MAX_SOCKETS_PER_USER", 10)
    join_rate_per_s: PositiveFloat = _env("JOIN_RATE_PER_S", 5.0)
    join_burst: PositiveInt = _env("JOIN_BURST", 20)
    http_body_timeout_s: PositiveFloat = _env("HTTP_BODY_TIMEOUT_S", 10.0)
    max_bad_packets: PositiveInt = _env("MAX_BAD_PACKETS", 5)
    socket_max_buffer_bytes: PositiveInt = _env("SOCKET_MAX_BUFFER_BYTES", 1024 * 1024)
    socket_max_queued_packets: PositiveInt = _env("SOCKET_MAX_QUEUED_PACKETS", 1000)
    socket_stall_s: PositiveFloat = _env("SOCKET_STALL_S", 10.0)
    webhook_url: str | None = _env("WEBHOOK_URL")
    webhook_secret: SecretStr | None = _env("WEBHOOK_SECRET")
    webhook_events: str | None = _env("WEBHOOK_EVENTS")
    webhook_worker: Literal["inline", "external"] = _env("WEBHOOK_WORKER", "inline")
    webhook_timeout_s: PositiveFloat = _env("WEBHOOK_TIMEOUT_S", 10.0)
    webhook_lease_s: PositiveFloat = _env("WEBHOOK_LEASE_S", 60.0)
    webhook_retry_base_s: PositiveFloat = _env("WEBHOOK_RETRY_BASE_S", 60.0)
    webhook_retry_cap_s: PositiveFloat = _env("WEBHOOK_RETRY_CAP_S", 6 * 3600.0)
    webhook_max_age_s: PositiveFloat = _env("WEBHOOK_MAX_AGE_S", 3 * 24 * 3600.0)
    webhook_poll_s: PositiveFloat = _env("WEBHOOK_POLL_S", 1.0)
    blob_url: str | None = _env("BLOB_URL")
    max_upload_bytes: PositiveInt = _env("MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
    image_decode_concurrency: PositiveInt = _env("IMAGE_DECODE_CONCURRENCY", 2)
    attachment_url_ttl_s: PositiveInt = _env("ATTACHMENT_URL_TTL_S", 3600)
    attachment_url_secret: SecretStr | None = _env("ATTACHMENT_URL_SECRET")
    upload_ttl_s: PositiveFloat = _env("UPLOAD_TTL_S", 24 * 3600.0)
    upload_sweep_interval_s: PositiveFloat = _env("UPLOAD_SWEEP_INTERVAL_S", 600.0)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        value = value.upper() if isinstance(value, str) else value
        return "WARNING" if value == "WARN" else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("is not a URL; use mysql+aiomysql://USER:PASSWORD@HOST:3306/DB "
                             "or sqlite+aiosqlite:///PATH") from None
        backend, driver = url.get_backend_name(), url.get_driver_name()
        if backend in ("mysql", "mariadb") and driver != "aiomysql":
            raise ValueError(f"{url.drivername}:// is a blocking driver; write mysql+aiomysql:// "
                             "instead (mysql+aiomysql://USER:PASSWORD@HOST:3306/DB)")
        if backend == "sqlite" and driver != "aiosqlite":
            raise ValueError("uses a blocking SQLite driver; use sqlite+aiosqlite:///PATH")
        if backend not in ("mysql", "mariadb", "sqlite"):
            raise ValueError(f"backend {backend!r} is not supported; use mysql+aiomysql:// "
                             "(MariaDB/MySQL) or sqlite+aiosqlite:/// (demo, tests)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://, e.g. redis://HOST:6379/0")
        return value

    @field_validator("firebase_credentials")
    @classmethod
    def _credentials_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError("names no readable file; set it to the path of the service account "
                             "JSON key downloaded from the Firebase console, or unset it to skip pushes")
        return value

    @field_validator("blob_url")
    @classmethod
    def _blob_url(cls, value: str | None) -> str | None:
        from chat.blobs import check_blob_url

        return None if value is None else check_blob_url(value)

    @field_validator("fcm_endpoint")
    @classmethod
    def _fcm_endpoint(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL, e.g. https://fcm.googleapis.com")
        return value.rstrip("/")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError("must be an http(s) URL of your backend's endpoint, "
                                 "e.g. https://backend.example.com/backstage/webhooks")
        return value

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, value: str | None) -> str | None:
        from webhooks import EVENT_TYPES

        unknown = [e for e in _split(value) if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type {', '.join(unknown)}; use a comma-separated list of "
                             f"{', '.join(EVENT_TYPES)}")
        return value


def _webhook_problems(v: EnvSettings) -> list[str]:
    """Cross-variable checks of the webhook settings (one line per problem, like the others)."""
    out: list[str] = []
    secrets_ = _split(v.webhook_secret.get_secret_value() if v.webhook_secret else None)
    if v.webhook_url is not None:
        if not secrets_:
            out.append("WEBHOOK_SECRET: required when WEBHOOK_URL is set (the key webhooks are signed with); "
                       "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        elif any(len(s) < MIN_WEBHOOK_SECRET_CHARS for s in secrets_):
            out.append(f"WEBHOOK_SECRET: each secret must be {MIN_WEBHOOK_SECRET_CHARS}+ characters; generate one "
                       "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    elif v.webhook_events is not None or secrets_:
        out.append("WEBHOOK_URL: required when WEBHOOK_SECRET or WEBHOOK_EVENTS is set (where to POST webhooks), "
                   "e.g. WEBHOOK_URL=https://backend.example.com/backstage/webhooks")
    if v.webhook_events is not None and not _split(v.webhook_events):
        out.append("WEBHOOK_EVENTS: names no event type; unset it for the default set")
    if v.webhook_lease_s <= v.webhook_timeout_s:
        out.append(f"WEBHOOK_LEASE_S={v.webhook_lease_s:g}: must be longer than WEBHOOK_TIMEOUT_S "
                   f"({v.webhook_timeout_s:g}), or a slow delivery could be claimed and sent twice at once")
    if v.webhook_retry_cap_s < v.webhook_retry_base_s:
        out.append("WEBHOOK_RETRY_CAP_S: must be at least WEBHOOK_RETRY_BASE_S")
    return out


def _problem_lines(error: ValidationError, env: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else "?"
        value = env.get(name)
        secret = name in ("JWT_SECRET", "JWT_PUBLIC_KEY", "API_KEYS", "DATABASE_URL", "REDIS_URL",
                          "WEBHOOK_SECRET", "WEBHOOK_URL", "ATTACHMENT_URL_SECRET")
        shown = "" if value is None or secret else f"={value!r}"
        if item["type"] == "value_error":
            advice = str(item["ctx"]["error"]) if "ctx" in item else item["msg"]
        else:
            advice = _HINTS.get(name, item["msg"].lower())
        if name == "DATABASE_URL" and value is not None:
            # Show the scheme only: the rest may carry a password.
            shown = f"={value.split('://', 1)[0]}://..." if "://" in value else ""
        lines.append(f"{name}{shown}: {advice}")
    return lines


def settings_warnings(settings: Settings) -> list[str]:
    """Legal but risky settings, logged as WARNING at start-up."""
    out: list[str] = []
    if not settings.api_keys:
        out.append("API_KEYS is unset: the server API (/api/v1/server/*) refuses every request; "
                   "set API_KEYS=key1,key2 for your backend")
    if settings.jwt_secret is not None and len(settings.jwt_secret) < MIN_JWT_SECRET_CHARS:
        out.append(f"JWT_SECRET is shorter than {MIN_JWT_SECRET_CHARS} characters: tokens can be "
                   "brute-forced; use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
    if settings.jwt_secret is None and settings.attachment_url_secret is None:
        out.append("ATTACHMENT_URL_SECRET is unset and there is no JWT_SECRET to derive it from: photo "
                   "URLs are signed with a key of this process only; set ATTACHMENT_URL_SECRET for a cluster")
    if make_url(settings.database_url).get_backend_name() != "sqlite" and settings.blob_url is None:
        out.append("BLOB_URL is unset: photos are kept in ./blobs on this machine only; set "
                   "BLOB_URL=s3://BUCKET?endpoint_url=... (or a shared file:/// directory) for a cluster")
    if make_url(settings.database_url).get_backend_name() == "sqlite" and not settings.demo:
        out.append("DATABASE_URL is SQLite outside --demo: one process only, no Redis relay "
                   "across processes; use mysql+aiomysql:// in production")
    return out


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    redis_prefix: str = "backstage"
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = field(default=None, repr=False)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    firebase_credentials: str | None = None
    fcm_endpoint: str = DEFAULT_FCM_ENDPOINT
    push_worker: str = "inline"  # "inline" | "external"
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_format: str = "text"  # "text" | "json"
    demo: bool = False
    # Limits (SPEC §4); not environment variables, but tests may replace() them.
    max_body_chars: int = 4000
    max_payload_bytes: int = 64 * 1024
    send_rate_per_s: float = 10.0
    send_burst: int = 20
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    # Presence in Redis: heartbeat period, and silence after which a process counts as dead.
    presence_heartbeat_s: float = 5.0
    presence_dead_after_s: float = 20.0
    # Presence events of a conversation are held this long and sent together; a user who comes
    # and goes within it produces none (chat/presence.py PresenceCoalescer). 0 (the default):
    # SPEC §4's "at once, with no grace period"; PRESENCE_WINDOW_S=0.2 opts into coalescing.
    presence_window_s: float = 0.0
    # A conversation whose last local socket left stays subscribed on the relay (and its recent
    # messages kept current, chat/recent.py) this much longer, so sockets that come back (a
    # reconnect storm) rejoin without a fill or a new subscription (chat/delivery.py); 0: none.
    room_linger_s: float = 30.0
    # PUSH_WORKER=inline: run the push worker on a thread of its own, with its own event loop and
    # database pool, so expanding and sending pushes never delays the sockets (PUSH_WORKER_THREAD=0:
    # on the server's loop).
    push_worker_thread: bool = True
    # Hardening (docs/reliability.md). An Engine.IO session must connect to a namespace within
    # this many seconds (socket.io's connectTimeout), or it is closed.
    connect_timeout_s: float = 10.0
    # New sockets set up at once (connect + auth + first join; chat/connectgate.py); the others
    # wait in arrival order. 0 = no limit. A socket that has not joined after setup_hold_s
    # gives its slot up.
    setup_concurrency: int = 200
    setup_hold_s: float = 3.0
    # The listening socket's accept queue (listen(2) backlog; the kernel caps it at
    # net.core.somaxconn). aiohttp's default of 128 overflows when thousands of clients
    # reconnect at once: the kernel drops their SYNs and the clients' kernels resend them 1, 3,
    # 7, 15 ... s later, which made a reconnect storm's long tail (docs/deploy.md).
    listen_backlog: int = 4096
    max_sockets_per_user: int = 10  # cluster-wide
    join_rate_per_s: float = 5.0  # per socket
    join_burst: int = 20
    http_body_timeout_s: float = 10.0  # a request body must arrive within this
    readyz_timeout_s: float = 2.5  # per dependency, checked concurrently
    # Malformed Socket.IO packets a socket may send before it is disconnected.
    max_bad_packets: int = 5
    # Slow consumers (chat/fanout.py): a websocket with more unsent bytes than this, or whose
    # unsent bytes have not shrunk for socket_stall_s, or a long-polling socket with more
    # packets waiting than this, is disconnected instead of buffering forever.
    socket_max_buffer_bytes: int = 1024 * 1024
    socket_max_queued_packets: int = 1000
    socket_stall_s: float = 10.0
    # Webhooks to the backend (webhooks/, docs/webhooks.md). webhook_events is empty when
    # WEBHOOK_URL is unset: webhooks.record writes nothing then.
    webhook_url: str | None = None
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_events: frozenset[str] = frozenset()
    webhook_worker: str = "inline"  # "inline" | "external"
    webhook_timeout_s: float = 10.0
    webhook_lease_s: float = 60.0
    webhook_retry_base_s: float = 60.0
    webhook_retry_cap_s: float = 6 * 3600.0
    webhook_max_age_s: float = 3 * 24 * 3600.0
    webhook_poll_s: float = 1.0
    # Photos (chat/attachments.py, docs/api.md): where files live (None: a directory next to the
    # SQLite file, or ./blobs), the upload limit, how many images are decoded at once (on
    # threads), how long a signed file URL works, and the key that signs them (None: derived
    # from JWT_SECRET).
    blob_url: str | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    image_decode_concurrency: int = 2
    attachment_url_ttl_s: int = 3600
    attachment_url_secret: str | None = field(default=None, repr=False)
    # Uploads no send claimed within upload_ttl_s are removed (rows and blobs) by a sweep every
    # upload_sweep_interval_s on every server process (chat/uploadsweep.py).
    upload_ttl_s: float = 24 * 3600.0
    upload_sweep_interval_s: float = 600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, demo: bool = False) -> Settings:
        """Parse and validate the environment; raises ConfigError (one line per bad variable)."""
        e = os.environ if env is None else env
        names = {a for f in EnvSettings.model_fields.values()
                 for a in getattr(f.validation_alias, "choices", ())}
        # An empty variable counts as unset, as a platform's empty config var usually means.
        given: dict[str, Any] = {k: v for k, v in e.items() if k in names and v != ""}
        try:
            v = EnvSettings(**given)
        except ValidationError as error:
            raise ConfigError(_problem_lines(error, given)) from None
        problems = _webhook_problems(v)
        if problems:
            raise ConfigError(problems)
        from webhooks import DEFAULT_EVENT_TYPES

        webhook_events = (frozenset(_split(v.webhook_events) or DEFAULT_EVENT_TYPES)
                          if v.webhook_url else frozenset())
        jwt_secret = v.jwt_secret.get_secret_value() if v.jwt_secret else None
        jwt_public_key = v.jwt_public_key.get_secret_value() if v.jwt_public_key else None
        if demo and not jwt_secret and not jwt_public_key:
            jwt_secret = secrets.token_urlsafe(32)
        return cls(
            host=v.host,
            port=v.port,
            database_url=v.database_url,
            redis_url=v.redis_url,
            redis_prefix=v.redis_prefix,
            jwt_secret=jwt_secret,
            jwt_public_key=jwt_public_key,
            api_keys=_split(v.api_keys.get_secret_value() if v.api_keys else None),
            firebase_credentials=v.firebase_credentials,
            fcm_endpoint=v.fcm_endpoint,
            push_worker=v.push_worker,
            allowed_origins=_split(v.allowed_origins),
            log_level=v.log_level,
            log_format=v.log_format,
            demo=demo,
            presence_heartbeat_s=v.presence_heartbeat_s,
            presence_dead_after_s=v.presence_dead_after_s,
            presence_window_s=v.presence_window_s,
            room_linger_s=v.room_linger_s,
            ping_interval=v.ping_interval,
            ping_timeout=v.ping_timeout,
            push_worker_thread=v.push_worker_thread,
            connect_timeout_s=v.connect_timeout_s,
            setup_concurrency=v.setup_concurrency,
            setup_hold_s=v.setup_hold_s,
            listen_backlog=v.listen_backlog,
            max_sockets_per_user=v.max_sockets_per_user,
            join_rate_per_s=v.join_rate_per_s,
            join_burst=v.join_burst,
            http_body_timeout_s=v.http_body_timeout_s,
            max_bad_packets=v.max_bad_packets,
            socket_max_buffer_bytes=v.socket_max_buffer_bytes,
            socket_max_queued_packets=v.socket_max_queued_packets,
            socket_stall_s=v.socket_stall_s,
            webhook_url=v.webhook_url,
            webhook_secrets=_split(v.webhook_secret.get_secret_value() if v.webhook_secret else None),
            webhook_events=webhook_events,
            webhook_worker=v.webhook_worker,
            webhook_timeout_s=v.webhook_timeout_s,
            webhook_lease_s=v.webhook_lease_s,
            webhook_retry_base_s=v.webhook_retry_base_s,
            webhook_retry_cap_s=v.webhook_retry_cap_s,
            webhook_max_age_s=v.webhook_max_age_s,
            webhook_poll_s=v.webhook_poll_s,
            blob_url=v.blob_url,
            max_upload_bytes=v.max_upload_bytes,
            image_decode_concurrency=v.image_decode_concurrency,
            attachment_url_ttl_s=v.attachment_url_ttl_s,
            attachment_url_secret=(v.attachment_url_secret.get_secret_value()
                                   if v.attachment_url_secret else None),
            upload_ttl_s=v.upload_ttl_s,
            upload_sweep_interval_s=v.upload_sweep_interval_s,
        )
