"""Test helpers: real server processes, tokens, the server API, and recording Socket.IO clients."""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import socketio
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.serverfork import ForkedServer

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
API_KEY = "test-api-key-1"


def sync_engine(database_url: str) -> sa.Engine:
    """A blocking engine on a server's database (pymysql / sqlite3), to check what was stored."""
    u = make_url(database_url)
    return sa.create_engine(u.set(drivername="mysql+pymysql" if u.get_backend_name() == "mysql" else "sqlite"))


def migrate_in_thread(database_url: str) -> None:
    """The project's own migrations (chat/migrate.py) on database_url, from any context (the
    caller may be inside an event loop already)."""
    from chat import migrate
    from chat.db import create_engine

    async def run() -> None:
        engine = create_engine(database_url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


_sqlite_template: Path | None = None


def migrated_sqlite(path: Path) -> str:
    """The DATABASE_URL of a new SQLite file at `path`, at the latest migration: a copy (sqlite3's
    backup) of a template the migrations built once per test process, so that a server starting
    on it neither imports Alembic nor migrates (~0.7 s of CPU). Tests of migrating at start use a
    plain path instead."""
    global _sqlite_template
    if _sqlite_template is None:
        directory = tempfile.mkdtemp(prefix="backstage-sqlite-template-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        template = Path(directory) / "template.db"
        migrate_in_thread(f"sqlite+aiosqlite:///{template}")
        _sqlite_template = template
    source, target = sqlite3.connect(_sqlite_template), sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return f"sqlite+aiosqlite:///{path}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_token(user_id: str, name: str | None = None, ttl: int = 3600, secret: str = JWT_SECRET,
               **extra: Any) -> str:
    claims: dict[str, Any] = {"sub": user_id, "exp": int(time.time()) + ttl, **extra}
    if name:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm="HS256")


# Every httpx client builds a TLS context (~45 ms of CPU) unless given one: the test clients share
# this one. One client for every readiness poll: a plain httpx.get() per poll made the polls of a
# starting server cost about as much CPU as the start. No connection kept (a server's shutdown
# must not wait for it).
TLS = ssl.create_default_context()
READY_PROBE = httpx.Client(timeout=1, verify=TLS, limits=httpx.Limits(max_keepalive_connections=0))


def fetch(method: str, url: str, **kw: Any) -> httpx.Response:
    """`httpx.request` (a client of its own per call, no cookies kept) with the shared TLS
    context: a plain `httpx.get` builds one each time (~37 ms of CPU), and the bad-input matrix
    alone makes about a thousand such calls."""
    return httpx.request(method, url, verify=TLS, **kw)


class PortTaken(RuntimeError):
    """The server could not bind its port (EADDRINUSE)."""


class ServerProcess:
    """`python run_server.py` on a free 127.0.0.1 port; stopped by its own PID only."""

    def __init__(self, database_url: str, redis_url: str | None = None, redis_prefix: str = "backstage",
                 env: dict[str, str] | None = None, args: tuple[str, ...] = (), log_path: Path | None = None,
                 ready_timeout: float = 60, fork: bool = True) -> None:
        self.database_url = database_url
        self._args, self._env, self._fork, self._given_log = args, env, fork, log_path
        redis_env = {"REDIS_URL": redis_url} if redis_url else {}
        for attempt in range(3):
            self._start(database_url, redis_prefix, redis_env)
            try:
                self.wait_ready(ready_timeout)
                return
            except PortTaken:  # free_port()'s port was taken by another process meanwhile
                if attempt == 2:
                    raise

    def _start(self, database_url: str, redis_prefix: str, redis_env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_", "JWT_"))}
        full_env.update({
            "HOST": "127.0.0.1", "PORT": str(self.port), "DATABASE_URL": database_url,
            "JWT_SECRET": JWT_SECRET, "API_KEYS": API_KEY, "REDIS_PREFIX": redis_prefix,
            "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", **redis_env,
        })
        full_env.update(self._env or {})
        # The server's own "ready: listening on <url>" line (INFO): a /readyz answer on this port
        # may come from another test's server that took the port first.
        self._ready_line = (f"listening on {self.url}"
                            if full_env["LOG_LEVEL"].upper() in ("INFO", "DEBUG") else None)
        self.log_path = self._given_log or Path(os.environ.get("TMPDIR", "/tmp")) / f"backstage-test-{self.port}.log"
        self._log = open(self.log_path, "w")
        # fork=True: a fork of the test process's warm forkserver (tests/serverfork.py), which
        # spares each server ~2 s of CPU importing the libraries; False: a new interpreter.
        self.proc: subprocess.Popen[bytes] | ForkedServer
        if self._fork:
            self.proc = ForkedServer(list(self._args), full_env, ROOT, self.log_path)
        else:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "run_server.py"), *self._args], cwd=ROOT,
                                         env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                if "Errno 98" in log:
                    self._log.close()
                    raise PortTaken(log)
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log}")
            try:
                if READY_PROBE.get(self.url + "/readyz").status_code == 200 and (
                        self._ready_line is None or self._ready_line in self.log()):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._log.close()


