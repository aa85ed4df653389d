"""Coalesced websocket writes (chat/outbox.py): the frames a socket gets within one event-loop
turn leave in one `transport.write`, in order; closing writes what is pending first; a client
that stops reading is still disconnected; long-polling clients get everything.

Real clients over real sockets: python-socketio's AsyncClient (`tests.support.Client`), and
the wire-level `RawClient` of tests/test_fanout.py where a test needs to stop reading, or raw
aiohttp websockets to see Engine.IO packets. Most servers are real ones (`run_server.py`);
"one write" is read from their `backstage_ws_frames_total` / `backstage_ws_writes_total`, with
pings pushed out of the way (SOCKETIO_PING_INTERVAL_S=60), so the deltas are exactly the
frames of the test. The first test runs a bare `FanoutServer` in this process (its handlers
emit separate packets in one turn, which the app never does on cue) and reads the counters
from this process's registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web

from chat.fanout import FanoutServer
from chat.outbox import WS_FRAMES, WS_WRITES
from tests.support import Api, Client, ServerProcess, fetch, free_port, migrated_sqlite, ok
from tests.test_fanout import RawClient, room_with_members
from tests.test_operations import parse_metrics

QUIET = {"SOCKETIO_PING_INTERVAL_S": "60", "SOCKETIO_PING_TIMEOUT_S": "60"}


def ws_counts(server: ServerProcess) -> tuple[float, float]:
    m = parse_metrics(fetch("GET", server.url + "/metrics", timeout=10).text)
    return m.get("backstage_ws_frames_total", 0.0), m.get("backstage_ws_writes_total", 0.0)


def assert_clean_log(server: ServerProcess) -> None:
    log = server.log_path.read_text()
    assert "Traceback" not in log, log[-4000:]


# ---------------------------------------------------------------- a bare FanoutServer in this process


async def bare_server() -> tuple[FanoutServer, web.AppRunner, str]:
    """A FanoutServer on aiohttp on a real 127.0.0.1 port, with two handlers: `burst` emits n
    separate events to the caller and returns (the ack follows them in the same turn), `bye`
    emits n events and then closes the Engine.IO session."""
    sio = FanoutServer(async_mode="aiohttp", async_handlers=False, logger=False, engineio_logger=False)

    @sio.on("burst")  # type: ignore[misc]
    async def burst(sid: str, n: int) -> str:
        for i in range(n):
            await sio.emit("item", i, to=sid)  # one deliver each: n outbox writes
        return "done"

    @sio.on("bye")  # type: ignore[misc]
    async def bye(sid: str, n: int) -> None:
        for i in range(n):
            await sio.emit("item", i, to=sid)
        await sio.eio.disconnect(sio.manager.eio_sid_from_sid(sid, "/"))

    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return sio, runner, f"http://127.0.0.1:{port}"


def counted() -> tuple[float, float]:
    return WS_FRAMES._value.get(), WS_WRITES._value.get()


async def test_frames_of_one_turn_leave_in_one_write_in_order() -> None:
    """Ten events emitted one by one in one handler, and the handler's ack after them: eleven
    frames, one write, received in emit order with the ack last."""
    sio, runner, url = await bare_server()
    client = socketio.AsyncClient(reconnection=False)
    got: list[Any] = []
    client.on("item", got.append)
    try:
        await client.connect(url, transports=["websocket"], wait_timeout=10)
        await client.call("burst", 1, timeout=10)  # settle the connect's own frames
        before = counted()
        ack = await client.call("burst", 10, timeout=10)
        after = counted()
        assert ack == "done"
        assert got == [0, *range(10)]  # in order, the ack after all of them (call returned last)
        assert (after[0] - before[0], after[1] - before[1]) == (11, 1), "the frames of one turn took several writes"
    finally:
        await client.disconnect()
        await sio.shutdown()
        await runner.cleanup()


async def test_close_writes_pending_frames_first() -> None:
    """A handler emits five events and closes the session in the same turn: the events and the
    Engine.IO CLOSE packet, all still pending in the outbox when the connection is closed,
    reach the client, in order, before the connection ends."""
    sio, runner, url = await bare_server()
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
            assert (await ws.receive_str()).startswith("0{")  # OPEN
            await ws.send_str("40")
            assert (await ws.receive_str()).startswith("40")  # CONNECT
            await ws.send_str('42["bye",5]')
            got: list[str] = []
            async with asyncio.timeout(10):
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    got.append(msg.data)
            assert got == [f'42["item",{i}]' for i in range(5)] + ["1"], got
    finally:
        await sio.shutdown()
        await runner.cleanup()


# ---------------------------------------------------------------- the app


@pytest.fixture
def windowed(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server holding presence events for 1.5 s (PRESENCE_WINDOW_S), so that the events of
    several joins go out in one loop turn."""
    server = ServerProcess(migrated_sqlite(tmp_path / "coalesce.db"),
                           env={**QUIET, "PRESENCE_WINDOW_S": "1.5"})
    yield server
    server.stop()


