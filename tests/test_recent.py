"""chat/recent.py on its own (no server): what an entry may answer, and its bounds. The join
answers it gives through real servers are checked in tests/test_join_cache.py."""

from __future__ import annotations

import asyncio
from typing import Any

from chat.recent import RECENT_MESSAGES, RecentMessages


def msg(seq: int, sender: str = "u1", *, body: str | None = None, edited_at: str | None = None,
        deleted: bool = False) -> dict[str, Any]:
    return {"id": str(1000 + seq), "conversation_id": "7", "seq": seq, "sender": {"id": sender, "name": sender.upper()},
            "body": "" if deleted else (body or f"m{seq}"), "client_msg_id": f"c{seq}",
            "created_at": "2026-01-01T00:00:00.000000Z", "edited_at": edited_at, "deleted": deleted}


def filled(recent: RecentMessages, cid: int, rows: list[dict[str, Any]], older: bool,
           positions: list[tuple[str, str, int]] | None = None) -> Any:
    entry = recent.begin_fill(cid)
    assert recent.finish_fill(cid, entry, rows, older, positions or [])
    return entry


async def test_bounds_per_conversation_and_per_process() -> None:
    recent = RecentMessages(max_conversations=3)
    entry = filled(recent, 7, [], False)
    for seq in range(1, 201):
        recent.on_event(7, "message", msg(seq))
    assert len(entry.messages) == RECENT_MESSAGES
    page = entry.page(None)
    assert page is not None and [m["seq"] for m in page.messages] == list(range(151, 201)) and page.has_more
    assert entry.complete_to(200) and not entry.complete_to(201)  # 201 committed, not heard yet
    assert entry.page(10) is None  # reaches below what is kept: the database answers
    since = entry.page(190)
    assert since is not None and [m["seq"] for m in since.messages] == list(range(191, 201)) and not since.has_more

    for cid in (8, 9, 10):
        filled(recent, cid, [], False)
    assert len(recent) == 3 and recent.entry(7) is None  # the least recently used went first
    recent.entry(8)  # used: 9 is now the oldest
    filled(recent, 11, [], False)
    assert recent.entry(9) is None and recent.entry(8) is not None


async def test_holes_edits_and_the_fill_race() -> None:
    recent = RecentMessages()
    entry = recent.begin_fill(7)
    # While the query runs: message 3 arrives, then an edit of 2 that the query may not have seen.
    recent.on_event(7, "message", msg(3))
    recent.on_event(7, "message_updated", msg(2, body="edited", edited_at="2026-01-01T00:00:01.000000Z"))
    waiter = asyncio.ensure_future(recent.ready(7))
    await asyncio.sleep(0)
    assert not waiter.done()  # a second join waits for the fill in flight
    assert recent.finish_fill(7, entry, [msg(1), msg(2)], False, [("u1", "U1", 1)])
    assert await waiter is entry
    page = entry.page(None)
    assert page is not None and [(m["seq"], m["body"]) for m in page.messages] == [(1, "m1"), (2, "edited"), (3, "m3")]
    assert entry.complete_to(3)

    # Out of order: 5 before 4 leaves a hole; the entry answers nothing until 4 is in.
    recent.on_event(7, "message", msg(5))
    assert not entry.complete_to(5)
    recent.on_event(7, "message", msg(4))
    assert entry.complete_to(5)
    # A late copy of an older state never overwrites a newer one; a deletion is final.
    recent.on_event(7, "message_updated", msg(4, deleted=True, edited_at="2026-01-01T00:00:02.000000Z"))
    recent.on_event(7, "message_updated", msg(4, body="late", edited_at="2026-01-01T00:00:01.000000Z"))
    recent.on_event(7, "message", msg(2))
    page = entry.page(1)
    assert page is not None and [(m["seq"], m["body"], m["deleted"]) for m in page.messages] == [
        (2, "edited", False), (3, "m3", False), (4, "", True), (5, "m5", False)]

    # Dropped while filling (the room closed, a resync): nothing is installed, waiters query.
    entry = recent.begin_fill(8)
    waiter = asyncio.ensure_future(recent.ready(8))
    await asyncio.sleep(0)
    recent.drop(8)
    assert await waiter is None
    assert not recent.finish_fill(8, entry, [msg(1)], False, [])
    assert recent.entry(8) is None


