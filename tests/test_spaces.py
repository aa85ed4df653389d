"""Chat spaces (docs/moderation.md "Spaces", chat/spaces.py): a creator's rooms with a name, topic
and emoji, at most 10 active (not archived) per creator, changed through the server API (PATCH
/api/v1/server/rooms/{id}: renamed, re-gated, archived, guidelines) and deleted (DELETE); members
see each change live (`conversation_updated`, `conversation_deleted` + `access_revoked`); a
member accepts the room's current guidelines before posting (`accept_guidelines`), the creator
and moderators are exempt. SQLite and MariaDB + Redis on the shared servers; the cross-process
cases on two processes sharing Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import sqlalchemy as sa

from tests.support import API_KEY, TLS, Api, Client, ok, send, sync_engine


def refused(ack: dict[str, Any]) -> dict[str, Any]:
    assert ack["ok"] is False, ack
    return dict(ack["error"])


async def connect(url: str, token: str) -> Client:
    return await Client(url, token).connect()



def create(api: Api, creator: str, name: str = "Room", **extra: Any) -> httpx.Response:
    return api.server("POST", "/rooms", {"creator_id": creator, "name": name, "min_tier_cents": 0, **extra})


def patch(api: Api, room: str, body: Any) -> httpx.Response:
    return api.server("PATCH", f"/rooms/{room}", body)


def community(api: Api, uid: Any, tier: int = 500) -> tuple[str, str, dict[str, str]]:
    """A creator and a patron at `tier`; returns (creator, patron, tokens)."""
    cre, pat = uid("cre"), uid("pat")
    tokens = {u: api.user(u) for u in (cre, pat)}
    api.membership(cre, pat, tier)
    return cre, pat, tokens


async def test_rename_archive_and_delete_a_space(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, pat, tokens = community(api, uid)
    r = create(api, cre, "Lounge", topic="  Say hi  ", emoji="🎸")
    assert r.status_code == 201, r.text
    conv = r.json()["conversation"]
    room = conv["id"]
    assert {k: conv[k] for k in ("name", "topic", "emoji", "archived", "guidelines", "guidelines_version")} == {
        "name": "Lounge", "topic": "Say hi", "emoji": "🎸", "archived": False, "guidelines": "", "guidelines_version": 0}
    for bad in ({}, {"name": ""}, {"emoji": ":fire:"}, {"emoji": "xx"}, {"min_tier_cents": -1},
                {"archived": "yes"}, {"post_policy": "nobody"}, {"topic": "t" * 501}, [1]):
        assert patch(api, room, bad).status_code == 400, bad
    assert patch(api, "999999999", {"name": "x"}).status_code == 404
    direct = api.direct(tokens[pat], cre)
    assert patch(api, direct, {"name": "x"}).status_code == 404
    assert api.server("DELETE", f"/rooms/{direct}").status_code == 404

    c, p = await connect(url, tokens[cre]), await connect(url, tokens[pat])
    try:
        joined = ok(await p.call("join", {"conversation_id": room}))
        assert joined["conversation"]["topic"] == "Say hi" and joined["guidelines_accepted"] is True
        ok(await c.call("join", {"conversation_id": room}))
        first = ok(await send(p, room, "before"))["message"]

        # renamed: live, and everywhere the room is shown
        r = patch(api, room, {"name": "Green room", "topic": "", "emoji": None})
        assert r.status_code == 200 and r.json()["conversation"]["name"] == "Green room", r.text
        update = await p.wait_for("conversation_updated", lambda e: e["name"] == "Green room")
        assert update["id"] == room and update["topic"] == "" and update["emoji"] is None
        assert api.server("GET", f"/rooms/{room}").json()["conversation"]["name"] == "Green room"
        listed = api.client(tokens[pat], "GET", "/conversations").json()["conversations"]
        assert [x["conversation"]["name"] for x in listed if x["conversation"]["id"] == room] == ["Green room"]
        assert patch(api, room, {"name": "Green room"}).status_code == 200  # unchanged: no event
        ok(await send(p, room, "after the rename"))

        # archived: read-only for everyone, history still readable
        assert patch(api, room, {"archived": True}).json()["conversation"]["archived"] is True
        await p.wait_for("conversation_updated", lambda e: e["archived"] is True)
        await c.wait_for("conversation_updated", lambda e: e["archived"] is True)
        for s in (p, c):
            error = refused(await send(s, room, "archived"))
            assert (error["code"], error["reason"]) == ("forbidden", "archived")
        r = api.client(tokens[pat], "POST", f"/conversations/{room}/messages", {"body": "http", "client_msg_id": "a-1"})
        assert r.status_code == 403 and r.json()["error"]["reason"] == "archived"
        assert refused(await p.call("edit", {"message_id": first["id"], "body": "edited"}))["reason"] == "archived"
        assert refused(await p.call("react", {"message_id": first["id"], "emoji": "👍", "on": True}))["code"] == "forbidden"
        history = api.client(tokens[pat], "GET", f"/conversations/{room}/messages")
        assert history.status_code == 200 and [m["body"] for m in history.json()["messages"]] == [
            "before", "after the rename"]
        rejoined = ok(await p.call("join", {"conversation_id": room}))
        assert rejoined["conversation"]["archived"] is True and len(rejoined["messages"]) == 2
        assert patch(api, room, {"archived": False}).status_code == 200
        await p.wait_for("conversation_updated", lambda e: e["archived"] is False)
        ok(await send(p, room, "unarchived"))

        # deleted: members hear it and lose it; the history is gone
        r = api.server("DELETE", f"/rooms/{room}")
        assert r.status_code == 200 and r.json() == {"conversation_id": room, "deleted": True}
        for s in (p, c):
            await s.wait_for("conversation_deleted", lambda e: e == {"conversation_id": room})
            await s.wait_for("access_revoked", lambda e: e == {"conversation_id": room})
        assert refused(await p.call("join", {"conversation_id": room}))["code"] == "not_found"
        assert refused(await send(c, room, "gone"))["code"] == "not_found"
        assert api.client(tokens[pat], "GET", f"/conversations/{room}/messages").status_code == 404
        assert api.server("GET", f"/conversations/{room}/messages").status_code == 404
        for method in ("GET", "PATCH", "DELETE"):
            assert api.server(method, f"/rooms/{room}", {"name": "x"} if method == "PATCH" else None).status_code == 404
        rooms = api.server("GET", f"/rooms?creator_id={cre}").json()["rooms"]
        assert room not in [x["id"] for x in rooms]
        with sync_engine(shared_any_server.database_url).connect() as db:
            left = db.execute(sa.text("SELECT COUNT(*) FROM messages WHERE conversation_id = :c"), {"c": int(room)})
            assert left.scalar() == 0
    finally:
        await c.close()
        await p.close()


async def test_at_most_ten_active_spaces(shared_any_server: Any, uid: Any) -> None:
    api = shared_any_server.api
    cre = uid("cre")
    rooms = [create(api, cre, f"R{i}", external_id=f"r{i}").json()["conversation"]["id"] for i in range(10)]
    r = create(api, cre, "Eleventh")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", r.text
    again = create(api, cre, "R3", external_id="r3")  # an existing room is still answered as it is
    assert again.status_code == 200 and again.json()["conversation"]["id"] == rooms[3]
    assert create(api, uid("other"), "Another creator's").status_code == 201

    assert patch(api, rooms[0], {"archived": True}).status_code == 200
    eleventh = create(api, cre, "Eleventh")
    assert eleventh.status_code == 201
    r = patch(api, rooms[0], {"archived": False})  # ten active again: no room for it
    assert r.status_code == 409 and "10" in r.json()["error"]["message"]
    assert api.server("DELETE", f"/rooms/{eleventh.json()['conversation']['id']}").status_code == 200
    assert patch(api, rooms[0], {"archived": False}).status_code == 200


async def test_guidelines_are_accepted_before_posting(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, pat, tokens = community(api, uid)
    mod, other = uid("mod"), uid("oth")
    for u in (mod, other):
        tokens[u] = api.user(u)
        api.membership(cre, u, 500)
    api.server("PUT", f"/creators/{cre}/moderators/{mod}")
    room = create(api, cre, "Rules", guidelines="Be kind.").json()["conversation"]
    assert (room["guidelines"], room["guidelines_version"]) == ("Be kind.", 1)
    room = room["id"]
    c, m, p = [await connect(url, tokens[u]) for u in (cre, mod, pat)]
    try:
        joined = ok(await p.call("join", {"conversation_id": room}))
        assert joined["conversation"]["guidelines"] == "Be kind." and joined["guidelines_accepted"] is False
        for _ in range(2):
            error = refused(await send(p, room))
            assert error == {"code": "forbidden", "reason": "guidelines", "guidelines_version": 1,
                             "message": error["message"]}
        r = api.client(tokens[other], "POST", f"/conversations/{room}/messages", {"body": "x", "client_msg_id": "g-1"})
        assert r.status_code == 403 and r.json()["error"]["reason"] == "guidelines"
        # the creator and moderators are exempt
        for s in (c, m):
            assert ok(await s.call("join", {"conversation_id": room}))["guidelines_accepted"] is True
            ok(await send(s, room, "exempt"))
        stale = refused(await p.call("accept_guidelines", {"conversation_id": room, "version": 0}))
        assert (stale["code"], stale["guidelines_version"]) == ("conflict", 1)
        assert refused(await p.call("accept_guidelines", {"conversation_id": room, "version": "1"}))["code"] == "invalid"
        assert refused(await p.call("accept_guidelines", {"conversation_id": "999999999", "version": 1}))["code"] == "not_found"
        assert ok(await p.call("accept_guidelines", {"conversation_id": room, "version": 1})) == {
            "ok": True, "conversation_id": room, "guidelines_version": 1}
        ok(await send(p, room, "accepted"))
        assert ok(await p.call("join", {"conversation_id": room}))["guidelines_accepted"] is True
        r = api.client(tokens[other], "POST", f"/conversations/{room}/guidelines/accept", {"version": 1})
        assert r.status_code == 200, r.text
        r = api.client(tokens[other], "POST", f"/conversations/{room}/messages", {"body": "x", "client_msg_id": "g-2"})
        assert r.status_code == 201, r.text

        # the same text again changes nothing; a new text asks again
        assert patch(api, room, {"guidelines": "Be kind."}).json()["conversation"]["guidelines_version"] == 1
        assert patch(api, room, {"guidelines": "Be kind. No spoilers."}).json()["conversation"]["guidelines_version"] == 2
        await p.wait_for("conversation_updated", lambda e: e["guidelines_version"] == 2)
        assert refused(await send(p, room))["guidelines_version"] == 2
        ok(await send(m, room, "still exempt"))
        ok(await p.call("accept_guidelines", {"conversation_id": room, "version": 2}))
        ok(await send(p, room, "accepted again"))
        # cleared: version 3, nothing to accept
        assert patch(api, room, {"guidelines": ""}).json()["conversation"]["guidelines_version"] == 3
        await p.wait_for("conversation_updated", lambda e: e["guidelines_version"] == 3)
        r = api.client(tokens[other], "POST", f"/conversations/{room}/messages", {"body": "x", "client_msg_id": "g-3"})
        assert r.status_code == 201, r.text
    finally:
        for s in (c, m, p):
            await s.close()


async def test_space_changes_reach_the_other_process(shared_mysql_cluster: Any, uid: Any) -> None:
    """A change made through one process's server API applies on the other at once: a re-gate
    revokes its sockets below the new tier, an archive and a new guidelines version refuse
    their very next send (no database read in between would be needed to see it), a delete takes
    them out."""
    cluster = shared_mysql_cluster
    api_a, api_b = cluster.apis
    url_a, url_b = cluster.servers[0].url, cluster.servers[1].url
    cre, low, tokens = community(api_a, uid, tier=500)
    high = uid("high")
    tokens[high] = api_a.user(high)
    api_a.membership(cre, high, 2000)
    room = create(api_a, cre, "Stage").json()["conversation"]["id"]
    c = await connect(url_a, tokens[cre])
    lo, hi = await connect(url_b, tokens[low]), await connect(url_b, tokens[high])
    hi_a, hi2 = await connect(url_a, tokens[high]), await connect(url_b, tokens[high])
    try:
        for s in (c, lo, hi, hi_a, hi2):
            ok(await s.call("join", {"conversation_id": room}))
        ok(await lo.call("subscribe", {"channel": f"room:{room}"}))
        for s in (lo, hi, hi2):
            ok(await send(s, room, "warm"))  # these sockets now post without a database read

        # re-gated through A: the member below the new tier is out on B at once
        r = patch(api_a, room, {"min_tier_cents": 1000, "name": "Backstage"})
        assert r.status_code == 200 and r.json()["conversation"]["min_tier_cents"] == 1000
        await lo.wait_for("access_revoked", lambda e: e == {"conversation_id": room})
        await hi.wait_for("conversation_updated", lambda e: e["min_tier_cents"] == 1000 and e["name"] == "Backstage")
        await c.wait_for("conversation_updated", lambda e: e["name"] == "Backstage")
        assert refused(await send(lo, room))["code"] == "forbidden"
        assert refused(await lo.call("join", {"conversation_id": room}))["code"] == "forbidden"
        assert refused(await lo.call("subscribe", {"channel": f"room:{room}"}))["code"] == "forbidden"
        ok(await send(hi, room, "still in"))
        ok(await send(hi_a, room, "still in"))

        # archived through A: the next send on B is refused
        assert patch(api_a, room, {"archived": True}).status_code == 200
        await hi.wait_for("conversation_updated", lambda e: e["archived"] is True)
        assert refused(await send(hi, room))["reason"] == "archived"
        assert refused(await send(hi2, room))["reason"] == "archived"  # after B read the room again
        await c.wait_for("conversation_updated", lambda e: e["archived"] is True)
        assert refused(await send(c, room))["reason"] == "archived"
        assert patch(api_b, room, {"archived": False}).status_code == 200
        await hi.wait_for("conversation_updated", lambda e: e["archived"] is False)
        ok(await send(hi, room, "open again"))

        # new guidelines through A: refused on B until accepted (here on A: B then reads it)
        assert patch(api_a, room, {"guidelines": "No spoilers."}).status_code == 200
        await hi.wait_for("conversation_updated", lambda e: e["guidelines_version"] == 1)
        assert refused(await send(hi, room))["reason"] == "guidelines"
        assert refused(await send(hi2, room))["reason"] == "guidelines"
        ok(await hi_a.call("accept_guidelines", {"conversation_id": room, "version": 1}))
        ok(await send(hi, room, "accepted on the other process"))
        ok(await send(c, room, "the creator never accepts"))

        # deleted through B: the sockets on A hear it and are out
        assert api_b.server("DELETE", f"/rooms/{room}").status_code == 200
        for s in (c, hi_a, hi):
            await s.wait_for("conversation_deleted", lambda e: e == {"conversation_id": room})
            await s.wait_for("access_revoked", lambda e: e == {"conversation_id": room})
        assert refused(await send(hi_a, room))["code"] == "not_found"
    finally:
        for s in (c, lo, hi, hi_a, hi2):
            await s.close()


async def test_ten_spaces_hold_under_concurrent_creates(shared_mysql_cluster: Any, uid: Any) -> None:
    """Creates racing on both processes: exactly 10 rooms, the others `conflict`."""
    cluster = shared_mysql_cluster
    cre = uid("cre")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(verify=TLS, timeout=30) as http:
        answers = await asyncio.gather(*(
            http.post(f"{cluster.servers[i % 2].url}/api/v1/server/rooms", headers=headers,
                      json={"creator_id": cre, "name": f"R{i}", "min_tier_cents": 0}) for i in range(14)))
    assert sorted(a.status_code for a in answers) == [201] * 10 + [409] * 4, [a.text for a in answers]
    rooms = cluster.api.server("GET", f"/rooms?creator_id={cre}").json()["rooms"]
    assert len(rooms) == 10