async def test_presence_events_of_one_turn_reach_each_socket_in_one_write_in_order(
        windowed: ServerProcess) -> None:
    """Five users join one after another within the presence window: their five `presence`
    events go out together. The two members who were there get all five, in join order; each
    joiner gets the other four (not its own); and every one of these seven sockets gets its
    events in exactly one websocket write."""
    api = Api(windowed.url)
    joiners = [f"j{i}" for i in range(5)]
    room, tokens = room_with_members(api, "cre", ["old", "old2", *joiners])
    old = await Client(windowed.url, tokens["old"]).connect()
    old2 = await Client(windowed.url, tokens["old2"]).connect()
    clients = [await Client(windowed.url, tokens[u]).connect() for u in joiners]
    try:
        ok(await old.call("join", {"conversation_id": room}))
        ok(await old2.call("join", {"conversation_id": room}))
        # The window of these two joins is over once each saw the other: nothing is pending.
        await old.wait_for("presence", lambda e: e["user_id"] == "old2")
        await old2.wait_for("presence", lambda e: e["user_id"] == "old")
        before = ws_counts(windowed)
        for c in clients:  # one after another: the events are announced in this order
            ok(await c.call("join", {"conversation_id": room}))
        mid = ws_counts(windowed)
        assert mid[0] - before[0] == mid[1] - before[1] == len(joiners)  # the join acks, one write each

        for o in (old, old2):
            await o.wait_for("presence", lambda e: e["user_id"] == joiners[-1])
        for c, user in zip(clients, joiners, strict=True):
            others = [u for u in joiners if u != user]
            await c.wait_for("presence", lambda e, last=others[-1]: e["user_id"] == last)
        after = ws_counts(windowed)

        assert [e["user_id"] for e in old.events["presence"]] == ["old2", *joiners]
        assert [e["user_id"] for e in old2.events["presence"]] == ["old", *joiners]
        assert all(e == {"conversation_id": room, "user_id": e["user_id"], "online": True}  # SPEC §4, as is
                   for e in old.events["presence"])
        for c, user in zip(clients, joiners, strict=True):
            assert [e["user_id"] for e in c.events["presence"]] == [u for u in joiners if u != user]
        frames, writes = after[0] - mid[0], after[1] - mid[1]
        assert frames == 2 * len(joiners) + len(joiners) * (len(joiners) - 1)  # 5 to old and old2, 4 to each joiner
        assert writes == 2 + len(joiners), f"{frames} frames in {writes} writes: one write per socket expected"
    finally:
        for c in [old, old2, *clients]:
            await c.close()
        api.close()
    assert_clean_log(windowed)


