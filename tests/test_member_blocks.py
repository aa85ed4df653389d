"""Blocks between members (docs/moderation.md "Blocks between members"): a member blocks another
user over a socket (`block_user`, listed by `blocks`); the blocked user's messages reach the
blocker as placeholders (same seq, no body, `hidden: true`) live, on every process, and in join
pages, recovery (`since_seq`) and history, and their `typing` does not reach the blocker; no direct message goes between the two, both ways,
until the block is lifted. SQLite (one process) and MariaDB + Redis (two processes)."""

from __future__ import annotations

import secrets
from typing import Any

from tests.support import Api, Client, err, ok, send


def placeholder_of(m: dict[str, Any], msg: dict[str, Any]) -> None:
    """`m` is the placeholder of `msg` for its blocker."""
    assert m["id"] == msg["id"] and m["seq"] == msg["seq"] and m["sender"]["id"] == msg["sender"]["id"]
    assert m["hidden"] is True and m["hidden_reason"] == "blocked" and m["body"] == "" and m["attachments"] == []


async def _blocks_scenario(url_a: str, url_b: str, api: Api, uid: Any) -> None:
    """The blocker's sockets are on `url_a`, the blocked user's on `url_b`."""
    cre, me, troll = uid("cre"), uid("me"), uid("troll")
    tokens = {u: api.user(u) for u in (cre, me, troll)}
    for u in (me, troll):
        api.membership(cre, u, 500)
    room = api.room(cre, "Lounge", 0)
    c, a, t = (await Client(url_a, tokens[cre]).connect(), await Client(url_a, tokens[me]).connect(),
               await Client(url_b, tokens[troll]).connect())
    try:
        for s in (c, a, t):
            ok(await s.call("join", {"conversation_id": room}))
        before = ok(await send(t, room, "before the block"))["message"]
        assert (await a.wait_for("message", lambda m: m["id"] == before["id"]))["body"] == "before the block"

        assert err(await a.call("block_user", {"user_id": me, "on": True})) == "invalid"
        assert err(await a.call("block_user", {"user_id": "no such one", "on": True})) == "invalid"
        assert err(await a.call("block_user", {"user_id": uid("nobody"), "on": True})) == "not_found"
        assert err(await a.call("block_user", {"user_id": troll, "on": "yes"})) == "invalid"
        assert ok(await a.call("block_user", {"user_id": troll, "on": True})) == {
            "ok": True, "user_id": troll, "blocked": True}
        assert await a.wait_for("user_blocked") == {"user_id": troll, "blocked": True}
        assert ok(await a.call("block_user", {"user_id": troll, "on": True}))["blocked"] is True  # again: as it is
        listed = ok(await a.call("blocks", {}))["blocks"]
        assert [b["user_id"] for b in listed] == [troll] and listed[0]["blocked_at"]
        assert api.server("GET", f"/users/{me}/blocks").json()["blocks"] == listed

        # live, from the other process: the blocker's socket gets the placeholder, the others the message
        during = ok(await send(t, room, "you cannot see this"))["message"]
        placeholder_of(await a.wait_for("message", lambda m: m["id"] == during["id"]), during)
        assert (await c.wait_for("message", lambda m: m["id"] == during["id"]))["body"] == "you cannot see this"
        assert all(m["body"] != "you cannot see this" for m in a.events["message"])
        # the blocked user's typing does not reach the blocker (the others still see it)
        ok(await t.call("typing", {"conversation_id": room, "typing": True}))
        await c.wait_for("typing", lambda e: e["user_id"] == troll and e["typing"])
        behind = ok(await send(t, room, "sent after typing"))["message"]
        placeholder_of(await a.wait_for("message", lambda m: m["id"] == behind["id"]), behind)
        assert not [e for e in a.events["typing"] if e["user_id"] == troll]
        # an edit of a blocked sender's message stays hidden too
        ok(await t.call("edit", {"message_id": before["id"], "body": "edited"}))
        edited = await a.wait_for("message_updated", lambda m: m["id"] == before["id"])
        placeholder_of(edited, before)
        # one way only: the blocked user still sees the blocker
        mine = ok(await send(a, room, "I still talk"))["message"]
        assert (await t.wait_for("message", lambda m: m["id"] == mine["id"]))["body"] == "I still talk"

        # join pages, recovery and history (socket and HTTP), with seq gapless
        for page in (ok(await a.call("join", {"conversation_id": room}))["messages"],
                     ok(await a.call("join", {"conversation_id": room, "since_seq": before["seq"] - 1}))["messages"],
                     ok(await a.call("history", {"conversation_id": room}))["messages"],
                     api.client(tokens[me], "GET", f"/conversations/{room}/messages").json()["messages"]):
            by_id = {m["id"]: m for m in page}
            placeholder_of(by_id[before["id"]], before)
            placeholder_of(by_id[during["id"]], during)
            assert by_id[mine["id"]]["body"] == "I still talk" and "hidden" not in by_id[mine["id"]]
            seqs = [m["seq"] for m in page]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        listing = api.client(tokens[me], "GET", "/conversations").json()["conversations"]
        assert next(x for x in listing if x["conversation"]["id"] == room)["last_message"]["id"] == mine["id"]
        # the creator's view is untouched
        assert all("hidden" not in m for m in ok(await c.call("join", {"conversation_id": room}))["messages"])

        # a report review that shows the message again shows the blocker its placeholder only
        assert api.server("PUT", f"/creators/{cre}/report-settings", {"hide_threshold": 1}).status_code == 200
        ok(await c.call("report", {"message_id": during["id"], "reason": "spam"}))
        await a.wait_for("message_hidden", lambda e: e["message_id"] == during["id"] and e["hidden"])
        ok(await c.call("review_report", {"message_id": during["id"], "action": "dismiss"}))
        shown = await c.wait_for("message_hidden", lambda e: e["message_id"] == during["id"] and not e["hidden"])
        assert shown["message"]["body"] == "you cannot see this"
        shown = await a.wait_for("message_hidden", lambda e: e["message_id"] == during["id"] and not e["hidden"])
        placeholder_of(shown["message"], during)

        # a socket the blocker opens later (on the other process) is skipped as well
        a2 = await Client(url_b, tokens[me]).connect()
        try:
            ok(await a2.call("join", {"conversation_id": room}))
            later = ok(await send(t, room, "later"))["message"]
            placeholder_of(await a2.wait_for("message", lambda m: m["id"] == later["id"]), later)
            placeholder_of(await a.wait_for("message", lambda m: m["id"] == later["id"]), later)
        finally:
            await a2.close()

        # unblocked: live and in pages again
        assert ok(await a.call("block_user", {"user_id": troll, "on": False}))["blocked"] is False
        await a.wait_for("user_blocked", lambda e: e == {"user_id": troll, "blocked": False})
        after = ok(await send(t, room, "visible again"))["message"]
        got = await a.wait_for("message", lambda m: m["id"] == after["id"])
        assert got["body"] == "visible again" and "hidden" not in got
        page = ok(await a.call("join", {"conversation_id": room}))["messages"]
        assert next(m for m in page if m["id"] == during["id"])["body"] == "you cannot see this"
        assert ok(await a.call("blocks", {}))["blocks"] == []
    finally:
        for s in (c, a, t):
            await s.close()


