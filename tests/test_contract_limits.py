"""SPEC limits that clients rely on, against one real server (MariaDB + Redis) shared by the module:
the send rate limits (socket and HTTP), the join/history page sizes, and the page's CSP.

Each test makes its own users and rooms, so they don't disturb each other.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import Cluster, MySQLDatabases
from tests.support import TLS, Api, Client, fetch, sync_engine


class Env:
    def __init__(self, cluster: Cluster, database_url: str) -> None:
        self.cluster = cluster
        self.url = cluster.servers[0].url
        self.api: Api = cluster.api
        self.db = sync_engine(database_url)

    def stored(self, conversation_id: str) -> list[tuple[int, str]]:
        """(seq, client_msg_id) of every stored message of the conversation, by seq."""
        with self.db.connect() as conn:
            return [(int(r[0]), str(r[1])) for r in conn.execute(
                sa.text("SELECT seq, client_msg_id FROM messages WHERE conversation_id = :c ORDER BY seq"),
                {"c": int(conversation_id)})]

    def room_with_patron(self) -> tuple[str, str, str, str]:
        """A fresh creator, an active patron and a room: (room_id, creator_token, patron_id, patron_token)."""
        tag = secrets.token_hex(3)
        creator, patron = f"lc-{tag}", f"lp-{tag}"
        cre = self.api.user(creator)
        pat = self.api.user(patron)
        self.api.membership(creator, patron, 500)
        return self.api.room(creator, f"Room {tag}"), cre, patron, pat


@pytest.fixture(scope="module")
def env(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix_root: str) -> Iterator[Env]:
    url = mysql_databases.new()
    cluster = Cluster(url, redis_url, f"{redis_prefix_root}-limits", 1)
    e = Env(cluster, url)
    yield e
    e.db.dispose()
    cluster.stop()


def code(ack: dict[str, Any]) -> str:
    return "ok" if ack.get("ok") else str(ack["error"]["code"])


async def send_until_accepted(sock: Client, room: str, body: str, cmid: str, timeout: float = 10) -> dict[str, Any]:
    """A well-behaved client: on rate_limited, retry the same client_msg_id a little later."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ack = await sock.call("send", {"conversation_id": room, "body": body, "client_msg_id": cmid})
        if ack.get("ok") or code(ack) != "rate_limited":
            return dict(ack)
        assert asyncio.get_running_loop().time() < deadline, "still rate limited"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- rate limits


async def test_socket_send_rate_limit_bursts_20_then_rate_limited_and_socket_stays_usable(env: Env) -> None:
    room, cre, patron, pat = env.room_with_patron()
    sock = await Client(env.url, pat).connect()
    other = await Client(env.url, pat).connect()  # the same user's second socket: its own bucket
    try:
        assert (await sock.call("join", {"conversation_id": room}))["ok"]
        assert (await other.call("join", {"conversation_id": room}))["ok"]
        # 100 sends at once: the socket handles them in order, much faster than 10 per second refill
        started = time.monotonic()
        acks = await asyncio.gather(*[
            sock.call("send", {"conversation_id": room, "body": f"m{i}", "client_msg_id": f"burst-{i}"})
            for i in range(100)])
        elapsed = time.monotonic() - started
        codes = [code(a) for a in acks]
        assert codes[:20] == ["ok"] * 20, codes  # a full burst of 20 is accepted
        assert set(codes) == {"ok", "rate_limited"}, codes
        limited = [f"burst-{i}" for i, c in enumerate(codes) if c == "rate_limited"]
        accepted = [f"burst-{i}" for i, c in enumerate(codes) if c == "ok"]
        # the burst, plus at most 10 per second of the time the server took (a bound, not a stopwatch)
        assert len(accepted) <= 20 + 10 * elapsed + 1, (len(accepted), elapsed)
        err = next(a for a in acks if not a["ok"])["error"]
        assert err["message"]

        # nothing refused was stored; what was accepted is gapless from seq 1
        stored = env.stored(room)
        assert [s for s, _ in stored] == list(range(1, len(accepted) + 1))
        assert sorted(c for _, c in stored) == sorted(accepted)

        # the socket is still connected and usable: other events work at once...
        assert sock.sio.connected
        hist = await sock.call("history", {"conversation_id": room})
        assert hist["ok"] and len(hist["messages"]) == len(accepted)
        # ...the other socket of the same user is not limited...
        assert (await other.call("send", {"conversation_id": room, "body": "x", "client_msg_id": "other-1"}))["ok"]
        # ...and a refused send goes through once the bucket refills (same client_msg_id: no duplicate)
        again = await send_until_accepted(sock, room, "retry", limited[0])
        assert again["ok"] and again["message"]["client_msg_id"] == limited[0]
        assert [s for s, _ in env.stored(room)] == list(range(1, len(accepted) + 3))
    finally:
        await sock.close()
        await other.close()


