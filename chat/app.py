"""create_app(settings): the only place that wires objects together.

Each resource is opened and closed as a pair in a cleanup context, in order:
database (migrated) → Redis → presence → Socket.IO + domain → push worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from chat import asyncapi, http_api, migrate, openapi, redisconn, storage
from chat.attachments import Attachments
from chat.auth import Authenticator
from chat.blobs import open_blob_store
from chat.codec import OrjsonCompat
from chat.config import Settings
from chat.db import create_engine, create_read_engine, session_factory
from chat.delivery import Delivery, is_conversation_room
from chat.emitslots import RedisSlots
from chat.fanout import FanoutLimits, FanoutServer
from chat.keys import RedisKeys
from chat.presence import MemoryPresence, RedisPresence, new_server_id
from chat.ratelimit import UserRateLimiter
from chat.relay import RedisRelay
from chat.retry import retry_read
from chat.service import ChatService
from chat.slowmode import SlowModeGate
from chat.socketlimit import socket_limiter
from chat.sockets import ChatSockets
from chat.uploadsweep import UploadSweeper
from chat.wsconnect import ROUTE as WS_ROUTE
from chat.wsconnect import WebsocketConnect
from notifications import http as notifications_http
from webhooks import http as webhooks_http

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Shipped inside the package (copied from node_modules at package-lock.json's version, checked by
# tests/test_deploy.py), so a pip-only deploy serves a page that connects.
SOCKETIO_CLIENT = STATIC_DIR / "vendor" / "socket.io.esm.min.js"
REQUIRED_STATIC = (STATIC_DIR / "index.html", STATIC_DIR / "app.js", STATIC_DIR / "backstage-client.js", SOCKETIO_CLIENT)


def missing_static() -> list[str]:
    """Files the page needs that are not there (a broken install): readyz and start-up report them."""
    return [str(path.relative_to(ROOT)) for path in REQUIRED_STATIC if not path.is_file()]

SETTINGS_KEY = web.AppKey("settings", Settings)
ENGINE_KEY = web.AppKey("engine", AsyncEngine)
READ_ENGINE_KEY = web.AppKey("read_engine", AsyncEngine)  # autocommit reads of connect and join (chat/db.py)
REDIS_KEY = web.AppKey("redis", object)  # aioredis.Redis | None
SIO_KEY = web.AppKey("sio", FanoutServer)
# Websocket-first connects: answered by the first middleware, and below aiohttp by the server
# run_server.py starts (chat/rawconnect.py); one object for both.
WS_CONNECT_KEY = web.AppKey("ws_connect", WebsocketConnect)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
       "connect-src 'self' ws: wss:; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def origin_checker(settings: Settings) -> Callable[[str | None, dict[str, Any]], bool] | None:
    """None = python-engineio's same-origin rule; otherwise same origin, ALLOWED_ORIGINS,
    and in --demo any http://localhost:* or http://127.0.0.1:* page."""
    allowed = set(settings.allowed_origins)
    if not allowed and not settings.demo:
        return None

    def check(origin: str | None, environ: dict[str, Any]) -> bool:
        if origin is None:
            return True  # mobile apps and servers send no Origin
        if "*" in allowed or origin in allowed:
            return True
        host = environ.get("HTTP_HOST")
        if host and origin in (f"http://{host}", f"https://{host}"):
            return True
        if settings.demo:
            scheme, _, rest = origin.partition("://")
            hostname = rest.split(":")[0]
            return scheme == "http" and hostname in ("localhost", "127.0.0.1")
        return False

    return check


