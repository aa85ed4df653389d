"""chat/storage.py directly, on SQLite and on MariaDB, with the schema made by the migrations:
paging, unread counts, read positions, seq allocation, last messages, and no pool leak
when tasks holding sessions are cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chat import migrate, storage
from chat.db import create_engine, session_factory, utcnow


@pytest.fixture(params=["sqlite", "mysql"])
async def engine(request: Any, tmp_path: Any, mysql_databases: Any) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path}/storage.db" if request.param == "sqlite" else mysql_databases.new()
    eng = create_engine(url)
    await migrate.upgrade(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


async def room(sessions: async_sessionmaker[AsyncSession], creator: str = "cre") -> int:
    async with sessions.begin() as s:
        for uid in (creator, "a", "b"):
            if await storage.get_user(s, uid) is None:
                await storage.upsert_user(s, uid, uid.upper())
        return (await storage.insert_room(s, creator, "R", 0, "everyone")).id


async def post(sessions: async_sessionmaker[AsyncSession], cid: int, sender: str, n: int = 1,
               prefix: str = "m") -> list[int]:
    """n messages, one transaction each, as the service does. Returns their seqs."""
    seqs = []
    for _ in range(n):
        async with sessions.begin() as s:
            now = utcnow()
            seq = await storage.take_next_seq(s, cid, now)
            await storage.insert_message(s, cid, seq, sender, f"body {seq}", f"{prefix}-{cid}-{seq}-{sender}", now)
            seqs.append(seq)
    return seqs


async def page(sessions: async_sessionmaker[AsyncSession], cid: int, **kw: Any) -> tuple[list[int], bool]:
    async with sessions() as s:
        msgs, more = await storage.list_messages(s, cid, **kw)
        return [m.seq for m in msgs], more


async def test_list_messages_paging(sessions: async_sessionmaker[AsyncSession]) -> None:
    cid = await room(sessions)
    other = await room(sessions)
    assert await page(sessions, cid) == ([], False)
    await post(sessions, cid, "a", 10)
    await post(sessions, other, "a", 3)  # never mixed in

    assert await page(sessions, cid) == (list(range(1, 11)), False)
    assert await page(sessions, cid, limit=3) == ([8, 9, 10], True)
    assert await page(sessions, cid, limit=10) == (list(range(1, 11)), False)
    assert await page(sessions, cid, limit=11) == (list(range(1, 11)), False)
    assert await page(sessions, cid, limit=9) == (list(range(2, 11)), True)
    # backwards
    assert await page(sessions, cid, before_seq=4, limit=2) == ([2, 3], True)
    assert await page(sessions, cid, before_seq=3, limit=2) == ([1, 2], False)
    assert await page(sessions, cid, before_seq=2, limit=5) == ([1], False)
    assert await page(sessions, cid, before_seq=1, limit=5) == ([], False)
    assert await page(sessions, cid, before_seq=100, limit=2) == ([9, 10], True)
    # forwards
    assert await page(sessions, cid, after_seq=0, limit=4) == ([1, 2, 3, 4], True)
    assert await page(sessions, cid, after_seq=7, limit=2) == ([8, 9], True)
    assert await page(sessions, cid, after_seq=8, limit=2) == ([9, 10], False)
    assert await page(sessions, cid, after_seq=9, limit=5) == ([10], False)
    assert await page(sessions, cid, after_seq=10, limit=5) == ([], False)
    assert await page(sessions, cid, after_seq=500, limit=5) == ([], False)
    # a window: after wins the direction, bounded by before
    assert await page(sessions, cid, after_seq=2, before_seq=6, limit=10) == ([3, 4, 5], False)
    assert await page(sessions, cid, after_seq=2, before_seq=6, limit=2) == ([3, 4], True)
    # walking the whole history both ways gives every message once
    seen, before = [], None
    while True:
        seqs, more = await page(sessions, cid, before_seq=before, limit=3)
        seen = seqs + seen
        if not more:
            break
        before = seqs[0]
    assert seen == list(range(1, 11))
    seen, after = [], 0
    while True:
        seqs, more = await page(sessions, cid, after_seq=after, limit=4)
        seen += seqs
        if not more:
            break
        after = seqs[-1]
    assert seen == list(range(1, 11))


async def test_count_unread(sessions: async_sessionmaker[AsyncSession]) -> None:
    cid = await room(sessions)
    await post(sessions, cid, "a", 3)  # 1-3
    await post(sessions, cid, "b", 2)  # 4-5 (b's own)
    await post(sessions, cid, "a", 2)  # 6-7
    async with sessions.begin() as s:
        msg = (await storage.list_messages(s, cid, after_seq=5, limit=1))[0][0]
        msg.deleted, msg.body = True, ""  # seq 6 deleted
    async with sessions() as s:
        assert await storage.count_unread(s, cid, "b", 0) == 4  # 1,2,3,7
        assert await storage.count_unread(s, cid, "b", 3) == 1  # 7
        assert await storage.count_unread(s, cid, "b", 7) == 0
        assert await storage.count_unread(s, cid, "a", 0) == 2  # b's 4,5
        assert await storage.count_unread(s, cid, "a", 4) == 1
        assert await storage.count_unread(s, cid, "nobody", 0) == 6
        assert await storage.count_unread(s, cid + 1000, "b", 0) == 0


async def test_count_unread_many(sessions: async_sessionmaker[AsyncSession]) -> None:
    c1, c2, c3, empty = [await room(sessions) for _ in range(4)]
    await post(sessions, c1, "a", 5)
    await post(sessions, c2, "a", 2)
    await post(sessions, c2, "b", 2)
    await post(sessions, c3, "b", 3)
    async with sessions() as s:
        counts = await storage.count_unread_many(s, "b", {c1: 2, c2: 0, c3: 0, empty: 0})
        assert counts == {c1: 3, c2: 2, c3: 0, empty: 0}
        assert await storage.count_unread_many(s, "b", {}) == {}
        # each agrees with count_unread
        for cid, pos in {c1: 2, c2: 1, c3: 0}.items():
            assert (await storage.count_unread_many(s, "a", {cid: pos}))[cid] == await storage.count_unread(s, cid, "a", pos)


async def test_advance_read_position_never_moves_backwards(sessions: async_sessionmaker[AsyncSession]) -> None:
    cid = await room(sessions)
    await post(sessions, cid, "a", 10)

    async def advance(seq: int) -> int:
        async with sessions.begin() as s:
            return await storage.advance_read_position(s, "b", cid, seq)

    async def stored() -> int:
        async with sessions() as s:
            return (await storage.get_states(s, "b", [cid]))[cid].last_read_seq

    assert await advance(0) == 0
    assert await advance(5) == 5 and await stored() == 5
    assert await advance(3) == 5 and await stored() == 5
    assert await advance(5) == 5
    assert await advance(9) == 9 and await stored() == 9
    assert await advance(1) == 9 and await stored() == 9
    # concurrent readers: the highest wins whatever the commit order
    await asyncio.gather(*[advance(s) for s in (2, 10, 4, 7, 10, 1)])
    assert await stored() == 10
    async with sessions() as s:
        assert (await storage.get_states(s, "a", [cid])) == {}  # other users untouched


async def test_take_next_seq_is_consecutive_and_rollback_leaves_no_gap(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    cid = await room(sessions)
    assert await post(sessions, cid, "a", 3) == [1, 2, 3]
    async with sessions() as s:
        async with s.begin():
            assert await storage.take_next_seq(s, cid, utcnow()) == 4
            await s.rollback()
    assert await post(sessions, cid, "a", 1) == [4]
    async with sessions() as s:
        assert await storage.get_last_seq(s, cid) == 4
        assert await storage.get_last_seq(s, cid + 1000) == 0


async def test_take_next_seq_waits_for_the_holder(sessions: async_sessionmaker[AsyncSession]) -> None:
    """A second sender waits for the first one's commit, then gets the next seq."""
    cid = await room(sessions)
    await post(sessions, cid, "a", 1)
    first = sessions()
    await first.begin()
    try:
        assert await storage.take_next_seq(first, cid, utcnow()) == 2
        second = asyncio.create_task(post(sessions, cid, "b", 1))
        await asyncio.sleep(0.5)
        assert not second.done()  # blocked on the conversation row (MariaDB) / write lock (SQLite)
        await storage.insert_message(first, cid, 2, "a", "held", "held-1", utcnow())
        await first.commit()
        assert await asyncio.wait_for(second, 10) == [3]
    finally:
        await first.close()


