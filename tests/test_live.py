"""Live conversation features across two server processes sharing MariaDB and Redis:
presence (including a SIGKILLed process), typing, read receipts and unread counts, edit/delete."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support import Api, Client, ServerProcess, barrier


def setup_room(api: Api) -> tuple[dict[str, str], str]:
    tokens = {"cre": api.user("cre", "Cre"), "pat": api.user("pat", "Pat"), "sam": api.user("sam", "Sam")}
    api.membership("cre", "pat", 500)
    api.membership("cre", "sam", 500)
    return tokens, api.room("cre", "Lounge", min_tier_cents=100)


def presence_of(client: Client, user_id: str) -> list[bool]:
    return [p["online"] for p in client.events["presence"] if p["user_id"] == user_id]


async def test_presence_across_processes(mysql_cluster):
    s0, s1 = (s.url for s in mysql_cluster.servers)
    tokens, room = setup_room(mysql_cluster.api)
    a = await Client(s0, tokens["cre"]).connect()
    b1 = await Client(s1, tokens["pat"]).connect()
    b2 = await Client(s0, tokens["pat"]).connect()
    try:
        assert (await a.call("join", {"conversation_id": room}))["online"] == ["cre"]
        jb = await b1.call("join", {"conversation_id": room})
        assert sorted(jb["online"]) == ["cre", "pat"]
        await a.wait_for("presence", lambda p: p == {"conversation_id": room, "user_id": "pat", "online": True})
        # never announced to the joiner itself (the creator's own `online`, held for the presence
        # window, may reach it: chat/presence.py PresenceCoalescer)
        assert presence_of(b1, "pat") == []

        await b2.call("join", {"conversation_id": room})  # second socket, other process: no news
        await b1.call("leave", {"conversation_id": room})  # one of two sockets leaves: still online
        await barrier(mysql_cluster.apis, [("cre", a)], "after-leave")
        assert presence_of(a, "pat") == [True]

        await b2.close()  # the last socket disconnects
        await a.wait_for("presence", lambda p: p["user_id"] == "pat" and p["online"] is False)
        assert presence_of(a, "pat") == [True, False]
    finally:
        for c in (a, b1, b2):
            await c.close()


async def test_killed_process_users_go_offline(mysql_databases, redis_url, redis_prefix):
    env = {"PRESENCE_HEARTBEAT_S": "0.5", "PRESENCE_DEAD_AFTER_S": "2"}
    db = mysql_databases.new()
    survivor = ServerProcess(db, redis_url, redis_prefix, env=env)
    doomed = ServerProcess(db, redis_url, redis_prefix, env=env)
    api = Api(survivor.url)
    a = b = None
    try:
        tokens, room = setup_room(api)
        a = await Client(survivor.url, tokens["cre"]).connect()
        b = await Client(doomed.url, tokens["pat"]).connect()
        await a.call("join", {"conversation_id": room})
        await b.call("join", {"conversation_id": room})
        await a.wait_for("presence", lambda p: p["user_id"] == "pat" and p["online"])
        started = time.monotonic()
        doomed.kill()  # SIGKILL: no clean-up runs on that process
        await a.wait_for("presence", lambda p: p["user_id"] == "pat" and p["online"] is False, timeout=20)
        assert time.monotonic() - started < 20
        assert (await a.call("join", {"conversation_id": room}))["online"] == ["cre"]
    finally:
        for c in (a, b):
            if c is not None:
                await c.close()
        api.close()
        doomed.kill()
        survivor.stop()


async def test_typing_relayed_to_others_and_expires(mysql_cluster):
    s0, s1 = (s.url for s in mysql_cluster.servers)
    tokens, room = setup_room(mysql_cluster.api)
    a = await Client(s0, tokens["cre"]).connect()
    b = await Client(s1, tokens["pat"]).connect()
    try:
        not_joined = await a.call("typing", {"conversation_id": room, "typing": True})
        assert not_joined["error"]["code"] == "forbidden"
        await a.call("join", {"conversation_id": room})
        await b.call("join", {"conversation_id": room})
        assert await a.call("typing", {"conversation_id": room, "typing": True}) == {"ok": True}
        got = await b.wait_for("typing")
        assert got == {"conversation_id": room, "user_id": "cre", "typing": True}
        await a.call("typing", {"conversation_id": room, "typing": True})  # throttled: not relayed again
        await a.call("typing", {"conversation_id": room, "typing": False})
        await b.wait_for("typing", lambda t: t["typing"] is False)
        assert [t["typing"] for t in b.events["typing"]] == [True, False]
        assert a.events["typing"] == []  # never echoed to the sender

        await asyncio.sleep(1.1)
        b.events["typing"].clear()
        await a.call("typing", {"conversation_id": room, "typing": True})
        await b.wait_for("typing", lambda t: t["typing"] is True)
        # no "typing: false" follows: it expires by itself after a few seconds
        await b.wait_for("typing", lambda t: t["typing"] is False, timeout=10)

        await asyncio.sleep(1.1)
        b.events["typing"].clear()
        await a.call("typing", {"conversation_id": room, "typing": True})
        await b.wait_for("typing", lambda t: t["typing"] is True)
        await a.call("send", {"conversation_id": room, "body": "done typing", "client_msg_id": "t1"})
        await b.wait_for("typing", lambda t: t["typing"] is False, timeout=3)  # sending clears it
    finally:
        await a.close()
        await b.close()


async def test_read_receipts_and_unread_counts(mysql_cluster):
    s0, s1 = (s.url for s in mysql_cluster.servers)
    api = mysql_cluster.api
    tokens, room = setup_room(api)
    a = await Client(s0, tokens["cre"]).connect()
    b = await Client(s1, tokens["pat"]).connect()
    try:
        await a.call("join", {"conversation_id": room})
        await b.call("join", {"conversation_id": room})
        for i in range(1, 6):
            r = await a.call("send", {"conversation_id": room, "body": f"m{i}", "client_msg_id": f"a{i}"})
            assert r["ok"]
        await b.call("send", {"conversation_id": room, "body": "mine", "client_msg_id": "b1"})  # seq 6
        await a.call("send", {"conversation_id": room, "body": "m7", "client_msg_id": "a7"})  # seq 7

        def unread(token: str) -> int:
            convs = api.client(token, "GET", "/conversations").json()["conversations"]
            return next(c["unread_count"] for c in convs if c["conversation"]["id"] == room)

        # pat's own send moved pat's position to 6: only a7 is unread for pat
        assert unread(tokens["pat"]) == 1
        assert (await b.call("join", {"conversation_id": room}))["unread_count"] == 1
        assert unread(tokens["sam"]) == 7  # sam never read: all 7 were sent by others
        r = await b.call("read", {"conversation_id": room, "seq": 7})
        assert r == {"ok": True, "unread_count": 0}
        got = await a.wait_for("read")
        assert got == {"conversation_id": room, "user_id": "pat", "seq": 7}
        # a later join learns where the others have read to (never the joiner itself)
        positions = (await a.call("join", {"conversation_id": room}))["read_positions"]
        assert {"user_id": "pat", "name": "Pat", "seq": 7} in positions
        assert all(p["user_id"] != "cre" for p in positions)
        assert unread(tokens["pat"]) == 0

        backwards = await b.call("read", {"conversation_id": room, "seq": 2})
        assert backwards == {"ok": True, "unread_count": 0}  # changes nothing
        await barrier(mysql_cluster.apis, [("cre", a)], "after-backwards")
        assert len(a.events["read"]) == 1
        beyond = await b.call("read", {"conversation_id": room, "seq": 8})
        assert beyond["ok"] is False and beyond["error"]["code"] == "invalid"

        # deleted messages do not count as unread
        sam = await Client(s0, tokens["sam"]).connect()
        try:
            assert (await sam.call("read", {"conversation_id": room, "seq": 5}))["unread_count"] == 2
            deleted = await a.call("delete", {"message_id": (await a.call("history", {"conversation_id": room}))["messages"][-1]["id"]})
            assert deleted["ok"]
            assert unread(tokens["sam"]) == 1
        finally:
            await sam.close()
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("via", ["socket"])
async def test_edit_and_delete(mysql_cluster, via):
    s0, s1 = (s.url for s in mysql_cluster.servers)
    tokens, room = setup_room(mysql_cluster.api)
    a = await Client(s0, tokens["cre"]).connect()
    b = await Client(s1, tokens["pat"]).connect()
    try:
        await a.call("join", {"conversation_id": room})
        await b.call("join", {"conversation_id": room})
        mine = (await b.call("send", {"conversation_id": room, "body": "tpyo", "client_msg_id": "e1"}))["message"]
        theirs = (await a.call("send", {"conversation_id": room, "body": "creator's", "client_msg_id": "e2"}))["message"]

        edited = await b.call("edit", {"message_id": mine["id"], "body": "typo"})
        assert edited["ok"] and edited["message"]["body"] == "typo" and edited["message"]["edited_at"]
        assert edited["message"]["seq"] == mine["seq"]
        got = await a.wait_for("message_updated", lambda m: m["id"] == mine["id"])
        assert got == edited["message"]

        assert (await b.call("edit", {"message_id": theirs["id"], "body": "x"}))["error"]["code"] == "forbidden"
        assert (await b.call("delete", {"message_id": theirs["id"]}))["error"]["code"] == "forbidden"
        assert (await b.call("edit", {"message_id": mine["id"], "body": "x" * 4001}))["error"]["code"] == "invalid"
        assert (await b.call("edit", {"message_id": "999999", "body": "x"}))["error"]["code"] == "not_found"

        # the room's creator deletes anyone's message
        deleted = await a.call("delete", {"message_id": mine["id"]})
        assert deleted["ok"] and deleted["message"]["deleted"] is True and deleted["message"]["body"] == ""
        got = await b.wait_for("message_updated", lambda m: m["id"] == mine["id"] and m["deleted"])
        assert got["seq"] == mine["seq"]
        assert (await b.call("edit", {"message_id": mine["id"], "body": "back"}))["error"]["code"] in ("invalid", "forbidden")

        # deleted everywhere: history, recovery, HTTP
        hist = (await b.call("history", {"conversation_id": room}))["messages"]
        assert [(m["seq"], m["deleted"], m["body"]) for m in hist] == [(1, True, ""), (2, False, "creator's")]
        rec = (await b.call("join", {"conversation_id": room, "since_seq": 0}))["messages"]
        assert rec == hist
        http = mysql_cluster.apis[1].client(tokens["pat"], "GET", f"/conversations/{room}/messages").json()
        assert http["messages"] == hist
    finally:
        await a.close()
        await b.close()


async def test_concurrent_first_reads_of_one_user(mysql_cluster):
    """The per-user state row is created on first use; racing creators must not fail."""
    s0, s1 = (s.url for s in mysql_cluster.servers)
    api = mysql_cluster.api
    tokens, room = setup_room(api)
    sender = await Client(s0, tokens["cre"]).connect()
    readers = [await Client(url, tokens["pat"]).connect() for url in (s0, s1, s0, s1)]
    try:
        await sender.call("send", {"conversation_id": room, "body": "hi", "client_msg_id": "c1"})
        answers = await asyncio.gather(*[c.call("read", {"conversation_id": room, "seq": 1}) for c in readers])
        assert all(a == {"ok": True, "unread_count": 0} for a in answers), answers
        muted = await asyncio.gather(*[asyncio.to_thread(api.client, tokens["sam"], "PUT", f"/conversations/{room}/settings",
                                                         {"muted": True}) for _ in range(4)])
        assert [r.status_code for r in muted] == [200] * 4
    finally:
        for c in (sender, *readers):
            await c.close()
