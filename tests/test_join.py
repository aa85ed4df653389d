"""The connect + join path (docs/performance.md "Connect and join"): the join answer's shape
(SPEC §4), presence events coalesced per conversation, a disconnect storm that leaves nobody
online, a join racing its socket's disconnect, and the user row written only when this process
does not know it (or the token's name changed)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Cluster, MySQLDatabases
from tests.faults import eventually
from tests.support import Api, Client, barrier, make_token, migrated_sqlite, sync_engine

JOIN_KEYS = {"conversation", "messages", "has_more", "online", "unread_count", "last_read_seq", "read_positions",
             "slow_mode_s", "pinned", "guidelines_accepted"}  # extensions (docs/api.md, Moderation)
MESSAGE_KEYS = {"id", "conversation_id", "seq", "sender", "body", "client_msg_id", "created_at", "edited_at", "deleted",
                "reactions", "attachments", "mentions",
                "thread_id", "thread"}  # threads (docs/api.md "Threads")
CONVERSATION_KEYS = {"id", "kind", "creator_id", "name", "min_tier_cents", "post_policy"}


async def join(c: Client, conversation_id: str, **extra: Any) -> dict[str, Any]:
    r = await c.call("join", {"conversation_id": conversation_id, **extra})
    assert r["ok"], r
    return r


def insert_messages(database_url: str, conversation_id: str, senders: list[str], start: int, count: int) -> None:
    """count stored messages, straight into the database (the send path's rate limit would make
    a page of 100 take seconds); seqs start..start+count-1, last_seq moved along."""
    engine = sync_engine(database_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO messages (conversation_id, seq, sender_id, body, client_msg_id, created_at, deleted) "
                "VALUES (:cid, :seq, :sender, :body, :cmid, :now, :deleted)"),
                [{"cid": int(conversation_id), "seq": seq, "sender": senders[seq % len(senders)],
                  "body": f"m{seq}", "cmid": f"bulk-{conversation_id}-{seq}", "now": now, "deleted": False}
                 for seq in range(start, start + count)])
            conn.execute(sa.text("UPDATE conversations SET last_seq = :last WHERE id = :cid"),
                         {"last": start + count - 1, "cid": int(conversation_id)})
    finally:
        engine.dispose()


def history(api: Api, token: str, conversation_id: str, **params: Any) -> dict[str, Any]:
    r = api.client(token, "GET", f"/conversations/{conversation_id}/messages", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---------------------------------------------------------------- the answer


async def test_join_answer_shape(shared_any_server: Cluster, uid: Any) -> None:
    """SPEC §4 join: the last 50, or up to 100 after since_seq with has_more; `online` with the
    joiner; messages exactly as the (ORM-built) history API gives them; a direct conversation's
    members; the reader's position and unread count; the others' read positions."""
    api = shared_any_server.api
    url = shared_any_server.servers[0].url
    cre_id, pat_id = uid("cre"), uid("pat")
    cre, pat = api.user(cre_id, "Cre Ator"), api.user(pat_id, "Pat Ron")
    api.membership(cre_id, pat_id, 500)
    room = api.room(cre_id, "Lounge", 500)
    insert_messages(shared_any_server.database_url, room, [cre_id, pat_id], 1, 120)
    a, b = await Client(url, cre).connect(), await Client(url, pat).connect()
    try:
        ja = await join(a, room)
        assert set(ja) - {"ok"} == JOIN_KEYS
        assert ja["conversation"] == {"id": room, "kind": "room", "creator_id": cre_id, "name": "Lounge",
                                      "min_tier_cents": 500, "post_policy": "everyone", "topic": "", "emoji": None,
                                      "archived": False, "guidelines": "", "guidelines_version": 0}
        assert [m["seq"] for m in ja["messages"]] == list(range(71, 121)) and ja["has_more"] is True
        assert ja["online"] == [cre_id]
        assert all(set(m) == MESSAGE_KEYS for m in ja["messages"])
        assert ja["messages"] == history(api, cre, room, limit=50)["messages"]
        assert ja["unread_count"] == 60 and ja["last_read_seq"] == 0  # the patron's 60 of 120
        assert ja["messages"][0]["sender"] == {"id": pat_id if 71 % 2 else cre_id,
                                               "name": "Pat Ron" if 71 % 2 else "Cre Ator"}

        r = await a.call("read", {"conversation_id": room, "seq": 100})
        assert r == {"ok": True, "unread_count": 10}
        jb = await join(b, room, since_seq=10)
        assert set(jb) - {"ok"} == JOIN_KEYS
        assert [m["seq"] for m in jb["messages"]] == list(range(11, 111)) and jb["has_more"] is True
        assert jb["messages"] == history(api, pat, room, after_seq=10, limit=100)["messages"]
        assert sorted(jb["online"]) == sorted([cre_id, pat_id])
        assert jb["read_positions"] == [{"user_id": cre_id, "name": "Cre Ator", "seq": 100}]
        assert jb["unread_count"] == 60 and jb["last_read_seq"] == 0

        jb = await join(b, room, since_seq=115)  # the tail: no more
        assert [m["seq"] for m in jb["messages"]] == [116, 117, 118, 119, 120] and jb["has_more"] is False
        ja = await join(a, room)  # the creator's position moved: 100 read, 10 of the patron's unread after it
        assert ja["last_read_seq"] == 100 and ja["unread_count"] == 10

        direct = api.direct(pat, cre_id)
        jd = await join(b, direct)
        assert jd["conversation"]["members"] == [{"id": cre_id, "name": "Cre Ator", "avatar_url": None},
                                                 {"id": pat_id, "name": "Pat Ron", "avatar_url": None}]
        assert jd["messages"] == [] and jd["has_more"] is False and jd["online"] == [pat_id]

        # Who may not read gets what the SPEC says, and the socket stays usable.
        other = api.user(uid("other"))
        c = await Client(url, other).connect()
        try:
            r = await c.call("join", {"conversation_id": room})
            assert r["ok"] is False and r["error"]["code"] == "forbidden"
            r = await c.call("join", {"conversation_id": "999999999"})
            assert r["ok"] is False and r["error"]["code"] == "not_found"
        finally:
            await c.close()
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------- presence coalescing


@pytest.fixture
def windowed_cluster(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix: str) -> Iterator[Cluster]:
    """Two processes whose presence window is long enough that a join + disconnect always fits."""
    cluster = Cluster(mysql_databases.new(), redis_url, redis_prefix, 2, env={"PRESENCE_WINDOW_S": "2"})
    yield cluster
    cluster.stop()


async def test_presence_flap_is_dropped_and_stay_is_announced_once(windowed_cluster: Cluster) -> None:
    s0, s1 = windowed_cluster.servers
    api = windowed_cluster.api
    tokens = {u: api.user(u) for u in ("cre", "flap", "stay")}
    for u in ("flap", "stay"):
        api.membership("cre", u, 100)
    room = api.room("cre", "Lounge", 100)
    a = await Client(s0.url, tokens["cre"]).connect()
    stay = stay2 = None
    try:
        await join(a, room)
        flap = await Client(s1.url, tokens["flap"]).connect()  # comes and goes within the window
        await join(flap, room)
        await flap.close()
        stay = await Client(s1.url, tokens["stay"]).connect()
        await join(stay, room)
        stay2 = await Client(s0.url, tokens["stay"]).connect()  # a second socket: no news
        await join(stay2, room)
        # The marker: the stayer's event is sent by the same process in the same or a later
        # batch than the flapper's would have been, so the flapper's would be in by now.
        await a.wait_for("presence", lambda p: p["user_id"] == "stay")
        await barrier(windowed_cluster.apis, [("cre", a)], "after-stay")
        assert a.events["presence"] == [{"conversation_id": room, "user_id": "stay", "online": True}]
        # The socket whose join made the news is not told. (A second socket of the same user
        # that joins within the window may be: an event is sent with one skip_sid.)
        assert [p for p in stay.events["presence"] if p["user_id"] == "stay"] == []
    finally:
        for c in (a, stay, stay2):
            if c is not None:
                await c.close()


# ---------------------------------------------------------------- disconnect storm


async def test_disconnect_storm_leaves_nobody_online(mysql_cluster: Cluster) -> None:
    """300 sockets (half on each process) drop at once: every one goes offline for the others
    and in the online list; none of the releases is lost."""
    s0, s1 = mysql_cluster.servers
    api = mysql_cluster.api
    n = 300
    users = [f"u{i:03d}" for i in range(n)]
    cre = api.user("cre")
    for u in users:
        api.membership("cre", u, 100)
    room = api.room("cre", "Stadium", 100)
    a = await Client(s0.url, cre).connect()
    clients: list[Client] = []
    try:
        await join(a, room)

        async def arrive(i: int, u: str) -> Client:
            c = await Client((s0, s1)[i % 2].url, make_token(u, u)).connect()
            await join(c, room)
            return c

        for first in range(0, n, 50):
            clients += await asyncio.gather(*(arrive(i, u) for i, u in enumerate(users) if first <= i < first + 50))
        for u in users:
            await a.wait_for("presence", lambda p, u=u: p["user_id"] == u and p["online"])
        await asyncio.gather(*(c.sio.eio.disconnect(abort=True) for c in clients))  # drop, no goodbye
        for u in users:
            await a.wait_for("presence", lambda p, u=u: p["user_id"] == u and p["online"] is False, timeout=30)
        for server in (s0, s1):
            check = await Client(server.url, cre).connect()
            try:
                assert (await join(check, room))["online"] == ["cre"]
            finally:
                await check.close()
        assert {p["user_id"] for p in a.events["presence"] if not p["online"]} == set(users)
    finally:
        await a.close()
        for c in clients:
            await c.close()


# ---------------------------------------------------------------- join racing disconnect


@pytest.fixture(params=["sqlite", "mysql"])
def unlimited_joins(request: Any, tmp_path: Any, mysql_databases: MySQLDatabases, redis_url: str,
                    redis_prefix: str) -> Iterator[Cluster]:
    """One server of its own (its log is read) that never rate-limits joins."""
    env = {"JOIN_RATE_PER_S": "100000", "JOIN_BURST": "100000"}
    if request.param == "sqlite":
        cluster = Cluster(migrated_sqlite(tmp_path / "backstage.db"), None, "unused", 1, env=env)
    else:
        cluster = Cluster(mysql_databases.new(), redis_url, redis_prefix, 1, env=env)
    yield cluster
    cluster.stop()


async def test_join_racing_disconnect_is_answered_cleanly(unlimited_joins: Cluster) -> None:
    """Sockets joining back to back while their tokens expire: the server disconnects each one
    (its expiry timer) in the middle of some join. No ERROR in the log, nobody left online."""
    server, api = unlimited_joins.servers[0], unlimited_joins.api
    cre = api.user("cre")
    users = [f"r{i:02d}" for i in range(20)]
    for u in users:
        api.membership("cre", u, 100)
    room = api.room("cre", "Race", 100)
    insert_messages(unlimited_joins.database_url, room, ["cre"], 1, 60)  # a join with some work to do

    async def join_until_expired(u: str) -> int:
        c = Client(server.url, make_token(u, u, ttl=2))
        await c.connect()
        joins = 0
        try:
            while c.sio.connected and not c.events["token_expired"]:
                try:
                    await c.call("join", {"conversation_id": room}, timeout=5)
                except Exception:  # disconnected under the call
                    break
                joins += 1
        finally:
            await c.close()
        return joins

    assert sum(await asyncio.gather(*(join_until_expired(u) for u in users))) > 0

    async def online() -> list[str]:
        check = await Client(server.url, cre).connect()
        try:
            return list((await join(check, room))["online"])
        finally:
            await check.close()

    # The disconnects finish on the server after the clients are gone.
    await eventually(online, ["cre"])
    log = server.log()
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]


# ---------------------------------------------------------------- the user row


async def test_user_row_written_only_when_unknown_or_renamed(any_server: Cluster) -> None:
    url, api = any_server.servers[0].url, any_server.api
    api.user("una", "Una")
    engine = sync_engine(any_server.database_url)

    def stored() -> tuple[str, Any]:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT name, updated_at FROM users WHERE id = 'una'")).one()
            return str(row[0]), row[1]

    try:
        c = await Client(url, make_token("una", "Una")).connect()  # unknown to the process: read once
        await c.close()
        with engine.begin() as conn:  # behind the server's back: a connect that writes would undo it
            conn.execute(sa.text("UPDATE users SET name = 'Behind' WHERE id = 'una'"))
        for _ in range(3):
            c = await Client(url, make_token("una", "Una")).connect()
            await c.close()
        assert stored()[0] == "Behind"  # three connects, no write (and no read-then-write)

        c = await Client(url, make_token("una", "Una Renamed")).connect()  # the token's name changed
        await c.close()
        assert stored()[0] == "Una Renamed"

        c = await Client(url, make_token("newcomer", "New Comer")).connect()  # a user never seen
        await c.close()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT name FROM users WHERE id = 'newcomer'")).scalar() == "New Comer"
    finally:
        engine.dispose()