async def test_read_positions_follow_events_or_are_read_again() -> None:
    recent = RecentMessages()
    entry = filled(recent, 7, [msg(1, "a"), msg(2, "b")], False, [("b", "B", 2), ("a", "A", 1)])
    assert entry.read_positions("a") == [{"user_id": "b", "name": "B", "seq": 2}]
    recent.on_event(7, "read", {"conversation_id": "7", "user_id": "a", "seq": 2})
    recent.on_event(7, "message", msg(3, "a"))  # the writer moves the sender's position too
    assert entry.read_positions("b") == [{"user_id": "a", "name": "A", "seq": 3}]
    recent.on_event(7, "read", {"conversation_id": "7", "user_id": "newcomer", "seq": 3})
    assert entry.read_positions("a") is None  # a reader it does not hold (name unknown): read again

    # More readers than the answer shows: only moves of the held top are followed.
    top = [(f"u{i}", f"U{i}", 1000 - i) for i in range(101)]
    entry = filled(recent, 9, [], False, top)
    shown = entry.read_positions("u0")
    assert shown is not None and len(shown) == 100 and shown[0]["user_id"] == "u1"
    shown = entry.read_positions("nobody")
    assert shown is not None and len(shown) == 100 and shown[-1]["user_id"] == "u99"
    recent.on_event(9, "read", {"conversation_id": "9", "user_id": "u500", "seq": 5000})
    assert entry.read_positions("u0") is None


async def test_rename_drops_the_entries_showing_the_user() -> None:
    recent = RecentMessages()
    filled(recent, 7, [msg(1, "a")], False, [])
    filled(recent, 8, [msg(1, "b")], False, [("a", "A", 1)])
    filled(recent, 9, [msg(1, "b")], False, [])
    recent.drop_user("a")
    assert recent.entry(7) is None and recent.entry(8) is None and recent.entry(9) is not None


async def test_concurrent_user_lookups_share_one_query() -> None:
    """chat/batch.py: the connects of a storm read the users they do not know together."""
    from chat.batch import BatchedLookup

    calls: list[list[str]] = []
    gate = asyncio.Event()

    async def load(keys: list[str]) -> dict[str, str]:
        calls.append(keys)
        await gate.wait()
        if "boom" in keys:
            raise RuntimeError("database down")
        return {k: k.upper() for k in keys if k != "ghost"}

    lookup: BatchedLookup[str, str] = BatchedLookup(load)
    first = asyncio.ensure_future(lookup.get("a"))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(lookup.get(k)) for k in ("b", "ghost", "b")]
    await asyncio.sleep(0)
    gate.set()
    assert await first == "A" and [await f for f in rest] == ["B", None, "B"]
    assert calls == [["a"], ["b", "ghost"]]  # what came while a query ran went into the next one

    failing = asyncio.ensure_future(lookup.get("boom"))
    try:
        await failing
        raise AssertionError("the query's error reaches its callers")
    except RuntimeError:
        pass
    assert await lookup.get("c") == "C"  # and the next ones are served again


async def test_concurrent_redis_calls_share_one_pipeline(redis_url: str, redis_prefix: str) -> None:
    """chat/autopipe.py against the real Redis: what concurrent callers send goes out together,
    each gets its own results (or its own error), and a script Redis does not know is loaded."""
    import secrets

    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    from chat.autopipe import AutoPipeline, Script

    client = aioredis.Redis.from_url(redis_url)
    auto = AutoPipeline(client)
    key, text = f"{redis_prefix}:auto", f"{redis_prefix}:text"
    # A script body Redis has never seen (a fresh comment): its EVALSHA answers NOSCRIPT.
    fresh = client.register_script(f"-- {secrets.token_hex(8)}\nreturn redis.call('HINCRBY', KEYS[1], ARGV[1], 1)")
    try:
        await client.set(text, "not a hash")
        await auto.execute([("HINCRBY", key, "warm", 1)])
        assert auto.round_trips == 1
        calls = [auto.execute([("HINCRBY", key, f"f{i % 5}", 1), Script(fresh, [key], ["s"])]) for i in range(50)]
        calls.append(auto.execute([("HINCRBY", text, "x", 1)]))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert auto.round_trips <= 3  # 51 callers, not 51 round trips (one more for the warm-up)
        assert isinstance(results[-1], ResponseError)  # the wrong-type error is that caller's alone
        assert sorted(r[1] for r in results[:-1]) == list(range(1, 51))  # type: ignore[index]
        assert await client.hgetall(key) == {b"warm": b"1", **{f"f{i}".encode(): b"10" for i in range(5)}, b"s": b"50"}
    finally:
        await client.delete(key, text)
        await client.aclose()


