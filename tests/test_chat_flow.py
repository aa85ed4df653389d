"""The core flow over real sockets, on SQLite (embedded) and on MariaDB + Redis."""

from __future__ import annotations

from tests.support import Client


async def test_join_send_history_and_idempotency(shared_any_server, uid):
    any_server = shared_any_server
    api = any_server.api
    cre, pat = uid("cre"), uid("pat")
    creator = api.user(cre, "Cre Ator")
    patron = api.user(pat, "Pat Ron")
    api.membership(cre, pat, 500)
    room = api.room(cre, "Lounge", min_tier_cents=500)

    a = await Client(any_server.servers[0].url, creator).connect()
    b = await Client(any_server.servers[0].url, patron).connect()
    try:
        ja = await a.call("join", {"conversation_id": room})
        assert ja["ok"] and ja["messages"] == [] and ja["has_more"] is False
        assert ja["conversation"]["id"] == room and ja["conversation"]["kind"] == "room"
        assert cre in ja["online"]
        jb = await b.call("join", {"conversation_id": room})
        assert sorted(jb["online"]) == sorted([cre, pat])

        sent = await a.call("send", {"conversation_id": room, "body": "  hello  ", "client_msg_id": "m1"})
        assert sent["ok"], sent
        msg = sent["message"]
        assert msg["seq"] == 1 and msg["body"] == "hello" and msg["sender"] == {"id": cre, "name": "Cre Ator"}
        assert msg["deleted"] is False and msg["edited_at"] is None and msg["created_at"].endswith("Z")
        got = await b.wait_for("message", lambda m: m["id"] == msg["id"])
        assert got == msg
        await a.wait_for("message", lambda m: m["id"] == msg["id"])  # the sender's socket too

        again = await a.call("send", {"conversation_id": room, "body": "hello", "client_msg_id": "m1"})
        assert again == {"ok": True, "message": msg}
        conflict = await a.call("send", {"conversation_id": room, "body": "other", "client_msg_id": "m1"})
        assert conflict["ok"] is False and conflict["error"]["code"] == "conflict"

        for i in range(2, 6):
            r = await b.call("send", {"conversation_id": room, "body": f"m{i}", "client_msg_id": f"b{i}"})
            assert r["message"]["seq"] == i
        # Messages of a conversation arrive in order: once seq 5 is here, any broadcast of the
        # retried send (seq 1) would be here too.
        await b.wait_for("message", lambda m: m["seq"] == 5)
        assert len([m for m in b.events["message"] if m["id"] == msg["id"]]) == 1  # retry broadcast nothing

        hist = await b.call("history", {"conversation_id": room, "before_seq": 4, "limit": 2})
        assert [m["seq"] for m in hist["messages"]] == [2, 3] and hist["has_more"] is True
        # after_seq (extension): the page just after it, as over HTTP; with before_seq too, both bound it
        fwd = await b.call("history", {"conversation_id": room, "after_seq": 1, "limit": 2})
        assert [m["seq"] for m in fwd["messages"]] == [2, 3] and fwd["has_more"] is True
        fwd = await b.call("history", {"conversation_id": room, "after_seq": 3, "limit": 2})
        assert [m["seq"] for m in fwd["messages"]] == [4, 5] and fwd["has_more"] is False
        fwd = await b.call("history", {"conversation_id": room, "after_seq": 1, "before_seq": 4, "limit": 5})
        assert [m["seq"] for m in fwd["messages"]] == [2, 3]
        rejoin = await b.call("join", {"conversation_id": room, "since_seq": 3})
        assert [m["seq"] for m in rejoin["messages"]] == [4, 5] and rejoin["has_more"] is False

        r = api.client(patron, "GET", f"/conversations/{room}/messages", params={"after_seq": 1, "limit": 2})
        assert r.status_code == 200 and [m["seq"] for m in r.json()["messages"]] == [2, 3]
        assert r.json()["has_more"] is True
        r = api.client(patron, "POST", f"/conversations/{room}/messages", json={"body": "via http", "client_msg_id": "h1"})
        assert r.status_code == 201 and r.json()["message"]["seq"] == 6
        await a.wait_for("message", lambda m: m["seq"] == 6)

        convs = api.client(creator, "GET", "/conversations").json()["conversations"]
        assert convs[0]["conversation"]["id"] == room
        assert convs[0]["last_message"]["seq"] == 6
        assert convs[0]["unread_count"] == 5  # pat's 4 + 1 via HTTP; own messages never count

        # client_msg_ids are compared exactly (MariaDB's default collation would not): a different
        # case is a different message, not a retry.
        upper = await a.call("send", {"conversation_id": room, "body": "upper", "client_msg_id": "Case-1"})
        lower = await a.call("send", {"conversation_id": room, "body": "lower", "client_msg_id": "case-1"})
        assert upper["ok"] and lower["ok"], (upper, lower)
        assert [upper["message"]["seq"], lower["message"]["seq"]] == [7, 8]
        await b.wait_for("message", lambda m: m["seq"] == 8)
    finally:
        await a.close()
        await b.close()
