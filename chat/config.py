"""Settings read once from the environment (SPEC §1). Secrets never appear in repr()."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///backstage.db"
DEFAULT_FCM_ENDPOINT = "https://fcm.googleapis.com"


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


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
    # and goes within it produces none (chat/presence.py PresenceCoalescer).
    presence_window_s: float = 0.2
    # PUSH_WORKER=inline: run the push worker on a thread of its own, with its own event loop and
    # database pool, so expanding and sending pushes never delays the sockets (PUSH_WORKER_THREAD=0:
    # on the server's loop).
    push_worker_thread: bool = True
    # Hardening (docs/reliability.md). An Engine.IO session must connect to a namespace within
    # this many seconds (socket.io's connectTimeout), or it is closed.
    connect_timeout_s: float = 10.0
    max_sockets_per_user: int = 10  # cluster-wide
    join_rate_per_s: float = 5.0  # per socket
    join_burst: int = 20
    http_body_timeout_s: float = 10.0  # a request body must arrive within this
    readyz_timeout_s: float = 2.5  # per dependency, checked concurrently
    # Malformed Socket.IO packets a socket may send before it is disconnected.
    max_bad_packets: int = 5

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *, demo: bool = False) -> Settings:
        e = os.environ if env is None else env
        jwt_secret = e.get("JWT_SECRET") or None
        if demo and not jwt_secret and not e.get("JWT_PUBLIC_KEY"):
            jwt_secret = secrets.token_urlsafe(32)
        return cls(
            host=e.get("HOST", "127.0.0.1"),
            port=int(e.get("PORT", "8080")),
            database_url=e.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=e.get("REDIS_URL") or None,
            redis_prefix=e.get("REDIS_PREFIX") or "backstage",
            jwt_secret=jwt_secret,
            jwt_public_key=e.get("JWT_PUBLIC_KEY") or None,
            api_keys=_split(e.get("API_KEYS")),
            firebase_credentials=e.get("FIREBASE_CREDENTIALS") or None,
            fcm_endpoint=(e.get("FCM_ENDPOINT") or DEFAULT_FCM_ENDPOINT).rstrip("/"),
            push_worker=e.get("PUSH_WORKER", "inline"),
            allowed_origins=_split(e.get("ALLOWED_ORIGINS")),
            log_level=e.get("LOG_LEVEL", "INFO").upper(),
            log_format=e.get("LOG_FORMAT", "text"),
            demo=demo,
            presence_heartbeat_s=float(e.get("PRESENCE_HEARTBEAT_S", "5")),
            presence_dead_after_s=float(e.get("PRESENCE_DEAD_AFTER_S", "20")),
            presence_window_s=float(e.get("PRESENCE_WINDOW_S", "0.2")),
            ping_interval=float(e.get("SOCKETIO_PING_INTERVAL_S", "25")),
            ping_timeout=float(e.get("SOCKETIO_PING_TIMEOUT_S", "20")),
            push_worker_thread=e.get("PUSH_WORKER_THREAD", "1") not in ("0", "false", "no"),
            connect_timeout_s=float(e.get("SOCKETIO_CONNECT_TIMEOUT_S", "10")),
            max_sockets_per_user=int(e.get("MAX_SOCKETS_PER_USER", "10")),
            join_rate_per_s=float(e.get("JOIN_RATE_PER_S", "5")),
            join_burst=int(e.get("JOIN_BURST", "20")),
            http_body_timeout_s=float(e.get("HTTP_BODY_TIMEOUT_S", "10")),
            max_bad_packets=int(e.get("MAX_BAD_PACKETS", "5")),
        )