class Api:
    """The server API (API key) and the client API (JWT) of one server, over real HTTP."""

    def __init__(self, base_url: str, api_key: str = API_KEY) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=15, verify=TLS)
        self.server_headers = {"Authorization": f"Bearer {api_key}"}

    def close(self) -> None:
        self.http.close()

    def server(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return self.http.request(method, "/api/v1/server" + path, json=json, headers=self.server_headers)

    def client(self, token: str, method: str, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.http.request(method, "/api/v1" + path, json=json,
                                 headers={"Authorization": f"Bearer {token}"}, **kw)

    def user(self, user_id: str, name: str | None = None, avatar_url: str | None = None) -> str:
        """Create or update a user; returns a client token for them."""
        body = {"name": name or user_id.title()}
        if avatar_url is not None:
            body["avatar_url"] = avatar_url
        r = self.server("PUT", f"/users/{user_id}", body)
        assert r.status_code == 200, r.text
        return make_token(user_id, name or user_id.title())

    def membership(self, creator_id: str, patron_id: str, tier_cents: int, status: str = "active") -> dict[str, Any]:
        r = self.server("PUT", f"/memberships/{creator_id}/{patron_id}", {"tier_cents": tier_cents, "status": status})
        assert r.status_code == 200, r.text
        return r.json()["membership"]

    def room(self, creator_id: str, name: str = "Room", min_tier_cents: int = 0,
             post_policy: str = "everyone") -> str:
        r = self.server("POST", "/rooms", {"creator_id": creator_id, "name": name,
                                          "min_tier_cents": min_tier_cents, "post_policy": post_policy})
        assert r.status_code == 201, r.text
        return str(r.json()["conversation"]["id"])

    def direct(self, token: str, other_user_id: str) -> str:
        r = self.client(token, "POST", "/conversations/direct", {"user_id": other_user_id})
        assert r.status_code == 200, r.text
        return str(r.json()["conversation"]["id"])


class Client:
    """A real socketio.AsyncClient that records every server event."""

    def __init__(self, url: str, token: str | None, *, headers: dict[str, str] | None = None) -> None:
        self.url, self.token, self.headers = url, token, headers or {}
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self._waiters: list[tuple[str, Any, asyncio.Future[Any]]] = []
        self.sio.on("*", self._record)

    async def _record(self, event: str, data: Any = None) -> None:
        self.events[event].append(data)
        for waiter in list(self._waiters):
            name, pred, fut = waiter
            if name == event and not fut.done() and pred(data):
                fut.set_result(data)
                self._waiters.remove(waiter)

    async def connect(self) -> Client:
        await self.sio.connect(self.url, auth={"token": self.token} if self.token is not None else None,
                               headers=self.headers, transports=["websocket"], wait_timeout=10)
        return self

    async def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def wait_for(self, event: str, pred: Any = lambda d: True, timeout: float = 10) -> Any:
        for data in self.events[event]:
            if pred(data):
                return data
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append((event, pred, fut))
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


MARKER_EVENT = "test-marker"


async def barrier(apis: list[Api], sockets: list[tuple[str, Client]], tag: str) -> None:
    """Returns once every socket has received everything any process emitted before the call.

    Each process (one Api per server process) publishes a marker event to every socket's
    `user:{id}` channel, and each socket waits for the marker of every process. A process's
    emits reach a socket in the order it made them (its own sockets directly, the others'
    through one ordered Redis channel, handled one at a time), so once a process's marker is
    in, whatever it emitted earlier is in too: "nothing arrived" is then a fact, not a guess.
    """
    for n, api in enumerate(apis):
        for user_id in dict.fromkeys(u for u, _ in sockets):
            r = api.server("POST", "/publish", {"channel": f"user:{user_id}", "event": MARKER_EVENT,
                                                "data": {"tag": tag, "from": n}})
            assert r.status_code == 200, r.text
    for _, c in sockets:
        for n in range(len(apis)):
            await c.wait_for("event", lambda e, n=n: e["event"] == MARKER_EVENT and e["data"] == {"tag": tag, "from": n})


def app_events(c: Client) -> list[Any]:
    """The `event` frames a socket received, markers of `barrier` left out."""
    return [e for e in c.events["event"] if e["event"] != MARKER_EVENT]


# ---------------------------------------------------------------- acks


def ok(ack: dict[str, Any]) -> dict[str, Any]:
    """A successful ack, returned."""
    assert ack["ok"] is True, ack
    return ack


def err(ack: dict[str, Any]) -> str:
    """A refused ack's error code."""
    assert ack["ok"] is False, ack
    return str(ack["error"]["code"])


async def send(c: Client, conversation_id: str, body: str = "hi", cmid: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """`send` over the socket (a fresh client_msg_id unless `cmid`); the ack, ok or not."""
    ack: dict[str, Any] = await c.call("send", {"conversation_id": conversation_id, "body": body,
                                                "client_msg_id": cmid or secrets.token_hex(8), **extra})
    return ack

