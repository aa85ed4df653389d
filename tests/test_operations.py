"""Operations (SPEC §1, §3): health and readiness (with the database or Redis really cut off,
through a TCP proxy this test owns), metrics, SIGTERM drain, JSON logs, no secrets in logs,
and the commands: `--demo` from nothing, `token`, `migrate`.

Readiness: the brief suggested dropping the MySQL database; an open pooled connection still
answers `SELECT 1` after DROP DATABASE, so that cannot show 503. Instead the server reaches
MariaDB and Redis through a proxy in this process, which the test closes and reopens: a real
outage (connections reset, new ones refused) and a real recovery.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pymysql
import pytest
import socketio
from sqlalchemy.engine import make_url

from tests.faults import TcpProxy, wait_until
from tests.support import JWT_SECRET, ROOT, TLS, Api, Client, ServerProcess, fetch, free_port, make_token, migrated_sqlite


async def eventually_true(pred: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} after {timeout} s"
        await asyncio.sleep(0.05)


def readyz(server: ServerProcess) -> httpx.Response:
    return fetch("GET", server.url + "/readyz", timeout=10)


# ---------------------------------------------------------------- health and readiness


def test_healthz_readyz_and_idle_sigterm(tmp_path: Path) -> None:
    server = ServerProcess(migrated_sqlite(tmp_path / "ops.db"))
    try:
        r = fetch("GET", server.url + "/healthz", timeout=5)
        assert r.status_code == 200 and r.json()["ok"] is True
        r = readyz(server)
        assert r.status_code == 200 and r.json()["ok"] is True
    finally:
        # SIGTERM on an idle server: it exits by itself (stop() SIGKILLs, -9, after its limit), cleanly.
        assert server.stop(timeout=30) == 0
    log = server.log_path.read_text()
    assert "Traceback" not in log and "shutdown incomplete" not in log, log[-3000:]


def test_readyz_503_when_redis_is_cut_off_and_back(mysql_url: str, redis_url: str, redis_prefix: str) -> None:
    u = make_url(redis_url)
    proxy = TcpProxy(u.host or "127.0.0.1", u.port or 6379).start()
    proxied = redis_url.replace(f"{u.host}:{u.port or 6379}", f"127.0.0.1:{proxy.port}")
    assert proxied != redis_url
    server = ServerProcess(mysql_url, proxied, redis_prefix)
    try:
        assert readyz(server).status_code == 200
        proxy.stop()
        r = wait_until(lambda: (lambda r: r if r.status_code == 503 else None)(readyz(server)))
        assert r.json()["ok"] is False and "redis" in r.json()["problems"], r.text
        assert "database" not in r.json()["problems"]
        assert fetch("GET", server.url + "/healthz", timeout=5).status_code == 200  # alive, just not ready
        proxy.start()
        wait_until(lambda: readyz(server).status_code == 200)
    finally:
        proxy.stop()
        server.stop()


async def test_database_cut_off_readyz_503_and_unavailable_then_recovery(mysql_databases: Any) -> None:
    url = make_url(mysql_databases.new())
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 3306).start()
    server = ServerProcess(url.set(port=proxy.port).render_as_string(hide_password=False))
    api = Api(server.url)
    c = None
    try:
        _, pat = api.user("cre"), api.user("pat")
        api.membership("cre", "pat", 100)
        room = api.room("cre", "R", 0)
        c = await Client(server.url, pat).connect()
        assert (await c.call("join", {"conversation_id": room}))["ok"]
        first = await c.call("send", {"conversation_id": room, "body": "one", "client_msg_id": "k1"})
        assert first["ok"] and first["message"]["seq"] == 1

        proxy.stop()
        r = await asyncio.to_thread(wait_until, lambda: (lambda r: r if r.status_code == 503 else None)(readyz(server)))
        assert "database" in r.json()["problems"], r.text
        ack = await c.call("send", {"conversation_id": room, "body": "two", "client_msg_id": "k2"}, timeout=30)
        assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
        r = await asyncio.to_thread(api.client, pat, "POST", f"/conversations/{room}/messages",
                                    json={"body": "two", "client_msg_id": "k2"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        h = await c.call("history", {"conversation_id": room}, timeout=30)
        assert h["ok"] is False and h["error"]["code"] == "unavailable", h
        assert c.sio.connected

        proxy.start()
        await asyncio.to_thread(wait_until, lambda: readyz(server).status_code == 200)
        # the client retries the same message: stored once, no gap left by the failed attempts
        ack = await c.call("send", {"conversation_id": room, "body": "two", "client_msg_id": "k2"}, timeout=30)
        assert ack["ok"] and ack["message"]["seq"] == 2, ack
        hist = await c.call("history", {"conversation_id": room})
        assert hist.get("ok") is not False, hist
        assert [(m["seq"], m["body"]) for m in hist["messages"]] == [(1, "one"), (2, "two")]
    finally:
        if c is not None:
            await c.close()
        api.close()
        proxy.stop()
        await asyncio.to_thread(server.stop)


# ---------------------------------------------------------------- metrics


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_metrics(tmp_path: Path) -> None:
    server = ServerProcess(migrated_sqlite(tmp_path / "m.db"))
    api = Api(server.url)
    clients: list[Client] = []

    def metrics() -> dict[str, float]:
        r = fetch("GET", server.url + "/metrics", timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.headers
        return parse_metrics(r.text)

    try:
        api.user("cre")
        pat = api.user("pat")
        api.membership("cre", "pat", 100)
        room = api.room("cre", "R", 0)
        before = metrics()
        assert before["backstage_connected_sockets"] == 0
        clients = [await Client(server.url, pat).connect() for _ in range(3)]
        refused = Client(server.url, "bad-token")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect()
        m = metrics()
        assert m["backstage_connected_sockets"] == 3  # the refused one is not counted

        c = clients[0]
        assert (await c.call("join", {"conversation_id": room}))["ok"]
        for i in range(3):
            assert (await c.call("send", {"conversation_id": room, "body": f"b{i}", "client_msg_id": f"m{i}"}))["ok"]
        assert (await c.call("send", {"conversation_id": room, "body": "b0", "client_msg_id": "m0"}))["ok"]  # retry
        assert not (await c.call("send", {"conversation_id": room, "body": 5}))["ok"]
        assert not (await c.call("nonsense", {}))["ok"]
        r = api.client(pat, "POST", f"/conversations/{room}/messages", json={"body": "h", "client_msg_id": "h1"})
        assert r.status_code == 201

        after = metrics()

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        assert delta("backstage_messages_stored_total") == 4  # 3 + 1 over HTTP; the retry stored nothing
        assert delta('backstage_socket_events_total{event="send",outcome="ok"}') == 4
        assert delta('backstage_socket_events_total{event="send",outcome="invalid"}') == 1
        assert delta('backstage_socket_events_total{event="join",outcome="ok"}') == 1
        assert delta('backstage_socket_events_total{event="unknown",outcome="invalid"}') == 1
        assert delta('backstage_socket_event_seconds_count{event="send"}') == 5
        assert after['backstage_socket_event_seconds_bucket{event="send",le="+Inf"}'] >= 5
        assert 'backstage_socket_event_seconds_bucket{event="send",le="0.1"}' in after
        assert after['backstage_socket_event_seconds_sum{event="send"}'] > 0

        for cl in clients:
            await cl.close()
        # The server notices the closes on its own time: wait for the count, do not guess a delay.
        await asyncio.to_thread(wait_until, lambda: metrics()["backstage_connected_sockets"] == 0)
    finally:
        for cl in clients:
            await cl.close()
        api.close()
        server.stop()


# ---------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
async def test_sigterm_disconnects_clients_and_exits_0(backend: str, tmp_path: Path, mysql_databases: Any,
                                                       redis_url: str, redis_prefix: str) -> None:
    if backend == "sqlite":
        server = ServerProcess(migrated_sqlite(tmp_path / "t.db"))
    else:
        server = ServerProcess(mysql_databases.new(), redis_url, redis_prefix)
    clients = [await Client(server.url, make_token(f"u{i}")).connect() for i in range(3)]
    # A long-polling client with a GET in flight, and a long-polling session whose client is not
    # polling at this moment: neither may hold the shutdown (the latter used to hold it 10 s).
    polling = socketio.AsyncClient(reconnection=False)
    await polling.connect(server.url, auth={"token": make_token("u-poll")}, transports=["polling"])
    idle = httpx.AsyncClient(verify=TLS, base_url=server.url, timeout=10)
    params = {"EIO": "4", "transport": "polling"}
    params["sid"] = json.loads((await idle.get("/socket.io/", params=params)).text[1:])["sid"]
    await idle.post("/socket.io/", params=params, content="40" + json.dumps({"token": make_token("u-idle")}))
    assert (await idle.get("/socket.io/", params=params)).text.startswith("40{")
    try:
        server.proc.send_signal(signal.SIGTERM)
        # The event loop keeps running here, so the clients can answer the close handshake.
        # Generous limits: the server disconnects the clients itself and then exits (a server
        # that never did would hang here until the limit).
        await eventually_true(lambda: not polling.connected and not any(c.sio.connected for c in clients),
                              "clients still connected")
        # Exits without waiting out the 10 s bound of the session close (a generous cap: ~1 s here).
        await eventually_true(lambda: server.proc.poll() is not None, "server still running", timeout=8)
        assert server.proc.returncode == 0, server.log()[-3000:]
        log = server.log()
        assert "Traceback" not in log, log[-3000:]
    finally:
        for c in clients:
            await c.close()
        await polling.disconnect()
        await idle.aclose()
        server.kill()


# ---------------------------------------------------------------- logs

MARK = f"mk{os.getpid()}x{int(time.time())}"
LOG_API_KEY = f"apikey-{MARK}-secret"


@pytest.fixture(scope="module", params=["INFO", "DEBUG", "DEBUG-mariadb-redis"])
def json_log_server(request: Any, tmp_path_factory: Any, mysql_databases: Any, redis_url: str,
                    redis_prefix_root: str) -> Iterator[ServerProcess]:
    """JSON logs at the default level, and at DEBUG, where libraries would print SQL parameters
    (aiosqlite; aiomysql and redis-py with MariaDB + Redis)."""
    env = {"LOG_FORMAT": "json", "API_KEYS": LOG_API_KEY, "LOG_LEVEL": request.param.split("-")[0]}
    if request.param.endswith("redis"):
        server = ServerProcess(mysql_databases.new(), redis_url, f"{redis_prefix_root}-jsonlog", env=env)
    else:
        server = ServerProcess(migrated_sqlite(tmp_path_factory.mktemp('jsonlog') / 'j.db'), env=env)
    yield server
    server.stop()


async def _exercise_with_secrets(server: ServerProcess) -> list[str]:
    """Do everything a log might be tempted to record; returns the secrets used."""
    api = Api(server.url, api_key=LOG_API_KEY)
    run = len(server.log())  # client_msg_ids must differ between runs on one server
    body = f"BODY-{MARK}-private words"
    token = api.user("logcre", "Log Cre")
    pat = api.user("logpat", "Log Pat")
    api.membership("logcre", "logpat", 100)
    room = api.room("logcre", "R", 0)
    bad_token = make_token("logpat", secret=f"wrong-{MARK}-0123456789abcdef0123456789")
    secrets = [body, token, pat, LOG_API_KEY, bad_token, f"NOTIF-{MARK}", f"devtok-{MARK}"]
    c = await Client(server.url, pat).connect()
    try:
        assert (await c.call("join", {"conversation_id": room}))["ok"]
        assert (await c.call("send", {"conversation_id": room, "body": body, "client_msg_id": f"cm-{MARK}-{run}"}))["ok"]
        mine = (await c.call("history", {"conversation_id": room}))["messages"][-1]["id"]
        assert (await c.call("edit", {"message_id": mine, "body": body + " edited"}))["ok"]
        await c.call("send", {"conversation_id": room, "body": body, "client_msg_id": f"cm-{MARK}-{run}"})
        await c.call("send", {"conversation_id": room, "body": body * 2000, "client_msg_id": "too-long"})
        await c.call("send", {"conversation_id": room, "body": body, "client_msg_id": f"cm-{MARK}-{run}", "x": 1})
        await c.call("subscribe", {"channel": f"user:{MARK}"})
        await c.call(f"event-{MARK}", {"body": body})
    finally:
        await c.close()
    refused = Client(server.url, bad_token)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect()
    api.client(token, "POST", f"/conversations/{room}/messages", json={"body": body, "client_msg_id": f"h-{MARK}-{run}"})
    api.client(bad_token, "GET", "/me")
    api.client(pat, "POST", "/devices", json={"token": f"devtok-{MARK}", "platform": "web"})
    api.server("POST", "/notifications", {"user_ids": ["logpat"], "type": "t", "title": "T", "body": f"NOTIF-{MARK}"})
    api.server("POST", "/publish", {"channel": "user:logpat", "event": "e", "data": {"b": body}})
    fetch("GET", server.url + f"/?token={token}", timeout=5)
    fetch("GET", server.url + f"/api/v1/me?token={token}", timeout=5)
    fetch("PUT", server.url + "/api/v1/server/users/x", headers={"Authorization": f"Bearer {LOG_API_KEY}x"}, json={}, timeout=5)
    api.close()
    # The socket's disconnect is handled after the client left: once the server counts no
    # socket, everything this function did has been handled (and logged, if it ever would be).
    await asyncio.to_thread(wait_until, lambda: parse_metrics(
        fetch("GET", server.url + "/metrics", timeout=5).text)["backstage_connected_sockets"] == 0)
    return secrets


async def test_no_secrets_or_bodies_in_the_log(json_log_server: ServerProcess) -> None:
    secrets = await _exercise_with_secrets(json_log_server)
    log = json_log_server.log()
    assert len(log) > 0
    for secret in secrets:
        assert secret not in log, f"{secret[:30]}... appears in the server log"
    # a JWT's signature-less parts are secrets too: the header.payload prefix of any token
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ", log), "something token-shaped is in the log"
    assert MARK not in log, [line for line in log.splitlines() if MARK in line][:3]


async def test_json_log_lines(json_log_server: ServerProcess) -> None:
    await _exercise_with_secrets(json_log_server)
    lines = [line for line in json_log_server.log().splitlines() if line.strip()]
    assert len(lines) >= 3
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict)
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# ---------------------------------------------------------------- commands

def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "DATABASE_", "JWT_", "API_KEYS", "ALLOWED_ORIGINS", "LOG_", "PORT", "HOST"))}
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


def _run_demo(cwd: Path, port: int) -> tuple[subprocess.Popen[str], list[str], list[str]]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_server.py"), "--demo"], cwd=cwd,
                            env=_clean_env(PORT=str(port)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    links: list[str] = []
    output: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            links.extend(re.findall(r"http://\S+/\?token=\S+", line))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 40
    while len(links) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    return proc, links, output


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


def test_demo_from_nothing(tmp_path: Path) -> None:
    """`make run`'s command in an empty directory: SQLite backstage.db appears there, four links
    are printed, and their tokens sign in."""
    port = free_port()
    proc, links, output = _run_demo(tmp_path, port)
    try:
        assert len(links) == 4, "".join(output)
        assert (tmp_path / "backstage.db").exists()
        users = []
        for link in links:
            assert re.match(rf"http://(localhost|127\.0\.0\.1):{port}/\?token=", link), link
            token = link.split("?token=", 1)[1]
            r = fetch("GET", f"http://127.0.0.1:{port}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert r.status_code == 200, r.text
            users.append(r.json()["user"]["id"])
            page = fetch("GET", link.replace("localhost", "127.0.0.1"), timeout=10)
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert len(set(users)) == 4
        creator_token = links[0].split("?token=", 1)[1]
        convs = fetch("GET", f"http://127.0.0.1:{port}/api/v1/conversations",
                          headers={"Authorization": f"Bearer {creator_token}"}, timeout=10).json()["conversations"]
        kinds = sorted(c["conversation"]["kind"] for c in convs)
        assert kinds.count("room") == 2 and kinds.count("direct") >= 1, convs
    finally:
        assert _stop(proc) == 0, "".join(output)[-3000:]
    # a second start on the same directory reuses the data: nothing seeded twice
    port2 = free_port()
    proc, links2, output = _run_demo(tmp_path, port2)
    try:
        assert len(links2) == 4, "".join(output)
        creator_token = links2[0].split("?token=", 1)[1]
        convs2 = fetch("GET", f"http://127.0.0.1:{port2}/api/v1/conversations",
                           headers={"Authorization": f"Bearer {creator_token}"}, timeout=10).json()["conversations"]
        assert sorted(c["conversation"]["id"] for c in convs2) == sorted(c["conversation"]["id"] for c in convs)
        for c in convs2:
            assert c["last_message"] is not None and c["last_message"]["seq"] == 1, c  # welcome messages not resent
    finally:
        assert _stop(proc) == 0, "".join(output)[-3000:]


def test_token_command(tmp_path: Path, shared_sqlite: Any, uid: Any) -> None:
    cli_user = uid("cli_user")
    out = subprocess.run([sys.executable, str(ROOT / "run_server.py"), "token", cli_user, "--name", "Cli User",
                          "--ttl", "60"], cwd=tmp_path, env=_clean_env(JWT_SECRET=JWT_SECRET),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == cli_user and claims["name"] == "Cli User"
    assert abs(claims["exp"] - (time.time() + 60)) < 15
    server = shared_sqlite.servers[0]
    r = fetch("GET", server.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["user"] == {"id": cli_user, "name": "Cli User", "avatar_url": None}
    bad = subprocess.run([sys.executable, str(ROOT / "run_server.py"), "token", "not valid"], cwd=tmp_path,
                         env=_clean_env(JWT_SECRET=JWT_SECRET), capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert bad.stdout.strip() == ""
    nosecret = subprocess.run([sys.executable, str(ROOT / "run_server.py"), "token", "u1"], cwd=tmp_path,
                              env=_clean_env(), capture_output=True, text=True, timeout=30)
    assert nosecret.returncode != 0 and nosecret.stdout.strip() == ""


CHAT_TABLES = {"users", "memberships", "conversations", "conversation_states", "messages", "reactions",
               "alembic_version"}


def _migrate(cwd: Path, database_url: str) -> None:
    for _ in range(2):  # a second run is a no-op
        out = subprocess.run([sys.executable, str(ROOT / "run_server.py"), "migrate"], cwd=cwd,
                             env=_clean_env(DATABASE_URL=database_url), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_head_read_from_migration_files_is_alembics_head() -> None:
    """chat/migrate.py recognises a database at head without importing Alembic, from the files'
    revision lines: that reading must agree with Alembic's own."""
    from alembic.script import ScriptDirectory

    from chat import migrate

    assert migrate.head_revision() == ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()