async def test_close_writes_the_pending_close_packet_first(tmp_path: Path) -> None:
    """A session that never connects to a namespace is closed by the server
    (SOCKETIO_CONNECT_TIMEOUT_S): its Engine.IO CLOSE packet is queued in the outbox in the
    same turn as the connection is closed, and still reaches the client before the
    connection ends."""
    server = ServerProcess(migrated_sqlite(tmp_path / "close.db"),
                           env={**QUIET, "SOCKETIO_CONNECT_TIMEOUT_S": "0.5"})
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(server.url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
            got: list[str] = []
            async with asyncio.timeout(15):
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    got.append(msg.data)
            assert got[0].startswith("0{"), got  # OPEN
            assert got[-1] == "1", f"connection ended without the CLOSE packet: {got}"
    finally:
        server.stop()
    assert_clean_log(server)


async def test_a_client_that_stops_reading_is_still_disconnected(tmp_path: Path) -> None:
    """Back-pressure with coalesced writes: a websocket that stops reading is disconnected
    once pending + unsent bytes pass SOCKET_MAX_BUFFER_BYTES (the stall limit is out of the
    way), and goes offline for the others; a reading client of the same room gets every event."""
    env = {**QUIET, "SOCKET_MAX_BUFFER_BYTES": str(256 * 1024), "SOCKET_STALL_S": "3600"}
    server = ServerProcess(migrated_sqlite(tmp_path / "slow.db"), env=env)
    api = Api(server.url)
    room, tokens = room_with_members(api, "cre", ["slow", "fast"])
    slow = await RawClient(server.url, tokens["slow"]).connect()
    fast = await RawClient(server.url, tokens["fast"]).connect()
    try:
        for c in (slow, fast):
            assert (await c.call("join", {"conversation_id": room}))["ok"]
            assert (await c.call("subscribe", {"channel": "creator:cre"}))["ok"]
        slow.stop_reading()
        blob = "x" * 48_000
        offline = None
        published = 0
        for i in range(1500):
            r = api.server("POST", "/publish", {"channel": "creator:cre", "event": "big", "data": {"i": i, "blob": blob}})
            assert r.status_code == 200, r.text
            published += 1
            await fast.wait(lambda i=i: any(e["data"]["i"] == i for e in fast.events("event")))  # type: ignore[misc]
            offline = next((p for p in fast.events("presence") if p["user_id"] == "slow" and not p["online"]), None)
            if offline is not None:
                break
        assert offline is not None, "the socket that stopped reading was never disconnected"
        assert [e["data"]["i"] for e in fast.events("event")] == list(range(published))
        m = parse_metrics(fetch("GET", server.url + "/metrics", timeout=10).text)
        assert m['backstage_slow_socket_disconnects_total{limit="bytes",transport="websocket"}'] == 1
    finally:
        await slow.close()
        await fast.close()
        api.close()
        server.stop()
    assert_clean_log(server)


async def test_polling_clients_get_every_event_in_order(windowed: ServerProcess) -> None:
    """A long-polling client and a websocket client in one room: the presence events of five
    joins (one hand-over to the fan-out) and the messages after them reach both, in the same
    order, each once."""
    api = Api(windowed.url)
    joiners = [f"p{i}" for i in range(5)]
    room, tokens = room_with_members(api, "cre", ["poll", "ws", *joiners])
    events: list[tuple[str, Any]] = []
    poll = socketio.AsyncClient(reconnection=False)
    got = asyncio.Event()

    async def record(event: str, data: Any = None) -> None:
        events.append((event, data))
        got.set()

    poll.on("*", record)
    await poll.connect(windowed.url, auth={"token": tokens["poll"]}, transports=["polling"], wait_timeout=10)
    ws = await Client(windowed.url, tokens["ws"]).connect()
    clients = [await Client(windowed.url, tokens[u]).connect() for u in joiners]
    try:
        assert poll.transport() == "polling"
        ok(await poll.call("join", {"conversation_id": room}, timeout=10))
        ok(await ws.call("join", {"conversation_id": room}))
        for c in clients:
            ok(await c.call("join", {"conversation_id": room}))
        await ws.wait_for("presence", lambda e: e["user_id"] == joiners[-1])
        for i in range(5):
            ok(await clients[i].call("send", {"conversation_id": room, "body": f"b{i}", "client_msg_id": f"c{i}"}))
        await ws.wait_for("message", lambda m: m["client_msg_id"] == "c4")

        async def polled_all() -> None:
            while not any(e == "message" and d["client_msg_id"] == "c4" for e, d in events):
                got.clear()
                await got.wait()

        await asyncio.wait_for(polled_all(), 15)

        def stream(pairs: list[tuple[str, Any]]) -> list[Any]:
            return [(e, d["user_id"] if e == "presence" else d["client_msg_id"])
                    for e, d in pairs if e in ("presence", "message")]

        ws_pairs = [(e, d) for e in ("presence", "message") for d in ws.events[e]]
        expected = [("presence", u) for u in joiners] + [("message", f"c{i}") for i in range(5)]
        assert sorted(p for p in stream(ws_pairs) if p[1] != "poll") == sorted(expected)
        assert [p for p in stream(events) if p[1] != "ws"] == expected
    finally:
        await poll.disconnect()
        for c in [ws, *clients]:
            await c.close()
        api.close()
    assert_clean_log(windowed)
