"""chat/publisher.py against running servers: HTTP (sync and async), retries that keep the
idempotency key, clear errors, and the Redis direct mode across a two-process cluster."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from chat.publisher import AsyncPublisher, Publisher, PublishError, RedisPublisher
from tests.conftest import Cluster
from tests.support import API_KEY, Client, free_port


class FlakyProxy:
    """A tiny HTTP proxy in a thread. The first `failures` requests are answered by `mode`:
    "503" (the server is never asked), or "lost" (forwarded, then the answer is replaced by a
    500, as if it was lost on the way back). Later requests pass through. Records every body."""

    def __init__(self, upstream: str, failures: int, mode: str) -> None:
        self.upstream, self.failures, self.mode = upstream, failures, mode
        self.bodies: list[dict[str, Any]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                proxy.bodies.append(json.loads(raw))
                failing = len(proxy.bodies) <= proxy.failures
                if failing and proxy.mode == "503":
                    self._answer(503, b'{"error":{"code":"unavailable","message":"try again"}}')
                    return
                r = httpx.post(proxy.upstream + self.path, content=raw, timeout=15,
                               headers={"Authorization": self.headers["Authorization"],
                                        "Content-Type": "application/json"})
                if failing:
                    self._answer(500, b"upstream answer lost")
                else:
                    self._answer(r.status_code, r.content)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxies() -> Iterator[list[FlakyProxy]]:
    made: list[FlakyProxy] = []
    yield made
    for p in made:
        p.close()


def is_event(channel: str, event: str) -> Any:
    return lambda m: m["channel"] == channel and m["event"] == event


async def test_sync_publisher(shared_any_server: Cluster, proxies: list[FlakyProxy], uid: Any) -> None:
    any_server = shared_any_server
    url = any_server.servers[0].url
    sub1 = uid("sub1")
    token = any_server.api.user(sub1)
    sock = await Client(url, token).connect()
    pub = Publisher(url, API_KEY)
    try:
        delivered = await asyncio.to_thread(pub.publish, f"user:{sub1}", "ping", {"n": 1})
        assert delivered == 1
        got = await sock.wait_for("event", is_event(f"user:{sub1}", "ping"))
        assert got["data"] == {"n": 1} and got["published_at"].endswith("Z")
        assert set(got) == {"channel", "event", "data", "published_at"}

        ids = await asyncio.to_thread(lambda: pub.notify(user_ids=[sub1], type="hello", title="Hi",
                                                         body="there", data={"k": "v"}))
        assert len(ids) == 1
        note = await sock.wait_for("notification", lambda n: n["id"] == ids[0])
        assert note["data"] == {"k": "v"} and note["type"] == "hello"
        again = await asyncio.to_thread(lambda: pub.notify(user_ids=[sub1], type="hello", title="Hi",
                                                           body="there", idempotency_key=f"fixed-{sub1}"))
        assert await asyncio.to_thread(lambda: pub.notify(user_ids=[sub1], type="other", title="x", body="y",
                                                          idempotency_key=f"fixed-{sub1}")) == again

        with pytest.raises(PublishError) as err:
            await asyncio.to_thread(pub.publish, "nonsense", "ping", {})
        assert (err.value.code, err.value.status) == ("invalid", 400)
        with pytest.raises(PublishError) as err:
            await asyncio.to_thread(lambda: pub.notify(channel="room:424242", type="t", title="t", body="b"))
        assert (err.value.code, err.value.status) == ("not_found", 404)
        with pytest.raises(ValueError):
            pub.notify(type="t", title="t", body="b")

        counting = FlakyProxy(url, failures=0, mode="lost")  # passes everything through, counts requests
        proxies.append(counting)
        bad = Publisher(counting.url, "wrong-key", retries=3)
        with pytest.raises(PublishError) as err:
            await asyncio.to_thread(bad.publish, f"user:{sub1}", "ping", {})
        assert (err.value.code, err.value.status) == ("unauthorized", 401)
        assert len(counting.bodies) == 1  # a 401 is not retried
        bad.close()
    finally:
        pub.close()
        await sock.close()


async def test_async_publisher(shared_any_server: Cluster, uid: Any) -> None:
    any_server = shared_any_server
    url = any_server.servers[0].url
    api = any_server.api
    fan, star = uid("fan"), uid("star")
    token = api.user(fan)
    api.user(star)
    api.membership(star, fan, 100)
    sock = await Client(url, token).connect()
    try:
        assert (await sock.call("subscribe", {"channel": f"creator:{star}"}))["ok"]
        async with AsyncPublisher(url, API_KEY) as pub:
            assert await pub.publish(f"creator:{star}", "live", {"on": True}) == 1
            got = await sock.wait_for("event", is_event(f"creator:{star}", "live"))
            assert got["data"] == {"on": True}
            ids = await pub.notify(channel=f"creator:{star}", type="live", title="Live now", body="Join")
            await sock.wait_for("notification", lambda n: n["id"] == ids[0])
            with pytest.raises(PublishError) as err:
                await pub.notify(user_ids=["bad id"], type="t", title="t", body="b")
            assert (err.value.code, err.value.status) == ("invalid", 400)
    finally:
        await sock.close()


async def test_retries_keep_the_idempotency_key(shared_sqlite: Cluster, proxies: list[FlakyProxy], uid: Any) -> None:
    sqlite_server = shared_sqlite
    url = sqlite_server.servers[0].url
    r1 = uid("r1")
    token = sqlite_server.api.user(r1)

    # the answer of the first attempt is lost after the server stored it: the retry replays
    lost = FlakyProxy(url, failures=1, mode="lost")
    proxies.append(lost)
    pub = Publisher(lost.url, API_KEY, retries=3)
    ids = await asyncio.to_thread(lambda: pub.notify(user_ids=[r1], type="t", title="t", body="b"))
    pub.close()
    assert len(lost.bodies) == 2
    assert lost.bodies[0]["idempotency_key"] == lost.bodies[1]["idempotency_key"]
    feed = sqlite_server.api.client(token, "GET", "/notifications").json()["notifications"]
    assert [n["id"] for n in feed] == ids

    # the async publisher through 503s
    busy = FlakyProxy(url, failures=2, mode="503")
    proxies.append(busy)
    async with AsyncPublisher(busy.url, API_KEY, retries=3) as apub:
        ids2 = await apub.notify(user_ids=[r1], type="t", title="t", body="b")
        assert await apub.publish(f"user:{r1}", "e", {}) == 0
    assert len({b["idempotency_key"] for b in busy.bodies[:3]}) == 1 and len(busy.bodies) == 4
    feed = sqlite_server.api.client(token, "GET", "/notifications").json()["notifications"]
    assert [n["id"] for n in feed] == ids2 + ids

    # publish is not idempotent: a lost answer is not retried
    lost_publish = FlakyProxy(url, failures=1, mode="lost")
    proxies.append(lost_publish)
    with Publisher(lost_publish.url, API_KEY, retries=3) as pub:
        with pytest.raises(PublishError) as err:
            await asyncio.to_thread(pub.publish, f"user:{r1}", "e", {})
    assert err.value.status == 500 and len(lost_publish.bodies) == 1

    # too many failures: the last answer is raised
    down = FlakyProxy(url, failures=10, mode="503")
    proxies.append(down)
    with Publisher(down.url, API_KEY, retries=2) as pub:
        with pytest.raises(PublishError) as err:
            await asyncio.to_thread(lambda: pub.notify(user_ids=[r1], type="t", title="t", body="b"))
    assert (err.value.code, err.value.status) == ("unavailable", 503) and len(down.bodies) == 3


async def test_unreachable_server_fails_clearly() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with Publisher(closed, API_KEY, timeout=1, retries=2) as pub:
        with pytest.raises(PublishError) as err:
            pub.publish("user:x", "e", {})
    assert err.value.code == "unavailable" and err.value.status is None
    assert "3 attempt" in str(err.value)
    async with AsyncPublisher(closed, API_KEY, timeout=1, retries=1) as apub:
        with pytest.raises(PublishError) as err:
            await apub.notify(user_ids=["x"], type="t", title="t", body="b")
    assert err.value.code == "unavailable" and err.value.status is None


async def test_redis_publisher_reaches_every_process(shared_mysql_cluster: Cluster, redis_url: str,
                                                    uid: Any) -> None:
    mysql_cluster = shared_mysql_cluster
    redis_prefix = mysql_cluster.redis_prefix
    api = mysql_cluster.api
    viewer, host = uid("viewer"), uid("host")
    token = api.user(viewer)
    api.user(host)
    api.membership(host, viewer, 100)
    s0 = await Client(mysql_cluster.servers[0].url, token).connect()
    s1 = await Client(mysql_cluster.servers[1].url, token).connect()
    try:
        assert (await s1.call("subscribe", {"channel": f"creator:{host}"}))["ok"]
        async with RedisPublisher(redis_url, redis_prefix) as direct:
            assert await direct.publish(f"creator:{host}", "goal", {"amount": 5}) is None
            got = await s1.wait_for("event", is_event(f"creator:{host}", "goal"))
            assert got["data"] == {"amount": 5} and got["published_at"].endswith("Z")
            # One relay stream, delivered in order: once s0 has this later event, the earlier
            # creator:host event was handled by s0's process too, and not sent to s0.
            await direct.publish(f"user:{viewer}", "dm", [1, 2])
            for sock in (s0, s1):
                assert (await sock.wait_for("event", is_event(f"user:{viewer}", "dm")))["data"] == [1, 2]
            assert not [e for e in s0.events["event"] if e["channel"] == f"creator:{host}"]  # not subscribed
            with pytest.raises(PublishError) as err:
                await direct.publish("bogus", "e", {})
            assert err.value.code == "invalid"
        async with RedisPublisher(f"redis://127.0.0.1:{free_port()}/0", redis_prefix) as dead:
            with pytest.raises(PublishError) as err:
                await dead.publish(f"user:{viewer}", "e", {})
            assert err.value.code == "unavailable"
    finally:
        await s0.close()
        await s1.close()


async def test_publisher_server_api_calls(shared_any_server: Cluster, uid: Any) -> None:
    """The room, message, user and presence calls (docs/api.md), sync and async, on a real server."""
    url = shared_any_server.servers[0].url
    api = shared_any_server.api
    cre, fan = uid("cre"), uid("fan")
    api.user(cre)
    token = api.user(fan)
    api.membership(cre, fan, 100)
    sock = await Client(url, token).connect()
    gone = asyncio.Event()
    sock.sio.on("disconnect", lambda *_: gone.set())
    pub = Publisher(url, API_KEY)
    try:
        room = await asyncio.to_thread(lambda: pub.create_room(cre, "Lounge", min_tier_cents=100, external_id="t1"))
        again = await asyncio.to_thread(lambda: pub.create_room(cre, "Other name", external_id="t1"))
        assert again == room and room["external_id"] == "t1" and room["name"] == "Lounge"
        async with AsyncPublisher(url, API_KEY) as apub:
            second = await apub.create_room(cre, "Second")
            assert second["id"] != room["id"] and second["external_id"] is None
            page = await apub.list_rooms(cre, limit=1)
            assert page["rooms"] == [room] and page["next_cursor"]
            rest = await asyncio.to_thread(lambda: pub.list_rooms(cre, cursor=page["next_cursor"]))
            assert rest == {"rooms": [second], "next_cursor": None}

            assert (await sock.call("join", {"conversation_id": room["id"]}))["ok"]
            sent = (await sock.call("send", {"conversation_id": room["id"], "body": "hi", "client_msg_id": "p1"}))["message"]
            assert await apub.conversation_presence(room["id"]) == [fan]
            assert await asyncio.to_thread(pub.channel_presence, f"creator:{cre}") == {
                "channel": f"creator:{cre}", "online": [fan], "subscribers": 0}
            assert (await apub.history(room["id"], after_seq=0))["messages"] == [sent]
            assert await asyncio.to_thread(lambda: pub.history(room["id"], before_seq=1)) == {
                "messages": [], "has_more": False}

            deleted = await apub.delete_message(sent["id"])
            assert deleted["deleted"] and deleted["body"] == ""
            assert await sock.wait_for("message_updated", lambda m: m["id"] == sent["id"]) == deleted
            assert await asyncio.to_thread(pub.delete_message, sent["id"]) == deleted
            with pytest.raises(PublishError) as err:
                await apub.delete_message("999999999")
            assert (err.value.code, err.value.status) == ("not_found", 404)

            assert await asyncio.to_thread(pub.disconnect_user, fan) is True
            await asyncio.wait_for(gone.wait(), 10)
            with pytest.raises(PublishError) as err:
                await apub.channel_presence("lobby")
            assert (err.value.code, err.value.status) == ("invalid", 400)
    finally:
        pub.close()
        await sock.close()
