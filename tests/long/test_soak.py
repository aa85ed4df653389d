"""Soak (`make test-long`): two server processes on MariaDB + a redis-server of the test's own,
steady chat load for SOAK_SECONDS (default 1,800), resources sampled throughout.

Load: SOAK_CLIENTS churning clients (real python-socketio clients; half websocket only, half the
default polling-then-upgrade), each in a loop: connect to one of the two processes (alternating),
join its room, send SOAK_MESSAGES_PER_LIFE messages (one every SOAK_SEND_INTERVAL_S), disconnect.
Two observers per room (one per process) stay connected throughout and record every message.

Passes when
- every sample series is flat after warm-up (tests/long/support.py `Flat`, on the samples after
  the warm-up, cut in thirds): server RSS (last third's median ≤ first third's + max(10 %,
  16 MiB)) and open file descriptors (+16); the connection pools, Redis clients (all of the own
  redis-server's clients but the sampler's) and MariaDB connections on the run's database:
  last third's median ≤ the highest count before the last third + 4 (a pool keeps what its
  worst burst opened; a leak keeps growing);
- no message was lost or duplicated: every acked send is in the database once, each room's seqs
  are 1..n without a gap, and each observer received each stored message exactly once;
- no send failed and no connect was refused (an `unavailable` answer is retried with back-off, as a
  client does, up to 5 times, and counted).

The figures are written to long-results/soak-<seconds>s-<time>.json (and -last.json), the
servers' logs beside them.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
import socketio
import sqlalchemy as sa

from tests.conftest import MySQLDatabases, _admin_connect
from tests.faults import OwnRedis
from tests.long.support import RESULTS_DIR, Flat, open_fds, rss_bytes, write_results
from tests.support import Api, Client, ServerProcess, barrier, make_token, sync_engine

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "1800"))
SAMPLE_EVERY = float(os.environ.get("SOAK_SAMPLE_S", "10"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "24"))
MESSAGES_PER_LIFE = int(os.environ.get("SOAK_MESSAGES_PER_LIFE", "5"))
SEND_INTERVAL = float(os.environ.get("SOAK_SEND_INTERVAL_S", "0.4"))
ROOMS = 6
WARMUP = max(60.0, SOAK_SECONDS * 0.2)

RULES = {"rss_bytes": Flat(0.10, 16 * 1024 * 1024), "open_fds": Flat(0.0, 16),
         "redis_clients": Flat(0.0, 4, "peak"), "mysql_connections": Flat(0.0, 4, "peak")}

pytestmark = [pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server"),
              pytest.mark.timeout(SOAK_SECONDS + 900)]


@pytest.fixture(scope="module")
def cluster(mysql_databases: MySQLDatabases) -> Iterator[tuple[OwnRedis, list[ServerProcess], str]]:
    redis = OwnRedis()
    servers: list[ServerProcess] = []
    try:
        url = mysql_databases.new()
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        for n in range(2):
            servers.append(ServerProcess(url, redis.url, "soak", ready_timeout=120,
                                         log_path=RESULTS_DIR / f"soak-{int(SOAK_SECONDS)}s-server{n}.log"))
        yield redis, servers, url
    finally:
        for s in servers:
            s.stop()
        redis.stop()


class Sampler:
    def __init__(self, servers: list[ServerProcess], redis_url: str, database: str) -> None:
        self.servers, self.database = servers, database
        self.redis = redis_sync.Redis.from_url(redis_url)
        self.my_redis_id = self.redis.client_id()
        self.mysql = _admin_connect()
        self.samples: list[dict[str, Any]] = []

    def sample(self, t: float, connected: int) -> None:
        clients = [c for c in self.redis.client_list() if int(c["id"]) != self.my_redis_id]
        with self.mysql.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", (self.database,))
            row = cur.fetchone()
        self.samples.append({
            "t": round(t, 1), "churn_connected": connected,
            "rss_bytes": [rss_bytes(s.pid) for s in self.servers],
            "open_fds": [open_fds(s.pid) for s in self.servers],
            "redis_clients": len(clients), "mysql_connections": int(row[0]) if row else 0,
        })

    def close(self) -> None:
        self.redis.close()
        self.mysql.close()


class Observer:
    """A socket that stays in one room for the whole run and records every message it gets."""

    def __init__(self, server: ServerProcess, user: str, room: str, ttl: int) -> None:
        self.room, self.user = room, user
        self.client = Client(server.url, make_token(user, ttl=ttl))
        self.live: list[str] = []       # message ids as they arrived live
        self.recovered: list[str] = []  # ids brought by a `join {since_seq}` after a resync
        self.seqs: set[int] = set()
        self.resyncs = 0
        self.disconnects = 0
        self.client.sio.on("message", self._message)
        self.client.sio.on("resync", self._resync)
        self.client.sio.on("disconnect", self._disconnect)

    async def _message(self, m: dict[str, Any]) -> None:
        if str(m["conversation_id"]) == self.room:
            self.live.append(str(m["id"]))
            self.seqs.add(m["seq"])

    async def _resync(self, e: dict[str, Any]) -> None:
        if str(e["conversation_id"]) != self.room:
            return
        self.resyncs += 1
        seen = 0
        while seen + 1 in self.seqs:
            seen += 1
        r = await self.client.call("join", {"conversation_id": self.room, "since_seq": seen}, timeout=30)
        for m in r.get("messages", []):
            self.recovered.append(str(m["id"]))
            self.seqs.add(m["seq"])

    async def _disconnect(self, *_: Any) -> None:
        self.disconnects += 1

    async def start(self) -> None:
        await self.client.connect()
        r = await self.client.call("join", {"conversation_id": self.room}, timeout=30)
        assert r["ok"], r


class Load:
    def __init__(self, servers: list[ServerProcess], rooms: list[str], users: list[str], ttl: int) -> None:
        self.servers, self.rooms, self.users, self.ttl = servers, rooms, users, ttl
        self.acked: dict[str, list[tuple[str, str]]] = defaultdict(list)  # room -> (message id, client_msg_id)
        self.errors: list[str] = []
        self.connected = 0
        self.lives = 0
        self.unavailable_retries = 0
        self.stop = False

    async def call(self, sio: socketio.AsyncClient, event: str, data: dict[str, Any]) -> Any:
        """As a client does: `unavailable` (a backing service, e.g. the shared MariaDB out of
        connections) is retried after a back-off, up to 5 times; counted, not an error."""
        for attempt in range(5):
            r = await sio.call(event, data, timeout=30)
            if r.get("ok") or r.get("error", {}).get("code") != "unavailable" or attempt == 4:
                return r
            self.unavailable_retries += 1
            await asyncio.sleep(0.5 * 2 ** attempt)  # the client's back-off
        return r

    async def churn(self, i: int) -> None:
        user, room = self.users[i], self.rooms[i % len(self.rooms)]
        token = make_token(user, ttl=self.ttl)
        transports = ["websocket"] if i % 2 == 0 else None  # None: polling, then the upgrade
        life = 0
        while not self.stop:
            server = self.servers[(i + life) % len(self.servers)]
            sio = socketio.AsyncClient(reconnection=False)
            try:
                await sio.connect(server.url, auth={"token": token}, transports=transports, wait_timeout=30)
                self.connected += 1
                try:
                    r = await self.call(sio, "join", {"conversation_id": room})
                    if not r.get("ok"):
                        self.errors.append(f"join: {r}")
                    for n in range(MESSAGES_PER_LIFE):
                        cmid = f"{user}-{life}-{n}"
                        r = await self.call(sio, "send", {"conversation_id": room, "body": f"soak {cmid}",
                                                          "client_msg_id": cmid})
                        if r.get("ok"):
                            self.acked[room].append((str(r["message"]["id"]), cmid))
                        else:
                            self.errors.append(f"send: {r}")
                        await asyncio.sleep(SEND_INTERVAL)  # the load's pace
                finally:
                    self.connected -= 1
                    await sio.disconnect()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1)
            life += 1
            self.lives += 1
            await asyncio.sleep(random.uniform(0, 0.5))  # the load's pace


async def test_soak(cluster: tuple[OwnRedis, list[ServerProcess], str]) -> None:
    redis, servers, db_url = cluster
    database = sa.engine.make_url(db_url).database
    assert database
    api = Api(servers[0].url)
    apis = [api, Api(servers[1].url)]
    ttl = int(SOAK_SECONDS) + 1800
    creator = "soak-creator"
    api.user(creator)
    rooms = [api.room(creator, f"Soak {r}") for r in range(ROOMS)]
    users = [f"soak-u{i}" for i in range(CLIENTS)]
    watchers = [f"soak-w{r}-{s}" for r in range(ROOMS) for s in range(2)]
    for u in users + watchers:
        api.user(u)
        api.membership(creator, u, 500)

    observers = [Observer(servers[s], f"soak-w{r}-{s}", rooms[r], ttl) for r in range(ROOMS) for s in range(2)]
    for o in observers:
        await o.start()

    sampler = Sampler(servers, redis.url, database)
    load = Load(servers, rooms, users, ttl)
    started = time.monotonic()
    tasks = [asyncio.create_task(load.churn(i)) for i in range(CLIENTS)]
    try:
        while (elapsed := time.monotonic() - started) < SOAK_SECONDS:
            await asyncio.to_thread(sampler.sample, elapsed, load.connected)
            s = sampler.samples[-1]
            print(f"[soak {elapsed:6.0f}s] rss {[b // 2**20 for b in s['rss_bytes']]} MiB, fds {s['open_fds']}, "
                  f"redis clients {s['redis_clients']}, mysql conns {s['mysql_connections']}, "
                  f"lives {load.lives}, acked {sum(map(len, load.acked.values()))}, errors {len(load.errors)}",
                  flush=True)
            await asyncio.sleep(SAMPLE_EVERY)  # the sampling period
    finally:
        load.stop = True
        await asyncio.gather(*tasks)
    # Idle again (churners gone), then one last sample of where things settle.
    await barrier(apis, [(o.user, o.client) for o in observers], "soak-end")
    sampler.sample(time.monotonic() - started, 0)
    sampler.close()

    # Messages: the database holds each acked message once, seqs without gaps; every observer
    # received every stored message of its room exactly once.
    engine = sync_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT conversation_id, seq, id, client_msg_id FROM messages")).all()
    engine.dispose()
    stored: dict[str, dict[str, int]] = defaultdict(dict)  # room -> id -> seq
    cmids: Counter[tuple[str, str]] = Counter()
    for conv, seq, mid, cmid in rows:
        stored[str(conv)][str(mid)] = seq
        cmids[(str(conv), cmid)] += 1
    problems: list[str] = []
    for room in rooms:
        seqs = sorted(stored[room].values())
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"room {room}: seqs not 1..n")
        missing = [mid for mid, _ in load.acked[room] if mid not in stored[room]]
        if missing:
            problems.append(f"room {room}: {len(missing)} acked messages not stored")
    dup_cmids = [k for k, n in cmids.items() if n > 1]
    if dup_cmids:
        problems.append(f"{len(dup_cmids)} client_msg_ids stored more than once")
    overlaps = 0
    for o in observers:
        # A duplicate is a message delivered live twice. One that a `join {since_seq}` after a
        # resync brought and that then also arrived live is the protocol's overlap (clients
        # dedupe by seq): counted, not a failure.
        dups = [mid for mid, n in Counter(o.live).items() if n > 1]
        overlaps += len(set(o.live) & set(o.recovered))
        lost = set(stored[o.room]) - set(o.live) - set(o.recovered)
        if dups or lost:
            problems.append(f"observer {o.user}: {len(lost)} lost, {len(dups)} duplicated")
        if o.disconnects:
            problems.append(f"observer {o.user}: disconnected {o.disconnects} times")
    for o in observers:
        await o.client.close()
    for a in apis:
        a.close()

    # Resources: flat after warm-up.
    after = [s for s in sampler.samples[:-1] if s["t"] >= WARMUP]
    assert len(after) >= 6, f"too few samples after warm-up ({len(after)}): raise SOAK_SECONDS"
    verdicts: dict[str, Any] = {}
    for key, rule in RULES.items():
        if isinstance(after[0][key], list):
            for n in range(len(servers)):
                verdicts[f"{key}[server {n}]"] = rule.judge([s[key][n] for s in after])
        else:
            verdicts[key] = rule.judge([s[key] for s in after])
    total_acked = sum(map(len, load.acked.values()))
    results = {
        "soak_seconds": SOAK_SECONDS, "warmup_s": WARMUP, "sample_every_s": SAMPLE_EVERY, "clients": CLIENTS,
        "rooms": ROOMS, "observers": len(observers), "lives": load.lives, "messages_acked": total_acked,
        "messages_stored": len(rows), "messages_per_s": round(total_acked / SOAK_SECONDS, 1),
        "send_or_connect_errors": load.errors[:50], "error_count": len(load.errors),
        "unavailable_retries": load.unavailable_retries,
        "observer_resyncs": sum(o.resyncs for o in observers), "resync_overlaps": overlaps, "problems": problems,
        "verdicts": verdicts, "settled": sampler.samples[-1], "samples": sampler.samples,
    }
    path = write_results(f"soak-{int(SOAK_SECONDS)}s", results)
    print(f"soak results: {path}")
    for name, v in verdicts.items():
        print(f"  {name}: first third {v['first_third_median']:.0f}, last third {v['last_third_median']:.0f}, "
              f"growth over {v['rule']} {v['growth']:.0f} (allowed {v['allowed_growth']:.0f}) "
              f"{'flat' if v['flat'] else 'GROWING'}")
    print(f"  {load.lives} client lives, {total_acked} messages acked ({results['messages_per_s']}/s), "
          f"{len(load.errors)} errors, problems: {problems}")

    assert not problems, problems
    assert not load.errors, load.errors[:20]
    growing = {k: v for k, v in verdicts.items() if not v["flat"]}
    assert not growing, growing
    assert statistics.median([s["churn_connected"] for s in after]) > 0  # the load really ran
