"""The join answer from the per-process cache of recent messages (chat/recent.py): always the
database's answer (the history API and the read positions in the database are the reference),
and from the cache when the process heard everything. On MariaDB with two processes, the
writes happen on one and the joins on the other, so the cache there is kept by the relay alone;
on SQLite, one process."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Cluster
from tests.support import Client, barrier, fetch, sync_engine
from tests.test_join import history, insert_messages, join


@pytest.fixture(params=["sqlite", "mysql"])
def writer_and_joiner(request: Any) -> tuple[Cluster, int, int]:
    """(cluster, index of the process the messages are written on, index of the one joined)."""
    if request.param == "sqlite":
        return request.getfixturevalue("shared_sqlite"), 0, 0
    return request.getfixturevalue("shared_mysql_cluster"), 0, 1


def cache_answers(url: str) -> float:
    """How many join answers this process gave from the cache so far (its /metrics)."""
    text = fetch("GET", f"{url}/metrics", timeout=10).text
    m = re.search(r'^backstage_join_pages_total\{source="cache"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def stored_positions(database_url: str, conversation_id: str, exclude: str) -> list[dict[str, Any]]:
    engine = sync_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT s.user_id, u.name, s.last_read_seq FROM conversation_states s LEFT JOIN users u ON u.id = s.user_id "
                "WHERE s.conversation_id = :cid AND s.user_id != :ex AND s.last_read_seq > 0 "
                "ORDER BY s.last_read_seq DESC, s.user_id LIMIT 100"), {"cid": int(conversation_id), "ex": exclude}).all()
    finally:
        engine.dispose()
    return [{"user_id": u, "name": n or u, "seq": int(s)} for u, n, s in rows]


async def test_join_from_the_cache_is_the_database_answer(writer_and_joiner: tuple[Cluster, int, int], uid: Any) -> None:
    cluster, w, j = writer_and_joiner
    api = cluster.apis[0]
    wurl, jurl = cluster.servers[w].url, cluster.servers[j].url
    cre_id, pat_id, fan_id = uid("cre"), uid("pat"), uid("fan")
    cre, pat, fan = api.user(cre_id, "Cre Ator"), api.user(pat_id, "Pat Ron"), api.user(fan_id, "Fan Tastic")
    api.membership(cre_id, pat_id, 500)
    api.membership(cre_id, fan_id, 500)
    room = api.room(cre_id, "Cached", 500)

    async def joined_like_the_database(c: Client, user_id: str, token: str, since: int | None = None,
                                       cached: bool = True) -> dict[str, Any]:
        before = cache_answers(jurl)
        r = await join(c, room, **({} if since is None else {"since_seq": since}))
        ref = history(api, token, room, limit=50) if since is None else history(api, token, room, after_seq=since, limit=100)
        assert (r["messages"], r["has_more"]) == (ref["messages"], ref["has_more"])
        assert r["read_positions"] == stored_positions(cluster.database_url, room, user_id)
        assert cache_answers(jurl) == before + (1 if cached else 0), "answered from the cache" if cached else "read"
        return dict(r)

    watcher = await Client(jurl, cre).connect()  # keeps the room active on the joined process
    sender = await Client(wurl, pat).connect()
    readers: list[Client] = []
    try:
        await joined_like_the_database(watcher, cre_id, cre, cached=False)  # nothing cached yet: read, and fill
        await join(sender, room)
        sent = []
        for n in range(3):
            r = await sender.call("send", {"conversation_id": room, "body": f"hello {n}", "client_msg_id": uid(f"c{n}")})
            assert r["ok"], r
            sent.append(r["message"])
        await watcher.wait_for("message", lambda m: m["seq"] == 3)

        # A message written on the other process is in the answer: the relay filled the cache.
        reader = await Client(jurl, fan).connect()
        readers.append(reader)
        r = await joined_like_the_database(reader, fan_id, fan)
        assert [m["body"] for m in r["messages"]] == ["hello 0", "hello 1", "hello 2"]

        # Edits and deletions reach the cache.
        assert (await sender.call("edit", {"message_id": sent[1]["id"], "body": "edited"}))["ok"]
        assert (await sender.call("delete", {"message_id": sent[2]["id"]}))["ok"]
        await watcher.wait_for("message_updated", lambda m: m["deleted"])
        r = await joined_like_the_database(reader, fan_id, fan)
        assert [(m["body"], m["deleted"]) for m in r["messages"]] == [("hello 0", False), ("edited", False), ("", True)]
        await joined_like_the_database(reader, fan_id, fan, since=1)

        # Read positions: the sender's moved with its messages (added: the entry holds every
        # reader); a read moves the reader's.
        assert (await reader.call("read", {"conversation_id": room, "seq": 2}))["ok"]
        await watcher.wait_for("read", lambda e: e["user_id"] == fan_id)
        await joined_like_the_database(watcher, cre_id, cre, cached=False)  # a reader it did not hold: read again
        assert (await reader.call("read", {"conversation_id": room, "seq": 3}))["ok"]
        await watcher.wait_for("read", lambda e: e["user_id"] == fan_id and e["seq"] == 3)
        await joined_like_the_database(watcher, cre_id, cre)  # a reader it holds: moved in place

        # Messages the cache never heard of (written behind the servers' back): the conversation's
        # last_seq is ahead of the cache, so the database answers, and fills it again.
        insert_messages(cluster.database_url, room, [cre_id, pat_id], 4, 60)
        await joined_like_the_database(reader, fan_id, fan, cached=False)
        r = await sender.call("send", {"conversation_id": room, "body": "after", "client_msg_id": uid("after")})
        assert r["ok"], r
        await watcher.wait_for("message", lambda m: m["seq"] == 64)
        r = await joined_like_the_database(reader, fan_id, fan)  # the last 50, more before them
        assert [m["seq"] for m in r["messages"]] == list(range(15, 65)) and r["has_more"] is True
        await joined_like_the_database(reader, fan_id, fan, since=60)
        await joined_like_the_database(reader, fan_id, fan, since=64)  # nothing after it
        await joined_like_the_database(reader, fan_id, fan, since=5, cached=False)  # further back than kept

        # A renamed sender: every process drops what shows the old name (the barrier: the joined
        # process has handled the control message the rename published before its marker).
        api.user(pat_id, "Pat Renamed")
        await barrier([api], [(fan_id, reader)], "renamed")
        r = await joined_like_the_database(reader, fan_id, fan, cached=False)
        assert r["messages"][-1]["sender"]["name"] == "Pat Renamed"

        # A revoked member is refused, whatever the cache holds.
        api.membership(cre_id, fan_id, 500, status="former")
        await reader.wait_for("access_revoked")
        r = await reader.call("join", {"conversation_id": room})
        assert r["ok"] is False and r["error"]["code"] == "forbidden"
    finally:
        for c in (watcher, sender, *readers):
            await c.close()


async def test_concurrent_joins_each_get_their_own_access_and_position(writer_and_joiner: tuple[Cluster, int, int],
                                                                       uid: Any) -> None:
    """The joins waiting at one moment share one access query (chat/batch.py, storage.join_views):
    each still gets its own answer: forbidden below the tier, not_found for no conversation, its
    own read position and unread count."""
    cluster, _, j = writer_and_joiner
    api, url = cluster.apis[0], cluster.servers[j].url
    cre_id = uid("cre")
    api.user(cre_id, "Cre")
    room = api.room(cre_id, "Tiered", 500)
    pats = [uid(f"p{i}") for i in range(6)]
    tokens = {p: api.user(p, p.title()) for p in pats}
    for i, p in enumerate(pats):
        api.membership(cre_id, p, 200 * i)  # p0..p2 below the room's 500
    insert_messages(cluster.database_url, room, [cre_id], 1, 10)
    clients = [await Client(url, tokens[p]).connect() for p in pats]
    try:
        reads = {pats[3]: 2, pats[4]: 5}
        for p, seq in reads.items():
            assert (await clients[pats.index(p)].call("read", {"conversation_id": room, "seq": seq}))["ok"]
        answers = await asyncio.gather(*(c.call("join", {"conversation_id": cid})
                                         for c in clients for cid in (room, "999999999")))
        for i, p in enumerate(pats):
            mine, missing = answers[2 * i], answers[2 * i + 1]
            assert missing["ok"] is False and missing["error"]["code"] == "not_found", missing
            if i < 3:
                assert mine["ok"] is False and mine["error"]["code"] == "forbidden", (p, mine)
            else:
                assert mine["ok"], mine
                assert (mine["last_read_seq"], mine["unread_count"]) == (reads.get(p, 0), 10 - reads.get(p, 0)), p
    finally:
        for c in clients:
            await c.close()