def create_sio(settings: Settings) -> FanoutServer:
    """python-socketio's server with encode-once fan-out (chat/fanout.py); the Redis relay
    (chat/relay.py) is attached in chat_ctx, once Redis is connected."""
    return FanoutServer(
        async_mode="aiohttp", json=OrjsonCompat,
        fanout_limits=FanoutLimits(max_buffer_bytes=settings.socket_max_buffer_bytes,
                                   max_queued_packets=settings.socket_max_queued_packets,
                                   stall_s=settings.socket_stall_s),
        cors_allowed_origins=origin_checker(settings),
        # Events from one socket run in order (SPEC §4); different sockets run concurrently.
        async_handlers=False,
        # The soft limit (settings.max_payload_bytes) answers too_large without dropping the
        # socket; packets over this hard limit close the connection.
        max_http_buffer_size=1024 * 1024,
        ping_interval=settings.ping_interval, ping_timeout=settings.ping_timeout,
        logger=False, engineio_logger=False)


def create_app(settings: Settings) -> web.Application:
    sio = create_sio(settings)
    # Websocket-first Engine.IO connects are answered before the other middlewares
    # (chat/wsconnect.py), or before aiohttp's request handler (chat/rawconnect.py, as
    # run_server.py serves); every other request goes through all of them.
    connect = WebsocketConnect(sio.eio)
    app = web.Application(client_max_size=settings.max_payload_bytes,
                          middlewares=[websocket_connects(sio, connect), security_headers, http_api.error_middleware,
                                       http_api.body_limits],
                          # A body left unread (refused before reading it: too large, no
                          # credentials) is read and thrown away for at most this long before the
                          # connection closes (aiohttp's default: 10 s). Not 0: closing with unread
                          # data sends a TCP reset, which can destroy the answer before the client
                          # reads it.
                          handler_args={"lingering_time": 2.0})
    app[SETTINGS_KEY] = settings
    app[http_api.LIMITS_KEY] = settings
    app[http_api.AUTH_KEY] = Authenticator(settings)
    sio.attach(app)  # routes must exist before the app starts; handlers are added in chat_ctx
    app[SIO_KEY] = sio
    app[WS_CONNECT_KEY] = connect
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(chat_ctx)
    app.on_shutdown.append(close_sockets)
    http_api.add_routes(app)
    notifications_http.add_routes(app)
    webhooks_http.add_routes(app)
    add_operation_routes(app)
    add_page_routes(app)
    return app


# ---------------------------------------------------------------- cleanup contexts


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = create_engine(app[SETTINGS_KEY].database_url)
    await migrate.upgrade(engine)
    app[ENGINE_KEY] = engine
    app[READ_ENGINE_KEY] = read_engine = create_read_engine(app[SETTINGS_KEY].database_url)
    yield
    await read_engine.dispose()
    await engine.dispose()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    url = app[SETTINGS_KEY].redis_url
    if not url:
        app[REDIS_KEY] = None
        yield
        return
    # A blocking pool waits for a free connection instead of raising MaxConnectionsError, so a
    # disconnect storm queues its presence updates rather than dropping them.
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=200, timeout=10,
                                                    socket_timeout=5, socket_connect_timeout=5,
                                                    **redisconn.connection_class(url))  # hiredis packs commands
    client = aioredis.Redis(connection_pool=pool)
    await client.ping()
    app[REDIS_KEY] = client
    yield
    await client.aclose()


