"""Encode-once fan-out (chat/fanout.py) and the per-conversation Redis relay (chat/relay.py).

The clients here speak Engine.IO v4 / Socket.IO v5 by hand over real aiohttp connections
(`RawClient`): each one records every packet in the order it came off the wire, which is what
per-socket ordering is about, and can poll, upgrade from polling to websocket when the test
says so, stop reading, or drop its connection mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync
from sqlalchemy.engine import make_url

from tests.conftest import Cluster, MySQLDatabases
from tests.support import Api, ServerProcess, fetch, migrated_sqlite
from tests.test_operations import TcpProxy, parse_metrics

SEP = "\x1e"  # Engine.IO v4 long-polling payload separator


class RawClient:
    """A Socket.IO client written against the wire protocol, recording packets in order."""

    def __init__(self, url: str, token: str, name: str = "") -> None:
        self.url, self.token, self.name = url, token, name
        self.packets: list[tuple[str, Any, Any]] = []  # ("event", name, data) | ("ack", id, data)
        self._changed = asyncio.Event()
        self._ids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sid = ""
        self.transport = ""
        self._poller: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._polling = False
        self.closed = asyncio.Event()

    # ------------------------------------------------------------ connecting
    async def connect(self, transport: str = "websocket") -> RawClient:
        self._http = aiohttp.ClientSession()
        base = self.url.replace("http", "ws", 1) if transport == "websocket" else self.url
        if transport == "websocket":
            self.ws = await self._http.ws_connect(f"{base}/socket.io/?EIO=4&transport=websocket")
            first = await self.ws.receive_str()
            self.sid = json.loads(first[1:])["sid"]
            self.transport = "websocket"
            self._reader = asyncio.create_task(self._read_ws())
        else:
            async with self._http.get(f"{self.url}/socket.io/?EIO=4&transport=polling") as r:
                body = await r.text()
            self.sid = json.loads(body.split(SEP)[0][1:])["sid"]
            self.transport = "polling"
            self._polling = True
            self._poller = asyncio.create_task(self._poll_loop())
        await self._send_raw("0" + json.dumps({"token": self.token}))
        await self.wait(lambda: any(p[0] == "connect" for p in self.packets))
        assert not any(p[0] == "connect_error" for p in self.packets), self.packets
        return self

    async def upgrade(self, hold: Callable[[], Any] | None = None) -> None:
        """Polling -> websocket, as engine.io clients do: probe, let the pending poll end, UPGRADE.
        `hold` is awaited between the probe and UPGRADE: whatever the server sends meanwhile
        waits in engine.io's queue and must come out first, in order, on the websocket."""
        assert self._http is not None and self.transport == "polling"
        ws = await self._http.ws_connect(
            f"{self.url.replace('http', 'ws', 1)}/socket.io/?EIO=4&transport=websocket&sid={self.sid}")
        await ws.send_str("2probe")
        assert await ws.receive_str() == "3probe"
        self._polling = False
        assert self._poller is not None
        await self._poller  # the server ended the pending poll with a NOOP
        if hold is not None:
            await hold()
        await ws.send_str("5")
        self.ws, self.transport = ws, "websocket"
        self._reader = asyncio.create_task(self._read_ws())

    # ------------------------------------------------------------ reading
    async def _read_ws(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                await self._on_eio(msg.data)
        finally:
            self.closed.set()

    async def _poll_loop(self) -> None:
        assert self._http is not None
        while self._polling:
            async with self._http.get(f"{self.url}/socket.io/?EIO=4&transport=polling&sid={self.sid}") as r:
                if r.status != 200:
                    self.closed.set()
                    return
                body = await r.text()
            for part in body.split(SEP):
                await self._on_eio(part)

    async def _on_eio(self, data: str) -> None:
        kind, rest = data[0], data[1:]
        if kind == "2":
            await self._send_raw("3", eio=True)
        elif kind == "1":
            self.closed.set()
        elif kind == "4":
            self._on_sio(rest)

    def _on_sio(self, data: str) -> None:
        kind, rest = data[0], data[1:]
        if kind == "0":
            self.packets.append(("connect", None, json.loads(rest)))
        elif kind == "4":
            self.packets.append(("connect_error", None, json.loads(rest)))
        elif kind in "23":
            i = 0
            while rest[i].isdigit():
                i += 1
            ack_id = int(rest[:i]) if i else None
            payload = json.loads(rest[i:])
            if kind == "2":
                self.packets.append(("event", payload[0], payload[1] if len(payload) > 1 else None))
            else:
                self.packets.append(("ack", ack_id, payload[0]))
        self._changed.set()

    # ------------------------------------------------------------ writing
    async def _send_raw(self, data: str, *, eio: bool = False) -> None:
        packet = data if eio else "4" + data
        if self.transport == "websocket":
            assert self.ws is not None
            await self.ws.send_str(packet)
        else:
            assert self._http is not None
            async with self._http.post(f"{self.url}/socket.io/?EIO=4&transport=polling&sid={self.sid}",
                                       data=packet.encode()) as r:
                assert r.status == 200, await r.text()

    async def emit(self, event: str, data: Any) -> int:
        """Send an event with an ack id; returns the id (the ack shows up in `packets`)."""
        ack_id = next(self._ids)
        await self._send_raw(f"2{ack_id}" + json.dumps([event, data]))
        return ack_id

    async def call(self, event: str, data: Any, timeout: float = 10) -> Any:
        ack_id = await self.emit(event, data)
        return (await self.wait(lambda: self.ack(ack_id), timeout))[2]

    def ack(self, ack_id: int) -> tuple[str, Any, Any] | None:
        return next((p for p in self.packets if p[0] == "ack" and p[1] == ack_id), None)

    async def wait(self, pred: Callable[[], Any], timeout: float = 10) -> Any:
        async def loop() -> Any:
            while not (found := pred()):
                self._changed.clear()
                await self._changed.wait()
            return found
        return await asyncio.wait_for(loop(), timeout)

    def events(self, name: str) -> list[Any]:
        return [p[2] for p in self.packets if p[0] == "event" and p[1] == name]

    def message_seqs(self) -> list[int]:
        return [m["seq"] for m in self.events("message")]

    async def wait_messages(self, n: int, timeout: float = 20) -> None:
        await self.wait(lambda: len(self.events("message")) >= n, timeout)

    # ------------------------------------------------------------ closing
    def stop_reading(self) -> None:
        """Stop consuming frames: aiohttp then stops reading the socket once its 64 KiB buffer
        is full, so what the server writes piles up in the kernel and then in the server."""
        if self._reader is not None:
            self._reader.cancel()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        if self.ws is not None:
            self.ws._writer.transport.abort()

    async def close(self) -> None:
        self._polling = False
        for task in (self._reader, self._poller):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        elif self._http is not None and self.sid:
            # a polling session is closed with an Engine.IO CLOSE packet, as real clients do
            # (else the server holds it until the ping timeout, and a SIGTERM drain waits for it)
            with contextlib.suppress(Exception):
                async with self._http.post(f"{self.url}/socket.io/?EIO=4&transport=polling&sid={self.sid}",
                                           data="1"):
                    pass
        if self._http is not None:
            await self._http.close()


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(params=["memory", "redis"])
def cluster(request: Any, tmp_path: Path, mysql_databases: MySQLDatabases, redis_url: str,
            redis_prefix: str) -> Iterator[Cluster]:
    """memory: one process on SQLite without Redis; redis: two processes on MariaDB + Redis."""
    if request.param == "memory":
        c = Cluster(migrated_sqlite(tmp_path / "fanout.db"), None, "unused", 1)
    else:
        c = Cluster(mysql_databases.new(), redis_url, redis_prefix, 2)
    yield c
    c.stop()


def room_with_members(api: Api, creator: str, patrons: list[str]) -> tuple[str, dict[str, str]]:
    tokens = {creator: api.user(creator)}
    for p in patrons:
        tokens[p] = api.user(p)
        api.membership(creator, p, 500)
    return api.room(creator, "Fanout", 0), tokens


async def connect_all(specs: list[tuple[str, str, str]]) -> list[RawClient]:
    """(url, token, transport) -> connected clients."""
    return [await RawClient(url, token).connect(transport) for url, token, transport in specs]


async def join(c: RawClient, room: str) -> dict[str, Any]:
    ack = await c.call("join", {"conversation_id": room})
    assert ack["ok"], ack
    return dict(ack)


async def close_all(clients: list[RawClient]) -> None:
    for c in clients:
        await c.close()


def metrics(server: ServerProcess) -> dict[str, float]:
    return parse_metrics(fetch("GET", server.url + "/metrics", timeout=10).text)


def assert_clean_log(server: ServerProcess) -> None:
    log = server.log_path.read_text()
    assert "Traceback" not in log and "exception" not in log.lower(), log[-4000:]


# ---------------------------------------------------------------- ordering


async def test_mixed_broadcasts_and_acks_keep_socket_order(cluster: Cluster) -> None:
    """Three senders pipeline 20 sends each into one room while three more sockets listen.
    Every socket gets every message once; a sender sees each of its messages before the ack
    of its send (the order the server emitted them); all sockets of one process see the
    broadcasts in one and the same order."""
    api, urls = cluster.api, [s.url for s in cluster.servers]
    senders = ["s1", "s2", "s3"]
    room, tokens = room_with_members(api, "cre", [*senders, "l1", "l2", "l3"])
    specs = [(urls[i % len(urls)], tokens[u], "websocket") for i, u in enumerate([*senders, "l1", "l2", "l3"])]
    clients = await connect_all(specs)
    by_user = dict(zip([*senders, "l1", "l2", "l3"], clients, strict=True))
    try:
        for c in clients:
            await join(c, room)
        per_sender = 20  # within the per-socket burst, so nothing is rate limited
        sent: dict[str, list[tuple[int, str]]] = {u: [] for u in senders}

        async def pipeline(user: str) -> None:
            c = by_user[user]
            for i in range(per_sender):
                cmid = f"{user}-{i}"
                sent[user].append((await c.emit("send", {"conversation_id": room, "body": cmid,
                                                         "client_msg_id": cmid}), cmid))

        await asyncio.gather(*(pipeline(u) for u in senders))
        total = per_sender * len(senders)
        for c in clients:
            await c.wait_messages(total)
        for user in senders:
            c = by_user[user]
            for ack_id, _ in sent[user]:
                await c.wait(lambda c=c, a=ack_id: c.ack(a))  # type: ignore[misc]

        for c in clients:
            assert sorted(c.message_seqs()) == list(range(1, total + 1)), c.message_seqs()
        for user in senders:
            c = by_user[user]
            for ack_id, cmid in sent[user]:
                ack_pos = next(i for i, p in enumerate(c.packets) if p[0] == "ack" and p[1] == ack_id)
                ack = c.packets[ack_pos][2]
                assert ack["ok"] and ack["message"]["client_msg_id"] == cmid, ack
                msg_pos = next(i for i, p in enumerate(c.packets)
                               if p[0] == "event" and p[1] == "message" and p[2]["client_msg_id"] == cmid)
                assert msg_pos < ack_pos, f"{user}: ack of {cmid} overtook its broadcast"
        for url in urls:
            streams = [c.message_seqs() for (u, _, _), c in zip(specs, clients, strict=True) if u == url]
            assert all(s == streams[0] for s in streams), streams
    finally:
        await close_all(clients)
    for server in cluster.servers:
        assert_clean_log(server)


async def test_polling_upgrading_and_websocket_clients_get_identical_streams(cluster: Cluster) -> None:
    """In one room of one process: a websocket client, a client that stays on long-polling and
    one that upgrades from polling to websocket while messages flow (with packets queued during
    the upgrade) receive the same messages in the same order."""
    api, s0, s_last = cluster.api, cluster.servers[0], cluster.servers[-1]
    room, tokens = room_with_members(api, "cre", ["ws", "poll", "upg", "snd1", "snd2"])
    ws = await RawClient(s0.url, tokens["ws"]).connect("websocket")
    poll = await RawClient(s0.url, tokens["poll"]).connect("polling")
    upg = await RawClient(s0.url, tokens["upg"]).connect("polling")
    snd1 = await RawClient(s0.url, tokens["snd1"]).connect("websocket")
    snd2 = await RawClient(s_last.url, tokens["snd2"]).connect("websocket")  # the other process with Redis
    clients = [ws, poll, upg, snd1, snd2]
    try:
        for c in clients:
            await join(c, room)
        per_sender = 30

        async def sender(c: RawClient, name: str) -> None:
            for i in range(per_sender):
                ack = await c.call("send", {"conversation_id": room, "body": f"{name}{i}",
                                            "client_msg_id": f"{name}-{i}"})
                if not ack["ok"]:  # rate limited past the burst: retry the same client_msg_id
                    assert ack["error"]["code"] == "rate_limited", ack
                    await asyncio.sleep(0.1)
                    await c.call("send", {"conversation_id": room, "body": f"{name}{i}",
                                          "client_msg_id": f"{name}-{i}"})

        sending = asyncio.gather(sender(snd1, "a"), sender(snd2, "b"))
        await upg.wait_messages(5)
        mark = len(ws.events("message"))
        # Hold the upgrade until three more messages went out: they wait in the engine.io queue.
        await upg.upgrade(hold=lambda: ws.wait_messages(mark + 3))
        await sending
        total = 2 * per_sender
        for c in (ws, poll, upg):
            await c.wait_messages(total)
        assert upg.transport == "websocket"
        assert sorted(ws.message_seqs()) == list(range(1, total + 1))
        assert poll.message_seqs() == ws.message_seqs()
        assert upg.message_seqs() == ws.message_seqs()
    finally:
        await close_all(clients)
    for server in cluster.servers:
        assert_clean_log(server)


# ---------------------------------------------------------------- slow consumers and disconnects


@pytest.mark.parametrize("limit", ["bytes", "stall"])
async def test_client_that_stops_reading_is_disconnected_others_keep_flowing(tmp_path: Path, limit: str) -> None:
    """A websocket that stops reading piles up unsent bytes in the server; past
    SOCKET_MAX_BUFFER_BYTES (or when they have not shrunk for SOCKET_STALL_S) it is disconnected
    and goes offline, while a reading client of the same channel receives every event, each
    before the next is published."""
    env = ({"SOCKET_MAX_BUFFER_BYTES": str(256 * 1024)} if limit == "bytes"
           else {"SOCKET_MAX_BUFFER_BYTES": str(10**9), "SOCKET_STALL_S": "1"})
    server = ServerProcess(migrated_sqlite(tmp_path / "slow.db"), env=env)
    api = Api(server.url)
    room, tokens = room_with_members(api, "cre", ["slow", "fast"])
    slow = await RawClient(server.url, tokens["slow"]).connect()
    fast = await RawClient(server.url, tokens["fast"]).connect()
    try:
        for c in (slow, fast):
            await join(c, room)
            assert (await c.call("subscribe", {"channel": "creator:cre"}))["ok"]
        slow.stop_reading()
        blob = "x" * 48_000
        offline = None
        published = 0
        for i in range(1500):  # ~72 MB at most: much more than loopback's socket buffers hold
            r = api.server("POST", "/publish", {"channel": "creator:cre", "event": "big",
                                                "data": {"i": i, "blob": blob}})
            assert r.status_code == 200, r.text
            published += 1
            await fast.wait(lambda i=i: any(e["data"]["i"] == i for e in fast.events("event")))  # type: ignore[misc]
            offline = next((p for p in fast.events("presence")
                            if p["user_id"] == "slow" and not p["online"]), None)
            if offline is not None:
                break
        assert offline is not None, "the socket that stopped reading was never disconnected"
        assert [e["data"]["i"] for e in fast.events("event")] == list(range(published))
        m = metrics(server)
        assert m[f'backstage_slow_socket_disconnects_total{{limit="{limit}",transport="websocket"}}'] == 1
        # The server is fine: a new socket of the same user connects and joins.
        again = await RawClient(server.url, tokens["slow"]).connect()
        await join(again, room)
        await again.close()
    finally:
        await close_all([slow, fast])
        api.close()
        server.stop()
    assert_clean_log(server)


async def test_disconnects_during_a_broadcast(cluster: Cluster) -> None:
    """Half of the listeners drop (TCP abort or close frame) while messages stream into their
    room; the rest receive every message exactly once, and the server logs no error."""
    api, urls = cluster.api, [s.url for s in cluster.servers]
    listeners = [f"l{i}" for i in range(10)]
    room, tokens = room_with_members(api, "cre", ["snd", *listeners])
    snd = await RawClient(urls[-1], tokens["snd"]).connect()
    clients = [await RawClient(urls[0], tokens[u]).connect() for u in listeners]
    try:
        for c in (snd, *clients):
            await join(c, room)
        total = 20

        async def send_all() -> None:
            for i in range(total):
                ack = await snd.call("send", {"conversation_id": room, "body": str(i), "client_msg_id": f"m{i}"})
                assert ack["ok"], ack

        sending = asyncio.create_task(send_all())
        for n, c in enumerate(clients[:5]):
            await c.wait_messages(2 + 3 * n)
            if n % 2:
                c.abort()
            else:
                assert c.ws is not None
                await c.ws.close()
        await sending
        for c in clients[5:]:
            await c.wait_messages(total)
            assert c.message_seqs() == list(range(1, total + 1))
        # Every dropped socket is cleaned up: its user goes offline for the others.
        await clients[5].wait(lambda: {p["user_id"] for p in clients[5].events("presence")
                                       if not p["online"]} >= set(listeners[:5]))
    finally:
        await close_all([snd, *clients])
    for server in cluster.servers:
        assert_clean_log(server)


# ---------------------------------------------------------------- the Redis relay


def numsub(redis_url: str, channel: str) -> int:
    r = redis_sync.Redis.from_url(redis_url)
    try:
        return int(dict(r.pubsub_numsub(channel))[channel.encode()])
    finally:
        r.close()


async def wait_numsub(redis_url: str, channel: str, n: int, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while numsub(redis_url, channel) != n:
        assert asyncio.get_running_loop().time() < deadline, f"{channel}: {numsub(redis_url, channel)} != {n}"
        await asyncio.sleep(0.05)


def relayed_emits_read(server: ServerProcess) -> float:
    """Emits this process read from Redis, on conversation channels or the shared channel."""
    m = metrics(server)
    return sum(m.get(f'backstage_relay_received_total{{kind="{k}"}}', 0.0) for k in ("room", "socketio"))


async def test_relay_reaches_only_processes_with_members(mysql_databases: MySQLDatabases, redis_url: str,
                                                         redis_prefix: str) -> None:
    """A conversation's broadcasts are read only by processes with a local member in it: the
    channel has one subscriber while only process 0 has members, process 1 reads none of its
    messages (its relay counter moves only by the marker of another conversation), and once a
    member joins on process 1 messages flow there; when it leaves, process 1 unsubscribes
    once ROOM_LINGER_S is over (chat/delivery.py; short here)."""
    mysql_cluster = Cluster(mysql_databases.new(), redis_url, redis_prefix, 2, env={"ROOM_LINGER_S": "0.3"})
    (s0, s1), api = mysql_cluster.servers, mysql_cluster.api
    room_x, tokens = room_with_members(api, "cre", ["a", "b", "c"])
    room_y = api.room("cre", "Other", 0)
    a = await RawClient(s0.url, tokens["a"]).connect()
    b = await RawClient(s1.url, tokens["b"]).connect()
    c = await RawClient(s0.url, tokens["c"]).connect()
    chan_x = f"{redis_prefix}:relay:conv:{room_x}"
    try:
        await join(a, room_x)
        await join(c, room_y)
        await join(b, room_y)
        await wait_numsub(redis_url, chan_x, 1)
        before = relayed_emits_read(s1)
        for i in range(5):
            assert (await a.call("send", {"conversation_id": room_x, "body": "x", "client_msg_id": f"x{i}"}))["ok"]
        # Marker: a message in Y, which process 1 reads, published after the five in X.
        assert (await c.call("send", {"conversation_id": room_y, "body": "y", "client_msg_id": "y0"}))["ok"]
        await b.wait_messages(1)
        assert relayed_emits_read(s1) - before == 1, "process 1 read messages of a conversation it has no member in"
        assert b.events("message")[0]["conversation_id"] == room_y

        await join(b, room_x)
        await wait_numsub(redis_url, chan_x, 2)
        assert (await a.call("send", {"conversation_id": room_x, "body": "x", "client_msg_id": "x5"}))["ok"]
        await b.wait(lambda: any(m["conversation_id"] == room_x for m in b.events("message")))
        assert [m["seq"] for m in b.events("message") if m["conversation_id"] == room_x] == [6]

        assert (await b.call("leave", {"conversation_id": room_x}))["ok"]
        await wait_numsub(redis_url, chan_x, 1)
        await join(b, room_x)
        await wait_numsub(redis_url, chan_x, 2)
        await b.close()  # a disconnect is a leave too
        await wait_numsub(redis_url, chan_x, 1)
    finally:
        await close_all([a, b, c])
        mysql_cluster.stop()


async def test_relay_resubscribes_when_redis_returns(mysql_databases: MySQLDatabases, redis_url: str,
                                                     redis_prefix: str) -> None:
    """Both processes reach Redis through a proxy that is cut and restored: conversation
    messages cross processes again shortly after Redis is back, without reconnecting clients."""
    u = make_url(redis_url)
    proxy = TcpProxy(u.host or "127.0.0.1", u.port or 6379).start()
    proxied = redis_url.replace(f"{u.host}:{u.port or 6379}", f"127.0.0.1:{proxy.port}")
    cluster = Cluster(mysql_databases.new(), proxied, redis_prefix, 2)
    (s0, s1), api = cluster.servers, cluster.api
    room, tokens = room_with_members(api, "cre", ["a", "b"])
    a = await RawClient(s0.url, tokens["a"]).connect()
    b = await RawClient(s1.url, tokens["b"]).connect()
    try:
        await join(a, room)
        await join(b, room)
        assert (await a.call("send", {"conversation_id": room, "body": "1", "client_msg_id": "m0"}))["ok"]
        await b.wait_messages(1)
        proxy.stop()
        proxy.start()
        # Keep sending until one crosses: sends fail (unavailable) while presence cannot reach Redis.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        acks = []
        for i in itertools.count(1):
            assert loop.time() < deadline, "messages never crossed processes again:\n" + "\n".join(
                line for line in (s0.log() + s1.log()).splitlines() if "WARNING" in line or "relay" in line) + str(acks)
            acks.append(await a.call("send", {"conversation_id": room, "body": str(i), "client_msg_id": f"m{i}"}))
            try:
                await b.wait(lambda i=i: any(m["client_msg_id"] == f"m{i}" for m in b.events("message")), 0.5)  # type: ignore[misc]
                break
            except TimeoutError:
                continue
        await wait_numsub(proxied, f"{redis_prefix}:relay:conv:{room}", 2)
    finally:
        await close_all([a, b])
        cluster.stop()
        proxy.stop()


# ---------------------------------------------------------------- detached websockets


async def test_detached_websocket_answers_control_frames_and_limits(tmp_path: Path) -> None:
    """After the handshake a websocket is owned by chat/fanout.py's DetachedWebSocket, not by
    aiohttp: it still answers a WebSocket PING with a PONG, Socket.IO packets, a client's close
    frame with a close frame, and a message over the 1 MiB limit with close 1009."""
    c = Cluster(migrated_sqlite(tmp_path / "detached.db"), None, "unused", 1)
    url = c.servers[0].url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url, autoping=False)
            assert (await ws.receive_str(timeout=10)).startswith("0{")
            await ws.ping(b"are you there")
            pong = await ws.receive(timeout=10)
            assert pong.type == aiohttp.WSMsgType.PONG and pong.data == b"are you there", pong
            await ws.send_str("40")  # a Socket.IO connect without a token: refused by the app
            assert (await ws.receive_str(timeout=10)).startswith("44"), "no connect_error"
            assert await ws.close() and ws.close_code == 1000  # our close answered with 1000
            ws = await http.ws_connect(url, autoping=False, max_msg_size=0)
            assert (await ws.receive_str(timeout=10)).startswith("0{")
            await ws.send_str("4" + "x" * (1024 * 1024 + 10))
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1009, closing
            await ws.close()
    finally:
        c.stop()


def test_disconnect_leaves_only_the_sockets_own_rooms() -> None:
    """FanoutManager.basic_disconnect takes a socket's rooms from its index instead of looking
    for the socket in every room of the namespace (5,000 disconnects at once were O(n²)): the
    socket leaves all of its rooms (the last member closes a room), no other room is even looked
    at, and nothing of the socket is left behind."""
    from chat.fanout import FanoutManager

    class Untouchable(dict):  # type: ignore[type-arg]
        def __contains__(self, key: object) -> bool:
            raise AssertionError("another socket's room was searched")

    manager = FanoutManager()
    closed: list[str] = []
    manager.on_room_close = closed.append
    for sid, eio in (("a", "ea"), ("b", "eb")):
        manager.basic_enter_room(sid, "/", None, eio_sid=eio)
        manager.basic_enter_room(sid, "/", sid, eio_sid=eio)
    manager.basic_enter_room("a", "/", "conversation:1")
    manager.basic_enter_room("b", "/", "conversation:1")
    manager.basic_enter_room("a", "/", "user:a")
    manager.basic_enter_room("a", "/", "user:gone")
    manager.basic_leave_room("a", "/", "user:gone")
    manager.rooms["/"]["elsewhere"] = Untouchable()
    manager.callbacks["a"] = {1: print}
    manager.basic_disconnect("a", "/")
    rooms = manager.rooms["/"]
    assert "a" not in rooms and "user:a" not in rooms and "a" not in rooms[None]
    assert set(rooms["conversation:1"]) == {"b"} and "b" in rooms[None] and "b" in rooms["b"]
    assert closed == ["user:gone", "user:a"]
    assert "a" not in manager.callbacks and ("/", "a") not in manager._sid_rooms
    del rooms["elsewhere"]
    manager.basic_disconnect("b", "/")
    assert manager.rooms == {} and manager._sid_rooms == {} and closed[-1] == "conversation:1"


def test_fanout_binary_check_answers_like_python_socketio() -> None:
    """chat/fanout.py has_binary (the fan-out's own check, cheaper) says what
    socketio's Packet.data_is_binary says, so binary broadcasts stay BINARY_EVENTs."""
    from socketio.packet import Packet

    from chat.fanout import has_binary

    cases: list[Any] = [b"x", bytearray(b"x"), [b"x"], {"a": [1, {"b": bytearray(b"1")}]}, ["e", {"k": (b"x",)}],
                        ["e", {b"k": 1}], [], {}, None, "text", 3, ["e", [[[]]]], ["e", {"a": {"b": memoryview(b"x")}}],
                        ["presence", {"conversation_id": "1", "user_id": "u", "online": True}],
                        ["message", {"id": "1", "reactions": [], "sender": {"id": "a", "avatar_url": None}}]]
    for data in cases:
        assert has_binary(data) == Packet.data_is_binary(data), data


def test_pending_disconnects_are_looked_up_without_a_scan() -> None:
    """In a reconnect storm thousands of sockets are pending disconnect at once, and upstream's
    `is_connected` (every event of every socket) searched that list: FanoutManager keeps the
    pending sids in hashed sets. The life cycle is unchanged: pending connect is not connected,
    connected is, pending disconnect is not, and nothing of a socket is left behind."""
    from chat.fanout import FanoutManager

    manager = FanoutManager()
    for k in range(5001):
        manager.basic_enter_room(f"s{k}", "/", None, eio_sid=f"e{k}")
    manager.pending_connect["/"] = []
    manager.pending_connect["/"].append("s0")
    assert manager.is_pre_connected("s0", "/") and not manager.is_connected("s0", "/")
    manager.pending_connect["/"].remove("s0")
    del manager.pending_connect["/"]
    assert manager.is_connected("s0", "/")
    for k in range(1, 5001):
        assert manager.pre_disconnect(f"s{k}", "/") == f"e{k}"
    pending = manager.pending_disconnect["/"]
    assert not isinstance(pending, list), "pending disconnects are a list: every `in` scans it"
    assert manager.is_connected("s0", "/") and not manager.is_connected("s5000", "/")
    assert manager.pre_disconnect("s0", "/") == "e0" and not manager.is_connected("s0", "/")
    manager.basic_disconnect("s0", "/")
    assert "s0" not in pending and len(pending) == 5000 and "s0" not in manager.rooms["/"][None]
    for k in range(1, 5001):
        manager.basic_disconnect(f"s{k}", "/")
    assert manager.pending_disconnect == {} and manager.rooms == {}


async def test_a_conversation_room_left_empty_lingers_for_the_relay_and_the_cache() -> None:
    """chat/delivery.py: the last local socket leaving a conversation room does not close it for
    the relay and the recent-message cache at once: it lingers `room_linger_s`, and a socket
    entering again meanwhile finds it never closed (no new subscription, the cache entry kept).
    Rooms that are not conversations close at once; a lingering room closes when the time is up."""
    from chat import keys
    from chat.delivery import Delivery
    from chat.fanout import FanoutServer

    sio = FanoutServer(async_mode="aiohttp")
    manager = sio.fanout
    opened: list[str] = []
    closed: list[str] = []
    manager.on_room_open, manager.on_room_close = opened.append, closed.append  # as the relay sets them
    delivery = Delivery(sio, None, room_linger_s=30)
    room = keys.conversation_room("7")
    entry = delivery.recent.begin_fill(7)
    assert delivery.recent.finish_fill(7, entry, [], False, [])

    manager.basic_enter_room("a", "/", room, eio_sid="ea")
    manager.basic_enter_room("a", "/", "user:a", eio_sid="ea")
    assert opened == [room, "user:a"]
    manager.basic_disconnect("a", "/")
    assert closed == ["user:a"] and delivery.lingering_rooms() == {room}  # the conversation lingers
    assert delivery.recent.entry(7) is entry
    manager.basic_enter_room("b", "/", room, eio_sid="eb")  # back within the linger
    assert opened == [room, "user:a"] and delivery.lingering_rooms() == set()
    assert delivery.recent.entry(7) is entry

    delivery._room_linger_s = 0.01
    gone = asyncio.get_running_loop().create_future()
    close = delivery._close_room
    delivery._close_room = lambda r: (close(r), gone.set_result(r))  # type: ignore[method-assign]
    manager.basic_leave_room("b", "/", room)
    assert delivery.lingering_rooms() == {room} and room not in closed
    assert await asyncio.wait_for(gone, 5) == room
    assert closed == ["user:a", room] and delivery.lingering_rooms() == set()
    assert delivery.recent.entry(7) is None  # closed for the cache too


async def test_rooms_but_none_are_plain_dicts_with_upstreams_behaviour() -> None:
    """FanoutManager.basic_enter_room keeps every room but None in a `Room` (a dict) instead of
    upstream's `bidict` (two new bidicts per connect): the room None still refuses a second sid
    for one Engine.IO session, and entering, listing, leaving and closing rooms answer as before."""
    from bidict import bidict

    from chat.fanout import FanoutManager, FanoutServer, Room

    manager = FanoutServer(async_mode="aiohttp").manager
    assert isinstance(manager, FanoutManager)
    opened: list[str] = []
    manager.on_room_open = opened.append
    sid = await manager.pre_connect("e1", "/")
    assert sid is not None and await manager.pre_connect("e1", "/") is None  # already connected
    other = await manager.pre_connect("e2", "/")
    rooms = manager.rooms["/"]
    assert type(rooms[None]) is bidict and type(rooms[sid]) is Room and rooms[sid] == {sid: "e1"}
    assert manager.sid_from_eio_sid("e2", "/") == other and manager.eio_sid_from_sid(sid, "/") == "e1"
    manager.basic_enter_room(sid, "/", "conversation:1")
    manager.basic_enter_room(other, "/", "conversation:1")
    assert type(rooms["conversation:1"]) is Room and opened == ["conversation:1"]
    assert sorted(manager.get_participants("/", "conversation:1")) == sorted([(sid, "e1"), (other, "e2")])
    assert sorted(manager.get_participants("/", ["conversation:1", sid])) == sorted([(sid, "e1"), (other, "e2")])
    assert manager.get_rooms(sid, "/") == [sid, "conversation:1"]
    with pytest.raises(ValueError, match="sid room"):
        manager.basic_enter_room(sid, "/", other)
    with pytest.raises(ValueError, match="not connected"):
        manager.basic_enter_room(sid, "/other", "room")
    manager.basic_leave_room(other, "/", "conversation:1")
    assert dict(rooms["conversation:1"]) == {sid: "e1"}
    manager.basic_close_room("conversation:1", "/")
    assert "conversation:1" not in rooms
