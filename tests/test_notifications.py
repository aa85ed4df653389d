"""Server-API notifications, the feed, devices and /me over real servers and real sockets,
on SQLite (embedded) and MariaDB + Redis, and across a two-process cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import Cluster, MySQLDatabases
from tests.fakefcm import FakeFCMServer
from tests.support import API_KEY, TLS, Client, barrier, make_token, migrated_sqlite, sync_engine


class Served:
    """A cluster plus direct (sync) access to its database, to check what was stored."""

    def __init__(self, cluster: Cluster, database_url: str) -> None:
        self.cluster = cluster
        self.db = sync_engine(database_url)

    @property
    def api(self) -> Any:
        return self.cluster.api

    @property
    def url(self) -> str:
        return self.cluster.servers[0].url

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def close(self) -> None:
        self.db.dispose()
        self.cluster.stop()


def _served(kind: str, tmp_path: Any, mysql_databases: MySQLDatabases, redis_url: str, redis_prefix: str,
            env: dict[str, str] | None = None) -> Served:
    if kind == "sqlite":
        url = migrated_sqlite(tmp_path / "backstage.db")
        cluster = Cluster(url, None, "unused", 1, env=env)
    else:
        url = mysql_databases.new()
        cluster = Cluster(url, redis_url, redis_prefix, 1, env=env)
    return Served(cluster, url)


@pytest.fixture(params=["sqlite", "mysql"])
def served(request: Any, tmp_path: Any, mysql_databases: MySQLDatabases, redis_url: str,
           redis_prefix: str) -> Iterator[Served]:
    """Like conftest's any_server (one process, SQLite or MariaDB + Redis), keeping the database URL."""
    s = _served(request.param, tmp_path, mysql_databases, redis_url, redis_prefix)
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "mysql"])
def served_push(request: Any, tmp_path: Any, mysql_databases: MySQLDatabases, redis_url: str,
                redis_prefix: str, fcm_server: FakeFCMServer) -> Iterator[Served]:
    """`served` whose inline push worker sends through firebase-admin to the fake FCM (reset here)."""
    fcm_server.fake.reset()
    env = {"FIREBASE_CREDENTIALS": fcm_server.credentials_path, "FCM_ENDPOINT": fcm_server.endpoint}
    s = _served(request.param, tmp_path, mysql_databases, redis_url, redis_prefix, env)
    yield s
    s.close()


def notify(api: Any, body: dict[str, Any], expect: int = 202) -> Any:
    r = api.server("POST", "/notifications", body)
    assert r.status_code == expect, r.text
    return r.json()


def base(**kw: Any) -> dict[str, Any]:
    return {"type": "post_published", "title": "New post", "body": "Read it now", **kw}


def roundtrip(data: Any) -> Any:
    return json.loads(json.dumps(data))


def device(api: Any, token: str, device_token: str) -> None:
    r = api.client(token, "POST", "/devices", {"token": device_token, "platform": "android"})
    assert r.status_code == 201, r.text