async def test_thread_summaries_keep_the_most_replies() -> None:
    """Thread roots' `message_updated` from two processes may cross (chat/threads.py): the entry
    keeps the summary with the highest reply_count, and the latest edit of the body."""
    recent = RecentMessages()
    entry = filled(recent, 7, [msg(1), msg(2)], False)

    def root(n: int, **kw: Any) -> dict[str, Any]:
        return {**msg(1, **kw), "thread": {"reply_count": n, "last_reply_at": f"t{n}", "participants": ["u2"]}}

    recent.on_event(7, "message_updated", root(3))
    recent.on_event(7, "message_updated", root(2))  # crossed: older
    assert entry.messages[1]["thread"]["reply_count"] == 3
    recent.on_event(7, "message_updated", root(2, body="edited", edited_at="2026-01-01T00:00:01.000000Z"))
    kept = entry.messages[1]
    assert kept["body"] == "edited" and kept["thread"]["reply_count"] == 3
    recent.on_event(7, "message_updated", root(4))  # more replies, read before the edit
    kept = entry.messages[1]
    assert kept["body"] == "edited" and kept["thread"]["reply_count"] == 4


async def test_bare_messages_and_the_reactions_heard() -> None:
    """Which messages a join may answer without reading reactions and photos (chat/recent.py
    "Bare messages"): from the fill's read or a `message` event without photos, until a
    `reaction` event for them, whenever it is heard (before the fill's rows, before a message
    event relayed late)."""
    from chat.recent import MAX_REACTED

    recent = RecentMessages()
    entry = recent.begin_fill(7)
    recent.on_event(7, "reaction", {"message_id": "1002", "conversation_id": "7"})  # while the query runs
    recent.on_event(7, "message", msg(4))
    assert not recent.all_bare(7, [1004])  # nothing is answered before the fill is in
    assert recent.finish_fill(7, entry, [msg(1), msg(2), msg(3)], False, [], bare=[1001, 1002])
    assert recent.all_bare(7, [1001, 1004]) and recent.all_bare(7, [])
    assert not recent.all_bare(7, [1002])  # reacted after the query read its reactions
    assert not recent.all_bare(7, [1003])  # the query found reactions or photos
    recent.on_event(7, "message", {**msg(5), "attachments": [{"id": "9"}]})
    recent.on_event(7, "reaction", {"message_id": "1006", "conversation_id": "7"})
    recent.on_event(7, "message", msg(6))  # its reaction's event came first (another process)
    recent.on_event(7, "message", msg(7))
    assert not recent.all_bare(7, [1005]) and not recent.all_bare(7, [1006]) and recent.all_bare(7, [1007])
    recent.on_event(7, "reaction", {"message_id": "1001", "conversation_id": "7"})
    assert not recent.all_bare(7, [1001]) and recent.all_bare(7, [1004, 1007])
    recent.on_event(7, "reaction", {"message_id": "x"})  # cannot tell which: none is known bare
    assert not recent.all_bare(7, [1007])
    assert not recent.all_bare(8, [])  # no entry

    entry = filled(recent, 9, [], False)
    for seq in range(1, RECENT_MESSAGES + 11):
        recent.on_event(9, "message", msg(seq))
    assert entry.bare is not None and len(entry.bare) == RECENT_MESSAGES  # trimmed with the messages
    for mid in range(MAX_REACTED + 1):
        recent.on_event(9, "reaction", {"message_id": str(100_000 + mid)})
    assert entry.bare is None and not entry.reacted  # past the bound: nothing known bare any more
    recent.on_event(9, "message", msg(RECENT_MESSAGES + 11))
    assert not recent.all_bare(9, [1000 + RECENT_MESSAGES + 11])
