"""Reactions (docs/api.md "Reactions"): `react` is idempotent per (user, message, emoji), limited,
validated and membership-checked; messages carry `reactions: [{emoji, count, me}]` per reader
in join, history (socket and HTTP) and the conversation list; `reaction` events reach the
members on every process, coalesced per message with the final counts last; counts stay
exact under 200 concurrent reactors on two processes. SQLite and MariaDB + Redis, on the
shared servers."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Any

import emoji as emoji_data
import pytest
import sqlalchemy as sa

from tests.support import Api, Client, barrier, err, make_token, ok, sync_engine

THUMBS, HEART, HEART_BARE, FIRE = "👍", "❤️", "❤", ":fire:"
# Single-code-point, fully-qualified emoji: enough distinct ones for the limits.
MANY = sorted(e for e, d in emoji_data.EMOJI_DATA.items() if len(e) == 1 and d["status"] == 2)[:30]




async def react(c: Client, mid: str, emoji: Any, on: Any = True, timeout: float = 10, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = await c.call("react", {"message_id": mid, "emoji": emoji, "on": on, **extra},
                                          timeout=timeout)
    return result


def summary(message: dict[str, Any]) -> list[tuple[str, int, bool]]:
    return [(r["emoji"], r["count"], r["me"]) for r in message["reactions"]]


def setup_room(api: Api, uid: Any, *patrons: str, post_policy: str = "everyone") -> tuple[str, dict[str, str], str]:
    """A room of a new creator with active patrons; returns (creator id, tokens by user id, room id)."""
    cre = uid("cre")
    tokens = {cre: api.user(cre)}
    for p in patrons:
        tokens[uid(p)] = api.user(uid(p))
        api.membership(cre, uid(p), 500)
    return cre, tokens, api.room(cre, "Reacts", 0, post_policy)


def add_memberships(database_url: str, creator_id: str, patron_ids: list[str]) -> None:
    """Patrons and their active memberships straight into the database (400 server API calls
    would take seconds; the access check reads the table on every react)."""
    engine = sync_engine(database_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO users (id, name, created_at, updated_at) VALUES (:p, :name, :now, :now)"),
                         [{"p": p, "name": p.title(), "now": now} for p in patron_ids])
            conn.execute(sa.text("INSERT INTO memberships (creator_id, patron_id, tier_cents, status, updated_at) "
                                 "VALUES (:c, :p, 500, 'active', :now)"),
                         [{"c": creator_id, "p": p, "now": now} for p in patron_ids])
    finally:
        engine.dispose()


async def connect(url: str, token: str) -> Client:
    return await Client(url, token).connect()


async def test_toggle_is_idempotent_and_reads_show_me(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, tokens, room = setup_room(api, uid, "pat")
    pat = uid("pat")
    a, b = await connect(url, tokens[cre]), await connect(url, tokens[pat])
    try:
        ok(await a.call("join", {"conversation_id": room}))
        sent = ok(await a.call("send", {"conversation_id": room, "body": "react to me", "client_msg_id": "r1"}))
        mid = sent["message"]["id"]
        assert sent["message"]["reactions"] == []  # a new message, in the ack and the event
        assert (await a.wait_for("message", lambda m: m["id"] == mid))["reactions"] == []

        first = ok(await react(b, mid, THUMBS))
        assert first["count"] == 1 and first["reactions"] == [{"emoji": THUMBS, "count": 1, "me": True}]
        assert ok(await react(b, mid, THUMBS))["count"] == 1  # on again: nothing changes
        assert ok(await react(a, mid, THUMBS, conversation_id=room))["count"] == 2
        assert ok(await react(b, mid, HEART_BARE))["reactions"][-1] == {"emoji": HEART, "count": 1, "me": True}
        assert ok(await react(b, mid, HEART))["count"] == 1  # "❤" and "❤️" are one reaction
        assert ok(await react(a, mid, FIRE))["count"] == 1
        assert ok(await react(a, mid, FIRE, on=False))["count"] == 0
        assert ok(await react(a, mid, FIRE, on=False))["count"] == 0  # off again: nothing changes

        expected_pat = [(THUMBS, 2, True), (HEART, 1, True)]
        expected_cre = [(THUMBS, 2, True), (HEART, 1, False)]
        # join (fresh and with since_seq), socket history, HTTP history and the conversation list
        ok(await b.call("join", {"conversation_id": room}))
        for c, expected, token in ((b, expected_pat, tokens[pat]), (a, expected_cre, tokens[cre])):
            joined = ok(await c.call("join", {"conversation_id": room}))
            assert summary(joined["messages"][-1]) == expected
            assert summary(ok(await c.call("join", {"conversation_id": room, "since_seq": 0}))["messages"][0]) == expected
            assert summary(ok(await c.call("history", {"conversation_id": room}))["messages"][-1]) == expected
            page = api.client(token, "GET", f"/conversations/{room}/messages").json()
            assert summary(page["messages"][-1]) == expected
            listing = api.client(token, "GET", "/conversations").json()["conversations"]
            assert summary(next(i for i in listing if i["conversation"]["id"] == room)["last_message"]) == expected

        # who reacted, over HTTP
        r = api.client(tokens[pat], "GET", f"/conversations/{room}/messages/{mid}/reactions")
        assert r.status_code == 200, r.text
        assert r.json() == {"reactions": [
            {"emoji": THUMBS, "count": 2, "me": True, "users": [{"id": pat, "name": pat.title()},
                                                                {"id": cre, "name": cre.title()}]},
            {"emoji": HEART, "count": 1, "me": True, "users": [{"id": pat, "name": pat.title()}]}]}
        r = api.client(tokens[cre], "GET", f"/conversations/{room}/messages/{mid}/reactions",
                       params={"emoji": HEART_BARE, "limit": 1})
        assert r.json() == {"reactions": [{"emoji": HEART, "count": 1, "me": False,
                                           "users": [{"id": pat, "name": pat.title()}]}]}
        r = api.client(tokens[cre], "GET", f"/conversations/{room}/messages/{mid}/reactions", params={"limit": 1})
        assert [len(x["users"]) for x in r.json()["reactions"]] == [1, 1]

        # the live events: one per change (these were spaced by acks, but coalescing may merge
        # some); the last one carries the final counts (a trailing event may leave the coalescer
        # after the barrier: wait for the final counts, then let anything later arrive)
        final = [{"emoji": THUMBS, "count": 2}, {"emoji": HEART, "count": 1}]
        await a.wait_for("reaction", lambda e: e["message_id"] == mid and e["reactions"] == final)
        await barrier([api], [(cre, a)], f"toggle-{mid}")
        events = a.events["reaction"]
        assert events and all(e["message_id"] == mid and e["conversation_id"] == room for e in events)
        assert events[-1]["reactions"] == final
        assert len(events) <= 5  # five calls changed something; the idempotent repeats add none

        # a deleted message shows no reactions and takes none
        ok(await a.call("delete", {"message_id": mid}))
        assert ok(await b.call("history", {"conversation_id": room}))["messages"][-1]["reactions"] == []
        assert err(await react(b, mid, THUMBS)) == "invalid"
    finally:
        await a.close()
        await b.close()


async def test_bad_input_is_invalid_or_not_found(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, tokens, room = setup_room(api, uid, "pat")
    other_room = api.room(cre, "Other", 0)
    b = await connect(url, tokens[uid("pat")])
    try:
        mid = ok(await b.call("send", {"conversation_id": room, "body": "x", "client_msg_id": "b1"}))["message"]["id"]
        for bad in ["a", "👍👍", "🏻", "🇺", ":nope:", "::", "", " ", "👍 ", "1", "#", "😀\u0301", "x" * 40,
                    "\u200d", 5, None, ["👍"], {"e": "👍"}]:
            assert err(await react(b, mid, bad)) == "invalid", bad
        for bad_on in [None, "yes", 1, 0]:
            assert err(await react(b, mid, THUMBS, bad_on)) == "invalid", bad_on
        assert err(await b.call("react", {"emoji": THUMBS, "on": True})) == "invalid"
        assert err(await b.call("react", [mid, THUMBS])) == "invalid"
        assert err(await react(b, "999999999", THUMBS)) == "not_found"
        assert err(await react(b, "01", THUMBS)) == "not_found"
        assert err(await react(b, mid, THUMBS, conversation_id=other_room)) == "not_found"
        assert err(await react(b, mid, THUMBS, conversation_id="999999999")) == "not_found"
        # every kind of emoji the docs promise (skin tones apart: compared byte for byte on MariaDB)
        for good in ["👍🏽", "👍🏻", "🇺🇸", "👩🏻‍❤️‍💋‍👨🏼", "🏴󠁧󠁢󠁥󠁮󠁧󠁿", "#️⃣", ":plus1:", ":100:"]:
            assert ok(await react(b, mid, good))["count"] == 1, good
        base = f"/conversations/{room}/messages"
        token = tokens[uid("pat")]
        assert api.client(token, "GET", f"{base}/{mid}/reactions", params={"emoji": "nope"}).status_code == 400
        assert api.client(token, "GET", f"{base}/{mid}/reactions", params={"limit": 0}).status_code == 400
        assert api.client(token, "GET", f"{base}/{mid}/reactions", params={"limit": "x"}).status_code == 400
        assert api.client(token, "GET", f"{base}/999999999/reactions").status_code == 404
        assert api.client(token, "GET", f"/conversations/{other_room}/messages/{mid}/reactions").status_code == 404
    finally:
        await b.close()


async def test_limits_per_user_and_per_message(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, tokens, room = setup_room(api, uid, "pat", "pat2")
    # two sockets of one user: the limit is the user's, not the socket's (and each socket's rate
    # limit of 20 in a burst stays out of the way)
    b1, b2 = await connect(url, tokens[uid("pat")]), await connect(url, tokens[uid("pat")])
    c = await connect(url, tokens[uid("pat2")])
    try:
        mid = ok(await c.call("send", {"conversation_id": room, "body": "x", "client_msg_id": "l1"}))["message"]["id"]
        for i, e in enumerate(MANY[:20]):
            assert ok(await react(b1 if i < 10 else b2, mid, e))["count"] == 1
        assert err(await react(b2, mid, MANY[20])) == "conflict"  # the user's 21st
        assert ok(await react(b2, mid, MANY[0]))["count"] == 1  # one already there: fine, idempotent
        assert err(await react(c, mid, MANY[20])) == "conflict"  # the message's 21st distinct emoji
        assert ok(await react(c, mid, MANY[5]))["count"] == 2  # an emoji already on the message
        ok(await react(b2, mid, MANY[19], on=False))
        assert ok(await react(c, mid, MANY[20]))["count"] == 1  # room for one more distinct emoji
        assert err(await react(b1, mid, MANY[21])) == "conflict"  # the message is full again
        r = api.client(tokens[cre], "GET", f"/conversations/{room}/messages/{mid}/reactions").json()
        assert len(r["reactions"]) == 20 and sum(x["count"] for x in r["reactions"]) == 21
    finally:
        for s in (b1, b2, c):
            await s.close()


async def test_members_only_and_revocation_stops_reacting(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, tokens, room = setup_room(api, uid, "pat", post_policy="creator")
    pat, stranger = uid("pat"), uid("stranger")
    tokens[stranger] = api.user(stranger)
    a, b, s = (await connect(url, tokens[cre]), await connect(url, tokens[pat]), await connect(url, tokens[stranger]))
    try:
        mid = ok(await a.call("send", {"conversation_id": room, "body": "news", "client_msg_id": "m1"}))["message"]["id"]
        # a creator-only room: patrons do not post, but they react
        assert ok(await react(b, mid, THUMBS))["count"] == 1
        assert err(await react(s, mid, THUMBS)) == "forbidden"
        assert err(await react(s, mid, THUMBS, conversation_id=room)) == "forbidden"
        r = api.client(tokens[stranger], "GET", f"/conversations/{room}/messages/{mid}/reactions")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")

        api.membership(cre, pat, 500, status="former")
        assert err(await react(b, mid, HEART)) == "forbidden"
        assert err(await react(b, mid, THUMBS, on=False)) == "forbidden"
        assert api.client(tokens[pat], "GET", f"/conversations/{room}/messages/{mid}/reactions").status_code == 403

        # a direct conversation: readable after the membership ends, but nobody reacts in it
        api.membership(cre, pat, 500)
        direct = api.direct(tokens[pat], cre)
        dm = ok(await b.call("send", {"conversation_id": direct, "body": "hi", "client_msg_id": "d1"}))["message"]["id"]
        assert ok(await react(a, dm, HEART))["count"] == 1
        assert err(await react(s, dm, HEART)) == "forbidden"
        api.membership(cre, pat, 500, status="former")
        assert err(await react(a, dm, THUMBS)) == "forbidden"
        assert err(await react(b, dm, THUMBS)) == "forbidden"
        page = api.client(tokens[pat], "GET", f"/conversations/{direct}/messages").json()
        assert summary(page["messages"][0]) == [(HEART, 1, False)]  # still readable
    finally:
        for c in (a, b, s):
            await c.close()


async def test_events_cross_processes_and_bursts_are_coalesced(shared_mysql_cluster: Any, uid: Any) -> None:
    (s0, s1), api = shared_mysql_cluster.servers, shared_mysql_cluster.api
    cre, tokens, room = setup_room(api, uid, "p1", "p2", "p3", "p4")
    outsider = uid("out")
    tokens[outsider] = api.user(outsider)
    watch0, watch1 = await connect(s0.url, tokens[cre]), await connect(s1.url, tokens[cre])
    # reactors on both processes
    reactors = [await connect(url, tokens[uid(p)]) for url, p in ((s1.url, "p1"), (s1.url, "p2"), (s0.url, "p3"),
                                                                  (s0.url, "p4"))]
    out = await connect(s0.url, tokens[outsider])
    try:
        for w in (watch0, watch1):
            ok(await w.call("join", {"conversation_id": room}))
        mid = ok(await watch0.call("send", {"conversation_id": room, "body": "burst", "client_msg_id": "e1"}))["message"]["id"]

        # one reaction on process 1 reaches the member on process 0
        ok(await react(reactors[0], mid, THUMBS))
        first = await watch0.wait_for("reaction", lambda e: e["message_id"] == mid)
        assert first == {"message_id": mid, "conversation_id": room, "emoji": THUMBS, "user_id": uid("p1"),
                         "on": True, "count": 1, "reactions": [{"emoji": THUMBS, "count": 1}]}
        await barrier(shared_mysql_cluster.apis, [(cre, watch0), (cre, watch1)], f"first-{mid}")
        before = {w: len(w.events["reaction"]) for w in (watch0, watch1)}

        # a burst of changes on one message from both processes for ~1.5 s: each reactor adds
        # emoji after emoji (the total only grows: no state of the burst is its final one)
        started = time.monotonic()

        async def burst(c: Client) -> int:
            n = 0
            while n < 15 and time.monotonic() - started < 1.5:
                ok(await react(c, mid, MANY[n]))
                n += 1
                await asyncio.sleep(0.1)  # paces the load under the rate limit (nothing waits on it)
            return n

        done = await asyncio.gather(*[burst(c) for c in reactors])
        final = sorted([(THUMBS, 1)] + [(e, sum(1 for n in done if n > k)) for k, e in enumerate(MANY[:max(done)])])
        page = api.client(tokens[cre], "GET", f"/conversations/{room}/messages").json()["messages"]
        assert sorted((r["emoji"], r["count"]) for r in page[0]["reactions"]) == final

        def is_final(e: dict[str, Any]) -> bool:
            return sorted((r["emoji"], r["count"]) for r in e["reactions"]) == final

        for w in (watch0, watch1):
            await w.wait_for("reaction", is_final)
            elapsed = time.monotonic() - started
            events = w.events["reaction"][before[w]:]
            upto = next(i for i, e in enumerate(events) if is_final(e)) + 1
            # at most one event per 0.2 s per message, cluster-wide: every event up to the final
            # one went out within `elapsed` (per process, each process would send its own)
            assert 2 <= upto <= math.ceil(elapsed / 0.2) + 1, (upto, elapsed)
        await barrier(shared_mysql_cluster.apis, [(cre, watch0), (cre, watch1)], f"burst-{mid}")
        for w in (watch0, watch1):
            last = w.events["reaction"][-1]
            assert is_final(last), last  # the final counts, last
            assert last["count"] == dict(final)[last["emoji"]]
        assert "reaction" not in out.events  # not a member: nothing
    finally:
        for c in (watch0, watch1, out, *reactors):
            await c.close()


@pytest.mark.parametrize("where", ["sqlite", "mysql"])
async def test_200_concurrent_reactors_end_with_the_exact_count(where: str, request: Any, uid: Any) -> None:
    cluster = request.getfixturevalue("shared_sqlite" if where == "sqlite" else "shared_mysql_cluster")
    api, n = cluster.api, 200
    cre, tokens, room = setup_room(api, uid)
    users = [uid(f"r{i}") for i in range(n)]
    tokens.update({u: make_token(u, u.title()) for u in users})  # connecting creates the user
    add_memberships(cluster.database_url, cre, users)
    mid = api.client(tokens[cre], "POST", f"/conversations/{room}/messages",
                     json={"body": "count me", "client_msg_id": "c1"}).json()["message"]["id"]
    urls = [s.url for s in cluster.servers]  # two processes on MariaDB, one on SQLite
    gate = asyncio.Semaphore(20)  # connecting 200 at once overruns the connect timeout on a busy host
    clients: list[Client] = []

    async def connect_one(i: int, user: str) -> None:
        async with gate:
            clients.append(await connect(urls[i % len(urls)], tokens[user]))

    try:
        await asyncio.gather(*[connect_one(i, u) for i, u in enumerate(users)])
        # (a generous bound for a busy 2-core host: the changes of one message run one at a time)
        acks = await asyncio.gather(*[react(c, mid, FIRE, timeout=90) for c in clients])
        assert all(a["ok"] for a in acks), [a for a in acks if not a["ok"]][:3]
        # each change ran alone on the message: every count from 1 to 200 was answered once
        assert sorted(a["count"] for a in acks) == list(range(1, n + 1))

        # half of them take theirs back, all at once
        acks = await asyncio.gather(*[react(c, mid, FIRE, on=False, timeout=90) for c in clients[::2]])
        assert sorted(a["count"] for a in acks) == list(range(n // 2, n)), acks[:3]

        for c, me in ((clients[1], True), (clients[0], False)):
            page = api.client(str(c.token), "GET", f"/conversations/{room}/messages").json()
            assert summary(page["messages"][0]) == [(FIRE, n // 2, me)]
        engine = sync_engine(cluster.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT COUNT(*) FROM reactions WHERE message_id = :m"), {"m": int(mid)})
                assert rows.scalar() == n // 2
        finally:
            engine.dispose()
    finally:
        await asyncio.gather(*[c.close() for c in clients])
