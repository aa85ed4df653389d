"""Two server processes sharing one MariaDB database and one Redis prefix act as one server
(SPEC §1, §2, §3): messages and publishes cross processes, revocations reach every process."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from tests.support import Api, Client, app_events, barrier, sync_engine


async def connect(url: str, token: str) -> Client:
    return await Client(url, token).connect()


async def join(c: Client, room: str, **extra: Any) -> dict[str, Any]:
    r = await c.call("join", {"conversation_id": room, **extra})
    assert r["ok"], r
    return r


async def send(c: Client, room: str, body: str, cmid: str) -> dict[str, Any]:
    r = await c.call("send", {"conversation_id": room, "body": body, "client_msg_id": cmid})
    assert r["ok"], r
    return r["message"]


def err(ack: dict[str, Any]) -> str:
    assert ack["ok"] is False, ack
    return str(ack["error"]["code"])


async def close_all(*clients: Client) -> None:
    for c in clients:
        await c.close()


async def test_messages_cross_processes(mysql_cluster: Any) -> None:
    (s0, s1), api = mysql_cluster.servers, mysql_cluster.api
    cre, pat = api.user("cre", "Cre"), api.user("pat", "Pat")
    api.membership("cre", "pat", 500)
    room = api.room("cre", "Lounge", 500)
    a, b = await connect(s0.url, cre), await connect(s1.url, pat)
    b2 = await connect(s0.url, pat)  # the patron's second socket, on the other process
    try:
        await join(a, room)
        jb = await join(b, room)
        assert sorted(jb["online"]) == ["cre", "pat"]  # presence across processes
        await join(b2, room)

        m1 = await send(a, room, "from server 0", "x1")
        assert (await b.wait_for("message", lambda m: m["id"] == m1["id"])) == m1
        m2 = await send(b, room, "from server 1", "x2")
        assert (await a.wait_for("message", lambda m: m["id"] == m2["id"])) == m2
        await b2.wait_for("message", lambda m: m["id"] == m2["id"])  # the sender's other socket
        assert [m1["seq"], m2["seq"]] == [1, 2]

        r = mysql_cluster.apis[1].client(pat, "POST", f"/conversations/{room}/messages",
                                          json={"body": "over http on 1", "client_msg_id": "h1"})
        assert r.status_code == 201, r.text
        m3 = r.json()["message"]
        assert m3["seq"] == 3
        for c in (a, b, b2):
            await c.wait_for("message", lambda m: m["id"] == m3["id"])
        await barrier(mysql_cluster.apis, [("cre", a), ("pat", b), ("pat", b2)], "after-m3")
        for c in (a, b, b2):  # exactly once each
            assert [m["seq"] for m in c.events["message"]] == [1, 2, 3], c.events["message"]
    finally:
        await close_all(a, b, b2)


async def test_publish_reaches_subscribers_on_both_processes(mysql_cluster: Any) -> None:
    (s0, s1), api = mysql_cluster.servers, mysql_cluster.api
    cre, pat = api.user("cre"), api.user("pat")
    api.membership("cre", "pat", 100)
    p0, p1, c1 = await connect(s0.url, pat), await connect(s1.url, pat), await connect(s1.url, cre)
    try:
        for c in (p0, p1, c1):
            assert (await c.call("subscribe", {"channel": "creator:cre"})) == {"ok": True}
        r = api.server("POST", "/publish", {"channel": "creator:cre", "event": "new_post", "data": {"post": 7}})
        assert r.status_code == 200, r.text
        assert r.json()["delivered_to"] == 3
        for c in (p0, p1, c1):
            ev = await c.wait_for("event", lambda e: e["event"] == "new_post")
            assert ev["channel"] == "creator:cre" and ev["data"] == {"post": 7} and ev["published_at"].endswith("Z")

        # user:{id} is joined automatically on connect, on whichever process
        r = mysql_cluster.apis[1].server("POST", "/publish", {"channel": "user:pat", "event": "ping", "data": None})
        assert r.status_code == 200 and r.json()["delivered_to"] == 2, r.text
        for c in (p0, p1):
            await c.wait_for("event", lambda e: e["event"] == "ping" and e["channel"] == "user:pat")

        # unsubscribing on one process is counted at once by the other
        assert (await p1.call("unsubscribe", {"channel": "creator:cre"})) == {"ok": True}
        r = api.server("POST", "/publish", {"channel": "creator:cre", "event": "second", "data": {}})
        assert r.json()["delivered_to"] == 2
        await p0.wait_for("event", lambda e: e["event"] == "second")
        await c1.wait_for("event", lambda e: e["event"] == "second")
        await barrier(mysql_cluster.apis, [("pat", p1)], "after-second")
        assert not [e for e in p1.events["event"] if e["event"] == "second"]
        # a closed socket stops counting
        await p0.close()
        counts = []
        deadline = asyncio.get_running_loop().time() + 20  # the disconnect is cleaned up asynchronously
        while asyncio.get_running_loop().time() < deadline:  # (a loaded host: seconds, not 0.2)
            r = api.server("POST", "/publish", {"channel": "creator:cre", "event": "third", "data": {}})
            counts.append(r.json()["delivered_to"])
            if counts[-1] == 1:
                break
            await asyncio.sleep(0.2)
        assert counts[-1] == 1, counts
    finally:
        await close_all(p0, p1, c1)


async def _assert_no_access(api: Api, c: Client, token: str, room: str) -> None:
    """Every read and write path refuses: socket and HTTP."""
    assert err(await c.call("join", {"conversation_id": room})) == "forbidden"
    assert err(await c.call("history", {"conversation_id": room})) == "forbidden"
    assert err(await c.call("send", {"conversation_id": room, "body": "x", "client_msg_id": f"no-{id(c)}"})) == "forbidden"
    assert err(await c.call("read", {"conversation_id": room, "seq": 0})) == "forbidden"
    assert err(await c.call("subscribe", {"channel": f"room:{room}"})) == "forbidden"
    r = api.client(token, "GET", f"/conversations/{room}/messages")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    r = api.client(token, "POST", f"/conversations/{room}/messages", json={"body": "x", "client_msg_id": "no-http"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text


async def test_tier_drop_revokes_on_both_processes_and_raise_restores(mysql_cluster: Any) -> None:
    (s0, s1), apis = mysql_cluster.servers, mysql_cluster.apis
    api = apis[0]
    cre, pat = api.user("cre", "Cre"), api.user("pat", "Pat")
    api.membership("cre", "pat", 500)
    gold = api.room("cre", "Gold", 500)
    open_room = api.room("cre", "Open", 100)
    c = await connect(s0.url, cre)
    p0, p1 = await connect(s0.url, pat), await connect(s1.url, pat)
    try:
        await join(c, gold)
        for p in (p0, p1):
            await join(p, gold)
            await join(p, open_room)
        assert (await p1.call("subscribe", {"channel": f"room:{gold}"})) == {"ok": True}
        before = await send(c, gold, "before", "c1")
        for p in (p0, p1):
            await p.wait_for("message", lambda m: m["id"] == before["id"])

        api.membership("cre", "pat", 100)  # below Gold's minimum, still above Open's
        for p in (p0, p1):
            assert (await p.wait_for("access_revoked")) == {"conversation_id": gold}

        during = await send(c, gold, "while revoked", "c2")
        await c.wait_for("message", lambda m: m["id"] == during["id"])
        r = api.server("POST", "/publish", {"channel": f"room:{gold}", "event": "gold_only", "data": {}})
        assert r.status_code == 200 and r.json()["delivered_to"] == 0, r.text
        open_msg = await send(c, open_room, "open room still works", "c3")
        for p in (p0, p1):
            await p.wait_for("message", lambda m: m["id"] == open_msg["id"])
        await barrier(apis, [("pat", p0), ("pat", p1)], "after-revocation")
        for p in (p0, p1):
            assert during["id"] not in [m["id"] for m in p.events["message"]]
            assert not app_events(p)
            assert p.events["access_revoked"] == [{"conversation_id": gold}]  # only the lost room
        for p, a in ((p0, apis[0]), (p1, apis[1])):
            await _assert_no_access(a, p, pat, gold)
        # the conversation list follows
        ids = [x["conversation"]["id"] for x in api.client(pat, "GET", "/conversations").json()["conversations"]]
        assert gold not in ids and open_room in ids

        apis[1].membership("cre", "pat", 500)  # restored, through the other process
        for p in (p0, p1):
            j = await join(p, gold, since_seq=before["seq"])
            assert [m["id"] for m in j["messages"]] == [during["id"]]  # recovery of what was missed
        after = await send(p1, gold, "back", "p-back")
        await c.wait_for("message", lambda m: m["id"] == after["id"])
        await p0.wait_for("message", lambda m: m["id"] == after["id"])
    finally:
        await close_all(c, p0, p1)


async def test_former_membership_revokes_rooms_and_creator_channel(mysql_cluster: Any) -> None:
    (s0, s1), apis = mysql_cluster.servers, mysql_cluster.apis
    api = apis[0]
    _, pat = api.user("cre"), api.user("pat")
    api.membership("cre", "pat", 300)
    room = api.room("cre", "Free", 0)
    p0, p1 = await connect(s0.url, pat), await connect(s1.url, pat)
    try:
        for p in (p0, p1):
            await join(p, room)
            assert (await p.call("subscribe", {"channel": "creator:cre"})) == {"ok": True}
        apis[1].membership("cre", "pat", 300, status="former")
        for p in (p0, p1):
            assert (await p.wait_for("access_revoked")) == {"conversation_id": room}
        r = api.server("POST", "/publish", {"channel": "creator:cre", "event": "patrons_only", "data": {}})
        assert r.json()["delivered_to"] == 0, r.text
        for p, a in ((p0, apis[0]), (p1, apis[1])):
            await _assert_no_access(a, p, pat, room)
            assert err(await p.call("subscribe", {"channel": "creator:cre"})) == "forbidden"
        await barrier(apis, [("pat", p0), ("pat", p1)], "after-former")
        assert not app_events(p0) and not app_events(p1)
    finally:
        await close_all(p0, p1)


async def test_direct_conversation_after_membership_ends(mysql_cluster: Any) -> None:
    (s0, s1), apis = mysql_cluster.servers, mysql_cluster.apis
    api = apis[0]
    cre, pat = api.user("cre", "Cre"), api.user("pat", "Pat")
    api.membership("cre", "pat", 100)
    direct = api.direct(cre, "pat")
    assert apis[1].direct(pat, "cre") == direct
    api.user("cre2")  # pat's other creator: its room is revoked later, as a marker
    api.membership("cre2", "pat", 100)
    elsewhere = api.room("cre2", "Elsewhere", 0)
    c, p = await connect(s0.url, cre), await connect(s1.url, pat)
    try:
        await join(c, direct)
        await join(p, direct)
        await join(p, elsewhere)
        m1 = await send(c, direct, "thanks!", "d1")
        await p.wait_for("message", lambda m: m["id"] == m1["id"])

        apis[1].membership("cre", "pat", 100, status="former")
        # Marker: a revocation that must happen, requested after the one that must not. Revocations
        # reach each process in order over one control channel, so once this one is in, any
        # revocation of the direct conversation would be in too.
        apis[0].membership("cre2", "pat", 100, status="former")
        await p.wait_for("access_revoked", lambda r: r["conversation_id"] == elsewhere)
        assert p.events["access_revoked"] == [{"conversation_id": elsewhere}]  # the direct one stays readable
        for who, sock, tok, a in (("creator", c, cre, apis[0]), ("patron", p, pat, apis[1])):
            j = await join(sock, direct)
            assert [m["id"] for m in j["messages"]] == [m1["id"]], who
            h = await sock.call("history", {"conversation_id": direct})
            assert h["ok"] and len(h["messages"]) == 1, (who, h)
            assert err(await sock.call("send", {"conversation_id": direct, "body": "x", "client_msg_id": f"f-{who}"})) == "forbidden"
            r = a.client(tok, "POST", f"/conversations/{direct}/messages", json={"body": "x", "client_msg_id": f"fh-{who}"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
            r = a.client(tok, "GET", f"/conversations/{direct}/messages")
            assert r.status_code == 200 and len(r.json()["messages"]) == 1
            assert (await sock.call("read", {"conversation_id": direct, "seq": 1}))["ok"]
            ids = [x["conversation"]["id"] for x in a.client(tok, "GET", "/conversations").json()["conversations"]]
            assert direct in ids, who
            # reopening answers the same conversation, but creates nothing new
            assert a.direct(tok, "pat" if who == "creator" else "cre") == direct

        apis[0].membership("cre", "pat", 100, status="active")
        m2 = await send(p, direct, "I'm back", "d2")
        await c.wait_for("message", lambda m: m["id"] == m2["id"])
        m3 = await send(c, direct, "welcome back", "d3")
        await p.wait_for("message", lambda m: m["id"] == m3["id"])
        assert [m1["seq"], m2["seq"], m3["seq"]] == [1, 2, 3]
    finally:
        await close_all(c, p)


async def test_concurrent_membership_updates_for_one_creator(mysql_cluster) -> None:
    """Many PUT memberships of one creator at once, on both processes: none fails (InnoDB gap-lock
    deadlocks between them are retried), and every membership is stored."""
    api0, api1 = mysql_cluster.apis
    api0.user("crowd-creator")

    def put(i: int, base: int = 100) -> int:
        api = (api0, api1)[i % 2]
        status = "former" if base != 100 and i % 3 == 0 else "active"
        r = api.server("PUT", f"/memberships/crowd-creator/fan{i}", {"tier_cents": base + i, "status": status})
        return r.status_code

    def stored() -> list[tuple[str, int, str]]:
        db = sync_engine(mysql_cluster.servers[0].database_url)
        try:
            with db.connect() as conn:
                return [tuple(r) for r in conn.execute(sa.text(
                    "SELECT patron_id, tier_cents, status FROM memberships WHERE creator_id = 'crowd-creator'"
                    " ORDER BY patron_id"))]
        finally:
            db.dispose()

    codes = await asyncio.gather(*[asyncio.to_thread(put, i) for i in range(32)])
    assert codes == [200] * 32
    assert stored() == sorted((f"fan{i}", 100 + i, "active") for i in range(32))
    codes = await asyncio.gather(*[asyncio.to_thread(put, i, 1000) for i in range(32)])  # updates, not inserts
    assert codes == [200] * 32
    assert stored() == sorted((f"fan{i}", 1000 + i, "former" if i % 3 == 0 else "active") for i in range(32))
