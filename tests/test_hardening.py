"""Hostile input and load (docs/reliability.md), on two real server processes sharing one fresh
MariaDB database and one Redis prefix: idle Engine.IO sessions, malformed packets, expiring
tokens, oversized and slow HTTP bodies, deep JSON, per-user socket caps, join floods, and
concurrent server-API upserts.

The limits are lowered through the environment so each test runs in a second or two; the
defaults are the ones documented in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
import socketio

from tests.conftest import Cluster, MySQLDatabases
from tests.support import API_KEY, TLS, Api, Client, ServerProcess, fetch, make_token, migrated_sqlite

ENV = {
    "SOCKETIO_CONNECT_TIMEOUT_S": "1",
    "MAX_SOCKETS_PER_USER": "3",
    "JOIN_RATE_PER_S": "1",
    "JOIN_BURST": "5",
    "HTTP_BODY_TIMEOUT_S": "1",
    "MAX_BAD_PACKETS": "5",
}
SERVER_HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Env:
    cluster: Cluster
    room: str

    @property
    def a(self) -> ServerProcess:
        return self.cluster.servers[0]

    @property
    def b(self) -> ServerProcess:
        return self.cluster.servers[1]

    @property
    def api(self) -> Api:
        return self.cluster.api


@pytest.fixture(scope="module")
def env(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix_root: str) -> Iterator[Env]:
    cluster = Cluster(mysql_databases.new(), redis_url, f"{redis_prefix_root}-hardening", 2, env=ENV)
    try:
        api = cluster.api
        api.user("cre")
        for u in ("pat", "capped", "joiner", "expiring"):
            api.user(u)
            api.membership("cre", u, 100)
        yield Env(cluster, api.room("cre", "Lounge", 0))
    finally:
        cluster.stop()


def metric(server: ServerProcess, name: str) -> float:
    text = fetch("GET", server.url + "/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_disconnected(sio: socketio.AsyncClient, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while sio.connected:
        assert time.monotonic() < deadline, "still connected"
        await asyncio.sleep(0.05)


async def raw_ws(url: str) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    """A bare Engine.IO v4 websocket session; the OPEN packet already read."""
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket")
    opened = await ws.receive_str(timeout=10)
    assert opened.startswith("0{"), opened
    return http, ws


async def closed_by_server(ws: aiohttp.ClientWebSocketResponse, timeout: float = 15) -> list[str]:
    """Read until the server closes the connection; returns the text frames seen."""
    frames: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return frames
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "2":  # keep the session alive on our side: answer pings
                    await ws.send_str("3")
                frames.append(msg.data)


# ---------------------------------------------------------------- Engine.IO sessions


async def test_session_without_namespace_connect_is_closed(env: Env) -> None:
    """An Engine.IO session that never sends the Socket.IO CONNECT is closed after
    SOCKETIO_CONNECT_TIMEOUT_S (1 s here, 10 s by default)."""
    before = metric(env.a, "backstage_guard_closed_sessions_total")
    http, ws = await raw_ws(env.a.url)
    try:
        started = time.monotonic()
        await closed_by_server(ws)
        assert time.monotonic() - started < 10  # closed by the 1 s deadline, not a ping timeout (45 s)
    finally:
        await ws.close()
        await http.close()
    assert metric(env.a, "backstage_guard_closed_sessions_total") == before + 1
    # A session that connects in time is not affected by the deadline.
    http, ws = await raw_ws(env.a.url)
    try:
        await ws.send_str("40" + json.dumps({"token": make_token("pat")}))
        assert (await ws.receive_str(timeout=10)).startswith("40{")
        deadline = time.monotonic() + 2.5  # beyond the 1 s deadline: the session must stay open
        while time.monotonic() < deadline:
            await ws.send_str('421["history",' + json.dumps({"conversation_id": env.room}) + "]")
            ack = await ws.receive_str(timeout=10)
            assert ack.startswith('431[{"ok":true'), ack
            await asyncio.sleep(0.5)
    finally:
        await ws.close()
        await http.close()


# Each line is a frame a broken or hostile client might send once connected to "/".
GARBAGE: list[str | bytes] = [
    "x", "9", "", "7", "8", "0", "0{}", "4x", "42", '42["a"', '42{"a":1}', '42[1]', '42[]', '42"str"', "42null",
    "45", "45-", '4599999-["join",{"_placeholder":true,"num":0}]', "46", "47", "48", "49", "4-1", "4{}",
    "42999999999999999999999[\"join\"]", b"\x00\x01\x02", b"", "b", "b!!!",
]


async def test_malformed_packets_one_warning_and_disconnect(env: Env) -> None:
    """29 malformed Engine.IO/Socket.IO frames: no ERROR line and no traceback, at most one
    (rate-limited) WARNING, every one counted, and the sender is disconnected after
    MAX_BAD_PACKETS strikes; other sockets keep working."""
    assert len(GARBAGE) == 29
    server = env.b
    log_start = len(server.log())
    before = metric(server, "backstage_bad_packets_total")
    bystander = await Client(server.url, make_token("pat")).connect()
    http, ws = await raw_ws(server.url)
    try:
        await ws.send_str("40" + json.dumps({"token": make_token("pat")}))
        assert (await ws.receive_str(timeout=10)).startswith("40{")
        for frame in GARBAGE:
            if ws.closed:
                break
            try:
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            except ConnectionResetError:
                break
        await closed_by_server(ws)
        assert (await bystander.call("history", {"conversation_id": env.room}))["ok"]
    finally:
        await ws.close()
        await http.close()
        await bystander.close()
    assert metric(server, "backstage_bad_packets_total") >= before + 5

    # The same over the polling transport: an Engine.IO payload python-engineio cannot decode.
    async with httpx.AsyncClient(verify=TLS, base_url=server.url, timeout=10) as h:
        r = await h.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        sid = json.loads(r.text[1:])["sid"]
        for body in ("x", "4", "9:abc", "\x1e\x1e", "b@@@"):
            r = await h.post("/socket.io/", params={"EIO": "4", "transport": "polling", "sid": sid}, content=body)
            assert r.status_code < 500, r.text
    after = await Client(server.url, make_token("pat")).connect()
    try:
        assert (await after.call("history", {"conversation_id": env.room}))["ok"]
    finally:
        await after.close()
    log = server.log()[log_start:]
    assert " ERROR " not in log and "Traceback" not in log, log[-4000:]
    assert len(re.findall(r"WARNING chat\.sockguard", log)) <= 1, log[-4000:]


async def test_polling_garbage_counts_toward_the_same_limit(env: Env) -> None:
    """Engine.IO payloads python-engineio cannot decode, POSTed over long-polling, are strikes
    like undecodable websocket frames: the session is closed at its MAX_BAD_PACKETS-th (5)."""
    server = env.a
    closed_before = metric(server, "backstage_guard_closed_sessions_total")
    async with httpx.AsyncClient(verify=TLS, base_url=server.url, timeout=10) as h:
        params = {"EIO": "4", "transport": "polling"}
        r = await h.get("/socket.io/", params=params)
        params["sid"] = json.loads(r.text[1:])["sid"]
        r = await h.post("/socket.io/", params=params, content="40" + json.dumps({"token": make_token("pat")}))
        assert r.status_code == 200, r.text
        assert (await h.get("/socket.io/", params=params)).text.startswith("40{")
        for _ in range(4):
            r = await h.post("/socket.io/", params=params, content="x")  # not an Engine.IO packet
            assert r.status_code == 200, r.text
        # Four strikes: still open, still answering.
        r = await h.post("/socket.io/", params=params,
                         content='421["history",' + json.dumps({"conversation_id": env.room}) + "]")
        assert r.status_code == 200, r.text
        assert (await h.get("/socket.io/", params=params)).text.startswith('431[{"ok":true')
        r = await h.post("/socket.io/", params=params, content="b@@@")  # the fifth: closed
        assert r.status_code < 500, r.text
        r = await h.get("/socket.io/", params=params)  # at once: the CLOSE packet, or the session is gone
        assert r.status_code == 400 or "1" in r.text.split("\x1e"), (r.status_code, r.text)
    assert metric(server, "backstage_guard_closed_sessions_total") == closed_before + 1


async def test_binary_packet_attachments_bounded(env: Env) -> None:
    """A binary packet announcing more than 10 attachments is dropped (a strike): the frames
    after it are not held as its attachments; one within the bound is answered as usual."""
    http, ws = await raw_ws(env.a.url)
    try:
        await ws.send_str("40" + json.dumps({"token": make_token("pat")}))
        assert (await ws.receive_str(timeout=10)).startswith("40{")
        await ws.send_str('4511-["history",{"conversation_id":"1"}]')
        await ws.send_str('421["history",' + json.dumps({"conversation_id": env.room}) + "]")
        assert (await ws.receive_str(timeout=10)).startswith('431[{"ok":true')
        await ws.send_str('452-2["history",{"conversation_id":"1","a":{"_placeholder":true,"num":0},'
                          '"b":{"_placeholder":true,"num":1}}]')
        await ws.send_bytes(b"a")
        await ws.send_bytes(b"b")
        assert (await ws.receive_str(timeout=10)).startswith('432[{"ok":')
    finally:
        await ws.close()
        await http.close()


# ---------------------------------------------------------------- token expiry


async def test_token_expiry_disconnects_unless_refreshed(env: Env) -> None:
    """A socket is disconnected (after a `token_expired` event) when its token's `exp` passes,
    unless it sent `refresh_token` with a newer token of the same user."""
    refreshed = await Client(env.a.url, make_token("expiring", ttl=2)).connect()
    expiring = await Client(env.b.url, make_token("expiring", ttl=3)).connect()  # expires after `refreshed`'s old exp
    try:
        bad = await refreshed.call("refresh_token", {"token": make_token("pat")})
        assert bad == {"ok": False, "error": {"code": "forbidden", "message": bad["error"]["message"]}}, bad
        bad = await refreshed.call("refresh_token", {"token": "garbage"})
        assert bad["ok"] is False and bad["error"]["code"] == "unauthorized", bad
        bad = await refreshed.call("refresh_token", {"token": make_token("expiring", ttl=-5)})
        assert bad["ok"] is False and bad["error"]["code"] == "unauthorized", bad
        ack = await refreshed.call("refresh_token", {"token": make_token("expiring", ttl=3600)})
        assert ack["ok"] is True and ack["expires_at"].endswith("Z"), ack

        await expiring.wait_for("token_expired", timeout=15)
        await wait_disconnected(expiring.sio)
        # `refreshed`'s first token expired a second before `expiring`'s: it is still served.
        assert refreshed.sio.connected
        assert (await refreshed.call("join", {"conversation_id": env.room}))["ok"]
        assert "token_expired" not in refreshed.events
    finally:
        await refreshed.close()
        await expiring.close()


# ---------------------------------------------------------------- HTTP bodies


def _raw_http(server: ServerProcess, head: str, body: bytes = b"", timeout: float = 10) -> tuple[str, float, bool]:
    """Send a raw request; returns (response head+body, seconds until the first byte, closed by server)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(head.encode() + body)
        started = time.monotonic()
        first = s.recv(65536)
        elapsed = time.monotonic() - started
        data = first
        closed = False
        try:
            while chunk := s.recv(65536):
                data += chunk
            closed = True
        except TimeoutError:
            pass
        return data.decode(errors="replace"), elapsed, closed


