"""The group-commit send path (chat/writer.py) on real servers, sockets, MariaDB/SQLite and Redis.

To make a batch happen for sure (not by timing luck), the test holds the conversation's row lock
itself (MariaDB: `SELECT ... FOR UPDATE`; SQLite: `BEGIN IMMEDIATE`): each process's first send
then waits inside its transaction, the other sends pile up in the writer (the test waits on the
`backstage_sends_in_writer` gauge, never on a timer), and once the lock is released each
process stores all of them in ONE more transaction (`backstage_message_batches_total`).
"""

from __future__ import annotations

import asyncio
import select
import socket
import sqlite3
import threading
import time
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import Cluster
from tests.faults import TcpProxy
from tests.support import TLS, Api, Client, ServerProcess, fetch, migrated_sqlite, sync_engine
from tests.test_operations import parse_metrics


def metric(url: str, name: str) -> float:
    return parse_metrics(fetch("GET", url + "/metrics", timeout=10).text).get(name, 0.0)


async def wait_in_writer(url: str, n: int) -> None:
    """Until `n` sends wait in this server's writer (they arrive over sockets at their own pace)."""
    for _ in range(600):
        if await asyncio.to_thread(metric, url, "backstage_sends_in_writer") >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{n} sends never reached the writer of {url}")


class RowLock:
    """Holds the write lock of one conversation (MariaDB) or of the whole database (SQLite)."""

    def __init__(self, database_url: str, conversation_id: str) -> None:
        self.url, self.cid = database_url, int(conversation_id)
        self._conn: Any = None

    def __enter__(self) -> RowLock:
        u = make_url(self.url)
        if u.get_backend_name() == "sqlite":
            self._conn = sqlite3.connect(u.database or "", isolation_level=None, timeout=30)
            self._conn.execute("BEGIN IMMEDIATE")
        else:
            self._engine = sync_engine(self.url)
            self._conn = self._engine.connect()
            self._conn.execute(sa.text("SELECT id FROM conversations WHERE id = :id FOR UPDATE"), {"id": self.cid})
        return self

    def release(self) -> None:
        if self._conn is None:
            return
        if isinstance(self._conn, sqlite3.Connection):
            self._conn.execute("ROLLBACK")
            self._conn.close()
        else:
            self._conn.rollback()
            self._conn.close()
            self._engine.dispose()
        self._conn = None

    def __exit__(self, *exc: Any) -> None:
        self.release()


def stored(database_url: str, conversation_id: str) -> list[tuple[int, str, str, str]]:
    engine = sync_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT seq, sender_id, client_msg_id, body FROM messages WHERE conversation_id = :c ORDER BY seq"),
                {"c": int(conversation_id)}).all()
            return [(int(a), b, c, d) for a, b, c, d in rows]
    finally:
        engine.dispose()


async def send(c: Client, room: str, body: str, cmid: str) -> dict[str, Any]:
    return dict(await c.call("send", {"conversation_id": room, "body": body, "client_msg_id": cmid}, timeout=60))


# ---------------------------------------------------------------- group commit, two processes


SENDERS_PER_PROCESS = 6


