"""Socket.IO transports as real clients use them, on one two-process cluster (MariaDB + Redis)
shared by the module: the default transport (long-polling, then the upgrade to websocket),
polling-only clients across processes, the packet size limit over polling, and presence
going offline when a client vanishes without closing (noticed by the ping timeout).

The cluster runs with a short Socket.IO ping interval/timeout so a vanished client is noticed
in seconds; the clients here answer pings on their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import socketio

from tests.conftest import Cluster, MySQLDatabases
from tests.support import Api, Client

PING_INTERVAL_S, PING_TIMEOUT_S = 1, 2


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


class TransportClient(Client):
    """A recording client with the transports of our choosing (None: python-socketio's default,
    polling first and then the upgrade to websocket, like socket.io-client in a browser)."""

    def __init__(self, url: str, token: str, transports: list[str] | None = None) -> None:
        super().__init__(url, token)
        self.transports = transports
        # python-engineio reports its transport steps through this logger: the test reads them
        self.engineio_log: list[str] = []
        logger = logging.getLogger(f"tests.engineio.{id(self)}")
        logger.propagate, logger.level = False, logging.INFO
        logger.addHandler(_ListHandler(self.engineio_log))
        self.sio = socketio.AsyncClient(reconnection=False, engineio_logger=logger)
        self.sio.on("*", self._record)

    async def connect(self) -> TransportClient:
        await self.sio.connect(self.url, auth={"token": self.token}, transports=self.transports, wait_timeout=10)
        return self


@pytest.fixture(scope="module")
def cluster(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix_root: str) -> Iterator[Cluster]:
    env = {"SOCKETIO_PING_INTERVAL_S": str(PING_INTERVAL_S), "SOCKETIO_PING_TIMEOUT_S": str(PING_TIMEOUT_S)}
    c = Cluster(mysql_databases.new(), redis_url, f"{redis_prefix_root}-transport", 2, env=env)
    yield c
    c.stop()


def fresh_room(api: Api) -> tuple[str, str, str, str, str]:
    """(room, creator_id, creator_token, patron_id, patron_token), all new."""
    tag = secrets.token_hex(3)
    creator, patron = f"tc-{tag}", f"tp-{tag}"
    cre, pat = api.user(creator), api.user(patron)
    api.membership(creator, patron, 500)
    return api.room(creator, f"T {tag}"), creator, cre, patron, pat


def send(room: str, body: str, cmid: str | None = None) -> dict[str, Any]:
    return {"conversation_id": room, "body": body, "client_msg_id": cmid or secrets.token_hex(6)}


async def test_default_transport_connects_over_polling_then_upgrades(cluster: Cluster) -> None:
    room, creator, cre, patron, pat = fresh_room(cluster.api)
    s0, s1 = (s.url for s in cluster.servers)
    a = TransportClient(s0, pat)  # python-socketio defaults: polling first, then the upgrade
    b = await TransportClient(s1, cre, ["websocket"]).connect()
    try:
        await a.connect()
        assert a.sio.eio.transports == ["polling", "websocket"]
        assert any(line.startswith("Attempting polling connection") for line in a.engineio_log), a.engineio_log
        assert "WebSocket upgrade was successful" in a.engineio_log, a.engineio_log
        assert a.sio.transport() == "websocket", "the polling connection was not upgraded"
        assert (await a.call("join", {"conversation_id": room}))["ok"]
        assert (await b.call("join", {"conversation_id": room}))["ok"]
        ack = await a.call("send", send(room, "after upgrade"))
        assert ack["ok"], ack
        await b.wait_for("message", lambda m: m["body"] == "after upgrade")
        ack = await b.call("send", send(room, "to the upgraded socket"))
        assert ack["ok"], ack
        await a.wait_for("message", lambda m: m["body"] == "to the upgraded socket")
    finally:
        await a.close()
        await b.close()


async def test_polling_only_client_gets_messages_from_the_other_process(cluster: Cluster) -> None:
    room, creator, cre, patron, pat = fresh_room(cluster.api)
    s0, s1 = (s.url for s in cluster.servers)
    poller = await TransportClient(s1, pat, ["polling"]).connect()
    ws = await TransportClient(s0, cre, ["websocket"]).connect()
    try:
        assert poller.sio.transport() == "polling"
        assert (await poller.call("join", {"conversation_id": room}))["ok"]
        assert (await ws.call("join", {"conversation_id": room}))["ok"]
        for i in range(3):
            assert (await ws.call("send", send(room, f"to poller {i}")))["ok"]
        await poller.wait_for("message", lambda m: m["body"] == "to poller 2")
        assert [m["body"] for m in poller.events["message"]] == [f"to poller {i}" for i in range(3)]
        ack = await poller.call("send", send(room, "from poller"))
        assert ack["ok"], ack
        await ws.wait_for("message", lambda m: m["body"] == "from poller")
        assert poller.sio.transport() == "polling"
    finally:
        await poller.close()
        await ws.close()


async def test_too_large_over_polling_answers_an_error_and_keeps_the_socket(cluster: Cluster) -> None:
    room, creator, cre, patron, pat = fresh_room(cluster.api)
    poller = await TransportClient(cluster.servers[0].url, pat, ["polling"]).connect()
    try:
        assert (await poller.call("join", {"conversation_id": room}))["ok"]
        big = send(room, "x" * (70 * 1024))  # over the 64 KiB soft limit, under the hard limit
        ack = await poller.call("send", big)
        assert ack["ok"] is False and ack["error"]["code"] == "too_large", ack
        assert poller.sio.connected and poller.sio.transport() == "polling"
        ack = await poller.call("send", send(room, "small again"))
        assert ack["ok"], ack
        await poller.wait_for("message", lambda m: m["body"] == "small again")
        history = await poller.call("history", {"conversation_id": room})
        assert [m["body"] for m in history["messages"]] == ["small again"]  # the big one was not stored
    finally:
        await poller.close()


class SilentClient:
    """A raw Engine.IO/Socket.IO v4 websocket client that connects, joins a conversation, and then
    stops answering the server's pings while keeping its TCP connection open: a phone that went
    into a tunnel. Only the server's ping timeout can notice it."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.session = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def _recv_packet(self, prefix: str) -> str:
        assert self.ws is not None
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            if msg.data == "2":  # pings during the handshake are ignored too
                continue
            if msg.data.startswith(prefix):
                return str(msg.data[len(prefix):])

    async def connect_and_join(self, room: str) -> dict[str, Any]:
        ws_url = self.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = await self.session.ws_connect(ws_url, autoping=True)
        await self._recv_packet("0")  # Engine.IO open
        await self.ws.send_str("40" + json.dumps({"token": self.token}))
        await self._recv_packet("40")  # Socket.IO connect ack
        await self.ws.send_str("421" + json.dumps(["join", {"conversation_id": room}]))
        return dict(json.loads(await self._recv_packet("431"))[0])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.session.close()


async def test_vanished_client_goes_offline_through_the_ping_timeout(cluster: Cluster) -> None:
    room, creator, cre, patron, pat = fresh_room(cluster.api)
    s0, s1 = (s.url for s in cluster.servers)
    watcher = await TransportClient(s0, cre, ["websocket"]).connect()
    silent = SilentClient(s1, pat)  # on the other process: the news crosses the cluster
    try:
        assert (await watcher.call("join", {"conversation_id": room}))["ok"]
        joined = await silent.connect_and_join(room)
        assert joined["ok"] and patron in joined["online"], joined
        await watcher.wait_for("presence", lambda p: p["user_id"] == patron and p["online"] is True)
        # the silent client never answers a ping and never closes: offline once the timeout hits
        off = await watcher.wait_for("presence", lambda p: p["user_id"] == patron and p["online"] is False,
                                     timeout=10 * (PING_INTERVAL_S + PING_TIMEOUT_S))
        assert off == {"conversation_id": room, "user_id": patron, "online": False}
        ack = await watcher.call("join", {"conversation_id": room})
        assert ack["online"] == [creator], ack
    finally:
        await silent.close()
        await watcher.close()