def test_declared_huge_body_is_refused_at_once(env: Env) -> None:
    head = ("POST /api/v1/server/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Length: {100 * 1024**3}\r\n\r\n")
    text, _, closed = _raw_http(env.a, head, b'{"channel":')
    assert text.startswith("HTTP/1.1 413"), text[:300]
    assert '"code":"too_large"' in text, text
    assert closed  # not held open to drain 100 GB
    # Same for the Socket.IO polling endpoint (its own limit is 1 MiB).
    text, _, closed = _raw_http(env.a, f"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: x\r\n"
                                       f"Content-Length: {100 * 1024**3}\r\n\r\n")
    assert text.startswith("HTTP/1.1 413") and closed, text[:300]


def test_slow_body_times_out(env: Env) -> None:
    head = ("PUT /api/v1/server/users/slowpoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Length: 100\r\n\r\n")
    text, _, closed = _raw_http(env.a, head, b'{"name": "Slo', timeout=15)  # and then nothing
    assert text.startswith("HTTP/1.1 408"), text[:300]
    assert '"code":"timeout"' in text and closed, text


def test_publish_deeply_nested_data_is_invalid(env: Env) -> None:
    deep = "[" * 1000 + '"leaf"' + "]" * 1000
    for path, body in (("/api/v1/server/publish", '{"channel": "user:pat", "event": "e", "data": ' + deep + "}"),
                       ("/api/v1/server/notifications", '{"user_ids": ["pat"], "type": "t", "title": "T", '
                                                        '"body": "B", "data": {"x": ' + deep + "}}")):
        r = env.api.http.post(path, content=body, headers={**SERVER_HEADERS, "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", (path, r.status_code, r.text[:300])


# ---------------------------------------------------------------- per-user limits


async def test_sockets_per_user_capped_cluster_wide(env: Env) -> None:
    """MAX_SOCKETS_PER_USER=3 across both processes; the next connect is refused with
    `too_many_connections`, and a slot frees when a socket closes."""
    token = make_token("capped")
    clients = [await Client(s.url, token).connect() for s in (env.a, env.b, env.a)]
    try:
        for server in (env.b, env.a):
            extra = Client(server.url, token)
            errors: list[Any] = []
            extra.sio.on("connect_error", errors.append)
            with pytest.raises(socketio.exceptions.ConnectionError):
                await extra.connect()
            assert errors and errors[0]["data"]["code"] == "too_many_connections", errors
            assert "at most 3" in errors[0]["message"], errors
        # Another user is not affected.
        other = await Client(env.b.url, make_token("pat")).connect()
        await other.close()
        await clients.pop(1).close()  # the one on B
        deadline = time.monotonic() + 10
        while True:  # the disconnect is processed by the server asynchronously
            try:
                clients.append(await Client(env.b.url, token).connect())
                break
            except socketio.exceptions.ConnectionError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert all(c.sio.connected for c in clients)
    finally:
        for c in clients:
            await c.close()


async def test_join_rate_limited_per_socket(env: Env) -> None:
    """JOIN_BURST=5 at 1/s: the 6th immediate join answers `rate_limited`; another socket of
    the same user has its own allowance; other events are not limited."""
    token = make_token("joiner")
    first = await Client(env.a.url, token).connect()
    second = await Client(env.a.url, token).connect()
    try:
        acks = [await first.call("join", {"conversation_id": env.room}) for _ in range(8)]
        assert [a["ok"] for a in acks[:5]] == [True] * 5, acks
        limited = [a for a in acks[5:] if not a["ok"]]
        assert limited and all(a["error"]["code"] == "rate_limited" for a in limited), acks
        assert "joins per second" in limited[0]["error"]["message"]
        assert (await first.call("history", {"conversation_id": env.room}))["ok"]
        assert (await second.call("join", {"conversation_id": env.room}))["ok"]
    finally:
        await first.close()
        await second.close()


# ---------------------------------------------------------------- connect storms


async def test_new_sessions_wait_for_a_setup_slot(tmp_path: Any) -> None:
    """SOCKETIO_SETUP_CONCURRENCY (chat/connectgate.py): at most N new sessions are set up at once
    (Engine.IO connect until their first join is answered); the next one gets its handshake
    only when a slot frees, here when one of the first two answered its join."""
    cluster = Cluster(migrated_sqlite(tmp_path / "gate.db"), None, "unused", 1,
                      env={"SOCKETIO_SETUP_CONCURRENCY": "2", "SOCKETIO_SETUP_HOLD_S": "30",
                           "SOCKETIO_CONNECT_TIMEOUT_S": "30"})
    sessions: list[tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]] = []
    waiting: asyncio.Task[tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]] | None = None
    try:
        api, url = cluster.api, cluster.servers[0].url
        api.user("cre")
        for u in ("p1", "p2", "p3"):
            api.user(u)
            api.membership("cre", u, 100)
        room = api.room("cre", "Gate", 0)
        for u in ("p1", "p2"):  # two sessions being set up: connected, not joined yet
            http, ws = await raw_ws(url)
            sessions.append((http, ws))
            await ws.send_str("40" + json.dumps({"token": make_token(u)}))
            assert (await ws.receive_str(timeout=10)).startswith("40")
        waiting = asyncio.create_task(raw_ws(url))
        done, _ = await asyncio.wait({waiting}, timeout=1.5)
        assert not done, "a third session was set up while two were (limit 2)"
        ws1 = sessions[0][1]
        await ws1.send_str("421" + json.dumps(["join", {"conversation_id": room}]))
        while not (frame := await ws1.receive_str(timeout=10)).startswith("431"):
            pass
        assert json.loads(frame[3:])[0]["ok"] is True
        sessions.append(await asyncio.wait_for(waiting, 10))  # long before the 30 s hold would free one
        waiting = None
    finally:
        if waiting is not None:
            waiting.cancel()
        for http, ws in sessions:
            await ws.close()
            await http.close()
        cluster.stop()