async def _group_commit(cluster: Cluster, database_url: str) -> None:
    sqlite = database_url.startswith("sqlite")
    api = cluster.api
    urls = [s.url for s in cluster.servers]
    cre = api.user("cre", "Cre")
    room = api.room("cre", "Batch", 0)
    users = [f"u{p}{i}" for p in range(2) for i in range(SENDERS_PER_PROCESS + 1)]
    tokens = {u: api.user(u, u.upper()) for u in [*users, "dup", "web"]}
    for u in tokens:
        api.membership("cre", u, 100)

    listeners = [await Client(url, cre).connect() for url in urls]
    senders = {u: await Client(urls[int(u[1])], tokens[u]).connect() for u in users}
    dups = [await Client(urls[0], tokens["dup"]).connect(), await Client(urls[0], tokens["dup"]).connect(),
            await Client(urls[1], tokens["dup"]).connect()]
    u00_again = await Client(urls[0], tokens["u00"]).connect()  # a second socket of u00
    everyone = [*listeners, *senders.values(), *dups, u00_again]
    try:
        for c in everyone:
            assert (await c.call("join", {"conversation_id": room}))["ok"]
        # Stored before the batch: a later reuse with another body must be a conflict.
        assert (await send(senders["u01"], room, "earlier", "old"))["ok"]
        web_body = {"body": "from the web", "client_msg_id": "w-1"}
        web_auth = {"Authorization": f"Bearer {tokens['web']}"}
        if sqlite:  # its database check is a read, which SQLite's lock would hold back out of the batch
            r = api.client(tokens["web"], "POST", f"/conversations/{room}/messages", json=web_body)
            assert r.status_code == 201, r.text
        batches = [await asyncio.to_thread(metric, url, "backstage_message_batches_total") for url in urls]

        with RowLock(database_url, room) as lock:
            # Each process runs two transactions at most (MAX_IN_FLIGHT): these take both and wait.
            last = f"{SENDERS_PER_PROCESS}"
            firsts = [asyncio.ensure_future(send(senders[f"u{p}0"], room, f"first {p}", f"first-{p}")) for p in range(2)]
            for p in range(2):
                await wait_in_writer(urls[p], 1)
            firsts += [asyncio.ensure_future(send(senders[f"u{p}{last}"], room, f"second {p}", f"second-{p}"))
                       for p in range(2)]
            for p in range(2):
                await wait_in_writer(urls[p], 2)
            # Everything below arrives while those transactions are in flight: when one ends, what
            # waits is shared among the free slots, i.e. one or two more transactions per process.
            calls = {f"u{p}{i}": asyncio.ensure_future(send(senders[f"u{p}{i}"], room, f"batch {p}{i}", f"b-{p}{i}"))
                     for p in range(2) for i in range(2, SENDERS_PER_PROCESS)}
            # u01 reuses its id already stored with another body: conflict, and the batch goes on.
            conflict = asyncio.ensure_future(send(senders["u01"], room, "not earlier", "old"))
            # u00 retries its first message (still in flight, in the transaction before) from another socket.
            retry = asyncio.ensure_future(send(u00_again, room, "first 0", "first-0"))
            # The same client_msg_id of one user three times in the batches of both processes.
            dup_acks = [asyncio.ensure_future(send(c, room, "twice", "dup-1")) for c in dups]
            # ...and over HTTP (the full database check) on process 1.
            async with httpx.AsyncClient(verify=TLS, base_url=urls[1], timeout=60) as http:
                if not sqlite:
                    web = asyncio.ensure_future(http.post(f"/api/v1/conversations/{room}/messages",
                                                          json=web_body, headers=web_auth))
                await wait_in_writer(urls[0], 2 + (SENDERS_PER_PROCESS - 2) + 1 + 1 + 2)
                await wait_in_writer(urls[1], 2 + (SENDERS_PER_PROCESS - 2) + 1 + (0 if sqlite else 1))
                lock.release()
                if not sqlite:
                    r = await web
                    assert r.status_code == 201, r.text
            first_acks = [await f for f in firsts]
            acks = {u: await f for u, f in calls.items()}

        assert all(a["ok"] for a in first_acks), first_acks
        assert all(a["ok"] for a in acks.values()), acks
        c_ack = await conflict
        assert c_ack["ok"] is False and c_ack["error"]["code"] == "conflict", c_ack
        again = await retry
        assert again["ok"] and again["message"] == first_acks[0]["message"], (again, first_acks[0])
        dup = [await f for f in dup_acks]
        assert all(a["ok"] for a in dup), dup
        assert len({a["message"]["id"] for a in dup}) == 1 and len({a["message"]["seq"] for a in dup}) == 1, dup

        # per process: the two first sends, then everything that queued behind them in one or two
        after = [await asyncio.to_thread(metric, url, "backstage_message_batches_total") for url in urls]
        assert all(3 <= a - b <= 4 for a, b in zip(after, batches, strict=True)), (batches, after)

        rows = stored(database_url, room)
        total = 1 + 1 + 4 + len(calls) + 1  # earlier, the web one, the four firsts, the batch, dup-1 once
        assert [r[0] for r in rows] == list(range(1, total + 1)), rows
        assert len({(r[1], r[2]) for r in rows}) == total
        assert sum(1 for r in rows if r[2] == "dup-1") == 1
        seq_of = {(r[1], r[2]): r[0] for r in rows}
        for u, a in acks.items():
            assert a["message"]["seq"] == seq_of[(u, a["message"]["client_msg_id"])]

        # every member got every message once; each process delivered its own in seq order
        marker = await send(senders["u00"], room, "marker", "marker")
        for li in listeners:
            await li.wait_for("message", lambda m: m["client_msg_id"] == "marker", timeout=15)
            got = [m["seq"] for m in li.events["message"]]
            assert sorted(got) == list(range(1, marker["message"]["seq"] + 1)), got
            for p in range(2):
                own = [m["seq"] for m in li.events["message"] if _origin(m, urls, users) == p]
                assert own == sorted(own), (p, own)
    finally:
        for c in everyone:
            await c.close()


