"""Reconnect storm (`make test-long`): STORM_CLIENTS (default 1,000) real python-socketio clients
on two server processes (MariaDB + a redis-server of the test's own) connect and join one of
STORM_ROOMS rooms; one message per room reaches everyone; all disconnect at once; STORM_MISSED
messages per room are posted while nobody is connected; then every client reconnects at once
and joins with `since_seq` = the last seq it saw (a failed attempt is retried after a jittered
0.5-1.5 s back-off, like a real client).

Passes when every client recovered (its join ack came) with exactly the messages it missed (seq
last+1 .. the room's last, no gap, no duplicate), and a message posted afterwards reaches every
client live. The time from the reconnect's start until the last client recovered is measured
(not judged) and written to long-results/storm-*.json (and storm-last.json).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import socketio

from tests.conftest import MySQLDatabases
from tests.faults import OwnRedis
from tests.long.support import write_results
from tests.support import API_KEY, ServerProcess, make_token

CLIENTS = int(os.environ.get("STORM_CLIENTS", "1000"))
ROOMS = int(os.environ.get("STORM_ROOMS", "50"))
MISSED = int(os.environ.get("STORM_MISSED", "3"))
DEADLINE = float(os.environ.get("STORM_DEADLINE_S", "300"))

pytestmark = [pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server"),
              pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def cluster(mysql_databases: MySQLDatabases) -> Iterator[list[ServerProcess]]:
    redis = OwnRedis()
    servers: list[ServerProcess] = []
    try:
        url = mysql_databases.new()
        for _ in range(2):
            servers.append(ServerProcess(url, redis.url, "storm", ready_timeout=120))
        yield servers
    finally:
        for s in servers:
            s.stop()
        redis.stop()


class StormClient:
    def __init__(self, i: int, server: ServerProcess, room: str) -> None:
        self.i, self.server, self.room = i, server, room
        self.user = f"storm-u{i}"
        self.token = make_token(self.user, ttl=3600)
        self.seqs: list[int] = []  # every seq this client got, live or recovered, in order
        self.sio: socketio.AsyncClient | None = None
        self.arrived = asyncio.Event()
        self.want = 0  # set arrived when seq `want` is in
        self.unexpected_disconnects = 0

    def _new(self) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False)

        @sio.on("message")
        async def _message(m: dict[str, Any]) -> None:
            if str(m["conversation_id"]) == self.room:
                self.seqs.append(m["seq"])
                if m["seq"] >= self.want:
                    self.arrived.set()

        return sio

    async def connect_and_join(self, since_seq: int | None, deadline: float) -> list[int]:
        """Connect and join (retried with back-off until deadline); the seqs the join brought."""
        while True:
            sio = self._new()
            try:
                await sio.connect(self.server.url, auth={"token": self.token}, transports=["websocket"],
                                  wait_timeout=30)
                payload: dict[str, Any] = {"conversation_id": self.room}
                if since_seq is not None:
                    payload["since_seq"] = since_seq
                r = await sio.call("join", payload, timeout=30)
                if not r.get("ok"):
                    raise RuntimeError(f"join: {r}")
                self.sio = sio
                got = [m["seq"] for m in r["messages"]]
                self.seqs.extend(got)
                return got
            except Exception:
                try:
                    await sio.disconnect()
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(random.uniform(0.5, 1.5))  # a client's back-off

    async def wait_seq(self, seq: int, deadline: float) -> None:
        """Until seq `seq` is in. A socket the server dropped meanwhile (on a loaded machine a
        ping can miss its deadline) comes back like a real client: join with since_seq."""
        self.want = seq
        while max(self.seqs, default=0) < seq:
            if self.sio is None or not self.sio.connected:
                self.unexpected_disconnects += 1
                await self.connect_and_join(max(self.seqs, default=0), deadline)
                continue
            self.arrived.clear()
            if max(self.seqs, default=0) < seq:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), 10)
            if time.monotonic() > deadline:
                raise TimeoutError(f"client {self.i}: seq {seq} not received")

    async def drop(self) -> None:
        if self.sio is not None:
            await self.sio.disconnect()
            self.sio = None


async def _bounded(n: int, coros: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


async def test_reconnect_storm(cluster: list[ServerProcess]) -> None:
    servers = cluster
    server_api = {"Authorization": f"Bearer {API_KEY}"}
    creator = "storm-creator"
    async with httpx.AsyncClient(base_url=servers[0].url, timeout=60) as http:
        async def server(method: str, path: str, body: Any) -> Any:
            r = await http.request(method, "/api/v1/server" + path, json=body, headers=server_api)
            assert r.status_code in (200, 201), r.text
            return r.json()

        await server("PUT", f"/users/{creator}", {"name": "Storm"})
        rooms = [str((await server("POST", "/rooms", {"creator_id": creator, "name": f"Storm {r}",
                                                      "min_tier_cents": 0, "post_policy": "everyone"}))
                      ["conversation"]["id"]) for r in range(ROOMS)]
        clients = [StormClient(i, servers[i % 2], rooms[i % ROOMS]) for i in range(CLIENTS)]
        setup = await _bounded(32, [server("PUT", f"/users/{c.user}", {"name": c.user}) for c in clients])
        setup += await _bounded(32, [server("PUT", f"/memberships/{creator}/{c.user}",
                                            {"tier_cents": 100, "status": "active"}) for c in clients])
        assert not [e for e in setup if isinstance(e, BaseException)]

        last_seq = {room: 0 for room in rooms}
        posters = {room: next(c for c in clients if c.room == room) for room in rooms}

        async def post(room: str, tag: str) -> None:
            c = posters[room]
            r = await http.post(f"/api/v1/conversations/{room}/messages", json={"body": tag, "client_msg_id": tag},
                                headers={"Authorization": f"Bearer {c.token}"})
            assert r.status_code == 201, r.text
            last_seq[room] = max(last_seq[room], r.json()["message"]["seq"])

        # 1. Everyone connects and joins.
        t0 = time.monotonic()
        joined = await _bounded(100, [c.connect_and_join(None, time.monotonic() + DEADLINE) for c in clients])
        assert not [e for e in joined if isinstance(e, BaseException)], [e for e in joined if isinstance(e, BaseException)][:5]
        connect_s = time.monotonic() - t0
        # 2. One message per room reaches everyone: each client knows its last seq.
        for room in rooms:
            await post(room, f"before-{room}")
        await asyncio.gather(*(c.wait_seq(last_seq[c.room], time.monotonic() + DEADLINE) for c in clients))
        seen = {c.i: max(c.seqs) for c in clients}
        # 3. Everyone drops at once.
        await asyncio.gather(*(c.drop() for c in clients))
        # 4. Messages nobody is there to receive.
        for n in range(MISSED):
            for room in rooms:
                await post(room, f"missed-{n}-{room}")
        # 5. The storm: every client at once, join with since_seq.
        for c in clients:
            c.seqs = []
        recovered_at: list[float] = []
        t1 = time.monotonic()

        async def recover(c: StormClient) -> list[int]:
            got = await c.connect_and_join(seen[c.i], t1 + DEADLINE)
            recovered_at.append(time.monotonic() - t1)
            return got

        results = await asyncio.gather(*(recover(c) for c in clients), return_exceptions=True)
        storm_s = time.monotonic() - t1
        failed = [(c.i, repr(r)) for c, r in zip(clients, results, strict=True) if isinstance(r, BaseException)]
        wrong = [(c.i, r) for c, r in zip(clients, results, strict=True)
                 if not isinstance(r, BaseException) and r != list(range(seen[c.i] + 1, last_seq[c.room] + 1))]
        # 6. Live again: one more message per room reaches every client.
        for room in rooms:
            await post(room, f"after-{room}")
        live_missing = 0
        if not failed:
            waits = await asyncio.gather(*(c.wait_seq(last_seq[c.room], time.monotonic() + DEADLINE)
                                           for c in clients), return_exceptions=True)
            live_missing = sum(1 for w in waits if isinstance(w, BaseException))
        dups = sum(1 for c in clients if len(c.seqs) != len(set(c.seqs)))
        await _bounded(200, [c.drop() for c in clients])

    recovered_at.sort()
    figures = {
        "clients": CLIENTS, "rooms": ROOMS, "missed_per_room": MISSED, "servers": len(servers),
        "connect_and_join_s": round(connect_s, 2), "storm_recovered_s": round(storm_s, 2),
        "recovered": len(recovered_at), "failed": len(failed), "wrong_recovery": len(wrong),
        "duplicates": dups, "live_after_missing": live_missing,
        "unexpected_disconnects": sum(c.unexpected_disconnects for c in clients),
        "recovered_p50_s": round(recovered_at[len(recovered_at) // 2], 2) if recovered_at else None,
        "recovered_p99_s": round(recovered_at[int(len(recovered_at) * 0.99)], 2) if recovered_at else None,
        "failures": failed[:20], "wrong_examples": wrong[:5],
    }
    path = write_results("storm", figures)
    print(f"\nreconnect storm: {CLIENTS} clients recovered in {storm_s:.1f} s "
          f"(p50 {figures['recovered_p50_s']} s, p99 {figures['recovered_p99_s']} s); first connect+join "
          f"{connect_s:.1f} s; failed {len(failed)}, wrong {len(wrong)}, dups {dups}, unexpected disconnects "
          f"{figures['unexpected_disconnects']}; {path}")
    assert not failed, failed[:10]
    assert not wrong, wrong[:5]
    assert dups == 0
    assert live_missing == 0