async def test_concurrent_take_next_seq(sessions: async_sessionmaker[AsyncSession]) -> None:
    cid = await room(sessions)
    results = await asyncio.gather(*[post(sessions, cid, u, 5, prefix=f"c{i}") for i, u in enumerate("abab")])
    assert sorted(s for r in results for s in r) == list(range(1, 21))
    async with sessions() as s:
        seqs = [m.seq for m in (await storage.list_messages(s, cid, limit=100))[0]]
    assert seqs == list(range(1, 21))


async def test_last_messages(sessions: async_sessionmaker[AsyncSession]) -> None:
    c1, c2, empty = await room(sessions), await room(sessions), await room(sessions)
    await post(sessions, c1, "a", 4)
    await post(sessions, c2, "b", 1)
    await post(sessions, c2, "a", 1)
    async with sessions() as s:
        last = await storage.last_messages(s, [c1, c2, empty])
        assert set(last) == {c1, c2}
        assert (last[c1].seq, last[c1].sender_id) == (4, "a")
        assert (last[c2].seq, last[c2].sender_id) == (2, "a")
        assert await storage.last_messages(s, []) == {}
        assert set(await storage.last_messages(s, [c2])) == {c2}


async def test_pool_checked_out_returns_to_zero_after_cancelled_tasks(engine: AsyncEngine,
                                                                      sessions: async_sessionmaker[AsyncSession]) -> None:
    cid = await room(sessions)
    await post(sessions, cid, "a", 3)
    mysql = engine.dialect.name in ("mysql", "mariadb")

    async def idle_in_session(i: int) -> None:
        async with sessions() as s:
            await s.execute(sa.text("SELECT 1"))
            await asyncio.sleep(30)

    async def idle_in_transaction(i: int) -> None:
        async with sessions.begin() as s:
            await storage.advance_read_position(s, f"reader{i}", cid, 1)
            await asyncio.sleep(30)

    async def in_slow_query(i: int) -> None:
        async with sessions() as s:
            if mysql:
                await s.execute(sa.text("SELECT SLEEP(5)"))
            else:  # a long recursive query stands in for SLEEP on SQLite
                await s.execute(sa.text(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
                    "SELECT count(*) FROM c"))

    async def reading(i: int) -> None:
        while True:
            async with sessions() as s:
                await storage.list_messages(s, cid, limit=50)
                await storage.count_unread(s, cid, "b", 0)

    # On SQLite every transaction takes the one write lock (BEGIN IMMEDIATE): most of these
    # tasks are cancelled while waiting for it, which is a case of its own.
    kinds = [idle_in_session, idle_in_transaction, in_slow_query, reading]
    tasks = [asyncio.create_task(k(i)) for k in kinds for i in range(4)]
    for _ in range(300):  # until the tasks hold connections (at most 30 s)
        if engine.pool.checkedout() >= 4:
            break
        await asyncio.sleep(0.1)
    assert engine.pool.checkedout() > 0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(150):
        if engine.pool.checkedout() == 0:
            break
        await asyncio.sleep(0.1)
    assert engine.pool.checkedout() == 0, engine.pool.status()
    # and the pool still works, with nothing left half-written
    async with sessions() as s:
        assert (await storage.list_messages(s, cid))[0][-1].seq == 3
    assert await post(sessions, cid, "b", 1) == [4]
    assert engine.pool.checkedout() == 0