async def outbox_settled(served: Served, timeout: float = 15) -> list[Any]:
    """Waits until the worker has finished every outbox row (none pending or in flight); returns them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = served.rows("SELECT device_token, status FROM push_outbox ORDER BY id")
        if all(status not in ("pending", "sending") for _, status in rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- delivery and shapes


async def test_user_ids_stored_and_delivered_live(served: Served) -> None:
    api = served.api
    alice = api.user("alice")
    bob = api.user("bob")
    device(api, alice, "alice-phone")  # devices, so that a push, were one made, would leave a row
    device(api, bob, "bob-phone")
    a1 = await Client(served.url, alice).connect()
    a2 = await Client(served.url, alice).connect()
    b = await Client(served.url, bob).connect()
    try:
        out = notify(api, base(user_ids=["alice", "bob", "alice"], data={"post_id": 7, "slug": "hi"}))
        ids = out["notification_ids"]
        assert len(ids) == 2 and all(isinstance(i, str) for i in ids)
        for sock, nid in ((a1, ids[0]), (a2, ids[0]), (b, ids[1])):
            got = roundtrip(await sock.wait_for("notification", lambda n, nid=nid: n["id"] == nid))
            assert got["type"] == "post_published" and got["title"] == "New post" and got["body"] == "Read it now"
            assert got["data"] == {"post_id": 7, "slug": "hi"} and got["read_at"] is None
            assert got["created_at"].endswith("Z")
        await barrier([api], [("alice", a1), ("alice", a2), ("bob", b)], "after-notify")
        assert len(a1.events["notification"]) == 1 and len(b.events["notification"]) == 1
        assert len(a2.events["notification"]) == 1

        feed = api.client(alice, "GET", "/notifications").json()
        assert feed["has_more"] is False and len(feed["notifications"]) == 1
        assert feed["notifications"][0] == roundtrip(a1.events["notification"][0])
        assert set(feed["notifications"][0]) == {"id", "type", "title", "body", "data", "created_at", "read_at"}
        me = api.client(alice, "GET", "/me").json()
        assert me["unread_notifications"] == 1
        # a notification without data has data {}
        nid = notify(api, base(user_ids=["bob"]))["notification_ids"][0]
        got = await b.wait_for("notification", lambda n: n["id"] == nid)
        assert got["data"] == {}
        # no push requested: nothing in the outbox, though both have a device (the rows would have
        # been committed with the notifications, before the 202)
        assert served.rows("SELECT id FROM push_outbox") == []
    finally:
        for c in (a1, a2, b):
            await c.close()


async def test_channel_audiences(served: Served) -> None:
    api = served.api
    tokens = {u: api.user(u) for u in ("cre", "p1", "p2", "p3", "x")}
    api.membership("cre", "p1", 500)
    api.membership("cre", "p2", 100)
    api.membership("cre", "p3", 500, status="former")
    room = api.room("cre", "VIP", min_tier_cents=300)

    def count(user: str) -> int:
        return int(api.client(tokens[user], "GET", "/me").json()["unread_notifications"])

    p1 = await Client(served.url, tokens["p1"]).connect()
    try:
        ids = notify(api, base(channel="creator:cre"))["notification_ids"]
        assert len(ids) == 2
        assert [count(u) for u in ("cre", "p1", "p2", "p3")] == [0, 1, 1, 0]
        await p1.wait_for("notification", lambda n: n["id"] in ids)

        ids = notify(api, base(channel=f"room:{room}"))["notification_ids"]
        assert len(ids) == 1
        assert [count(u) for u in ("cre", "p1", "p2", "p3")] == [0, 2, 1, 0]
        await p1.wait_for("notification", lambda n: n["id"] == ids[0])

        # a member the creator blocked is no longer in the creator's or the room's audience
        assert api.server("PUT", "/creators/cre/blocks/p1", {"reason": "spam"}).status_code == 200
        assert notify(api, base(channel=f"room:{room}"))["notification_ids"] == []
        assert len(notify(api, base(channel="creator:cre"))["notification_ids"]) == 1
        assert [count(u) for u in ("p1", "p2")] == [2, 2]

        assert len(notify(api, base(channel="user:x"))["notification_ids"]) == 1
        assert count("x") == 1
        assert notify(api, base(channel="creator:nobody"))["notification_ids"] == []

        r = api.server("POST", "/notifications", base(channel="room:999999"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        for bad in ("foo:1", "user:", "room", "user:a b"):
            r = api.server("POST", "/notifications", base(channel=bad))
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", bad
    finally:
        await p1.close()


async def test_idempotency_key(served_push: Served, fcm_server: FakeFCMServer) -> None:
    served, fake = served_push, fcm_server.fake
    api = served.api
    u = api.user("u1")
    device(api, u, "u1-phone")
    sock = await Client(served.url, u).connect()
    try:
        first = notify(api, base(user_ids=["u1"], idempotency_key="order-1", push=True))["notification_ids"]
        await sock.wait_for("notification", lambda n: n["id"] == first[0])
        assert await outbox_settled(served) == [("u1-phone", "sent")]  # the first call pushes once
        again = notify(api, base(user_ids=["u1"], idempotency_key="order-1", push=True))["notification_ids"]
        assert again == first
        # whatever the rest of the body
        other = notify(api, {"user_ids": ["u1", "u2"], "type": "x", "title": "t", "body": "b", "push": True,
                             "idempotency_key": "order-1"})["notification_ids"]
        assert other == first
        # outbox rows commit with the notification, before the 202: the replays wrote none
        assert len(served.rows("SELECT id FROM push_outbox")) == 1
        assert len(served.rows("SELECT id FROM notifications")) == 1

        # A marker notification, live and pushed, goes the same way after the replays: once it is
        # in and the worker is idle, whatever the replays had delivered or pushed would be too.
        marker = notify(api, base(user_ids=["u1"], title="marker", push=True))["notification_ids"][0]
        await sock.wait_for("notification", lambda n: n["id"] == marker)
        assert await outbox_settled(served) == [("u1-phone", "sent")] * 2
        assert [n["id"] for n in sock.events["notification"]] == [first[0], marker]
        assert fake.attempts["u1-phone"] == 2
        assert [m["data"]["notification_id"] for m in fake.delivered_messages("u1-phone")] == [first[0], marker]

        # concurrent duplicates: one set of rows, the same ids for everyone
        async with httpx.AsyncClient(verify=TLS, base_url=served.url, timeout=30,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            answers = await asyncio.gather(*[
                http.post("/api/v1/server/notifications", json=base(user_ids=["u1"], idempotency_key="race"))
                for _ in range(8)])
        assert {r.status_code for r in answers} == {202}
        assert len({tuple(r.json()["notification_ids"]) for r in answers}) == 1
        [race] = answers[0].json()["notification_ids"]
        assert len(served.rows("SELECT id FROM notifications")) == 3
        await barrier([api], [("u1", sock)], "after-race")
        assert [n["id"] for n in sock.events["notification"]] == [first[0], marker, race]
    finally:
        await sock.close()


async def test_push_outbox_rows(served: Served) -> None:
    api = served.api
    a = api.user("pa")
    b = api.user("pb")
    api.user("pc")  # no device
    assert api.client(a, "POST", "/devices", {"token": "tok-a1", "platform": "android"}).status_code == 201
    assert api.client(a, "POST", "/devices", {"token": "tok-a2", "platform": "ios"}).status_code == 201
    assert api.client(b, "POST", "/devices", {"token": "tok-b", "platform": "web"}).status_code == 201
    ids = notify(api, base(user_ids=["pa", "pb", "pc"], push=True, collapse_key="posts",
                           data={"post_id": 12, "from": "x", "flag": True}))["notification_ids"]
    rows = served.rows("SELECT user_id, device_token, payload FROM push_outbox ORDER BY device_token")
    assert [(r[0], r[1]) for r in rows] == [("pa", "tok-a1"), ("pa", "tok-a2"), ("pb", "tok-b")]
    payload = json.loads(rows[0][2])
    assert payload["title"] == "New post" and payload["body"] == "Read it now"
    assert payload["data"] == {"type": "post_published", "notification_id": ids[0], "post_id": "12", "flag": "true"}
    assert payload["collapse_key"] == "posts" and payload["priority"] == "normal"
    assert json.loads(rows[2][2])["data"]["notification_id"] == ids[1]
    # push false (the default): no rows
    notify(api, base(user_ids=["pa"]))
    assert len(served.rows("SELECT id FROM push_outbox")) == 3


# ---------------------------------------------------------------- feed


async def test_feed_paging_unread_and_mark_read(served: Served) -> None:
    api = served.api
    me = api.user("reader")
    other = api.user("other")
    ids = [notify(api, base(user_ids=["reader"], title=f"n{i}"))["notification_ids"][0] for i in range(5)]
    theirs = notify(api, base(user_ids=["other"]))["notification_ids"][0]

    def feed(token: str = me, **params: Any) -> Any:
        r = api.client(token, "GET", "/notifications", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    page = feed(limit=2)
    assert [n["id"] for n in page["notifications"]] == [ids[4], ids[3]] and page["has_more"] is True
    page = feed(limit=2, before=ids[3])
    assert [n["id"] for n in page["notifications"]] == [ids[2], ids[1]] and page["has_more"] is True
    page = feed(limit=2, before=ids[1])
    assert [n["id"] for n in page["notifications"]] == [ids[0]] and page["has_more"] is False
    assert [n["id"] for n in feed()["notifications"]] == ids[::-1]

    r = api.client(me, "POST", "/notifications/read", {"ids": [ids[1], ids[3], theirs, "nope", "99999999"]})
    assert r.status_code == 200 and r.json() == {"unread_notifications": 3}
    unread = feed(unread="true")
    assert [n["id"] for n in unread["notifications"]] == [ids[4], ids[2], ids[0]]
    assert feed(unread="true", limit=2)["has_more"] is True
    read = {n["id"]: n for n in feed()["notifications"]}
    assert read[ids[1]]["read_at"].endswith("Z") and read[ids[4]]["read_at"] is None
    # someone else's notification was not touched
    assert feed(other)["notifications"][0]["read_at"] is None
    assert api.client(other, "GET", "/me").json()["unread_notifications"] == 1
    # marking again changes nothing
    r = api.client(me, "POST", "/notifications/read", {"ids": [ids[1]]})
    assert r.json() == {"unread_notifications": 3}

    r = api.client(me, "POST", "/notifications/read", {"all": True})
    assert r.status_code == 200 and r.json() == {"unread_notifications": 0}
    assert api.client(me, "GET", "/me").json()["unread_notifications"] == 0
    assert feed(unread="true") == {"notifications": [], "has_more": False}
    assert api.client(other, "GET", "/me").json()["unread_notifications"] == 1

    for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"before": "abc"}, {"unread": "maybe"}):
        r = api.client(me, "GET", "/notifications", params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", params
    for body in ({}, {"ids": "1"}, {"ids": [1]}, {"all": False}, {"all": "yes"}, {"ids": [], "all": True},
                 {"ids": ["1"] * 1001}):
        r = api.client(me, "POST", "/notifications/read", body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", body


# ---------------------------------------------------------------- devices


async def test_devices(served: Served) -> None:
    api = served.api
    a = api.user("da")
    b = api.user("db")

    def devices() -> list[tuple[str, str, str]]:
        return [tuple(r) for r in served.rows("SELECT token, user_id, platform FROM devices ORDER BY token")]

    r = api.client(a, "POST", "/devices", {"token": "fcm:abc-1", "platform": "android"})
    assert r.status_code == 201 and r.json()["device"] == {"token": "fcm:abc-1", "platform": "android"}
    assert api.client(a, "POST", "/devices", {"token": "fcm:abc-1", "platform": "android"}).status_code == 201
    assert devices() == [("fcm:abc-1", "da", "android")]
    # the same token registered by another user moves to them
    assert api.client(b, "POST", "/devices", {"token": "fcm:abc-1", "platform": "ios"}).status_code == 201
    assert devices() == [("fcm:abc-1", "db", "ios")]
    # deleting someone else's token: 204 and nothing changes
    assert api.client(a, "DELETE", "/devices/fcm:abc-1").status_code == 204
    assert devices() == [("fcm:abc-1", "db", "ios")]
    assert api.client(a, "DELETE", "/devices/unknown-token").status_code == 204
    assert api.client(b, "DELETE", "/devices/fcm:abc-1").status_code == 204
    assert devices() == []

    long_token = "t" * 512
    assert api.client(a, "POST", "/devices", {"token": long_token, "platform": "web"}).status_code == 201
    for body in ({"token": "t", "platform": "windows"}, {"token": "t"}, {"platform": "ios"},
                 {"token": "", "platform": "ios"}, {"token": "t" * 513, "platform": "ios"},
                 {"token": 5, "platform": "ios"}, {"token": "t", "platform": None}):
        r = api.client(a, "POST", "/devices", body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", body
    assert devices() == [(long_token, "da", "web")]


# ---------------------------------------------------------------- validation and auth


async def test_validation_errors(served: Served) -> None:
    api = served.api
    api.user("v1")
    cases: list[dict[str, Any]] = [
        {"type": "t", "title": "t", "body": "b"},  # neither user_ids nor channel
        base(user_ids=["v1"], channel="user:v1"),  # both
        base(user_ids="v1"),
        base(user_ids=[]),
        base(user_ids=[1]),
        base(user_ids=["bad id"]),
        base(user_ids=["x" * 65]),
        base(user_ids=[f"u{i}" for i in range(1001)]),
        base(channel=5),
        base(channel=""),
        base(user_ids=["v1"], type=""),
        base(user_ids=["v1"], type=3),
        base(user_ids=["v1"], type="x" * 65),
        base(user_ids=["v1"], title="   "),
        base(user_ids=["v1"], title="x" * 201),
        base(user_ids=["v1"], body=""),
        base(user_ids=["v1"], body="x" * 4001),
        base(user_ids=["v1"], data=[1]),
        base(user_ids=["v1"], data="x"),
        base(user_ids=["v1"], data={"big": "x" * 3000}),
        base(user_ids=["v1"], push="yes"),
        base(user_ids=["v1"], collapse_key=""),
        base(user_ids=["v1"], collapse_key="x" * 65),
        base(user_ids=["v1"], idempotency_key=""),
        base(user_ids=["v1"], idempotency_key=7),
        base(user_ids=["v1"], idempotency_key="k" * 201),
        {"user_ids": ["v1"], "title": "t", "body": "b"},  # no type
    ]
    for body in cases:
        r = api.server("POST", "/notifications", body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", (body, r.text)
    r = api.http.post("/api/v1/server/notifications", content=b"not json", headers=api.server_headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid"
    r = api.http.post("/api/v1/server/notifications", content=b"[1]", headers=api.server_headers)
    assert r.status_code == 400
    assert served.rows("SELECT id FROM notifications") == []
    # exactly 1000 user ids is fine
    assert len(notify(api, base(user_ids=[f"u{i}" for i in range(1000)]))["notification_ids"]) == 1000


async def test_unauthorized(served: Served) -> None:
    api = served.api
    token = api.user("z")
    body = base(user_ids=["z"])
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Bearer {token}"},
                    {"Authorization": API_KEY}):
        r = api.http.post("/api/v1/server/notifications", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", headers
    bad_jwts = [make_token("z", secret="another-secret-0123456789abcdef0123"), make_token("z", ttl=-10), API_KEY]
    routes = [("GET", "/api/v1/notifications", None), ("POST", "/api/v1/notifications/read", {"all": True}),
              ("POST", "/api/v1/devices", {"token": "t", "platform": "ios"}), ("DELETE", "/api/v1/devices/t", None)]
    for method, path, json_body in routes:
        r = api.http.request(method, path, json=json_body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        for bad in bad_jwts:
            r = api.http.request(method, path, json=json_body, headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401, (path, r.text)
    assert served.rows("SELECT token FROM devices") == []


# ---------------------------------------------------------------- cluster


async def test_notification_crosses_the_cluster(mysql_cluster: Cluster) -> None:
    api0, api1 = mysql_cluster.apis
    token = api0.user("far")
    api0.user("cre2")
    api0.membership("cre2", "far", 100)
    sock = await Client(mysql_cluster.servers[1].url, token).connect()
    try:
        nid = notify(api0, base(user_ids=["far"]))["notification_ids"][0]
        got = await sock.wait_for("notification", lambda n: n["id"] == nid)
        assert got["title"] == "New post"
        ids = notify(api0, base(channel="creator:cre2", idempotency_key="c1"))["notification_ids"]
        await sock.wait_for("notification", lambda n: n["id"] == ids[0])
        # the replay on the other server answers the same ids and delivers nothing new
        assert notify(api1, base(channel="creator:cre2", idempotency_key="c1"))["notification_ids"] == ids
        await barrier(mysql_cluster.apis, [("far", sock)], "after-replay")
        assert len(sock.events["notification"]) == 2
        assert api1.client(token, "GET", "/me").json()["unread_notifications"] == 2
    finally:
        await sock.close()


# ---------------------------------------------------------------- push end to end (inline worker)


async def test_push_reaches_fcm_through_the_inline_worker(tmp_path: Any) -> None:
    from tests.fakefcm import FakeFCMServer

    fcm = FakeFCMServer(tmp_path)
    cluster = Cluster(migrated_sqlite(tmp_path / "backstage.db"), None, "unused", 1,
                      env={"FIREBASE_CREDENTIALS": fcm.credentials_path, "FCM_ENDPOINT": fcm.endpoint,
                           "PUSH_WORKER": "inline"})
    try:
        api = cluster.api
        token = api.user("mob")
        assert api.client(token, "POST", "/devices", {"token": "phone-1", "platform": "android"}).status_code == 201
        ids = notify(api, base(user_ids=["mob"], push=True, data={"post_id": 3}, collapse_key="posts"))
        deadline = asyncio.get_running_loop().time() + 10
        while not fcm.fake.delivered_messages("phone-1"):
            assert asyncio.get_running_loop().time() < deadline, "push not sent"
            await asyncio.sleep(0.1)
        msg = fcm.fake.delivered_messages("phone-1")[0]
        assert msg["notification"] == {"title": "New post", "body": "Read it now"}
        assert msg["data"] == {"type": "post_published", "notification_id": ids["notification_ids"][0],
                               "post_id": "3"}
    finally:
        cluster.stop()
        fcm.stop()


async def test_chat_message_push_goes_through_the_wired_outbox(served: Served) -> None:
    """wiring.install hands ChatService the push hook: the send commits one fan-out job, which the
    inline worker expands into a row for the offline recipient's device."""
    api = served.api
    creator = api.user("chc")
    patron = api.user("chp")
    api.membership("chc", "chp", 100)
    assert api.client(patron, "POST", "/devices", {"token": "chp-phone", "platform": "ios"}).status_code == 201
    conv = api.direct(creator, "chp")
    r = api.client(creator, "POST", f"/conversations/{conv}/messages", {"body": "hello", "client_msg_id": "c1"})
    assert r.status_code == 201, r.text
    assert served.rows("SELECT kind, message_id FROM push_jobs") == [("message", int(r.json()["message"]["id"]))]
    deadline = asyncio.get_running_loop().time() + 15
    while not (rows := served.rows("SELECT user_id, device_token, payload FROM push_outbox")):
        assert asyncio.get_running_loop().time() < deadline, "the job was not expanded"
        await asyncio.sleep(0.05)
    assert [(u, t) for u, t, _ in rows] == [("chp", "chp-phone")]
    data = json.loads(rows[0][2])["data"]
    assert data["type"] == "message" and data["conversation_id"] == conv