def _origin(m: dict[str, Any], urls: list[str], users: list[str]) -> int | None:
    sender = m["sender"]["id"]
    if sender in users:
        return int(sender[1])
    return None  # dup and web: sent from both processes / over HTTP


async def test_group_commit_two_processes_mariadb(mysql_databases: Any, redis_url: str, redis_prefix: str) -> None:
    url = mysql_databases.new()
    cluster = Cluster(url, redis_url, redis_prefix, 2)
    try:
        await _group_commit(cluster, url)
    finally:
        cluster.stop()


async def test_group_commit_two_processes_sqlite(tmp_path: Any, redis_url: str, redis_prefix: str) -> None:
    url = migrated_sqlite(tmp_path / "backstage.db")
    cluster = Cluster(url, redis_url, redis_prefix, 2)
    try:
        await _group_commit(cluster, url)
    finally:
        cluster.stop()


# ---------------------------------------------------------------- the cut itself: nothing gets through it


def _connect_until(port: int, stopping: threading.Event, opened: list[socket.socket]) -> None:
    """Connects again and again (a transaction retried at once, on a fresh connection)."""
    while not stopping.is_set():
        try:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            pass


def test_stopped_proxy_leaves_no_connection_open_not_even_one_made_during_the_cut() -> None:
    """Every connection through a stopped TcpProxy is ended, the silent ones and those the
    client opens while stop() runs; none stays open and silent (the server would wait on it
    forever). The upstream is silent like a MariaDB connection waiting for a lock."""
    upstream = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hold() -> None:  # accepts and never answers
        while True:
            try:
                held.append(upstream.accept()[0])
            except OSError:
                return

    threading.Thread(target=hold, daemon=True).start()
    proxy = TcpProxy("127.0.0.1", upstream.getsockname()[1])
    try:
        for _ in range(5):
            proxy.start()
            clients = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(100)]
            stopping = threading.Event()
            late: list[socket.socket] = []
            connector = threading.Thread(target=_connect_until, args=(proxy.port, stopping, late))
            connector.start()
            time.sleep(0.05)
            proxy.stop()
            stopping.set()
            connector.join()
            # An ended connection turns readable (EOF or reset) at once; give them 3 s together.
            waiting, deadline = set(clients + late), time.monotonic() + 3
            while waiting and (left := deadline - time.monotonic()) > 0:
                for c in select.select(list(waiting), [], [], left)[0]:
                    waiting.discard(c)
            left_open = list(waiting)  # open and silent
            for c in clients + late:
                c.close()
            assert not left_open, f"{len(left_open)} of {len(clients) + len(late)} connections survived the cut"
    finally:
        proxy.stop()
        upstream.close()
        for s in held:
            s.close()


# ---------------------------------------------------------------- database gone: unavailable, nothing stored


