"""Every read and write path checks membership (SPEC §2, §4): rooms gated by active tier,
post policy, direct conversations, channels, and the conversation list. On SQLite and on
MariaDB + Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support import Client, app_events, barrier


def err(ack: dict[str, Any]) -> str:
    assert ack["ok"] is False, ack
    return str(ack["error"]["code"])


def http_code(r: Any) -> tuple[int, str | None]:
    body = r.json() if r.content else {}
    return r.status_code, (body.get("error") or {}).get("code")


async def test_non_members_are_refused_on_every_path(any_server: Any) -> None:
    url, api = any_server.servers[0].url, any_server.api
    cre = api.user("cre", "Cre")
    tokens = {"pat": api.user("pat"), "low": api.user("low"), "stranger": api.user("stranger"),
              "former": api.user("former"), "cre2": api.user("cre2")}
    api.membership("cre", "pat", 500)
    api.membership("cre", "low", 100)  # active, below the tier
    api.membership("cre", "former", 900, status="former")  # enough tier, not active
    api.membership("cre2", "stranger", 5000)  # a patron of someone else
    gold = api.room("cre", "Gold", 500)
    c = await Client(url, cre).connect()
    clients = {u: await Client(url, t).connect() for u, t in tokens.items()}
    try:
        msg = (await c.call("send", {"conversation_id": gold, "body": "gold only", "client_msg_id": "g1"}))["message"]

        # the control: an active patron at the tier can do everything
        p = clients["pat"]
        assert (await p.call("join", {"conversation_id": gold}))["ok"]
        assert (await p.call("history", {"conversation_id": gold}))["ok"]
        assert (await p.call("read", {"conversation_id": gold, "seq": 1}))["ok"]
        assert (await p.call("typing", {"conversation_id": gold, "typing": True}))["ok"]
        assert (await p.call("subscribe", {"channel": f"room:{gold}"}))["ok"]
        assert (await p.call("subscribe", {"channel": "creator:cre"}))["ok"]
        assert (await p.call("send", {"conversation_id": gold, "body": "hi", "client_msg_id": "p1"}))["ok"]
        assert (await p.call("react", {"message_id": msg["id"], "emoji": "👍", "on": True}))["ok"]
        assert api.client(tokens["pat"], "GET", f"/conversations/{gold}/messages/{msg['id']}/reactions").status_code == 200
        assert api.client(tokens["pat"], "GET", f"/conversations/{gold}/messages").status_code == 200
        assert api.client(tokens["pat"], "PUT", f"/conversations/{gold}/settings", json={"muted": True}).status_code == 200

        for user in ("low", "stranger", "former", "cre2"):
            s, tok = clients[user], tokens[user]
            assert err(await s.call("join", {"conversation_id": gold})) == "forbidden", user
            assert err(await s.call("join", {"conversation_id": gold, "since_seq": 0})) == "forbidden", user
            assert err(await s.call("history", {"conversation_id": gold})) == "forbidden", user
            assert err(await s.call("read", {"conversation_id": gold, "seq": 1})) == "forbidden", user
            assert err(await s.call("send", {"conversation_id": gold, "body": "x", "client_msg_id": f"x-{user}"})) == "forbidden"
            assert err(await s.call("typing", {"conversation_id": gold, "typing": True})) == "forbidden", user
            assert err(await s.call("edit", {"message_id": msg["id"], "body": "mine now"})) == "forbidden", user
            assert err(await s.call("delete", {"message_id": msg["id"]})) == "forbidden", user
            assert err(await s.call("react", {"message_id": msg["id"], "emoji": "👍", "on": True})) == "forbidden", user
            assert http_code(api.client(tok, "GET", f"/conversations/{gold}/messages/{msg['id']}/reactions")) == (
                403, "forbidden"), user
            assert err(await s.call("subscribe", {"channel": f"room:{gold}"})) == "forbidden", user
            assert err(await s.call("subscribe", {"channel": "user:pat"})) == "forbidden", user
            assert err(await s.call("subscribe", {"channel": "user:cre"})) == "forbidden", user
            assert http_code(api.client(tok, "GET", f"/conversations/{gold}/messages")) == (403, "forbidden"), user
            assert http_code(api.client(tok, "GET", f"/conversations/{gold}/messages",
                                        params={"after_seq": 0})) == (403, "forbidden"), user
            assert http_code(api.client(tok, "POST", f"/conversations/{gold}/messages",
                                        json={"body": "x", "client_msg_id": f"h-{user}"})) == (403, "forbidden")
            assert http_code(api.client(tok, "PUT", f"/conversations/{gold}/settings",
                                        json={"muted": True})) == (403, "forbidden"), user
            convs = api.client(tok, "GET", "/conversations").json()["conversations"]
            assert gold not in [x["conversation"]["id"] for x in convs], user
        # creator:{id} is for the creator and active patrons, whatever their tier
        assert (await clients["low"].call("subscribe", {"channel": "creator:cre"}))["ok"]
        for user in ("stranger", "former", "cre2"):
            assert err(await clients[user].call("subscribe", {"channel": "creator:cre"})) == "forbidden", user
        assert (await clients["cre2"].call("subscribe", {"channel": "creator:cre2"}))["ok"]  # one's own

        # nothing of the room reached the refused sockets
        m = (await c.call("send", {"conversation_id": gold, "body": "later", "client_msg_id": "g2"}))["message"]
        await p.wait_for("message", lambda x: x["id"] == m["id"])
        r = api.server("POST", "/publish", {"channel": f"room:{gold}", "event": "e", "data": {}})
        assert r.json()["delivered_to"] == 1  # the patron only
        await p.wait_for("event")
        await barrier([api], [(u, clients[u]) for u in ("low", "stranger", "former", "cre2")], "after-room")
        for user in ("low", "stranger", "former", "cre2"):
            assert not clients[user].events["message"] and not app_events(clients[user]), user
            assert not clients[user].events["typing"], user
        # the stranger's attempts changed nothing
        hist = await p.call("history", {"conversation_id": gold})
        assert [(x["body"], x["sender"]["id"]) for x in hist["messages"]] == [
            ("gold only", "cre"), ("hi", "pat"), ("later", "cre")]
    finally:
        await c.close()
        for s in clients.values():
            await s.close()


async def test_post_policy_creator(any_server: Any) -> None:
    url, api = any_server.servers[0].url, any_server.api
    cre, pat = api.user("cre"), api.user("pat")
    api.membership("cre", "pat", 100)
    news = api.room("cre", "Announcements", 0, post_policy="creator")
    c, p = await Client(url, cre).connect(), await Client(url, pat).connect()
    try:
        assert (await p.call("join", {"conversation_id": news}))["ok"]
        m = (await c.call("send", {"conversation_id": news, "body": "news!", "client_msg_id": "n1"}))["message"]
        await p.wait_for("message", lambda x: x["id"] == m["id"])
        assert (await p.call("history", {"conversation_id": news}))["messages"][0]["id"] == m["id"]
        assert (await p.call("read", {"conversation_id": news, "seq": 1})) == {"ok": True, "unread_count": 0}
        assert (await p.call("subscribe", {"channel": f"room:{news}"}))["ok"]
        assert err(await p.call("send", {"conversation_id": news, "body": "me too", "client_msg_id": "p1"})) == "forbidden"
        r = api.client(pat, "POST", f"/conversations/{news}/messages", json={"body": "me too", "client_msg_id": "p2"})
        assert http_code(r) == (403, "forbidden")
        assert api.client(pat, "GET", f"/conversations/{news}/messages").status_code == 200
        # editing the creator's post is not the patron's either
        assert err(await p.call("edit", {"message_id": m["id"], "body": "x"})) == "forbidden"
        assert err(await p.call("delete", {"message_id": m["id"]})) == "forbidden"
        assert [x["seq"] for x in (await c.call("history", {"conversation_id": news}))["messages"]] == [1]
    finally:
        await c.close()
        await p.close()


AVATAR = "https://example.com/avatars/cre.png"


async def test_direct_conversations(any_server: Any) -> None:
    url, api = any_server.servers[0].url, any_server.api
    cre, pat, pat2 = api.user("cre", avatar_url=AVATAR), api.user("pat"), api.user("pat2")
    stranger, cre2 = api.user("stranger"), api.user("cre2")
    api.membership("cre", "pat", 100)
    api.membership("cre", "pat2", 100)
    api.membership("cre2", "pat", 100)

    d = api.direct(cre, "pat")
    assert api.direct(pat, "cre") == d and api.direct(cre, "pat") == d  # the same one every time
    conv = api.client(cre, "POST", "/conversations/direct", json={"user_id": "pat"}).json()["conversation"]
    assert conv["kind"] == "direct" and conv["creator_id"] == "cre"
    assert sorted(x["id"] for x in conv["members"]) == ["cre", "pat"]
    # Members carry their avatar (docs/api.md extension), null when none, on every path.
    avatars = {"cre": AVATAR, "pat": None}
    assert {x["id"]: x["avatar_url"] for x in conv["members"]} == avatars
    listed = api.client(pat, "GET", "/conversations").json()["conversations"][0]["conversation"]
    assert {x["id"]: x["avatar_url"] for x in listed["members"]} == avatars
    d2 = api.direct(cre2, "pat")
    assert d2 != d  # another creator, another conversation

    for tok, other, expected in ((cre, "stranger", (403, "forbidden")), (stranger, "cre", (403, "forbidden")),
                                 (pat, "pat2", (403, "forbidden")), (pat, "cre2", None),
                                 (pat, "pat", (400, "invalid")), (pat, "nobody", (404, "not_found"))):
        r = api.client(tok, "POST", "/conversations/direct", json={"user_id": other})
        if expected is None:
            assert r.status_code == 200 and r.json()["conversation"]["id"] == d2
        else:
            assert http_code(r) == expected, (other, r.text)

    c, p = await Client(url, cre).connect(), await Client(url, pat).connect()
    third = {u: await Client(url, t).connect() for u, t in (("pat2", pat2), ("stranger", stranger), ("cre2", cre2))}
    try:
        joined = await c.call("join", {"conversation_id": d})
        assert {x["id"]: x["avatar_url"] for x in joined["conversation"]["members"]} == avatars
        m = (await p.call("send", {"conversation_id": d, "body": "hello creator", "client_msg_id": "d1"}))["message"]
        await c.wait_for("message", lambda x: x["id"] == m["id"])
        third_tokens = {"pat2": pat2, "stranger": stranger, "cre2": cre2}
        for user, s in third.items():
            assert err(await s.call("join", {"conversation_id": d})) == "forbidden", user
            assert err(await s.call("history", {"conversation_id": d})) == "forbidden", user
            assert err(await s.call("read", {"conversation_id": d, "seq": 1})) == "forbidden", user
            assert err(await s.call("send", {"conversation_id": d, "body": "x", "client_msg_id": f"t-{user}"})) == "forbidden"
            assert err(await s.call("edit", {"message_id": m["id"], "body": "x"})) == "forbidden", user
            tok = third_tokens[user]
            assert http_code(api.client(tok, "GET", f"/conversations/{d}/messages")) == (403, "forbidden")
            assert http_code(api.client(tok, "PUT", f"/conversations/{d}/settings", json={"muted": True})) == (403, "forbidden")
            ids = [x["conversation"]["id"] for x in api.client(tok, "GET", "/conversations").json()["conversations"]]
            assert d not in ids, user
        await barrier([api], list(third.items()), "after-direct")
        assert all(not s.events["message"] for s in third.values())
        # the creator may not delete the patron's message in a direct conversation (rooms only)
        assert err(await c.call("delete", {"message_id": m["id"]})) == "forbidden"
    finally:
        for s in (c, p, *third.values()):
            await s.close()


async def test_conversation_list_unread_and_muted(any_server: Any) -> None:
    url, api = any_server.servers[0].url, any_server.api
    cre, pat = api.user("cre", "Cre"), api.user("pat", "Pat")
    cre2 = api.user("cre2")
    api.membership("cre", "pat", 500)
    r_open = api.room("cre", "Open", 0)
    r_gold = api.room("cre", "Gold", 500)
    r_top = api.room("cre", "Top", 1000)  # above pat's tier
    r_other = api.room("cre2", "Elsewhere", 0)  # not pat's creator
    d = api.direct(cre, "pat")
    c, p, c2 = await Client(url, cre).connect(), await Client(url, pat).connect(), await Client(url, cre2).connect()

    async def send(s: Client, room: str, body: str) -> dict[str, Any]:
        r = await s.call("send", {"conversation_id": room, "body": body, "client_msg_id": f"{room}-{body}"})
        assert r["ok"], r
        return r["message"]

    def listing(token: str) -> dict[str, dict[str, Any]]:
        r = api.client(token, "GET", "/conversations")
        assert r.status_code == 200, r.text
        return {x["conversation"]["id"]: x for x in r.json()["conversations"]}

    try:
        o1 = await send(c, r_open, "o1")
        await send(c, r_open, "o2")
        await send(p, r_open, "own")  # the patron's own: never unread (and moves their position)
        o4 = await send(c, r_open, "o4")
        o5 = await send(c, r_open, "o5")
        assert (await c.call("delete", {"message_id": o4["id"]}))["ok"]  # deleted: not unread
        await send(c, r_gold, "g1")
        await send(c, r_gold, "g2")
        await send(c, r_top, "t1")
        await send(c2, r_other, "x1")
        await asyncio.sleep(0.01)
        await send(c, d, "d1")  # newest activity

        mine = listing(pat)
        assert set(mine) == {r_open, r_gold, d}
        order = [x["conversation"]["id"] for x in api.client(pat, "GET", "/conversations").json()["conversations"]]
        assert order[0] == d
        assert mine[r_open]["unread_count"] == 1  # o5 only: o1, o2 before the own message; o4 deleted
        assert mine[r_gold]["unread_count"] == 2
        assert mine[d]["unread_count"] == 1
        assert mine[r_open]["last_message"]["id"] == o5["id"]
        assert mine[d]["conversation"]["kind"] == "direct"
        assert all(x["muted"] is False for x in mine.values())

        r = api.client(pat, "PUT", f"/conversations/{r_gold}/settings", json={"muted": True})
        assert r.status_code == 200, r.text
        mine = listing(pat)
        assert mine[r_gold]["muted"] is True and mine[r_open]["muted"] is False and mine[d]["muted"] is False
        assert listing(cre)[r_gold]["muted"] is False  # mute is per user
        assert http_code(api.client(pat, "PUT", f"/conversations/{r_top}/settings", json={"muted": True})) == (403, "forbidden")

        assert (await p.call("read", {"conversation_id": r_open, "seq": o5["seq"]})) == {"ok": True, "unread_count": 0}
        assert (await p.call("read", {"conversation_id": r_open, "seq": o1["seq"]})) == {"ok": True, "unread_count": 0}
        mine = listing(pat)
        assert mine[r_open]["unread_count"] == 0 and mine[r_gold]["unread_count"] == 2

        theirs = listing(cre)
        assert set(theirs) == {r_open, r_gold, r_top, d}
        assert theirs[r_open]["unread_count"] == 0  # pat's message precedes the creator's later sends
        await send(p, r_gold, "late")
        assert listing(cre)[r_gold]["unread_count"] == 1
        assert theirs[d]["unread_count"] == 0
        assert set(listing(cre2)) == {r_other}

        api.client(pat, "PUT", f"/conversations/{r_gold}/settings", json={"muted": False})
        assert listing(pat)[r_gold]["muted"] is False
    finally:
        for s in (c, p, c2):
            await s.close()