async def test_http_send_rate_limit_429_stores_nothing(env: Env) -> None:
    room, cre, patron, pat = env.room_with_patron()
    path = f"/api/v1/conversations/{room}/messages"
    headers = {"Authorization": f"Bearer {pat}"}
    async with httpx.AsyncClient(verify=TLS, base_url=env.url, timeout=15) as http:
        started = time.monotonic()
        answers = await asyncio.gather(*[
            http.post(path, json={"body": f"h{i}", "client_msg_id": f"http-{i}"}, headers=headers)
            for i in range(40)])
        elapsed = time.monotonic() - started
        statuses = [r.status_code for r in answers]
        assert set(statuses) == {201, 429}, statuses
        assert 20 <= statuses.count(201) <= 20 + 10 * elapsed + 1, (statuses, elapsed)
        refused = [f"http-{i}" for i, r in enumerate(answers) if r.status_code == 429]
        accepted = [f"http-{i}" for i, r in enumerate(answers) if r.status_code == 201]
        for r in answers:
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "rate_limited", r.text

        # a 429 stored nothing: only the accepted client_msg_ids are in the database, seq gapless
        stored = env.stored(room)
        assert sorted(c for _, c in stored) == sorted(accepted)
        assert [s for s, _ in stored] == list(range(1, len(accepted) + 1))
        assert not set(refused) & {c for _, c in stored}

        # the limit is per user: the room's creator posts at once; the refused caller may retry later
        r = await http.post(path, json={"body": "o", "client_msg_id": "o-1"}, headers={"Authorization": f"Bearer {cre}"})
        assert r.status_code == 201, r.text
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            r = await http.post(path, json={"body": "late", "client_msg_id": refused[0]}, headers=headers)
            if r.status_code != 429:
                break
            assert asyncio.get_running_loop().time() < deadline, "still rate limited"
            await asyncio.sleep(0.05)
        assert r.status_code == 201 and r.json()["message"]["client_msg_id"] == refused[0], r.text
        assert len(env.stored(room)) == len(accepted) + 2


# ---------------------------------------------------------------- page sizes


@pytest.fixture(scope="module")
def big_room(env: Env) -> tuple[str, str]:
    """A room with 140 messages (seq 1..140), sent through the socket protocol by 7 sockets
    (20 each: one burst per socket). Returns (room_id, patron_token)."""
    room, cre, patron, pat = env.room_with_patron()

    async def fill() -> None:
        socks = [await Client(env.url, pat).connect() for _ in range(7)]
        try:
            async def burst(k: int, s: Client) -> None:
                for i in range(20):
                    ack = await send_until_accepted(s, room, f"s{k}-{i}", f"fill-{k}-{i}")
                    assert ack["ok"], ack
            await asyncio.gather(*[burst(k, s) for k, s in enumerate(socks)])
        finally:
            for s in socks:
                await s.close()

    asyncio.run(fill())
    assert [s for s, _ in env.stored(room)] == list(range(1, 141))
    return room, pat


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [int(m["seq"]) for m in messages]


async def test_join_without_since_seq_returns_the_last_50(env: Env, big_room: tuple[str, str]) -> None:
    room, pat = big_room
    sock = await Client(env.url, pat).connect()
    try:
        ack = await sock.call("join", {"conversation_id": room})
        assert ack["ok"], ack
        assert seqs(ack["messages"]) == list(range(91, 141))
        assert ack["has_more"] is True
    finally:
        await sock.close()


async def test_join_with_since_seq_returns_at_most_100_and_has_more(env: Env, big_room: tuple[str, str]) -> None:
    room, pat = big_room
    sock = await Client(env.url, pat).connect()
    try:
        ack = await sock.call("join", {"conversation_id": room, "since_seq": 10})
        assert ack["ok"], ack
        assert seqs(ack["messages"]) == list(range(11, 111)) and ack["has_more"] is True
        ack = await sock.call("join", {"conversation_id": room, "since_seq": 0})
        assert seqs(ack["messages"]) == list(range(1, 101)) and ack["has_more"] is True
        ack = await sock.call("join", {"conversation_id": room, "since_seq": 110})
        assert seqs(ack["messages"]) == list(range(111, 141)) and ack["has_more"] is False
        ack = await sock.call("join", {"conversation_id": room, "since_seq": 140})
        assert ack["messages"] == [] and ack["has_more"] is False
    finally:
        await sock.close()


def test_http_history_default_limit_is_50(env: Env, big_room: tuple[str, str]) -> None:
    room, pat = big_room
    r = env.api.client(pat, "GET", f"/conversations/{room}/messages")
    assert r.status_code == 200, r.text
    body = r.json()
    assert seqs(body["messages"]) == list(range(91, 141)) and body["has_more"] is True
    r = env.api.client(pat, "GET", f"/conversations/{room}/messages", params={"after_seq": 0})
    assert seqs(r.json()["messages"]) == list(range(1, 51)) and r.json()["has_more"] is True
    r = env.api.client(pat, "GET", f"/conversations/{room}/messages", params={"limit": 100})
    assert seqs(r.json()["messages"]) == list(range(41, 141)) and r.json()["has_more"] is True
    r = env.api.client(pat, "GET", f"/conversations/{room}/messages", params={"limit": 101})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", r.text


# ---------------------------------------------------------------- Content-Security-Policy


def test_page_sends_a_strict_content_security_policy(env: Env) -> None:
    r = fetch("GET", env.url + "/", timeout=10)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    policy = r.headers.get("content-security-policy")
    assert policy, "GET / sends no Content-Security-Policy"
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    # scripts only from the page's own origin: no inline script, no eval, no wildcard hosts
    assert directives.get("script-src") == ["'self'"], policy
    assert directives.get("default-src") == ["'self'"], policy
    for name, sources in directives.items():
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*"} & set(sources), (name, policy)
    assert directives.get("style-src") in (None, ["'self'"]), policy  # absent: default-src 'self'
    assert directives.get("object-src") in (None, ["'none'"]), policy
    assert directives.get("base-uri") in (["'none'"], ["'self'"]), policy
    assert directives.get("frame-ancestors") in (["'none'"], ["'self'"]), policy
    # and the page really works under it: no inline script or inline event handler in the HTML
    html = r.text.lower()
    for tag in html.split("<script")[1:]:
        assert " src=" in tag.split(">")[0], "inline <script> would be blocked by script-src 'self'"
    assert " onclick=" not in html and " onload=" not in html and " onerror=" not in html
    # the client bundle the page loads is served (same origin) and under the same policy
    js = fetch("GET", env.url + "/static/app.js", timeout=10)
    assert js.status_code == 200 and js.headers.get("content-security-policy") == policy