async def test_batch_unavailable_and_nothing_stored_when_the_database_goes(mysql_databases: Any) -> None:
    url = mysql_databases.new()
    u = make_url(url)
    proxy = TcpProxy(u.host or "127.0.0.1", u.port or 3306).start()
    server = ServerProcess(u.set(port=proxy.port).render_as_string(hide_password=False))
    api = Api(server.url)
    clients: list[Client] = []
    try:
        api.user("cre")
        tokens = [api.user(f"p{i}") for i in range(4)]
        for i in range(4):
            api.membership("cre", f"p{i}", 100)
        room = api.room("cre", "R", 0)
        clients = [await Client(server.url, t).connect() for t in tokens]
        for c in clients:
            assert (await c.call("join", {"conversation_id": room}))["ok"]
        assert (await send(clients[0], room, "one", "k0"))["ok"]

        with RowLock(url, room):
            # a transaction in flight (waiting for the lock) and a batch queued behind it
            acks = [asyncio.ensure_future(send(clients[0], room, "two", "k1"))]
            await wait_in_writer(server.url, 1)
            acks += [asyncio.ensure_future(send(c, room, f"more {i}", f"k{i + 2}")) for i, c in enumerate(clients[1:])]
            await wait_in_writer(server.url, 4)
            proxy.stop()  # the database connection is cut under the open transaction
            results = [await a for a in acks]
        assert all(r["ok"] is False and r["error"]["code"] == "unavailable" for r in results), results
        assert all(c.sio.connected for c in clients)

        proxy.start()
        # the next send waits for whatever the cut transaction held, which can only roll back
        for _ in range(100):
            nxt = await send(clients[1], room, "after", "after")
            if nxt["ok"]:
                break
            assert nxt["error"]["code"] == "unavailable", nxt
            await asyncio.sleep(0.1)
        assert nxt["ok"] and nxt["message"]["seq"] == 2, nxt
        # a retry of a failed send is stored now, once, without a gap
        again = await send(clients[0], room, "two", "k1")
        assert again["ok"] and again["message"]["seq"] == 3, again
        assert [(r[0], r[3]) for r in stored(url, room)] == [(1, "one"), (2, "after"), (3, "two")]
    finally:
        for c in clients:
            await c.close()
        api.close()
        proxy.stop()
        await asyncio.to_thread(server.stop)


# ---------------------------------------------------------------- access decided at join, taken away at once


async def test_ended_membership_refuses_the_next_send_of_joined_sockets_on_the_other_process(
        mysql_cluster: Cluster) -> None:
    api = mysql_cluster.api
    a_url, b_url = (s.url for s in mysql_cluster.servers)
    cre, pat = api.user("cre", "Cre"), api.user("pat", "Pat")
    api.membership("cre", "pat", 500)
    room = api.room("cre", "Lounge", 100)
    direct = api.direct(cre, "pat")
    # the marker: a revocation on the same control channel, seen by a socket on process B
    api.user("cre2")
    marker_token = api.user("marker")
    api.membership("cre2", "marker", 100)
    marker_room = api.room("cre2", "Marker", 0)

    creator_b = await Client(b_url, cre).connect()
    patron_b = await Client(b_url, pat).connect()
    watcher_a = await Client(a_url, cre).connect()
    marker_b = await Client(b_url, marker_token).connect()
    try:
        for c in (creator_b, patron_b, watcher_a):
            for cid in (direct, room):
                assert (await c.call("join", {"conversation_id": cid}))["ok"]
        assert (await marker_b.call("join", {"conversation_id": marker_room}))["ok"]
        # joined, allowed: these go through the socket's remembered access
        assert (await send(patron_b, direct, "hi", "d1"))["ok"]
        assert (await send(creator_b, direct, "hello", "d2"))["ok"]
        assert (await send(patron_b, room, "in the room", "r1"))["ok"]

        api.membership("cre", "pat", 500, status="former")  # on process A
        api.membership("cre2", "marker", 100, status="former")
        await marker_b.wait_for("access_revoked", lambda d: d["conversation_id"] == marker_room)
        # process B has handled every control message published before the marker's

        for c, cmid in ((patron_b, "d3"), (creator_b, "d4")):
            r = await send(c, direct, "still there?", cmid)
            assert r["ok"] is False and r["error"]["code"] == "forbidden", r
        await patron_b.wait_for("access_revoked", lambda d: d["conversation_id"] == room)
        r = await send(patron_b, room, "and here?", "r2")
        assert r["ok"] is False and r["error"]["code"] == "forbidden", r
        # still a reader of the direct conversation, and a retry of an old message still answers
        assert (await patron_b.call("history", {"conversation_id": direct}))["ok"]
        again = await send(patron_b, direct, "hi", "d1")
        assert again["ok"] and again["message"]["seq"] == 1, again

        api.membership("cre", "pat", 500, status="active")  # posting again, no rejoin needed
        ok = await send(patron_b, direct, "back", "d5")
        assert ok["ok"] and ok["message"]["seq"] == 3, ok
        await watcher_a.wait_for("message", lambda m: m["client_msg_id"] == "d5")
        assert [m["client_msg_id"] for m in watcher_a.events["message"] if m["conversation_id"] == direct] == \
            ["d1", "d2", "d5"]
    finally:
        for c in (creator_b, patron_b, watcher_a, marker_b):
            await c.close()


