"""Threads (docs/api.md "Threads"): `send` with `thread_id`, the root's `thread` summary kept exact
under concurrent replies on two processes, the root's coalesced `message_updated`, thread pages,
`include_replies: false`, recovery through `since_seq` with replies, bad roots, revocation, and
who a reply pushes (real firebase-admin SDK against the fake FCM server). SQLite, and MariaDB +
Redis with two processes."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Cluster, MySQLDatabases
from tests.fakefcm import FakeFCMServer
from tests.support import Api, Client, barrier, err, make_token, ok, sync_engine
from tests.test_push_rules import PushCluster, sqlite_push_cluster  # noqa: F401 (the fixture)
from tests.test_reactions import add_memberships


def setup_room(api: Api, uid: Any, *patrons: str) -> tuple[str, dict[str, str], str]:
    cre = uid("cre")
    tokens = {cre: api.user(cre)}
    for p in patrons:
        tokens[uid(p)] = api.user(uid(p))
        api.membership(cre, uid(p), 500)
    return cre, tokens, api.room(cre, "Threads", 0)


async def send(c: Client, room: str, body: str, cmid: str, thread_id: Any = None, **extra: Any) -> dict[str, Any]:
    payload = {"conversation_id": room, "body": body, "client_msg_id": cmid, **extra}
    if thread_id is not None:
        payload["thread_id"] = thread_id
    result: dict[str, Any] = await c.call("send", payload)
    return result


def bodies(messages: list[dict[str, Any]]) -> list[str]:
    return [m["body"] for m in messages]


async def test_replies_summary_thread_pages_and_main_view(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, tokens, room = setup_room(api, uid, "ann", "bob")
    ann, bob = uid("ann"), uid("bob")
    a, b, c = (await Client(url, tokens[cre]).connect(), await Client(url, tokens[ann]).connect(),
               await Client(url, tokens[bob]).connect())
    try:
        for s in (a, b, c):
            ok(await s.call("join", {"conversation_id": room}))
        root = ok(await send(b, room, "root", "t0"))["message"]
        assert root["thread_id"] is None and root["thread"] is None
        rid = root["id"]
        r1 = ok(await send(c, room, "reply 1", "t1", rid))["message"]
        assert r1["thread_id"] == rid and r1["seq"] == root["seq"] + 1 and r1["thread"] is None
        # the reply is an ordinary `message` to every member; the root's summary follows
        got = await a.wait_for("message", lambda m: m["id"] == r1["id"])
        assert got["thread_id"] == rid
        upd = await a.wait_for("message_updated", lambda m: m["id"] == rid)
        assert upd["thread"]["reply_count"] == 1 and upd["thread"]["participants"] == [bob]
        assert upd["thread"]["last_reply_at"] == r1["created_at"] and upd["body"] == "root"
        ok(await send(b, room, "plain", "p1"))
        replies = [r1] + [ok(await send(s, room, f"reply {i}", f"t{i}", rid))["message"]
                          for i, s in ((2, a), (3, b), (4, c))]
        # an idempotent retry of a reply: the original, nothing new; the same id in another thread: conflict
        assert ok(await send(a, room, "reply 2", "t2", rid))["message"]["id"] == replies[1]["id"]
        assert err(await send(a, room, "reply 2", "t2")) == "conflict"
        await a.wait_for("message_updated", lambda m: m["id"] == rid and m["thread"]["reply_count"] == 4)

        # the root in every read carries the summary (participants: first repliers first)
        summary = {"reply_count": 4, "last_reply_at": replies[-1]["created_at"], "participants": [bob, cre, ann]}
        hist = ok(await b.call("history", {"conversation_id": room}))["messages"]
        assert bodies(hist) == ["root", "reply 1", "plain", "reply 2", "reply 3", "reply 4"]  # SPEC: all
        assert hist[0]["thread"] == summary and all(m["thread_id"] == rid for m in hist if m["body"].startswith("reply"))
        joined = ok(await b.call("join", {"conversation_id": room}))
        assert joined["messages"][0]["thread"] == summary and bodies(joined["messages"]) == bodies(hist)

        # the main view without replies: history, HTTP, join
        main = ok(await b.call("history", {"conversation_id": room, "include_replies": False}))
        assert bodies(main["messages"]) == ["root", "plain"] and main["has_more"] is False
        assert main["messages"][0]["thread"] == summary
        page = ok(await b.call("history", {"conversation_id": room, "include_replies": False, "limit": 1}))
        assert bodies(page["messages"]) == ["plain"] and page["has_more"] is True
        r = api.client(tokens[ann], "GET", f"/conversations/{room}/messages", params={"include_replies": "false"})
        assert r.status_code == 200 and bodies(r.json()["messages"]) == ["root", "plain"]
        j = ok(await c.call("join", {"conversation_id": room, "include_replies": False}))
        assert bodies(j["messages"]) == ["root", "plain"] and j["has_more"] is False
        j = ok(await c.call("join", {"conversation_id": room, "since_seq": root["seq"], "include_replies": False}))
        assert bodies(j["messages"]) == ["plain"]

        # a thread's pages: the root, then its replies, paged like history
        t = ok(await b.call("history", {"conversation_id": room, "thread_id": rid}))
        assert bodies(t["messages"]) == ["root", "reply 1", "reply 2", "reply 3", "reply 4"] and not t["has_more"]
        t = ok(await b.call("history", {"conversation_id": room, "thread_id": rid, "limit": 2}))
        assert bodies(t["messages"]) == ["reply 3", "reply 4"] and t["has_more"] is True
        t = ok(await b.call("history", {"conversation_id": room, "thread_id": rid, "limit": 2,
                                        "before_seq": t["messages"][0]["seq"]}))
        assert bodies(t["messages"]) == ["reply 1", "reply 2"] and t["has_more"] is True
        t = ok(await b.call("history", {"conversation_id": room, "thread_id": rid, "limit": 2,
                                        "before_seq": t["messages"][0]["seq"]}))
        assert bodies(t["messages"]) == ["root"] and t["has_more"] is False
        t = ok(await b.call("history", {"conversation_id": room, "thread_id": rid, "limit": 3,
                                        "before_seq": replies[2]["seq"]}))
        assert bodies(t["messages"]) == ["root", "reply 1", "reply 2"] and t["has_more"] is False
        t = ok(await b.call("history", {"conversation_id": room, "thread_id": rid, "limit": 2,
                                        "after_seq": root["seq"]}))  # forward, as over HTTP
        assert bodies(t["messages"]) == ["reply 1", "reply 2"] and t["has_more"] is True
        base = f"/conversations/{room}/messages"
        r = api.client(tokens[ann], "GET", base, params={"thread_id": rid, "after_seq": root["seq"], "limit": 3})
        assert bodies(r.json()["messages"]) == ["reply 1", "reply 2", "reply 3"] and r.json()["has_more"] is True
        r = api.client(tokens[ann], "GET", base, params={"thread_id": rid, "after_seq": 0, "limit": 2})
        assert bodies(r.json()["messages"]) == ["root", "reply 1"] and r.json()["has_more"] is True
        r = api.server("GET", f"/conversations/{room}/messages?thread_id={rid}")
        assert r.status_code == 200 and len(r.json()["messages"]) == 5

        # replies over HTTP, like the socket's
        r = api.client(tokens[ann], "POST", base, {"body": "http reply", "client_msg_id": "h1", "thread_id": rid})
        assert r.status_code == 201 and r.json()["message"]["thread_id"] == rid
        upd = await a.wait_for("message_updated", lambda m: m["id"] == rid and m["thread"]["reply_count"] == 5)
        assert upd["thread"]["participants"] == [bob, cre, ann]
    finally:
        for s in (a, b, c):
            await s.close()


async def test_bad_roots_are_refused_clearly(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, tokens, room = setup_room(api, uid, "ann")
    other = api.room(cre, "Other", 0)
    a = await Client(url, tokens[cre]).connect()
    try:
        ok(await a.call("join", {"conversation_id": room}))
        rid = ok(await send(a, room, "root", "b0"))["message"]["id"]
        reply = ok(await send(a, room, "reply", "b1", rid))["message"]
        elsewhere = ok(await send(a, other, "elsewhere", "b2"))["message"]["id"]
        gone = ok(await send(a, room, "to delete", "b3"))["message"]["id"]
        early = ok(await send(a, room, "early reply", "b4", gone))["message"]
        ok(await a.call("delete", {"message_id": gone}))
        # a retry of a reply stored before its root was deleted: the original, not an error
        assert ok(await send(a, room, "early reply", "b4", gone))["message"]["id"] == early["id"]
        last = ok(await a.call("history", {"conversation_id": room}))["messages"][-1]["seq"]

        assert err(await send(a, room, "x", "c1", reply["id"])) == "invalid"  # a reply to a reply
        assert err(await send(a, room, "x", "c2", "999999999")) == "not_found"
        assert err(await send(a, room, "x", "c3", elsewhere)) == "not_found"  # another conversation's
        assert err(await send(a, room, "x", "c4", gone)) == "invalid"  # a deleted root
        assert err(await send(a, room, "x", "c5", "01")) == "not_found"
        for bad in ([rid], {"id": rid}, True, 1.5):
            assert err(await send(a, room, "x", "c6", bad)) == "invalid", bad
        r = api.client(tokens[cre], "POST", f"/conversations/{room}/messages",
                       {"body": "x", "client_msg_id": "c7", "thread_id": reply["id"]})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid")
        # nothing was stored, and seq stays gapless
        assert ok(await send(a, room, "after", "c8"))["message"]["seq"] == last + 1

        assert err(await a.call("history", {"conversation_id": room, "thread_id": reply["id"]})) == "invalid"
        assert err(await a.call("history", {"conversation_id": room, "thread_id": elsewhere})) == "not_found"
        assert err(await a.call("history", {"conversation_id": room, "include_replies": "no"})) == "invalid"
        assert err(await a.call("join", {"conversation_id": room, "include_replies": 0})) == "invalid"
        base = f"/conversations/{room}/messages"
        assert api.client(tokens[cre], "GET", base, params={"include_replies": "maybe"}).status_code == 400
        assert api.client(tokens[cre], "GET", base, params={"thread_id": "999999999"}).status_code == 404
        # a deleted root's thread stays readable
        r = api.client(tokens[cre], "GET", base, params={"thread_id": rid})
        assert bodies(r.json()["messages"]) == ["root", "reply"]
    finally:
        await a.close()


async def test_revoked_member_neither_replies_nor_reads_threads(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, tokens, room = setup_room(api, uid, "ann")
    ann = uid("ann")
    a, b = await Client(url, tokens[cre]).connect(), await Client(url, tokens[ann]).connect()
    try:
        ok(await b.call("join", {"conversation_id": room}))
        rid = ok(await send(a, room, "root", "v0"))["message"]["id"]
        ok(await send(b, room, "mine", "v1", rid))
        api.membership(cre, ann, 500, status="former")
        await b.wait_for("access_revoked")
        assert err(await send(b, room, "again", "v2", rid)) == "forbidden"
        assert err(await b.call("history", {"conversation_id": room, "thread_id": rid})) == "forbidden"
        r = api.client(tokens[ann], "GET", f"/conversations/{room}/messages", params={"thread_id": rid})
        assert r.status_code == 403
        r = api.client(tokens[ann], "POST", f"/conversations/{room}/messages",
                       {"body": "x", "client_msg_id": "v3", "thread_id": rid})
        assert r.status_code == 403
    finally:
        await a.close()
        await b.close()


async def test_cluster_replies_updates_coalesced_and_recovery(shared_mysql_cluster: Any, uid: Any) -> None:
    (s0, s1), api = shared_mysql_cluster.servers, shared_mysql_cluster.api
    cre, tokens, room = setup_room(api, uid, "ann", "bob", "cy", "dee", "eve")
    ann, bob = uid("ann"), uid("bob")
    watch0 = await Client(s0.url, tokens[cre]).connect()
    watch1 = await Client(s1.url, tokens[cre]).connect()
    replier = await Client(s1.url, tokens[ann]).connect()
    late = await Client(s0.url, tokens[bob]).connect()
    # repliers on both processes
    others = [await Client(url, tokens[uid(p)]).connect() for url, p in ((s0.url, "cy"), (s0.url, "dee"),
                                                                         (s1.url, "eve"))]
    repliers = [replier, *others]
    try:
        for s in (watch0, watch1, late, *repliers):
            ok(await s.call("join", {"conversation_id": room}))
        rid = ok(await send(watch0, room, "root", "k0"))["message"]["id"]
        # a reply on process 1 reaches process 0 as a message, then the root's update
        r1 = ok(await send(replier, room, "first", "k1", rid))["message"]
        got = await watch0.wait_for("message", lambda m: m["id"] == r1["id"])
        assert got["thread_id"] == rid
        upd = await watch0.wait_for("message_updated", lambda m: m["id"] == rid)
        assert upd["thread"] == {"reply_count": 1, "last_reply_at": r1["created_at"], "participants": [ann]}
        await watch1.wait_for("message_updated", lambda m: m["id"] == rid)
        await barrier(shared_mysql_cluster.apis, [(cre, watch0), (cre, watch1)], f"threads-first-{rid}")
        before = {w: len(w.events["message_updated"]) for w in (watch0, watch1)}

        # bob drops off; a burst of replies on both processes for ~3.5 s; bob recovers with one cursor
        cursor = ok(await late.call("history", {"conversation_id": room}))["messages"][-1]["seq"]
        await late.close()
        started = time.monotonic()

        async def talk(n: int, c: Client) -> list[dict[str, Any]]:
            acks = []
            while time.monotonic() - started < 3.5:
                acks.append(ok(await send(c, room, f"burst {n}-{len(acks)}", f"k{n}-{len(acks)}", rid)))
                await asyncio.sleep(0.12)  # paces the load under the send rate limit (nothing waits on it)
            return acks

        sent = [a["message"] for batch in await asyncio.gather(*[talk(n, c) for n, c in enumerate(repliers)])
                for a in batch]
        final = 1 + len(sent)
        for w in (watch0, watch1):
            await w.wait_for("message_updated", lambda m: m["id"] == rid and m["thread"]["reply_count"] == final,
                             timeout=15)
            elapsed = time.monotonic() - started
            updates = [m for m in w.events["message_updated"][before[w]:] if m["id"] == rid]
            upto = next(i for i, m in enumerate(updates) if m["thread"]["reply_count"] == final) + 1
            # at most one per second per root, cluster-wide: every event up to the final one went
            # out within `elapsed` (per process, each process would send its own)
            assert 2 <= upto <= math.ceil(elapsed / 1.0) + 1, (upto, elapsed)
        await barrier(shared_mysql_cluster.apis, [(cre, watch0), (cre, watch1)], f"threads-{rid}")
        for w in (watch0, watch1):
            updates = [m for m in w.events["message_updated"][before[w]:] if m["id"] == rid]
            assert updates[-1]["thread"]["reply_count"] == final, [u["thread"]["reply_count"] for u in updates]
            assert updates[-1]["thread"]["last_reply_at"] == max(m["created_at"] for m in sent)

        late = await Client(s0.url, tokens[bob]).connect()
        rec = ok(await late.call("join", {"conversation_id": room, "since_seq": cursor}))
        got, more = rec["messages"], rec["has_more"]
        while more:  # each page must move forward (a history that ignored after_seq looped here)
            page = ok(await late.call("history", {"conversation_id": room, "after_seq": got[-1]["seq"], "limit": 100}))
            assert page["messages"] and page["messages"][0]["seq"] == got[-1]["seq"] + 1, page["messages"][:1]
            got, more = got + page["messages"], page["has_more"]
        assert [m["seq"] for m in got] == list(range(cursor + 1, cursor + 1 + len(sent)))
        assert sorted(m["id"] for m in got) == sorted(m["id"] for m in sent)
        assert all(m["thread_id"] == rid for m in got)
        main = ok(await late.call("history", {"conversation_id": room, "include_replies": False}))["messages"]
        assert next(m for m in main if m["id"] == rid)["thread"]["reply_count"] == final
    finally:
        for s in (watch0, watch1, late, *repliers):
            await s.close()


@pytest.mark.parametrize("where", ["sqlite", "mysql"])
async def test_concurrent_replies_on_two_processes_end_with_the_exact_count(where: str, request: Any,
                                                                          uid: Any) -> None:
    cluster = request.getfixturevalue("shared_sqlite" if where == "sqlite" else "shared_mysql_cluster")
    api, n, each = cluster.api, 40, 5
    cre, tokens, room = setup_room(api, uid)
    users = [uid(f"r{i}") for i in range(n)]
    tokens.update({u: make_token(u, u.title()) for u in users})
    add_memberships(cluster.database_url, cre, users)
    roots = [api.client(tokens[cre], "POST", f"/conversations/{room}/messages",
                        json={"body": f"root {k}", "client_msg_id": f"root{k}"}).json()["message"] for k in range(2)]
    urls = [s.url for s in cluster.servers]
    gate = asyncio.Semaphore(20)
    clients: list[Client] = []

    async def connect_one(i: int, user: str) -> None:
        async with gate:
            clients.append(await Client(urls[i % len(urls)], tokens[user]).connect())

    try:
        await asyncio.gather(*[connect_one(i, u) for i, u in enumerate(users)])
        for c in clients:
            ok(await c.call("join", {"conversation_id": room}))

        async def talk(c: Client, i: int) -> list[dict[str, Any]]:
            out = []
            for k in range(each):  # replies to both roots, and plain messages, interleaved
                root = roots[(i + k) % 2]["id"] if k < each - 1 else None
                out.append(await send(c, room, f"m {i} {k}", f"c{i}-{k}", root))
            return out

        acks = [a for batch in await asyncio.gather(*[talk(c, i) for i, c in enumerate(clients)]) for a in batch]
        assert all(a["ok"] for a in acks), [a for a in acks if not a["ok"]][:3]
        replies: dict[str, int] = {}
        for a in acks:
            tid = a["message"]["thread_id"]
            if tid is not None:
                replies[tid] = replies.get(tid, 0) + 1
        assert sum(replies.values()) == n * (each - 1)
        hist = api.client(tokens[cre], "GET", f"/conversations/{room}/messages",
                          params={"include_replies": "false", "limit": 100}).json()["messages"]
        for root in roots:
            got = next(m for m in hist if m["id"] == root["id"])["thread"]
            assert got["reply_count"] == replies[root["id"]]
            assert len(got["participants"]) == 5 and len(set(got["participants"])) == 5
        engine = sync_engine(cluster.database_url)
        try:
            with engine.connect() as conn:
                seqs = [r[0] for r in conn.execute(sa.text("SELECT seq FROM messages WHERE conversation_id = :c "
                                                           "ORDER BY seq"), {"c": int(room)})]
                counts = dict(conn.execute(sa.text("SELECT thread_id, COUNT(*) FROM messages WHERE thread_id "
                                                   "IS NOT NULL AND conversation_id = :c GROUP BY thread_id"),
                                           {"c": int(room)}).all())
                stored = dict(conn.execute(sa.text("SELECT id, reply_count FROM messages WHERE id IN (:a, :b)"),
                                           {"a": int(roots[0]["id"]), "b": int(roots[1]["id"])}).all())
        finally:
            engine.dispose()
        assert seqs == list(range(1, 2 + n * each + 1))  # gapless: the roots, then every message
        assert {str(k): v for k, v in counts.items()} == replies
        assert {str(k): v for k, v in stored.items()} == replies
    finally:
        await asyncio.gather(*[c.close() for c in clients])


# ---------------------------------------------------------------- push


@pytest.fixture
def push_cluster(fcm_server: FakeFCMServer, mysql_databases: MySQLDatabases, redis_url: str,
                 redis_prefix: str) -> Iterator[PushCluster]:
    fcm_server.fake.reset()
    url = mysql_databases.new()
    env = {"FIREBASE_CREDENTIALS": fcm_server.credentials_path, "FCM_ENDPOINT": fcm_server.endpoint}
    cluster = Cluster(url, redis_url, redis_prefix, 2, env=env)
    pc = PushCluster(cluster, url, fcm_server)
    yield pc
    pc.db.dispose()
    cluster.stop()


async def _reply_push_scenario(push_cluster: PushCluster) -> None:
    """Posts alternate between the processes (one on SQLite); cat is online on the last one."""
    apis = push_cluster.cluster.apis
    api = apis[0]
    tokens = {u: api.user(u, u.title()) for u in ("cre", "ann", "bob", "cat", "dan", "eve")}
    for p in ("ann", "bob", "cat", "dan", "eve"):
        api.membership("cre", p, 500)
    room = api.room("cre", "Lounge", 0)
    for u, token in tokens.items():
        push_cluster.device(token, f"{u}-phone")
    n = iter(range(100))

    def post(user: str, body: str, thread_id: str | None = None) -> dict[str, Any]:
        """Over HTTP (no socket: the sender stays offline), on either process."""
        i = next(n)
        r = apis[i % len(apis)].client(tokens[user], "POST", f"/conversations/{room}/messages",
                               {"body": body, "client_msg_id": f"p{i}", **({"thread_id": thread_id} if thread_id else {})})
        assert r.status_code == 201, r.text
        return dict(r.json()["message"])

    cat: Client | None = None
    try:
        rid = post("ann", "root by ann")["id"]
        r1 = post("bob", "bob replies", rid)
        push = (await push_cluster.pushes_to("ann-phone"))[0]  # the root's author
        assert push["notification"] == {"title": "Bob replied in Lounge", "body": "bob replies"}
        assert push["data"] == {"type": "message", "conversation_id": room, "message_id": r1["id"], "thread_id": rid}
        await push_cluster.jobs_settled()
        assert push_cluster.outbox_users() == ["ann"]  # not the sender, not the room (the creator included)

        post("eve", "eve too", rid)
        # the audience is the thread's as of the job's expansion: dan must not be a replier yet
        # when eve's job expands (a slower worker, e.g. SQLite's, would otherwise push him too)
        await push_cluster.jobs_settled()
        post("dan", "dan too", rid)
        await push_cluster.jobs_settled()
        assert sorted(push_cluster.outbox_users()[1:]) == ["ann", "ann", "bob", "bob", "eve"]
        # eve mutes the room; dan's membership ends; cat comes online (on the other process)
        assert api.client(tokens["eve"], "PUT", f"/conversations/{room}/settings", {"muted": True}).status_code == 200
        api.membership("cre", "dan", 500, status="former")
        cat = await Client(push_cluster.cluster.servers[-1].url, tokens["cat"]).connect()
        ok(await cat.call("join", {"conversation_id": room}))
        before = len(push_cluster.outbox_users())
        post("cat", "cat too", rid)
        await push_cluster.jobs_settled()  # (the audience is the thread's as of the job's expansion)
        post("cre", "creator in the thread", rid)
        await push_cluster.pushes_to("bob-phone", 4)
        await push_cluster.jobs_settled()
        # twice ann (author) and bob (participant), offline; never eve (muted), dan (former),
        # cat (online), the creator (sender of the last one)
        assert sorted(push_cluster.outbox_users()[before:]) == ["ann", "ann", "bob", "bob"]
        # a plain room post by a patron still pushes nobody
        before = len(push_cluster.outbox_users())
        post("bob", "plain")
        await push_cluster.jobs_settled()
        assert len(push_cluster.outbox_users()) == before
    finally:
        if cat is not None:
            await cat.close()


async def test_reply_pushes_root_author_and_participants_only(push_cluster: PushCluster) -> None:
    """MariaDB + Redis, two processes."""
    await _reply_push_scenario(push_cluster)


async def test_reply_pushes_in_one_process_on_sqlite(sqlite_push_cluster: PushCluster) -> None:  # noqa: F811
    """The embedded default: SQLite, one process, its in-process push worker."""
    await _reply_push_scenario(sqlite_push_cluster)


# ---------------------------------------------------------------- the writer's statements


async def _writer_batches(url: str, at_once: bool) -> tuple[list[list[str]], dict[int, tuple[int, str]], list[Any]]:
    """The group-commit writer in process: a batch of plain messages, then one batch with replies
    to two roots in two rooms and plain messages; the statements each batch ran (those that go
    through SQLAlchemy: the at-once multi-statement query of MariaDB goes to the driver itself)."""
    from chat import migrate
    from chat.db import create_engine, utcnow
    from chat.writer import MessageWriter, Outgoing

    engine = create_engine(url)
    statements: list[str] = []
    sa.event.listen(engine.sync_engine, "before_cursor_execute",
                    lambda _c, _cur, statement, *_: statements.append(" ".join(statement.split())))
    try:
        await migrate.upgrade(engine)
        now = utcnow()
        md = sa.MetaData()
        async with engine.begin() as conn:
            await conn.run_sync(md.reflect, only=["users", "conversations"])
            await conn.execute(sa.insert(md.tables["users"]), [
                {"id": u, "name": u.upper(), "created_at": now, "updated_at": now} for u in ("cre", "u1", "u2", "u3")])
            await conn.execute(sa.insert(md.tables["conversations"]), [
                {"kind": "room", "creator_id": "cre", "name": n, "min_tier_cents": 0, "post_policy": "everyone",
                 "last_seq": 0, "last_activity_at": now, "created_at": now} for n in ("A", "B")])

        def deliver(messages: list[dict[str, Any]]) -> asyncio.Future[None]:
            relayed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            relayed.set_result(None)
            return relayed

        updates: list[Any] = []
        writer = MessageWriter(engine, deliver, max_in_flight=1, at_once=at_once, thread_updates=updates.append)
        ra = (await writer.store(Outgoing(1, "cre", "CRE", "root A", "ra"))).message
        rb = (await writer.store(Outgoing(2, "cre", "CRE", "root B", "rb"))).message
        batches = []
        for batch in (
            [Outgoing(1, "u1", "U1", f"plain {i}", f"p{i}") for i in range(4)],
            [Outgoing(1, "u1", "U1", "a1", "a1", thread_id=int(ra["id"])),
             Outgoing(1, "u2", "U2", "plain", "x1"),
             Outgoing(2, "u2", "U2", "b1", "b1", thread_id=int(rb["id"])),
             Outgoing(1, "u2", "U2", "a2", "a2", thread_id=int(ra["id"])),
             Outgoing(1, "u1", "U1", "a3", "a3", thread_id=int(ra["id"])),
             Outgoing(2, "u3", "U3", "b2", "b2", thread_id=int(rb["id"])),
             Outgoing(1, "u3", "U3", "a4", "a4", thread_id=int(ra["id"]))],
        ):
            del statements[:]
            acks = await asyncio.gather(*(writer.store(o) for o in batch))
            assert all(a.created for a in acks)
            batches.append(list(statements))
        await writer.close()
        async with engine.connect() as conn:
            roots = {int(i): (int(n), str(p)) for i, n, p in await conn.execute(sa.text(
                "SELECT id, reply_count, thread_participants FROM messages WHERE reply_count > 0"))}
        return batches, roots, updates
    finally:
        await engine.dispose()


@pytest.mark.parametrize("where", ["sqlite", "mysql-at-once", "mysql-careful"])
async def test_one_root_update_per_batch_and_nothing_for_plain_messages(where: str, tmp_path: Any,
                                                                       mysql_databases: MySQLDatabases) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/w.db" if where == "sqlite" else mysql_databases.new()
    (plain, replies), roots, updates = await _writer_batches(url, where == "mysql-at-once")

    def count(statements: list[str], part: str) -> int:
        return sum(1 for s in statements if part in s)

    # (the roots' check, the locking read of the roots, their UPDATE)
    marks = ("messages.thread_id, messages.deleted FROM messages", "(SELECT users.name", "UPDATE messages")
    # a batch of plain messages: not one statement more for threads
    assert [count(plain, m) for m in marks] == [0, 0, 0], plain
    # a batch with 5 replies to 2 roots: one check of the roots, one locking read, one UPDATE
    assert [count(replies, m) for m in marks] == [1, 1, 1], replies
    assert sorted(roots.values()) == [(2, "u2,u3"), (4, "u1,u2,u3")], roots
    # the roots' wire forms went to the coalescer once, after the commit, with the new summaries
    assert len(updates) == 1 and sorted(w["thread"]["reply_count"] for w in updates[0]) == [2, 4]


async def test_a_reply_pushes_only_those_who_replied_before_it(tmp_path: Any) -> None:
    """Who a thread reply pushes is read when the worker expands its job, maybe after more
    replies came in: someone who replied only after it is not pushed for it. SQLite, in this
    process, through the audience page the push worker calls."""
    from chat import migrate, storage
    from chat.db import create_engine, session_factory
    from chat.models import Message
    from chat.service import ChatService

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/audience.db")
    try:
        await migrate.upgrade(engine)
        sessions = session_factory(engine)
        async with sessions.begin() as s:
            for u in ("cre", "ann", "bob", "cid"):
                await storage.upsert_user(s, u, u)
            for u in ("ann", "bob", "cid"):
                await storage.upsert_membership(s, "cre", u, 500, "active")
            room = (await storage.insert_room(s, "cre", "R", 0, "everyone")).id
        ids: dict[str, int] = {}
        async with sessions.begin() as s:
            for seq, (sender, thread) in enumerate((("ann", None), ("bob", "root"), ("cid", "root")), 1):
                row = Message(conversation_id=room, seq=seq, sender_id=sender, body=sender,
                              client_msg_id=f"m{seq}", thread_id=ids.get(thread or ""))
                s.add(row)
                await s.flush()
                ids[thread and sender or "root"] = row.id
        async with sessions() as s:
            # bob's reply: the root's author; not cid, who replied after it
            assert await ChatService.push_audience_page(s, room, "bob", None, 100, ids["root"], (), ids["bob"]) == (
                ["ann"], None)
            # cid's reply: ann and bob
            assert await ChatService.push_audience_page(s, room, "cid", None, 100, ids["root"], (), ids["cid"]) == (
                ["ann", "bob"], None)
    finally:
        await engine.dispose()


async def test_last_reply_at_never_goes_backwards(shared_any_server: Cluster, uid: Any) -> None:
    """A batch that waited longer for its locks can commit after one with newer replies: the
    root keeps the newer last_reply_at (chat/threads.update_roots), in what it stores and sends."""
    from datetime import datetime, timedelta

    from chat import threads
    from chat.db import create_engine

    api = shared_any_server.api
    cre, tokens, room = setup_room(api, uid, "ann")
    ann = uid("ann")
    c = await Client(shared_any_server.servers[0].url, tokens[ann]).connect()
    try:
        ok(await c.call("join", {"conversation_id": room}))
        rid = ok(await send(c, room, "root", "k0"))["message"]["id"]
        reply = ok(await send(c, room, "reply", "k1", rid))["message"]
    finally:
        await c.close()
    older = datetime.fromisoformat(reply["created_at"]) - timedelta(seconds=5)
    engine = create_engine(shared_any_server.database_url)
    try:
        async with engine.begin() as conn:  # a later commit of a batch whose time is older
            wires = await threads.update_roots(conn, [threads.Reply(int(rid), ann, reply["seq"] + 1)], older)
        async with engine.connect() as conn:
            stored = (await conn.execute(sa.select(threads._messages.c.last_reply_at)
                                         .where(threads._messages.c.id == int(rid)))).scalar_one()
    finally:
        await engine.dispose()
    assert wires[0]["thread"]["reply_count"] == 2
    assert wires[0]["thread"]["last_reply_at"] == reply["created_at"]
    assert stored > older and stored.isoformat(timespec="milliseconds").replace("+00:00", "Z") == reply["created_at"]
