"""seq is gapless and unique under concurrent senders on several processes (SPEC §4), and
`send` is idempotent on (sender, client_msg_id) even when the retries race each other."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from tests.support import TLS, Client, barrier

USERS = 6
PER_USER = 25


async def _send_ack(c: Client, room: str, body: str, cmid: str) -> dict[str, Any]:
    """Send as a well-behaved client: on rate_limited (or unavailable), retry the same
    client_msg_id later; returns the first other ack."""
    for _ in range(100):
        r = await c.call("send", {"conversation_id": room, "body": body, "client_msg_id": cmid}, timeout=30)
        if r["ok"] or r["error"]["code"] not in ("rate_limited", "unavailable"):
            return dict(r)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{cmid} never got through")


async def _send_socket(c: Client, room: str, body: str, cmid: str) -> dict[str, Any]:
    r = await _send_ack(c, room, body, cmid)
    assert r["ok"], r
    return dict(r["message"])


async def _send_http(http: httpx.AsyncClient, token: str, room: str, body: str, cmid: str) -> dict[str, Any]:
    for _ in range(100):
        r = await http.post(f"/api/v1/conversations/{room}/messages", json={"body": body, "client_msg_id": cmid},
                            headers={"Authorization": f"Bearer {token}"})
        if r.status_code == 201:
            return r.json()["message"]
        assert r.status_code in (429, 503), r.text
        await asyncio.sleep(0.1)
    raise AssertionError(f"{cmid} never got through")


def _all_messages(api: Any, token: str, room: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        r = api.client(token, "GET", f"/conversations/{room}/messages", params={"after_seq": after, "limit": 100})
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["messages"]
        if not page["has_more"]:
            return out
        after = page["messages"][-1]["seq"]


async def _many_senders(cluster: Any, users: int, per_user: int) -> None:
    api = cluster.api
    urls = [s.url for s in cluster.servers]
    cre = api.user("cre", "Cre")
    room = api.room("cre", "Busy", 0)
    tokens = {}
    for i in range(users):
        uid = f"u{i}"
        tokens[uid] = api.user(uid, f"User {i}")
        api.membership("cre", uid, 100)

    listeners = [await Client(url, cre).connect() for url in urls]
    sockets: dict[str, Client] = {}
    https = [httpx.AsyncClient(verify=TLS, base_url=url, timeout=30) for url in urls]
    try:
        for li in listeners:
            assert (await li.call("join", {"conversation_id": room}))["ok"]
        for i, uid in enumerate(tokens):
            if i % 2 == 0:  # even users send over sockets, odd ones over HTTP; alternating processes
                sockets[uid] = await Client(urls[i % len(urls)], tokens[uid]).connect()

        async def user_task(i: int, uid: str) -> list[dict[str, Any]]:
            if uid in sockets:
                # one socket: its events are handled in order, so these commit in this order
                return list(await asyncio.gather(*[
                    _send_socket(sockets[uid], room, f"{uid} #{k}", f"{uid}-{k}") for k in range(per_user)]))
            # HTTP: every request of the user in flight at once, on both processes
            return list(await asyncio.gather(*[
                _send_http(https[(i + k) % len(https)], tokens[uid], room, f"{uid} #{k}", f"{uid}-{k}")
                for k in range(per_user)]))

        results = await asyncio.gather(*[user_task(i, uid) for i, uid in enumerate(tokens)])
        total = users * per_user

        stored = _all_messages(api, cre, room)
        seqs = [m["seq"] for m in stored]
        assert seqs == list(range(1, total + 1)), f"gaps or duplicates: {sorted(Counter(seqs).items())[:10]}"
        cmids = Counter((m["sender"]["id"], m["client_msg_id"]) for m in stored)
        assert len(cmids) == total and max(cmids.values()) == 1
        assert {(m["sender"]["id"], m["client_msg_id"]) for m in stored} == {
            (uid, f"{uid}-{k}") for uid in tokens for k in range(per_user)}
        # every ack carried the stored seq
        by_cmid = {(m["sender"]["id"], m["client_msg_id"]): m for m in stored}
        for uid, acks in zip(tokens, results, strict=True):
            for ack in acks:
                assert by_cmid[(uid, ack["client_msg_id"])]["seq"] == ack["seq"]
            if uid in sockets:  # a socket's messages keep the order they were sent in
                assert [a["seq"] for a in acks] == sorted(a["seq"] for a in acks), uid
        # both processes' listeners saw each message exactly once
        for li in listeners:
            await li.wait_for("message", lambda m: m["seq"] == total, timeout=15)
        await barrier(cluster.apis, [("cre", li) for li in listeners], "after-senders")
        for li in listeners:
            got = sorted(m["seq"] for m in li.events["message"])
            assert got == list(range(1, total + 1))
        last = api.client(cre, "GET", "/conversations").json()["conversations"][0]
        assert last["last_message"]["seq"] == total and last["unread_count"] == total
    finally:
        for c in [*listeners, *sockets.values()]:
            await c.close()
        for h in https:
            await h.aclose()


async def test_gapless_seq_two_processes_mariadb(mysql_cluster: Any) -> None:
    await _many_senders(mysql_cluster, USERS, PER_USER)


async def test_gapless_seq_sqlite(sqlite_server: Any) -> None:
    await _many_senders(sqlite_server, 4, 20)


async def _racing_retries(cluster: Any, rounds: int) -> None:
    api = cluster.api
    urls = [s.url for s in cluster.servers]
    api.user("cre")
    pat = api.user("pat", "Pat")
    api.membership("cre", "pat", 100)
    room = api.room("cre", "Race", 0)
    a = await Client(urls[0], pat).connect()
    b = await Client(urls[-1], pat).connect()
    http = httpx.AsyncClient(verify=TLS, base_url=urls[-1], timeout=30)
    try:
        assert (await a.call("join", {"conversation_id": room}))["ok"]  # a watches the broadcasts
        for i in range(rounds):
            cmid = f"race-{i}"
            body = f"once {i}"
            acks = await asyncio.gather(
                _send_socket(a, room, body, cmid), _send_socket(b, room, body, cmid),
                _send_http(http, pat, room, body, cmid), _send_socket(a, room, body, cmid))
            assert len({m["id"] for m in acks}) == 1, acks
            assert len({m["seq"] for m in acks}) == 1, acks
        stored = _all_messages(api, pat, room)
        assert [m["seq"] for m in stored] == list(range(1, rounds + 1))
        assert [m["client_msg_id"] for m in stored] == [f"race-{i}" for i in range(rounds)]
        # the one message was broadcast once, not once per retry: a marker sent through b's process
        # after every ack reaches a after anything either process broadcast before it
        marker = await _send_socket(b, room, "marker", "race-marker")
        await a.wait_for("message", lambda m: m["id"] == marker["id"])
        assert sorted(m["seq"] for m in a.events["message"]) == list(range(1, rounds + 2))
        # a conflicting reuse is still refused after the race
        r = await _send_ack(a, room, "different", "race-0")  # a has sent a lot: it may be rate limited first
        assert r["ok"] is False and r["error"]["code"] == "conflict", r
    finally:
        await a.close()
        await b.close()
        await http.aclose()


async def test_idempotent_retries_racing_on_two_processes(mysql_cluster: Any) -> None:
    await _racing_retries(mysql_cluster, 20)


async def test_idempotent_retries_racing_sqlite(sqlite_server: Any) -> None:
    await _racing_retries(sqlite_server, 10)


async def test_racing_retries_broadcast_once(mysql_cluster: Any) -> None:
    api = mysql_cluster.api
    urls = [s.url for s in mysql_cluster.servers]
    cre = api.user("cre")
    pat = api.user("pat")
    api.membership("cre", "pat", 100)
    room = api.room("cre", "Once", 0)
    watcher = await Client(urls[1], cre).connect()
    a, b = await Client(urls[0], pat).connect(), await Client(urls[1], pat).connect()
    try:
        assert (await watcher.call("join", {"conversation_id": room}))["ok"]
        for i in range(10):
            await asyncio.gather(_send_socket(a, room, "same", f"b-{i}"), _send_socket(b, room, "same", f"b-{i}"))
        await watcher.wait_for("message", lambda m: m["seq"] == 10)
        await barrier(mysql_cluster.apis, [("cre", watcher)], "after-races")
        assert sorted(m["seq"] for m in watcher.events["message"]) == list(range(1, 11))
    finally:
        for c in (watcher, a, b):
            await c.close()