# ---------------------------------------------------------------- no pre-ping: a dead pooled connection is retried


async def test_sends_right_after_every_pooled_connection_died(mysql_databases: Any) -> None:
    """The pool does not ping before each use (a round trip per send); a transaction that finds
    its connection dead runs again on a fresh one, so the client sees no error."""
    url = mysql_databases.new()
    u = make_url(url)
    proxy = TcpProxy(u.host or "127.0.0.1", u.port or 3306).start()
    server = ServerProcess(u.set(port=proxy.port).render_as_string(hide_password=False))
    api = Api(server.url)
    c = None
    try:
        api.user("cre")
        pat = api.user("pat")
        api.membership("cre", "pat", 100)
        room = api.room("cre", "R", 0)
        c = await Client(server.url, pat).connect()
        assert (await c.call("join", {"conversation_id": room}))["ok"]
        assert (await send(c, room, "one", "k1"))["ok"]
        for i, path in enumerate(("socket", "http")):
            proxy.stop()  # every pooled connection is dead; new ones are accepted again at once
            proxy.start()
            if path == "socket":
                ack = await send(c, room, "two", "k2")
            else:
                r = await asyncio.to_thread(api.client, pat, "POST", f"/conversations/{room}/messages",
                                            json={"body": "three", "client_msg_id": "k3"})
                assert r.status_code == 201, r.text
                ack = {"ok": True, "message": r.json()["message"]}
            assert ack["ok"] and ack["message"]["seq"] == 2 + i, ack
    finally:
        if c is not None:
            await c.close()
        api.close()
        proxy.stop()
        await asyncio.to_thread(server.stop)


# ---------------------------------------------------------------- MariaDB: one round trip, or statement by statement


async def _two_rooms(url: str) -> Any:
    """An engine on a migrated database with users cre, u1, u2 and rooms 1 (A) and 2 (B)."""
    from chat import migrate
    from chat.db import create_engine, utcnow

    engine = create_engine(url)
    await migrate.upgrade(engine)
    now = utcnow()
    md = sa.MetaData()
    async with engine.begin() as conn:
        await conn.run_sync(md.reflect, only=["users", "conversations"])
        await conn.execute(sa.insert(md.tables["users"]), [
            {"id": u, "name": u.upper(), "created_at": now, "updated_at": now} for u in ("cre", "u1", "u2")])
        await conn.execute(sa.insert(md.tables["conversations"]), [
            {"kind": "room", "creator_id": "cre", "name": n, "min_tier_cents": 0, "post_policy": "everyone",
             "last_seq": 0, "last_activity_at": now, "created_at": now} for n in ("A", "B")])
    return engine


