"""@mentions (issue 13.3, docs/api.md "Mentions"): resolved on send against the conversation's
members (by id, by display name, or an explicit `mentions` list), stored with the message in the
writer's batch, shown on every read path, counted as `mention_count` (conversation list, `/me`)
until read, and pushed to the mentioned members even where a patron's post pushes
nobody (mute wins). SQLite and MariaDB + Redis (two processes), the real firebase-admin SDK against
the fake FCM server."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import sqlalchemy as sa

from chat.mentions import MAX_MENTIONS, candidates, pick
from tests.conftest import Cluster
from tests.support import Api, Client, err, make_token, ok, send
from tests.test_push_rules import PushCluster, push_cluster, sqlite_push_cluster  # noqa: F401 (the fixtures)


def listed(api: Api, token: str, conversation_id: str) -> dict[str, Any]:
    r = api.client(token, "GET", "/conversations")
    assert r.status_code == 200, r.text
    item: dict[str, Any] = next(c for c in r.json()["conversations"] if c["conversation"]["id"] == conversation_id)
    return item


def me_mentions(api: Api, token: str) -> int:
    r = api.client(token, "GET", "/me")
    assert r.status_code == 200, r.text
    return int(r.json()["mention_count"])


def community(api: Api, uid: Any) -> tuple[dict[str, str], dict[str, str], str]:
    """A creator ("Cre Ator") with a room for 500+ patrons: ann ("Ann Lee"), bob ("Bob"),
    émile ("Émile Zola"); low (below the tier), gone (a former patron), zed (no membership).
    Returns (ids by role, tokens by role, room id)."""
    names = {"cre": "Cre Ator", "ann": "Ann Lee", "bob": "Bob", "emile": "Émile Zola", "low": "Low",
             "gone": "Gone", "zed": "Zed"}
    ids = {role: uid(role) for role in names}
    tokens = {role: api.user(ids[role], name) for role, name in names.items()}
    for role in ("ann", "bob", "emile", "gone"):
        api.membership(ids["cre"], ids[role], 500)
    api.membership(ids["cre"], ids["low"], 100)
    api.membership(ids["cre"], ids["gone"], 500, "former")
    return ids, tokens, api.room(ids["cre"], "Lounge", 500)


# ---------------------------------------------------------------- parsing (no server)


def test_candidates_end_at_word_boundaries_longest_first() -> None:
    assert candidates("hi @Ann Lee, you") == [["Ann Lee, you", "Ann Lee,", "Ann Lee", "Ann"]]
    assert candidates("@Annie") == [["Annie"]]  # never "Ann": not at a word boundary
    assert candidates("mail ann@example.com or @ nobody") == []  # inside a word, or a lone "@"
    assert candidates("@bob\n@ann") == [["bob"], ["ann"]]  # a name does not cross a line


def test_pick_prefers_the_longest_match_then_an_id_and_keeps_members_only() -> None:
    members = {"ann": "Ann B", "u2": "Ann Lee", "u3": "Bob", "u4": "bob", "me": "Me"}
    tokens = candidates("@ann lee! @ann @Bob @nobody @me")
    # "ann lee" (a name) is longer than "ann" (an id); "@ann" alone is the id; a name two members
    # share mentions both; non-members and the sender are left out
    assert pick(tokens, ["u3", "stranger"], members, "me") == ("u2", "ann", "u3", "u4")
    many = {f"u{i}": f"User {i}" for i in range(40)}
    assert len(pick([], list(many), many, "x")) == MAX_MENTIONS


# ---------------------------------------------------------------- through the server


async def test_mentions_by_id_name_and_list_are_stored_shown_and_counted(shared_any_server: Cluster, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    ids, tokens, room = community(api, uid)
    bob, ann, cre = [await Client(url, tokens[r]).connect() for r in ("bob", "ann", "cre")]
    try:
        for c in (bob, ann):
            ok(await c.call("join", {"conversation_id": room}))
        # by name (any case, longest match), by id, an explicit list; non-members (below the tier,
        # former, none at all) and the sender are ignored, not an error
        body = (f"@ann lee look! cc @{ids['cre']}, @émile ZOLA and @{ids['low']} @{ids['gone']} @{ids['zed']} "
                "@Bob and @Nobody")
        sent = ok(await send(bob, room, body, "m1", mentions=[ids["zed"], ids["gone"]]))["message"]
        assert sent["mentions"] == [ids["ann"], ids["cre"], ids["emile"]]
        live = await ann.wait_for("message", lambda m: m["id"] == sent["id"])
        assert live["mentions"] == sent["mentions"]
        # on every read path: history, HTTP, join (recent cache and database), the list's last_message
        hist = ok(await ann.call("history", {"conversation_id": room}))["messages"]
        assert hist[-1]["mentions"] == sent["mentions"]
        r = api.client(tokens["ann"], "GET", f"/conversations/{room}/messages")
        assert r.json()["messages"][-1]["mentions"] == sent["mentions"]
        joined = ok(await cre.call("join", {"conversation_id": room}))
        assert joined["messages"][-1]["mentions"] == sent["mentions"]
        assert listed(api, tokens["ann"], room)["last_message"]["mentions"] == sent["mentions"]

        # a message without "@" mentions nobody: []
        plain = ok(await send(bob, room, "no mention here"))["message"]
        assert plain["mentions"] == []
        # the list alone (what the page's completion sends)
        listed_only = ok(await send(bob, room, "see this", mentions=[ids["ann"]]))["message"]
        assert listed_only["mentions"] == [ids["ann"]]

        # mention_count: per conversation in the list, in total in /me
        assert listed(api, tokens["ann"], room)["mention_count"] == 2
        assert listed(api, tokens["ann"], room)["unread_count"] == 3
        assert me_mentions(api, tokens["ann"]) == 2
        assert listed(api, tokens["cre"], room)["mention_count"] == 1
        assert listed(api, tokens["bob"], room)["mention_count"] == 0  # the sender's own mentions
        # a retry of m1 answers the original and counts nothing twice
        again = ok(await send(bob, room, body, "m1"))["message"]
        assert again["id"] == sent["id"] and again["mentions"] == sent["mentions"]
        assert me_mentions(api, tokens["ann"]) == 2

        # reading resets it as far as read (the read ack is unchanged)
        assert ok(await ann.call("read", {"conversation_id": room, "seq": sent["seq"]})) == {
            "ok": True, "unread_count": 2}
        assert listed(api, tokens["ann"], room)["mention_count"] == 1
        assert me_mentions(api, tokens["ann"]) == 1
        ok(await ann.call("read", {"conversation_id": room, "seq": listed_only["seq"]}))
        assert me_mentions(api, tokens["ann"]) == 0
        assert listed(api, tokens["ann"], room)["mention_count"] == 0

        # a deleted message mentions nobody any more
        gone = ok(await send(bob, room, f"@{ids['cre']} oops"))["message"]
        assert listed(api, tokens["cre"], room)["mention_count"] == 2
        assert ok(await bob.call("delete", {"message_id": gone["id"]}))["message"]["mentions"] == []
        assert listed(api, tokens["cre"], room)["mention_count"] == 1

        # HTTP sends take the same list
        r = api.client(tokens["ann"], "POST", f"/conversations/{room}/messages",
                       {"body": "hi @bob", "client_msg_id": secrets.token_hex(8), "mentions": [ids["emile"]]})
        assert r.status_code == 201, r.text
        assert r.json()["message"]["mentions"] == [ids["bob"], ids["emile"]]

        # bad lists are invalid, and store nothing
        for bad in ("ann", [1], ["bad id"], [ids["ann"]] * 0 + [f"u{i}" for i in range(MAX_MENTIONS + 1)]):
            assert err(await send(bob, room, "x", mentions=bad)) == "invalid"
    finally:
        for c in (bob, ann, cre):
            await c.close()


async def test_revoked_and_blocked_members_are_not_mentioned(shared_any_server: Cluster, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    ids, tokens, room = community(api, uid)
    bob = await Client(url, tokens["bob"]).connect()
    try:
        assert ok(await send(bob, room, "@Ann Lee hi"))["message"]["mentions"] == [ids["ann"]]
        assert me_mentions(api, tokens["ann"]) == 1
        api.membership(ids["cre"], ids["ann"], 500, "former")
        assert ok(await send(bob, room, "@Ann Lee again"))["message"]["mentions"] == []
        # a room ann can no longer read counts for nothing in /me
        assert me_mentions(api, tokens["ann"]) == 0
        r = api.server("PUT", f"/creators/{ids['cre']}/blocks/{ids['emile']}", {})
        assert r.status_code == 200, r.text
        assert ok(await send(bob, room, f"@{ids['emile']}"))["message"]["mentions"] == []
        # a member who blocks the sender: still in `mentions` (others see it), but not counted for them
        ok(await bob.call("block_user", {"user_id": ids["cre"], "on": True}))
        cre = await Client(url, tokens["cre"]).connect()
        try:
            assert ok(await send(cre, room, "@Bob hello"))["message"]["mentions"] == [ids["bob"]]
            assert me_mentions(api, tokens["bob"]) == 0 and listed(api, tokens["bob"], room)["mention_count"] == 0
            ok(await bob.call("block_user", {"user_id": ids["cre"], "on": False}))
            assert me_mentions(api, tokens["bob"]) == 1 and listed(api, tokens["bob"], room)["mention_count"] == 1
        finally:
            await cre.close()
    finally:
        await bob.close()


async def test_direct_conversation_mentions(shared_any_server: Cluster, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    ids, tokens, _ = community(api, uid)
    conv = api.direct(tokens["cre"], ids["ann"])
    cre = await Client(url, tokens["cre"]).connect()
    try:
        sent = ok(await send(cre, conv, f"@ann lee and @{ids['bob']}", mentions=[ids["bob"]]))["message"]
        assert sent["mentions"] == [ids["ann"]]  # bob is not in this conversation
        assert listed(api, tokens["ann"], conv)["mention_count"] == 1
    finally:
        await cre.close()


async def test_mentions_across_processes_and_concurrent_batches(shared_mysql_cluster: Cluster, uid: Any) -> None:
    """Sent on one process, seen and counted on the other; many mentioning sends at once (the
    writer's multi-statement batches) count exactly."""
    api0, api1 = shared_mysql_cluster.apis
    url0, url1 = (s.url for s in shared_mysql_cluster.servers)
    ids, tokens, room = community(api0, uid)
    ann = await Client(url1, tokens["ann"]).connect()
    senders = [await Client(url0, tokens[r]).connect() for r in ("bob", "emile", "cre")]
    try:
        ok(await ann.call("join", {"conversation_id": room}))  # process 1 keeps the room's recent messages
        for c in senders:
            ok(await c.call("join", {"conversation_id": room}))
        # 20 per socket: the send burst (SEND_BURST), so no send meets the per-socket rate limit
        acks = await asyncio.gather(*(send(c, room, f"{n} @Ann Lee" if n % 2 else f"{n} plain")
                                      for n in range(20) for c in senders))
        mentioning = [a["message"] for a in acks if ok(a)["message"]["mentions"]]
        assert len(mentioning) == 30 and all(m["mentions"] == [ids["ann"]] for m in mentioning)
        last = max(a["message"]["seq"] for a in acks)
        await ann.wait_for("message", lambda m: m["seq"] == last)
        got = [m for m in ann.events["message"] if m["mentions"]]
        assert len(got) == 30
        # a second join on process 1 answers from memory, mentions included
        again = ok(await ann.call("join", {"conversation_id": room, "since_seq": last - 10}))
        assert [m["mentions"] for m in again["messages"]] == [
            [ids["ann"]] if "@" in m["body"] else [] for m in again["messages"]]
        assert listed(api1, tokens["ann"], room)["mention_count"] == 30
        assert me_mentions(api0, tokens["ann"]) == 30
        middle = sorted(m["seq"] for m in mentioning)[19]
        ok(await ann.call("read", {"conversation_id": room, "seq": middle}))
        assert listed(api1, tokens["ann"], room)["mention_count"] == 10
        assert me_mentions(api0, tokens["ann"]) == 10
        assert listed(api0, tokens["ann"], room)["mention_count"] == 10
    finally:
        for c in (ann, *senders):
            await c.close()


# ---------------------------------------------------------------- push


async def _mention_push_scenario(pc: PushCluster) -> None:
    """`online` and the creator's socket are on the last process (the other one on MariaDB)."""
    api = pc.cluster.api
    names = {"cre": "Cre", "gold": "Gold", "gold2": "Gold Two", "muted": "Muted Member", "online": "Online",
             "former": "Former", "silver": "Silver"}
    tokens = {u: api.user(u, n) for u, n in names.items()}
    for u in ("gold", "gold2", "muted", "online", "former", "silver"):
        api.membership("cre", u, 2000)
    room = api.room("cre", "Gold room", min_tier_cents=1000)
    for u, token in tokens.items():
        pc.device(token, f"{u}-phone")
    r = api.client(tokens["muted"], "PUT", f"/conversations/{room}/settings", {"muted": True})
    assert r.status_code == 200, r.text
    api.membership("cre", "former", 2000, "former")

    online = await Client(pc.cluster.servers[-1].url, tokens["online"]).connect()
    gold = await Client(pc.cluster.servers[0].url, tokens["gold"]).connect()
    try:
        ok(await online.call("join", {"conversation_id": room}))
        # a patron's plain post pushes nobody (no fan-out job at all)
        root = ok(await send(gold, room, "plain patron post"))["message"]
        with pc.db.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM push_jobs")).scalar() == 0
        # one that mentions: the mentioned offline members, the creator too; not the muted one,
        # not the one online on the other process, not the former patron, not the sender
        msg = ok(await send(gold, room, "@Gold Two @cre @Muted Member @Online @Gold look",
                            mentions=["former"]))["message"]
        assert msg["mentions"] == ["gold2", "cre", "muted", "online"]
        push = (await pc.pushes_to("gold2-phone"))[0]
        await pc.pushes_to("cre-phone")
        await pc.jobs_settled()
        assert push["notification"] == {"title": "Gold mentioned you in Gold room",
                                        "body": "@Gold Two @cre @Muted Member @Online @Gold look"}
        assert push["data"] == {"type": "message", "conversation_id": room, "message_id": msg["id"]}
        assert push["android"]["priority"] == "high"
        assert sorted(pc.outbox_users()) == ["cre", "gold2"]
        attempts = pc.fcm.fake.attempts
        assert {u: attempts[f"{u}-phone"] for u in names} == {
            "cre": 1, "gold": 0, "gold2": 1, "muted": 0, "online": 0, "former": 0, "silver": 0}

        # mute wins for the creator too: a muted creator mentioned by a patron gets nothing
        r = api.client(tokens["cre"], "PUT", f"/conversations/{room}/settings", {"muted": True})
        assert r.status_code == 200, r.text
        ok(await send(gold, room, "@cre again"))
        await pc.jobs_settled()
        assert sorted(pc.outbox_users()) == ["cre", "gold2"]

        # the creator's posts push every offline member once, mentioned or not (mute still wins; gold
        # and online are connected)
        creator = await Client(pc.cluster.servers[-1].url, tokens["cre"]).connect()
        try:
            ok(await send(creator, room, "@Gold Two news for all"))
        finally:
            await creator.close()
        await pc.pushes_to("silver-phone")
        await pc.jobs_settled()
        assert sorted(pc.outbox_users()) == ["cre", "gold2", "gold2", "silver"]
        assert (await pc.pushes_to("gold2-phone", 2))[1]["notification"]["title"] == "Cre in Gold room"

        # a thread reply pushes its thread's people (here: nobody but its sender) and the mentioned
        reply = ok(await send(gold, room, "@Silver see here", thread_id=root["id"]))["message"]
        assert reply["mentions"] == ["silver"] and reply["thread_id"] == root["id"]
        push = (await pc.pushes_to("silver-phone", 2))[1]
        await pc.jobs_settled()
        assert push["notification"]["title"] == "Gold replied in Gold room"
        assert sorted(pc.outbox_users()) == ["cre", "gold2", "gold2", "silver", "silver"]

        # a member who blocks the sender is not pushed for their mention, nor for the creator's posts
        silver = await Client(pc.cluster.servers[-1].url, tokens["silver"]).connect()
        try:
            ok(await silver.call("block_user", {"user_id": "gold", "on": True}))
            ok(await silver.call("block_user", {"user_id": "cre", "on": True}))
        finally:
            await silver.close()
        ok(await send(gold, room, "@Silver @Gold Two blocked"))
        await pc.pushes_to("gold2-phone", 3)
        creator = await Client(pc.cluster.servers[-1].url, tokens["cre"]).connect()
        try:
            ok(await send(creator, room, "more news"))
        finally:
            await creator.close()
        await pc.pushes_to("gold2-phone", 4)
        await pc.jobs_settled()
        assert sorted(pc.outbox_users()) == ["cre", "gold2", "gold2", "gold2", "gold2", "silver", "silver"]
    finally:
        await gold.close()
        await online.close()


async def test_mention_pushes_the_mentioned_member_where_patron_posts_push_nobody(
        push_cluster: PushCluster) -> None:  # noqa: F811 (the fixture)
    """MariaDB + Redis, two processes."""
    await _mention_push_scenario(push_cluster)


async def test_mention_pushes_in_one_process_on_sqlite(
        sqlite_push_cluster: PushCluster) -> None:  # noqa: F811 (the fixture)
    """The embedded default: SQLite, one process, its in-process push worker."""
    await _mention_push_scenario(sqlite_push_cluster)


async def test_a_token_name_does_not_matter_the_stored_name_does(shared_any_server: Cluster, uid: Any) -> None:
    """Names come from the users table (the backend's PUT /users), whatever a token says."""
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    ids, tokens, room = community(api, uid)
    r = api.server("PUT", f"/users/{ids['ann']}", {"name": "Annabel"})
    assert r.status_code == 200, r.text
    bob = await Client(url, make_token(ids["bob"], "Bob")).connect()
    try:
        assert ok(await send(bob, room, "@Ann Lee?"))["message"]["mentions"] == []
        assert ok(await send(bob, room, "@annabel!"))["message"]["mentions"] == [ids["ann"]]
    finally:
        await bob.close()


async def test_members_for_completion(shared_any_server: Cluster, uid: Any) -> None:
    """GET /conversations/{id}/members?q=: the current members matching what follows "@"."""
    api = shared_any_server.api
    ids, tokens, room = community(api, uid)

    def members(token: str, conversation_id: str, **params: Any) -> Any:
        r = api.client(token, "GET", f"/conversations/{conversation_id}/members", params=params)
        return r.json()["members"] if r.status_code == 200 else r.status_code

    assert members(tokens["bob"], room, q="an") == [{"id": ids["ann"], "name": "Ann Lee", "avatar_url": None}]
    assert [m["id"] for m in members(tokens["bob"], room, q="LEE")] == [ids["ann"]]  # a word of the name
    assert [m["id"] for m in members(tokens["bob"], room, q="émile z")] == [ids["emile"]]
    assert [m["id"] for m in members(tokens["bob"], room, q=ids["cre"][:5])] == [ids["cre"]]  # by id
    # everyone who reads the room, by name: not below the tier, not former, not outsiders
    assert [m["name"] for m in members(tokens["bob"], room)] == ["Ann Lee", "Bob", "Cre Ator", "Émile Zola"]
    assert [m["name"] for m in members(tokens["bob"], room, limit=2)] == ["Ann Lee", "Bob"]
    assert members(tokens["bob"], room, q="%") == []  # LIKE's wildcards are plain text
    assert members(tokens["zed"], room) == 403  # members only
    assert members(tokens["low"], room) == 403
    assert members(tokens["bob"], "999999999") == 404
    assert members(tokens["bob"], room, limit=26) == 400
    assert members(tokens["bob"], room, q="x" * 65) == 400
    conv = api.direct(tokens["cre"], ids["ann"])
    assert [m["id"] for m in members(tokens["ann"], conv, q="c")] == [ids["cre"]]
