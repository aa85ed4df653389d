"""Publisher and AsyncPublisher against a real Backstage server: what they deliver, the errors
they raise, what they retry (keeping the idempotency key), and Retry-After."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import pytest

from backstage_publisher import AsyncPublisher, Publisher, PublishError
from tests.support import Client, free_port


def is_event(channel: str, event: str) -> Any:
    return lambda m: m["channel"] == channel and m["event"] == event


async def test_sync_publisher(backstage: Any, proxy: Any, uid: Any) -> None:
    sub = uid("sub")
    sock = await Client(backstage.url, backstage.api.user(sub)).connect()
    pub = Publisher(backstage.url, backstage.api_key)
    try:
        assert await asyncio.to_thread(pub.publish, f"user:{sub}", "ping", {"n": 1}) == 1
        got = await sock.wait_for("event", is_event(f"user:{sub}", "ping"))
        assert got["data"] == {"n": 1} and got["published_at"].endswith("Z")
        assert set(got) == {"channel", "event", "data", "published_at"}

        ids = await asyncio.to_thread(lambda: pub.notify(user_ids=[sub], type="hello", title="Hi",
                                                         body="there", data={"k": "v"}))
        assert len(ids) == 1
        note = await sock.wait_for("notification", lambda n: n["id"] == ids[0])
        assert (note["data"], note["type"], note["title"]) == ({"k": "v"}, "hello", "Hi")
        first = await asyncio.to_thread(lambda: pub.notify(user_ids=[sub], type="a", title="a", body="a",
                                                           idempotency_key=f"fixed-{sub}"))
        again = await asyncio.to_thread(lambda: pub.notify(user_ids=[sub], type="b", title="b", body="b",
                                                           idempotency_key=f"fixed-{sub}"))
        assert again == first

        with pytest.raises(PublishError) as err:
            await asyncio.to_thread(pub.publish, "nonsense", "ping", {})
        assert (err.value.code, err.value.status) == ("invalid", 400)
        with pytest.raises(PublishError) as err:
            await asyncio.to_thread(lambda: pub.notify(channel="room:424242", type="t", title="t", body="b"))
        assert (err.value.code, err.value.status) == ("not_found", 404)
        with pytest.raises(ValueError):
            pub.notify(type="t", title="t", body="b")
        with pytest.raises(ValueError):
            pub.notify(user_ids=sub, type="t", title="t", body="b")

        counting = proxy([])  # passes everything through, counts requests
        with Publisher(counting.url, "wrong-key", retries=3) as bad:
            with pytest.raises(PublishError) as err:
                await asyncio.to_thread(bad.publish, f"user:{sub}", "ping", {})
        assert (err.value.code, err.value.status) == ("unauthorized", 401)
        assert len(counting.bodies) == 1  # a 401 is not retried
    finally:
        pub.close()
        await sock.close()


async def test_async_publisher(backstage: Any, uid: Any) -> None:
    fan, star = uid("fan"), uid("star")
    sock = await Client(backstage.url, backstage.api.user(fan)).connect()
    backstage.api.user(star)
    backstage.api.membership(star, fan, 100)
    try:
        assert (await sock.call("subscribe", {"channel": f"creator:{star}"}))["ok"]
        async with AsyncPublisher(backstage.url, backstage.api_key) as pub:
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


async def test_retries_keep_the_idempotency_key(backstage: Any, proxy: Any, answer: Any, uid: Any) -> None:
    r1 = uid("r1")
    token = backstage.api.user(r1)

    def feed() -> list[str]:
        r = backstage.api.client(token, "GET", "/notifications")
        return [n["id"] for n in r.json()["notifications"]]

    # the answer of the first attempt is lost after the server stored it: the retry replays
    lost = proxy(["lost"])
    with Publisher(lost.url, backstage.api_key, retries=3) as pub:
        ids = await asyncio.to_thread(lambda: pub.notify(user_ids=[r1], type="t", title="t", body="b"))
    assert len(lost.bodies) == 2
    assert lost.bodies[0]["idempotency_key"] == lost.bodies[1]["idempotency_key"]
    assert feed() == ids

    # the async publisher through a 503 and a 502: notify retries both, publish only the 503
    busy = proxy([answer(503, "unavailable"), answer(502, "unavailable")])
    async with AsyncPublisher(busy.url, backstage.api_key, retries=3) as apub:
        ids2 = await apub.notify(user_ids=[r1], type="t", title="t", body="b")
    assert len({b["idempotency_key"] for b in busy.bodies}) == 1 and len(busy.bodies) == 3
    assert feed() == ids2 + ids
    flaky = proxy([answer(503, "unavailable"), answer(502, "unavailable")])
    async with AsyncPublisher(flaky.url, backstage.api_key, retries=3) as apub:
        with pytest.raises(PublishError) as err:
            await apub.publish(f"user:{r1}", "e", {})
    assert err.value.status == 502 and len(flaky.bodies) == 2

    # publish is not idempotent: a lost answer is not retried
    lost_publish = proxy(["lost"])
    with Publisher(lost_publish.url, backstage.api_key, retries=3) as pub:
        with pytest.raises(PublishError) as err:
            await asyncio.to_thread(pub.publish, f"user:{r1}", "e", {})
    assert err.value.status == 500 and len(lost_publish.bodies) == 1

    # too many failures: the last answer is raised
    down = proxy([answer(503, "unavailable")] * 10)
    with Publisher(down.url, backstage.api_key, retries=2) as pub:
        with pytest.raises(PublishError) as err:
            await asyncio.to_thread(lambda: pub.notify(user_ids=[r1], type="t", title="t", body="b"))
    assert (err.value.code, err.value.status) == ("unavailable", 503) and len(down.bodies) == 3


async def test_retry_after_is_honoured(backstage: Any, proxy: Any, answer: Any, uid: Any) -> None:
    sub = uid("sub")
    sock = await Client(backstage.url, backstage.api.user(sub)).connect()
    try:
        # 429 with Retry-After in seconds: the retry waits at least that long, then goes through
        limited = proxy([answer(429, "rate_limited", {"Retry-After": "1"})])
        with Publisher(limited.url, backstage.api_key) as pub:
            assert await asyncio.to_thread(pub.publish, f"user:{sub}", "after", {"n": 1}) == 1
        await sock.wait_for("event", is_event(f"user:{sub}", "after"))
        assert len(limited.bodies) == 2 and limited.times[1] - limited.times[0] >= 1.0

        # a 503 with an HTTP-date Retry-After, on the async client
        when = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
        dated = proxy([answer(503, "unavailable", {"Retry-After": when})])
        async with AsyncPublisher(dated.url, backstage.api_key) as apub:
            ids = await apub.notify(user_ids=[sub], type="t", title="t", body="b")
        assert len(ids) == 1 and len(dated.bodies) == 2
        # not before that date (whole seconds; a little slack for the event loop's clock resolution)
        assert dated.wall_times[1] >= parsedate_to_datetime(when).timestamp() - 0.05

        # asking for longer than max_wait: raised at once, with the wait the server asked for
        later = proxy([answer(429, "rate_limited", {"Retry-After": "3600"})])
        with Publisher(later.url, backstage.api_key, max_wait=10) as pub:
            with pytest.raises(PublishError) as err:
                await asyncio.to_thread(pub.publish, f"user:{sub}", "never", {})
        assert (err.value.code, err.value.status, err.value.retry_after) == ("rate_limited", 429, 3600)
        assert len(later.bodies) == 1
    finally:
        await sock.close()


async def test_unreachable_server_fails_clearly() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with Publisher(closed, "key", timeout=1, retries=2) as pub:
        with pytest.raises(PublishError) as err:
            pub.publish("user:x", "e", {})
    assert err.value.code == "unavailable" and err.value.status is None
    assert "3 attempt" in str(err.value)
    async with AsyncPublisher(closed, "key", timeout=1, retries=1) as apub:
        with pytest.raises(PublishError) as err:
            await apub.notify(user_ids=["x"], type="t", title="t", body="b")
    assert err.value.code == "unavailable" and err.value.status is None and "2 attempt" in str(err.value)


async def test_room_message_user_and_presence_calls(backstage: Any, uid: Any) -> None:
    """The server API's room, message, user and presence calls, sync and async, on a real server."""
    url, api = backstage.url, backstage.api
    cre, fan = uid("cre"), uid("fan")
    api.user(cre)
    token = api.user(fan)
    api.membership(cre, fan, 100)
    sock = await Client(url, token).connect()
    gone = asyncio.Event()
    sock.sio.on("disconnect", lambda *_: gone.set())
    pub = Publisher(url, backstage.api_key)
    try:
        room = await asyncio.to_thread(lambda: pub.create_room(cre, "Lounge", min_tier_cents=100, external_id="t1"))
        again = await asyncio.to_thread(lambda: pub.create_room(cre, "Other name", external_id="t1"))
        assert again == room and room["external_id"] == "t1" and room["name"] == "Lounge"
        async with AsyncPublisher(url, backstage.api_key) as apub:
            second = await apub.create_room(cre, "Second")
            assert second["id"] != room["id"] and second["external_id"] is None
            page = await apub.list_rooms(cre, limit=1)
            assert page["rooms"] == [room] and page["next_cursor"]
            rest = await asyncio.to_thread(lambda: pub.list_rooms(cre, cursor=page["next_cursor"]))
            assert rest == {"rooms": [second], "next_cursor": None}
            renamed = await asyncio.to_thread(lambda: pub.update_room(second["id"], name="Green", emoji="🎸"))
            assert (renamed["name"], renamed["emoji"], renamed["archived"]) == ("Green", "🎸", False)
            assert (await apub.update_room(second["id"], archived=True))["archived"] is True
            await apub.delete_room(second["id"])
            with pytest.raises(PublishError) as gone_room:
                await asyncio.to_thread(lambda: pub.delete_room(second["id"]))
            assert gone_room.value.code == "not_found"

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

            root = (await sock.call("send", {"conversation_id": room["id"], "body": "q", "client_msg_id": "p2"}))["message"]
            reply = (await sock.call("send", {"conversation_id": room["id"], "body": "re", "client_msg_id": "p3",
                                              "thread_id": root["id"]}))["message"]
            thread = await apub.history(room["id"], thread_id=root["id"])
            assert [m["id"] for m in thread["messages"]] == [root["id"], reply["id"]]
            main = await asyncio.to_thread(lambda: pub.history(room["id"], include_replies=False))
            assert [m["id"] for m in main["messages"]] == [sent["id"], root["id"]]

            assert await asyncio.to_thread(pub.disconnect_user, fan) is True
            await asyncio.wait_for(gone.wait(), 10)
            with pytest.raises(PublishError) as err:
                await apub.channel_presence("lobby")
            assert (err.value.code, err.value.status) == ("invalid", 400)
    finally:
        pub.close()
        await sock.close()