async def _one_batch(url: str, at_once: bool, one_query: bool = False
                     ) -> tuple[list[Any], list[tuple[Any, ...]], dict[str, int], int, list[int], int]:
    """One batch through the writer in process: new messages to two rooms, a retry of a stored
    message, a conflicting reuse, a repeat inside the batch, a send to a missing conversation.
    one_query: plain batches go as one query on an autocommit engine (`commit_engine`)."""
    from chat.db import create_read_engine
    from chat.writer import MessageWriter, Outgoing

    engine = await _two_rooms(url)
    commit_engine = create_read_engine(url) if one_query else None
    try:
        delivered: list[int] = []

        def deliver(messages: list[dict[str, Any]]) -> asyncio.Future[None]:
            delivered.extend(int(m["seq"]) * (1 if m["conversation_id"] == "1" else -1) for m in messages)
            relayed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            relayed.set_result(None)
            return relayed

        writer = MessageWriter(engine, deliver, max_in_flight=1, at_once=at_once, commit_engine=commit_engine)
        earlier = await writer.store(Outgoing(1, "u1", "U1", "earlier", "old"))
        outcomes = await asyncio.gather(*(writer.store(o) for o in [
            Outgoing(1, "u1", "U1", "a1", "a1"), Outgoing(1, "u2", "U2", "a2", "a2"),
            Outgoing(2, "u1", "U1", "b1", "b1"), Outgoing(1, "u1", "U1", "a3", "a3"),
            Outgoing(1, "u2", "U2", "a2", "a2"),  # a repeat inside the batch
            Outgoing(1, "u2", "U2", "other", "a1"),  # not a repeat: another sender
        ]), return_exceptions=True)
        plain = writer.fallbacks
        more = await asyncio.gather(*(writer.store(o) for o in [
            Outgoing(1, "u1", "U1", "earlier", "old"),  # a retry of the stored one
            Outgoing(1, "u1", "U1", "not earlier", "old"),  # a conflicting reuse
            Outgoing(99, "u1", "U1", "nowhere", "x"),  # no such conversation
        ]), return_exceptions=True)
        retried = writer.fallbacks - plain
        await writer.store(Outgoing(2, "u2", "U2", "b2", "b2"))
        assert writer.fallbacks == plain + retried  # nothing to look for: written the first way
        await writer.close()
        answers = [earlier.message["seq"], *[repr(o) if isinstance(o, BaseException) else (o.message["seq"], o.created)
                                             for o in [*outcomes, *more]]]
        async with engine.connect() as conn:
            rows = [tuple(r) for r in (await conn.execute(sa.text(
                "SELECT conversation_id, seq, sender_id, body, client_msg_id FROM messages ORDER BY conversation_id, seq")))]
            positions = {f"{u}/{c}": int(s) for u, c, s in await conn.execute(sa.text(
                "SELECT user_id, conversation_id, last_read_seq FROM conversation_states"))}
            lasts = [int(x) for x in (await conn.execute(sa.text("SELECT last_seq FROM conversations ORDER BY id"))).scalars()]
        return answers, rows, positions, retried, [*lasts, *delivered], writer.fast_batches
    finally:
        await engine.dispose()
        if commit_engine is not None:
            await commit_engine.dispose()


async def test_at_once_and_statement_by_statement_store_the_same_mariadb(mysql_databases: Any) -> None:
    """MariaDB writes a batch in one round trip, assuming nothing in it is a retry; a retry, a
    conflicting reuse or a missing conversation makes it fall back to the careful statements.
    Both ways give the same answers, rows, seqs, read positions and delivery order."""
    results = [await _one_batch(mysql_databases.new(), at_once) for at_once in (True, False)]
    (answers, rows, positions, retried, tail, _), careful = results
    assert retried == 1 and careful[3] == 0, (retried, careful[3])
    assert answers[:8] == [1, (2, True), (3, True), (1, True), (4, True), (3, False), (5, True), (1, False)], answers
    assert answers[8].startswith("Conflict(") and answers[9].startswith("NotFound("), answers
    assert [r[:3] for r in rows] == [(1, 1, "u1"), (1, 2, "u1"), (1, 3, "u2"), (1, 4, "u1"), (1, 5, "u2"),
                                     (2, 1, "u1"), (2, 2, "u2")], rows
    assert positions == {"u1/1": 4, "u2/1": 5, "u1/2": 1, "u2/2": 2}, positions
    assert tail == [5, 2, 1, 2, 3, -1, 4, 5, -2], tail  # last_seq of A and B, then deliveries in seq order
    for i in range(3):
        assert careful[i] == results[0][i], (i, careful[i], results[0][i])
    assert careful[4] == tail


async def test_plain_batches_in_one_query_give_the_same_answers_mariadb(mysql_databases: Any) -> None:
    """With an autocommit engine, the writer's plain batches are one query each (BEGIN ... COMMIT);
    the retry, the conflicting reuse and the missing conversation still go the careful way, with
    the same answers, rows, seqs, read positions and delivery order as without it."""
    one = await _one_batch(mysql_databases.new(), True, one_query=True)
    two = await _one_batch(mysql_databases.new(), True)
    assert one[5] == 3 and two[5] == 0, (one[5], two[5])  # earlier, the first batch, the last send
    assert one[3] == 1  # the batch with the retry in it: written again the careful way
    for i in range(5):
        assert one[i] == two[i], (i, one[i], two[i])


class Queries:
    """Counts the COM_QUERY commands (statements, multi-statement queries, COMMIT, ROLLBACK: each
    one round trip) that aiomysql sends."""

    def __init__(self, monkeypatch: Any) -> None:
        import aiomysql.connection

        self.sent: list[str] = []
        original = aiomysql.connection.Connection._execute_command

        async def counting(conn: Any, command: int, sql: Any) -> Any:
            if command == 3:  # COM_QUERY
                self.sent.append(sql if isinstance(sql, str) else sql.decode(errors="replace"))
            return await original(conn, command, sql)
        monkeypatch.setattr(aiomysql.connection.Connection, "_execute_command", counting)