async def chat_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    redis: aioredis.Redis | None = app[REDIS_KEY]  # type: ignore[assignment]
    keys = RedisKeys(settings.redis_prefix)
    server_id = new_server_id()
    presence = (RedisPresence(redis, keys, server_id, heartbeat_s=settings.presence_heartbeat_s,
                              dead_after_s=settings.presence_dead_after_s)
                if redis is not None else MemoryPresence())
    sio = app[SIO_KEY]
    relay = (RedisRelay(redis, sio.fanout, keys, relayed=is_conversation_room)
             if redis is not None else None)
    delivery = Delivery(sio, relay, room_linger_s=settings.room_linger_s)
    read_engine = app[READ_ENGINE_KEY]

    async def last_seqs(ids: list[int]) -> dict[int, int]:
        return await retry_read(read_engine, lambda conn: storage.last_seqs(conn, ids))

    delivery.set_last_seqs(last_seqs)
    sessions = session_factory(app[ENGINE_KEY])
    hooks = await push_hooks(app, settings, sessions, redis, keys)
    user_sends = UserRateLimiter(settings.send_rate_per_s, settings.send_burst, redis=redis,
                                 key_prefix=settings.redis_prefix)
    blobs = await open_blob_store(settings.blob_url, settings.database_url)
    attachments = Attachments(app[ENGINE_KEY], blobs, settings)
    app[http_api.ATTACHMENTS_KEY] = attachments
    # Uploads never sent are removed after UPLOAD_TTL_S; every process sweeps, safely at once.
    sweeper = UploadSweeper(sessions, blobs, ttl_s=settings.upload_ttl_s, interval_s=settings.upload_sweep_interval_s)
    service = ChatService(sessions, delivery, presence, settings, user_sends=user_sends, read_engine=read_engine,
                          attachments=attachments, slow_gate=SlowModeGate(redis, keys),
                          emit_slots=RedisSlots(redis, keys) if redis is not None else None,
                          **hooks.service_kwargs)

    async def on_offline(conversation_id: str, user_id: str) -> None:
        await delivery.to_conversation(conversation_id, "presence", {
            "conversation_id": conversation_id, "user_id": user_id, "online": False})

    presence.set_offline_callback(on_offline)
    ChatSockets(sio, service, app[http_api.AUTH_KEY], settings.max_payload_bytes,
                limiter=socket_limiter(redis, keys, server_id, settings.max_sockets_per_user,
                                       settings.presence_dead_after_s))
    app[http_api.SERVICE_KEY] = service
    await presence.start()
    await delivery.start()
    await hooks.start()
    sweeper.start()
    log.info("server %s ready (redis relay: %s)", server_id, "on" if redis is not None else "off")
    yield
    await sweeper.stop()
    await hooks.stop()
    await service.reaction_events.close()
    await service.thread_events.close()
    await delivery.stop()
    for conversation_id, user_id in await presence.stop():
        await on_offline(conversation_id, user_id)
    await attachments.close()


async def close_sockets(app: web.Application) -> None:
    """SIGTERM: disconnect every client (they reconnect elsewhere) before resources close."""
    sio = app.get(SIO_KEY)
    if sio is not None:
        try:
            await asyncio.wait_for(_close_sessions(sio.eio), 10)
            await asyncio.wait_for(sio.shutdown(), 10)
        except Exception:
            log.warning("socket shutdown incomplete", exc_info=True)


async def _close_sessions(eio: Any) -> None:
    """engineio's disconnect() of every session, except that a long-polling session is not
    waited for: its CLOSE packet is queued and goes out with a GET in flight (in-flight requests
    get aiohttp's shutdown_timeout), but a client that is not polling at this moment would hold
    the shutdown until the timeout. Websocket sessions are waited for: their writer sends the
    CLOSE at once."""
    sessions = list(eio.sockets.values())
    if sessions:
        await asyncio.gather(*(s.close(wait=s.upgraded, reason=eio.reason.SERVER_DISCONNECT) for s in sessions),
                             return_exceptions=True)
    eio.sockets = {}


class PushHooks:
    """What the chat service needs of the push side, plus the inline worker's lifecycle."""

    def __init__(self) -> None:
        self.service_kwargs: dict[str, Any] = {}
        self._start: list[Callable[[], Any]] = []
        self._stop: list[Callable[[], Any]] = []

    def add(self, start: Callable[[], Any], stop: Callable[[], Any]) -> None:
        """Run `start` when the app starts and `stop` (in reverse order) when it stops."""
        self._start.append(start)
        self._stop.append(stop)

    async def start(self) -> None:
        for fn in self._start:
            await fn()

    async def stop(self) -> None:
        for fn in reversed(self._stop):
            await fn()