async def test_blocks_in_one_process(shared_sqlite: Any, uid: Any) -> None:
    url = shared_sqlite.servers[0].url
    await _blocks_scenario(url, url, shared_sqlite.api, uid)


async def test_blocks_across_processes(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    await _blocks_scenario(cluster.servers[0].url, cluster.servers[1].url, cluster.apis[0], uid)


async def _direct_scenario(url_a: str, url_b: str, api: Api, uid: Any) -> None:
    """A block between a creator and a patron stops their direct conversation both ways (sockets
    that joined it before, sockets that join after, HTTP, opening it), whoever blocks whom."""
    cre, pat = uid("cre"), uid("pat")
    tokens = {u: api.user(u) for u in (cre, pat)}
    api.membership(cre, pat, 500)
    direct = api.direct(tokens[pat], cre)
    c, p = await Client(url_a, tokens[cre]).connect(), await Client(url_b, tokens[pat]).connect()
    try:
        for s in (c, p):
            ok(await s.call("join", {"conversation_id": direct}))
        ok(await send(p, direct, "hi"))
        ok(await send(c, direct, "hello"))
        for blocker, other in ((p, cre), (c, pat)):  # the patron blocks the creator, then the other way
            ok(await blocker.call("block_user", {"user_id": other, "on": True}))
            await blocker.wait_for("user_blocked", lambda e, other=other: e == {"user_id": other, "blocked": True})
            for s in (c, p):
                assert err(await send(s, direct, "refused")) == "forbidden"  # the joined sockets
                ack = ok(await s.call("join", {"conversation_id": direct}))  # still readable
                assert ack["conversation"]["id"] == direct
                refused = await send(s, direct, "refused")  # after a new join
                assert err(refused) == "forbidden" and "block" in refused["error"]["message"]
            for token, to in ((tokens[pat], cre), (tokens[cre], pat)):
                r = api.client(token, "POST", f"/conversations/{direct}/messages",
                               {"body": "http", "client_msg_id": secrets.token_hex(8)})
                assert r.status_code == 403, r.text
                assert api.client(token, "POST", "/conversations/direct", {"user_id": to}).status_code == 403
            ok(await blocker.call("block_user", {"user_id": other, "on": False}))
            await blocker.wait_for("user_blocked", lambda e, other=other: e == {"user_id": other, "blocked": False})
            for s in (c, p):
                ok(await send(s, direct, "talking again"))
        assert api.direct(tokens[pat], cre) == direct
    finally:
        for s in (c, p):
            await s.close()


async def test_direct_messages_forbidden_both_ways_in_one_process(shared_sqlite: Any, uid: Any) -> None:
    url = shared_sqlite.servers[0].url
    await _direct_scenario(url, url, shared_sqlite.api, uid)


async def test_direct_messages_forbidden_both_ways_across_processes(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    await _direct_scenario(cluster.servers[0].url, cluster.servers[1].url, cluster.apis[0], uid)


async def _blocks_while_away_scenario(url_a: str, url_b: str, api: Api, uid: Any) -> None:
    """A process keeps a user's blocks after their last socket there left (chat/memberblocks.py
    IDLE_USERS): a block, then an unblock, made on `url_a` while the user has no socket on
    `url_b` holds for their next socket there."""
    cre, me, troll = uid("cre"), uid("me"), uid("troll")
    tokens = {u: api.user(u) for u in (cre, me, troll)}
    for u in (me, troll):
        api.membership(cre, u, 500)
    room = api.room(cre, "Lounge", 0)
    c, t = await Client(url_a, tokens[cre]).connect(), await Client(url_a, tokens[troll]).connect()
    try:
        for s in (c, t):
            ok(await s.call("join", {"conversation_id": room}))
        for on in (True, False):
            away = await Client(url_b, tokens[me]).connect()
            ok(await away.call("join", {"conversation_id": room}))  # url_b reads (or knows) the blocks
            await away.close()
            await c.wait_for("presence", lambda e: e["user_id"] == me and not e["online"])  # url_b let go of it
            c.events["presence"].clear()
            a = await Client(url_a, tokens[me]).connect()
            ok(await a.call("block_user", {"user_id": troll, "on": on}))
            await a.close()
            back = await Client(url_b, tokens[me]).connect()
            try:
                ok(await back.call("join", {"conversation_id": room}))
                msg = ok(await send(t, room, f"blocked={on}"))["message"]
                got = await back.wait_for("message", lambda m, msg=msg: m["id"] == msg["id"])
                if on:
                    placeholder_of(got, msg)
                else:
                    assert got["body"] == "blocked=False" and "hidden" not in got
            finally:
                await back.close()
            await c.wait_for("presence", lambda e: e["user_id"] == me and not e["online"])
            c.events["presence"].clear()
    finally:
        for s in (c, t):
            await s.close()


async def test_blocks_made_while_away_in_one_process(shared_sqlite: Any, uid: Any) -> None:
    url = shared_sqlite.servers[0].url
    await _blocks_while_away_scenario(url, url, shared_sqlite.api, uid)


async def test_blocks_made_while_away_across_processes(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    await _blocks_while_away_scenario(cluster.servers[0].url, cluster.servers[1].url, cluster.apis[0], uid)


async def _first_join_scenario(url_a: str, url_b: str, api: Api, uid: Any) -> None:
    """Blocks stored before the blocker's first join on `url_b` (made by a socket on `url_a` that
    never joined anything): that first join reads them with its access view (storage.join_views)
    and honours them in its page and in live delivery."""
    cre, me, troll = uid("cre"), uid("me"), uid("troll")
    tokens = {u: api.user(u) for u in (cre, me, troll)}
    for u in (me, troll):
        api.membership(cre, u, 500)
    room = api.room(cre, "Lounge", 0)
    t = await Client(url_b, tokens[troll]).connect()
    try:
        ok(await t.call("join", {"conversation_id": room}))
        before = ok(await send(t, room, "before the first join"))["message"]
        blocker = await Client(url_a, tokens[me]).connect()
        ok(await blocker.call("block_user", {"user_id": troll, "on": True}))
        await blocker.close()
        a = await Client(url_b, tokens[me]).connect()
        try:
            page = ok(await a.call("join", {"conversation_id": room}))["messages"]
            assert [m["id"] for m in page] == [before["id"]]
            placeholder_of(page[0], before)
            live = ok(await send(t, room, "after the first join"))["message"]
            placeholder_of(await a.wait_for("message", lambda m: m["id"] == live["id"]), live)
        finally:
            await a.close()
    finally:
        await t.close()


async def test_blocks_stored_before_the_first_join_in_one_process(shared_sqlite: Any, uid: Any) -> None:
    url = shared_sqlite.servers[0].url
    await _first_join_scenario(url, url, shared_sqlite.api, uid)


async def test_blocks_stored_before_the_first_join_across_processes(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    await _first_join_scenario(cluster.servers[0].url, cluster.servers[1].url, cluster.apis[0], uid)