async def test_a_plain_batch_commits_in_its_own_query_unless_a_row_is_locked_mariadb(
        mysql_databases: Any, monkeypatch: Any) -> None:
    """A plain batch: BEGIN, the rows locked NOWAIT, the statements and COMMIT in ONE query, and
    committed when its senders are answered. With a conversation row locked by another
    transaction, that query rolls back and the batch waits for the lock the usual way: same
    gapless seqs, the connection left with no transaction open, the next batch in one query again."""
    from chat.db import create_read_engine
    from chat.writer import MessageWriter, Outgoing

    url = mysql_databases.new()
    engine = await _two_rooms(url)
    commit_engine = create_read_engine(url, pool_size=1)
    delivered: list[tuple[str, int]] = []

    def deliver(messages: list[dict[str, Any]]) -> asyncio.Future[None]:
        delivered.extend((m["conversation_id"], int(m["seq"])) for m in messages)
        relayed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        relayed.set_result(None)
        return relayed

    writer = MessageWriter(engine, deliver, max_in_flight=1, commit_engine=commit_engine)
    async with commit_engine.connect() as conn:  # its connection set up before counting
        await conn.execute(sa.text("SELECT 1"))
    queries = Queries(monkeypatch)
    try:
        first = await asyncio.gather(*(writer.store(o) for o in [
            Outgoing(1, "u1", "U1", "a1", "a1"), Outgoing(1, "u2", "U2", "a2", "a2"), Outgoing(2, "u1", "U1", "b1", "b1")]))
        assert [(o.message["seq"], o.created) for o in first] == [(1, True), (2, True), (1, True)]
        assert len(queries.sent) == 1 and queries.sent[0].startswith("BEGIN"), queries.sent
        assert queries.sent[0].rstrip().endswith("COMMIT") and "FOR UPDATE NOWAIT" in queries.sent[0]
        assert (writer.fast_batches, writer.locked_fallbacks) == (1, 0)
        # committed before the answer: another connection sees the rows
        assert [r[:3] for r in stored(url, "1")] == [(1, "u1", "a1"), (2, "u2", "a2")]

        with RowLock(url, "1") as lock:
            locked = asyncio.ensure_future(writer.store(Outgoing(1, "u2", "U2", "a3", "a3")))
            for _ in range(1000):  # until its one query met the lock (then it waits the usual way)
                if writer.locked_fallbacks or locked.done():
                    break
                await asyncio.sleep(0.01)
            assert writer.locked_fallbacks == 1 and not locked.done(), locked
            lock.release()
            third = await locked
        assert (third.message["seq"], third.created) == (3, True)
        assert writer.fast_batches == 1
        async with commit_engine.connect() as conn:  # the one query's transaction was rolled back
            assert (await conn.execute(sa.text("SELECT @@in_transaction"))).scalar() == 0
        queries.sent.clear()
        fourth = await writer.store(Outgoing(1, "u1", "U1", "a4", "a4"))
        assert (fourth.message["seq"], writer.fast_batches, len(queries.sent)) == (4, 2, 1), queries.sent
        retry = await writer.store(Outgoing(1, "u1", "U1", "a4", "a4"))  # idempotent: the original answer
        assert (retry.message, retry.created) == (fourth.message, False)
        await writer.close()
        assert [(r[0], r[2]) for r in stored(url, "1")] == [(1, "a1"), (2, "a2"), (3, "a3"), (4, "a4")]
        assert delivered == [("1", 1), ("1", 2), ("2", 1), ("1", 3), ("1", 4)], delivered
        async with engine.connect() as conn:
            positions = {f"{u}/{c}": int(s) for u, c, s in await conn.execute(sa.text(
                "SELECT user_id, conversation_id, last_read_seq FROM conversation_states"))}
            lasts = [int(x) for x in (await conn.execute(sa.text("SELECT last_seq FROM conversations ORDER BY id"))).scalars()]
        assert positions == {"u1/1": 4, "u2/1": 3, "u1/2": 1} and lasts == [4, 1], (positions, lasts)
    finally:
        await engine.dispose()
        await commit_engine.dispose()