async def push_hooks(app: web.Application, settings: Settings, sessions: Any,
                     redis: aioredis.Redis | None, keys: RedisKeys) -> PushHooks:
    from notifications import wiring
    from webhooks import wiring as webhooks_wiring

    hooks = PushHooks()
    await wiring.install(app, hooks, settings, sessions, redis, keys)
    await webhooks_wiring.install(app, hooks, settings, sessions)
    return hooks


# ---------------------------------------------------------------- operations and page


def add_operation_routes(app: web.Application) -> None:
    abandoned: set[asyncio.Future[None]] = set()  # readyz checks past their limit, cancelled

    def _forget_check(task: asyncio.Future[None]) -> None:
        abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: what a check abandoned at its limit raised is not news

    async def readyz(request: web.Request) -> web.Response:
        # Both checks run at once, each bounded as a whole (pool checkout and pre-ping included):
        # a frozen MariaDB or Redis accepts the TCP connection and then never answers.
        limit = request.app[SETTINGS_KEY].readyz_timeout_s

        async def database() -> None:
            async with request.app[ENGINE_KEY].connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

        async def redis() -> None:
            await request.app[REDIS_KEY].ping()  # type: ignore[attr-defined]

        checks: dict[str, Callable[[], Awaitable[None]]] = {"database": database}
        missing = missing_static()
        if request.app[REDIS_KEY] is not None:
            checks["redis"] = redis
        # asyncio.wait, not wait_for: wait_for also waits for a cancelled check's cleanup, and
        # a connection handed back to a frozen MariaDB waits for it (a readyz of 15 s and more).
        tasks = {name: asyncio.ensure_future(check()) for name, check in checks.items()}
        _, late = await asyncio.wait(tasks.values(), timeout=limit)
        problems: dict[str, str] = {}
        for name, task in tasks.items():
            if task in late:
                problems[name] = "TimeoutError"
                task.cancel()  # its cleanup finishes in the background
                abandoned.add(task)
                task.add_done_callback(_forget_check)
            elif task.exception() is not None:
                problems[name] = type(task.exception()).__name__
        service = request.app.get(http_api.SERVICE_KEY)
        relay = service.delivery.relay_problem() if service is not None else None
        if relay is not None:  # the relay canary (chat/relay.py): this process hears no broadcasts
            problems["relay"] = relay
        if missing:
            problems["static"] = "missing " + ", ".join(missing)
        if problems:
            log.warning("not ready: %s", ", ".join(f"{k} {v}" for k, v in problems.items()))
            return http_api.json_response({"ok": False, "problems": problems}, status=503)
        return http_api.json_response({"ok": True})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/openapi.json", openapi.handler)
    app.router.add_get("/api/v1/asyncapi.json", asyncapi.handler)


def add_page_routes(app: web.Application) -> None:
    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    missing = missing_static()
    if missing:
        log.error("static assets missing: %s (the page cannot work; reinstall the package)", ", ".join(missing))

    async def socketio_client(request: web.Request) -> web.StreamResponse:
        if not SOCKETIO_CLIENT.is_file():
            return web.Response(status=503, text="socket.io client missing from chat/static/vendor")
        return web.FileResponse(SOCKETIO_CLIENT, headers={"Content-Type": "text/javascript"})

    app.router.add_get("/", index)
    app.router.add_get("/static/vendor/socket.io.esm.min.js", socketio_client)
    if STATIC_DIR.exists():
        app.router.add_static("/static/", STATIC_DIR)


def websocket_connects(sio: FanoutServer, connect: WebsocketConnect | None = None) -> Any:
    """The middleware that answers websocket-first Engine.IO connects (chat/wsconnect.py)."""
    if connect is None:
        connect = WebsocketConnect(sio.eio)

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.path == WS_ROUTE:
            response = await connect(request)
            if response is not None:
                return response
        result: web.StreamResponse = await handler(request)
        return result

    return middleware


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path == "/" or request.path.startswith("/static/"):
        response.headers["Content-Security-Policy"] = CSP
    return response