async def test_database_behind_head_is_upgraded_and_at_head_is_recognised(tmp_path: Path) -> None:
    """The fast path (no Alembic when at head) must not skip a database at an older revision."""
    from alembic import command
    from sqlalchemy import text

    from chat import migrate
    from chat.db import create_engine

    def to(revision: str) -> Any:
        def run(connection: Any) -> None:
            cfg = migrate.alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
        return run

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    try:
        async with engine.connect() as conn:
            assert not await conn.run_sync(migrate.at_head)  # no alembic_version table
            await conn.run_sync(to("0009"))
            await conn.commit()
            assert not await conn.run_sync(migrate.at_head)
            await conn.rollback()
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            assert version == migrate.head_revision()
            assert await conn.run_sync(migrate.at_head)
            await conn.execute(text("UPDATE alembic_version SET version_num = '0012'"))  # behind head again
            await conn.commit()
            assert not await conn.run_sync(migrate.at_head)
    finally:
        await engine.dispose()


def test_migrate_empty_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    db.touch()  # an empty file, as created by an operator
    _migrate(tmp_path, f"sqlite+aiosqlite:///{db}")
    con = sqlite3.connect(db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert CHAT_TABLES <= tables, tables
        assert con.execute("SELECT version_num FROM alembic_version").fetchone() is not None
    finally:
        con.close()
    # a file that does not exist yet
    _migrate(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/new.db")
    assert (tmp_path / "new.db").stat().st_size > 0


def test_migrate_empty_mariadb(tmp_path: Path, mysql_databases: Any) -> None:
    url = mysql_databases.new(empty=True)
    _migrate(tmp_path, url)
    u = make_url(url)
    con = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                          password=u.password or "", database=u.database)
    try:
        with con.cursor() as cur:
            cur.execute("SHOW TABLES")
            tables = {r[0] for r in cur.fetchall()}
            assert CHAT_TABLES <= tables, tables
            cur.execute("SELECT version_num FROM alembic_version")
            assert cur.fetchone() is not None
            cur.execute("SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'messages'")
            assert cur.fetchone()[0] == "InnoDB"
    finally:
        con.close()
