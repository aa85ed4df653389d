"""The server API a backend needs beyond SPEC §3 (docs/api.md "Server API: rooms, messages,
users, presence"), on real servers: idempotent room creation (also racing, from two processes),
the room list, server-side delete, cluster-wide disconnect, history and presence reads, the
429 headers and the per-user HTTP budget shared by the cluster, and 405 answers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import Cluster
from tests.support import API_KEY, TLS, Api, Client, barrier, make_token, sync_engine

SERVER = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Pair:
    """Where the backend calls (`api`) and where the users' sockets live (`far`): two processes
    sharing Redis and MariaDB, or the one SQLite process for both."""

    cluster: Cluster
    api: Api
    far: Api
    far_url: str

    @property
    def apis(self) -> list[Api]:
        return list(dict.fromkeys([self.api, self.far]))


@pytest.fixture(params=["sqlite", "mysql"])
def pair(request: Any) -> Pair:
    if request.param == "sqlite":
        c: Cluster = request.getfixturevalue("shared_sqlite")
        return Pair(c, c.apis[0], c.apis[0], c.servers[0].url)
    c = request.getfixturevalue("shared_mysql_cluster")
    return Pair(c, c.apis[0], c.apis[1], c.servers[1].url)


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def create_room(api: Api, creator: str, name: str = "Room", external_id: Any = None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"creator_id": creator, "name": name, "min_tier_cents": 0, **extra}
    if external_id is not None:
        body["external_id"] = external_id
    return api.server("POST", "/rooms", body)


# ---------------------------------------------------------------- rooms


def test_create_room_is_idempotent_on_external_id(shared_any_server: Cluster, uid: Any) -> None:
    api = shared_any_server.api
    cre, other = uid("cre"), uid("other")
    first = create_room(api, cre, "Tier 7 lounge", "tier-7")
    assert first.status_code == 201, first.text
    room = first.json()["conversation"]
    assert room["external_id"] == "tier-7" and room["name"] == "Tier 7 lounge"

    again = create_room(api, cre, "Renamed", "tier-7", post_policy="creator")
    assert again.status_code == 200, again.text
    assert again.json()["conversation"] == room  # the existing room, as it is

    # per creator: another creator's room with the same external_id is another room
    theirs = create_room(api, other, "Theirs", "tier-7")
    assert theirs.status_code == 201 and theirs.json()["conversation"]["id"] != room["id"]
    # exact ids: case matters on MariaDB too
    upper = create_room(api, cre, "Upper", "TIER-7")
    assert upper.status_code == 201 and upper.json()["conversation"]["id"] != room["id"]
    # without an external_id every call makes a room
    plain = [create_room(api, cre, "Plain") for _ in range(2)]
    assert [r.status_code for r in plain] == [201, 201]
    assert plain[0].json()["conversation"]["external_id"] is None
    assert plain[0].json()["conversation"]["id"] != plain[1].json()["conversation"]["id"]

    for bad in (7, "", "x" * 129, "has space", "é", ["tier-7"]):
        r = create_room(api, cre, "Bad", bad)
        assert (r.status_code, error_code(r)) == (400, "invalid"), (bad, r.text)

    listed = api.server("GET", f"/rooms?creator_id={cre}").json()["rooms"]
    assert [r["external_id"] for r in listed] == ["tier-7", "TIER-7", None, None]


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
async def test_racing_creates_make_one_room(backend: str, request: Any, uid: Any) -> None:
    """Concurrent creates with one external_id, spread over both processes on MariaDB: one 201,
    the rest 200 with the same room, one row."""
    cluster: Cluster = request.getfixturevalue("shared_sqlite" if backend == "sqlite" else "shared_mysql_cluster")
    urls = [s.url for s in cluster.servers]
    engine = sync_engine(cluster.database_url)
    clients = [httpx.AsyncClient(verify=TLS, base_url=u, timeout=30, headers=SERVER) for u in urls]
    try:
        for round_ in range(3):
            cre = uid(f"racer{round_}")  # a new creator too: the user row is created in the race
            body = {"creator_id": cre, "name": "Raced", "min_tier_cents": 0, "external_id": "ext-1"}
            answers = await asyncio.gather(*[clients[i % len(clients)].post("/api/v1/server/rooms", json=body)
                                             for i in range(12)])
            statuses = sorted(r.status_code for r in answers)
            assert statuses == [200] * 11 + [201], [r.text for r in answers]
            assert len({r.json()["conversation"]["id"] for r in answers}) == 1
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT count(*) FROM conversations WHERE creator_id = :c"),
                                    {"c": cre}).scalar()
            assert rows == 1
    finally:
        for c in clients:
            await c.aclose()
        engine.dispose()


def test_room_list_pages_by_cursor(shared_any_server: Cluster, uid: Any) -> None:
    api = shared_any_server.api
    cre, other = uid("lister"), uid("lister_other")
    mine = [create_room(api, cre, f"R{i}", f"r{i}").json()["conversation"] for i in range(5)]
    theirs = create_room(api, other, "T").json()["conversation"]

    pages, cursor = [], None
    while True:
        r = api.server("GET", f"/rooms?creator_id={cre}&limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status_code == 200, r.text
        pages.append(r.json()["rooms"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [room for page in pages for room in page] == mine  # creation order, nothing twice

    # without creator_id: every room (this server's other tests' too), still in id order
    seen, cursor = [], None
    for _ in range(1000):
        r = api.server("GET", "/rooms?limit=100" + (f"&cursor={cursor}" if cursor else ""))
        seen += r.json()["rooms"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    ids = [int(room["id"]) for room in seen]
    assert ids == sorted(set(ids))
    assert {room["id"] for room in [*mine, theirs]} <= {room["id"] for room in seen}
    assert all(room["kind"] == "room" for room in seen)

    assert api.server("GET", f"/rooms?creator_id={uid('nobody')}").json() == {"rooms": [], "next_cursor": None}
    for query in ("limit=0", "limit=101", "limit=x", "cursor=abc", "cursor=01", "creator_id=bad%20id"):
        r = api.server("GET", f"/rooms?{query}")
        assert (r.status_code, error_code(r)) == (400, "invalid"), (query, r.text)


# ---------------------------------------------------------------- messages


async def test_server_delete_reaches_members_on_the_other_process(pair: Pair, uid: Any) -> None:
    cre, pat = uid("cre"), uid("pat")
    pair.api.user(cre)
    token = pair.api.user(pat)
    pair.api.membership(cre, pat, 100)
    room = pair.api.room(cre, "Moderated", 100)
    sock = await Client(pair.far_url, token).connect()
    try:
        assert (await sock.call("join", {"conversation_id": room}))["ok"]
        sent = await sock.call("send", {"conversation_id": room, "body": "spam", "client_msg_id": "s-1"})
        message = sent["message"]

        r = pair.api.server("DELETE", f"/messages/{message['id']}")
        assert r.status_code == 200, r.text
        deleted = r.json()["message"]
        # message_updated carries no `reactions` (one frame for every reader; see docs/api.md)
        unchanged = {k: v for k, v in message.items() if k != "reactions"}
        assert deleted == {**unchanged, "body": "", "deleted": True, "edited_at": deleted["edited_at"]}
        assert deleted["edited_at"] is not None
        got = await sock.wait_for("message_updated", lambda m: m["id"] == message["id"])
        assert got == deleted  # the event of an author's delete (SPEC §4)

        again = pair.api.server("DELETE", f"/messages/{message['id']}")
        assert again.status_code == 200 and again.json()["message"] == deleted
        await barrier(pair.apis, [(pat, sock)], "after-second-delete")
        assert len(sock.events["message_updated"]) == 1  # a repeated delete emits nothing

        history = await sock.call("history", {"conversation_id": room})
        assert history["messages"] == [{**deleted, "reactions": []}]  # a reader's history shows reactions
        for bad, code in (("999999999", "not_found"), ("abc", "not_found"), ("01", "not_found")):
            r = pair.api.server("DELETE", f"/messages/{bad}")
            assert (r.status_code, error_code(r)) == (404, code), r.text
    finally:
        await sock.close()


def test_server_history_pages_like_the_client_api(shared_any_server: Cluster, uid: Any) -> None:
    api = shared_any_server.api
    cre, pat = uid("cre"), uid("pat")
    cre_token = api.user(cre)
    api.user(pat)
    api.membership(cre, pat, 100)
    room = api.room(cre, "History", 500)  # the patron's tier is too low: the backend reads it all the same
    for i in range(7):
        r = api.client(cre_token, "POST", f"/conversations/{room}/messages", {"body": f"m{i + 1}", "client_msg_id": f"h{i}"})
        assert r.status_code == 201, r.text

    def page(query: str) -> tuple[list[int], bool]:
        r = api.server("GET", f"/conversations/{room}/messages?{query}")
        assert r.status_code == 200, r.text
        client = api.client(cre_token, "GET", f"/conversations/{room}/messages?{query.replace('since_seq', 'after_seq')}")
        assert r.json() == client.json()  # the same messages, the same shape
        return [m["seq"] for m in r.json()["messages"]], r.json()["has_more"]

    assert page("") == ([1, 2, 3, 4, 5, 6, 7], False)
    assert page("limit=3") == ([5, 6, 7], True)
    assert page("before_seq=5&limit=3") == ([2, 3, 4], True)
    assert page("before_seq=2") == ([1], False)
    assert page("since_seq=5") == ([6, 7], False)
    assert page("after_seq=2&limit=2") == ([3, 4], True)
    assert page("after_seq=7") == ([], False)

    patron = api.client(make_token(pat), "GET", f"/conversations/{room}/messages")
    assert patron.status_code == 403  # the client API still checks membership
    for query, status, code in (("limit=0", 400, "invalid"), ("limit=101", 400, "invalid"),
                                ("before_seq=-1", 400, "invalid"), ("since_seq=x", 400, "invalid"),
                                ("since_seq=2&after_seq=3", 400, "invalid")):
        r = api.server("GET", f"/conversations/{room}/messages?{query}")
        assert (r.status_code, error_code(r)) == (status, code), (query, r.text)
    for bad in ("999999999", "abc"):
        r = api.server("GET", f"/conversations/{bad}/messages")
        assert (r.status_code, error_code(r)) == (404, "not_found"), r.text


# ---------------------------------------------------------------- users and presence


async def test_disconnect_user_on_every_process(pair: Pair, uid: Any) -> None:
    target, bystander = uid("target"), uid("bystander")
    target_token, bystander_token = pair.api.user(target), pair.api.user(bystander)
    near = await Client(pair.cluster.servers[0].url, target_token).connect()
    far = await Client(pair.far_url, target_token).connect()
    other = await Client(pair.far_url, bystander_token).connect()
    gone = {id(c): asyncio.Event() for c in (near, far)}
    for c in (near, far):
        c.sio.on("disconnect", lambda *_, c=c: gone[id(c)].set())
    try:
        r = pair.api.server("POST", f"/users/{target}/disconnect")
        assert r.status_code == 200, r.text
        assert r.json() == {"user_id": target, "was_online": True}
        for c in (near, far):
            await asyncio.wait_for(gone[id(c)].wait(), 10)
            assert not c.sio.connected
        await barrier(pair.apis, [(bystander, other)], "after-disconnect")
        assert other.sio.connected  # only that user's sockets

        deadline = time.monotonic() + 10  # the servers release the sockets' presence on their own time
        while pair.api.server("POST", f"/users/{target}/disconnect").json()["was_online"]:
            assert time.monotonic() < deadline, "still online after the disconnect"
            await asyncio.sleep(0.05)
        back = await Client(pair.far_url, target_token).connect()  # a valid token may come back
        await back.close()
        r = pair.api.server("POST", "/users/bad%20id/disconnect")
        assert (r.status_code, error_code(r)) == (400, "invalid")
    finally:
        for c in (near, far, other):
            await c.close()


async def test_presence_of_a_conversation_and_channels(pair: Pair, uid: Any) -> None:
    cre, p1, p2, low = uid("cre"), uid("p1"), uid("p2"), uid("low")
    pair.api.user(cre)
    t1, t2, tl = pair.api.user(p1), pair.api.user(p2), pair.api.user(low)
    for patron, tier in ((p1, 500), (p2, 500), (low, 100)):
        pair.api.membership(cre, patron, tier)
    room = pair.api.room(cre, "Present", 500)
    s1 = await Client(pair.far_url, t1).connect()
    s2 = await Client(pair.cluster.servers[0].url, t2).connect()
    sl = await Client(pair.far_url, tl).connect()
    api = pair.api

    def get(path: str) -> Any:
        r = api.server("GET", path)
        assert r.status_code == 200, r.text
        return r.json()

    try:
        assert (await s1.call("join", {"conversation_id": room}))["ok"]
        assert (await s1.call("subscribe", {"channel": f"room:{room}"}))["ok"]
        assert get(f"/conversations/{room}/presence") == {"conversation_id": room, "online": [p1]}
        assert get(f"/channels/room:{room}/presence") == {
            "channel": f"room:{room}", "online": sorted([p1, p2]), "subscribers": 1}
        assert get(f"/channels/creator:{cre}/presence") == {
            "channel": f"creator:{cre}", "online": sorted([p1, p2, low]), "subscribers": 0}
        assert get(f"/channels/user:{p1}/presence") == {"channel": f"user:{p1}", "online": [p1], "subscribers": 1}
        assert get(f"/channels/user:{cre}/presence") == {"channel": f"user:{cre}", "online": [], "subscribers": 0}

        assert (await s1.call("leave", {"conversation_id": room}))["ok"]
        assert get(f"/conversations/{room}/presence") == {"conversation_id": room, "online": []}

        for path, status, code in ((f"/conversations/{999999999}/presence", 404, "not_found"),
                                   ("/conversations/abc/presence", 404, "not_found"),
                                   ("/channels/room:999999999/presence", 404, "not_found"),
                                   ("/channels/lobby/presence", 400, "invalid"),
                                   ("/channels/user:a%20b/presence", 400, "invalid")):
            r = api.server("GET", path)
            assert (r.status_code, error_code(r)) == (status, code), (path, r.text)
    finally:
        for c in (s1, s2, sl):
            await c.close()


def test_new_server_endpoints_need_the_api_key(shared_sqlite: Cluster) -> None:
    http = shared_sqlite.api.http
    for method, path in (("GET", "/api/v1/server/rooms"), ("DELETE", "/api/v1/server/messages/1"),
                         ("GET", "/api/v1/server/conversations/1/messages"),
                         ("GET", "/api/v1/server/conversations/1/presence"),
                         ("GET", "/api/v1/server/channels/user:a/presence"),
                         ("POST", "/api/v1/server/users/a/disconnect")):
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Bearer {make_token('a')}"}):
            r = http.request(method, path, headers=headers)
            assert (r.status_code, error_code(r)) == (401, "unauthorized"), (method, path, r.text)


# ---------------------------------------------------------------- rate limits


async def test_429_headers_and_one_budget_for_the_cluster(pair: Pair, uid: Any) -> None:
    """A user's HTTP sends share one budget (20 in any 2 s) across processes: what one process
    counted, the other sees; a burst over the budget is refused on either process, each 429
    with Retry-After and RateLimit-*. A try that took 2 s or more (the window slid meanwhile)
    proves nothing and is made again with a new user."""
    urls = [pair.cluster.servers[0].url, pair.far_url]
    for attempt in range(3):
        cre = uid(f"limited{attempt}")
        token = pair.api.user(cre)
        room = pair.api.room(cre, "Busy")
        path = f"/api/v1/conversations/{room}/messages"
        clients = [httpx.AsyncClient(verify=TLS, base_url=u, timeout=30, headers={"Authorization": f"Bearer {token}"})
                   for u in urls]
        def send(i: int, cmid: str, clients: list[httpx.AsyncClient] = clients, path: str = path) -> Any:
            return clients[i % 2].post(path, json={"body": cmid, "client_msg_id": cmid})

        try:
            started = time.monotonic()
            first, second = await send(0, "a"), await send(1, "b")
            if time.monotonic() - started < 2:
                # one budget: the second process saw the first one's send (per process: 19 again)
                assert [first.headers["RateLimit-Remaining"], second.headers["RateLimit-Remaining"]] == ["19", "18"]
            burst = await asyncio.gather(*[send(i, f"c{i}") for i in range(22)])
            after = await send(len(burst), "d")
            elapsed = time.monotonic() - started
        finally:
            for c in clients:
                await c.aclose()
        if elapsed >= 2:
            continue
        statuses = [r.status_code for r in burst]
        assert sorted(statuses) == [201] * 18 + [429] * 4, statuses  # per process: 22 accepted
        assert (first.status_code, second.status_code, after.status_code) == (201, 201, 429)
        for r in [first, second, *burst, after]:
            assert r.headers["RateLimit-Limit"] == "20" and r.headers["RateLimit-Policy"] == "20;w=2", r.headers
            assert 0 <= int(r.headers["RateLimit-Reset"]) <= 2
            if r.status_code == 429:
                assert error_code(r) == "rate_limited"
                assert r.headers["RateLimit-Remaining"] == "0"
                assert 1 <= int(r.headers["Retry-After"]) <= 2
            else:
                assert "Retry-After" not in r.headers
        # read just after each hit: concurrent hits of one user may all see the lowest count
        assert all(0 <= int(r.headers["RateLimit-Remaining"]) <= 17 for r in burst if r.status_code == 201)

        # once the window has moved on (as Retry-After says), the refused send goes through
        deadline = time.monotonic() + 10
        while True:
            r = pair.far.client(token, "POST", f"/conversations/{room}/messages", {"body": "d", "client_msg_id": "d"})
            if r.status_code != 429:
                break
            assert time.monotonic() < deadline, "still rate limited"
            await asyncio.sleep(0.1)
        assert r.status_code == 201, r.text
        return
    pytest.skip("the machine never made the 25 sends within the 2 s window")


# ---------------------------------------------------------------- 405


def test_405_has_its_own_code_and_an_allow_header(shared_sqlite: Cluster) -> None:
    http = shared_sqlite.api.http
    for method, path, allow in (("DELETE", "/api/v1/server/rooms", "GET, HEAD, POST"),
                                ("PATCH", "/api/v1/me", "GET, HEAD"),
                                ("GET", "/api/v1/server/publish", "POST"),
                                ("PUT", "/api/v1/server/messages/1", "DELETE")):
        r = http.request(method, path, headers=SERVER)
        assert r.status_code == 405, (method, path, r.text)
        assert r.headers["Allow"] == allow
        assert r.headers["content-type"].startswith("application/json")
        assert error_code(r) == "method_not_allowed" and r.json()["error"]["message"]


async def test_user_limit_counts_locally_while_redis_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    """A Redis that does not answer: the per-user budget is kept by this process (same limit,
    same headers), with a WARNING, rather than refusing every send."""
    import redis.asyncio as aioredis

    from chat.ratelimit import UserRateLimiter
    from tests.support import free_port

    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    limiter = UserRateLimiter(10, 20, redis=dead, key_prefix="unused")
    try:
        quotas = [await limiter.hit("u1") for _ in range(21)]
    finally:
        await dead.aclose()
    assert [q.allowed for q in quotas] == [True] * 20 + [False]
    assert [q.remaining for q in quotas[:3]] == [19, 18, 17]
    assert quotas[-1].headers()["Retry-After"] in ("1", "2")
    assert (await limiter.hit("u2")).allowed  # per user
    assert "counted in this process only" in caplog.text
