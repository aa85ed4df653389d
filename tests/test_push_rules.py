"""Who gets a push (SPEC §6), end to end: two server processes on MariaDB + Redis with the
inline worker, the real firebase-admin SDK, and the project's fake FCM server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Cluster, MySQLDatabases
from tests.fakefcm import FakeFCMServer
from tests.support import Client, migrated_sqlite, sync_engine


class PushCluster:
    def __init__(self, cluster: Cluster, database_url: str, fcm: FakeFCMServer) -> None:
        self.cluster, self.fcm = cluster, fcm
        self.db = sync_engine(database_url)

    def outbox_users(self) -> list[str]:
        with self.db.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("SELECT user_id FROM push_outbox ORDER BY id"))]

    async def jobs_settled(self, timeout: float = 15) -> None:
        """Every push fan-out job expanded: the rules (presence, mute) were applied to what was sent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.db.connect() as conn:
                left = conn.execute(sa.text("SELECT COUNT(*) FROM push_jobs WHERE status IN ('pending', 'expanding')")).scalar()
            if left == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"push jobs not expanded in {timeout}s")

    def device(self, token: str, device_token: str, platform: str = "android") -> None:
        r = self.cluster.api.client(token, "POST", "/devices", {"token": device_token, "platform": platform})
        assert r.status_code == 201, r.text

    async def pushes_to(self, device_token: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.fcm.fake.delivered_messages(device_token)
            if len(got) >= count:
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} push(es) to {device_token} not received in {timeout}s")


@pytest.fixture
def push_cluster(fcm_server: FakeFCMServer, mysql_databases: MySQLDatabases, redis_url: str,
                 redis_prefix: str) -> Iterator[PushCluster]:
    fcm_server.fake.reset()
    url = mysql_databases.new()
    env = {"FIREBASE_CREDENTIALS": fcm_server.credentials_path, "FCM_ENDPOINT": fcm_server.endpoint}
    cluster = Cluster(url, redis_url, redis_prefix, 2, env=env)
    pc = PushCluster(cluster, url, fcm_server)
    yield pc
    pc.db.dispose()
    cluster.stop()


@pytest.fixture
def sqlite_push_cluster(fcm_server: FakeFCMServer, tmp_path: Any) -> Iterator[PushCluster]:
    """The embedded default with pushes: one process on a fresh SQLite file (in-process relay,
    presence and push worker), the real firebase-admin SDK against the fake FCM server."""
    fcm_server.fake.reset()
    url = migrated_sqlite(tmp_path / "push.db")
    env = {"FIREBASE_CREDENTIALS": fcm_server.credentials_path, "FCM_ENDPOINT": fcm_server.endpoint}
    cluster = Cluster(url, None, "unused", 1, env=env)
    pc = PushCluster(cluster, url, fcm_server)
    yield pc
    pc.db.dispose()
    cluster.stop()


async def test_direct_message_pushes_offline_recipient_only(push_cluster: PushCluster) -> None:
    api = push_cluster.cluster.api
    cre, pat = api.user("cre", "Cre Ator"), api.user("pat", "Pat")
    api.membership("cre", "pat", 500)
    conv = api.direct(cre, "pat")
    push_cluster.device(pat, "pat-phone")
    push_cluster.device(pat, "pat-tablet", "ios")
    push_cluster.device(cre, "cre-phone")

    sender = await Client(push_cluster.cluster.servers[0].url, cre).connect()
    try:
        sent = (await sender.call("send", {"conversation_id": conv, "body": "hello pat", "client_msg_id": "d1"}))["message"]
        phone = (await push_cluster.pushes_to("pat-phone"))[0]
        await push_cluster.pushes_to("pat-tablet")
        assert phone["notification"] == {"title": "Cre Ator", "body": "hello pat"}
        assert phone["data"] == {"type": "message", "conversation_id": conv, "message_id": sent["id"]}
        assert phone["android"]["collapse_key"] == f"conversation-{conv}"
        assert phone["android"]["priority"] == "high"
        assert phone["apns"]["headers"]["apns-collapse-id"] == f"conversation-{conv}"
        assert push_cluster.outbox_users() == ["pat", "pat"]  # never the sender

        # The recipient online anywhere in the cluster (here: on the other process): no push.
        # (The message's fan-out job commits with it; the worker applies the rules when it expands it.)
        assert (await sender.call("join", {"conversation_id": conv}))["ok"]
        online = await Client(push_cluster.cluster.servers[1].url, pat).connect()
        try:
            assert (await online.call("join", {"conversation_id": conv}))["ok"]
            await sender.wait_for("presence", lambda p: p["user_id"] == "pat" and p["online"] is True)
            await sender.call("send", {"conversation_id": conv, "body": "you are here", "client_msg_id": "d2"})
            await push_cluster.jobs_settled()
            assert push_cluster.outbox_users() == ["pat", "pat"]
        finally:
            await online.close()
        # pat's last socket is gone once the cluster says so: from here on pat is offline
        await sender.wait_for("presence", lambda p: p["user_id"] == "pat" and p["online"] is False)

        # Muted conversations never push (pat is offline with two devices: only the mute holds it back).
        r = api.client(pat, "PUT", f"/conversations/{conv}/settings", {"muted": True})
        assert r.status_code == 200
        await sender.call("send", {"conversation_id": conv, "body": "muted", "client_msg_id": "d3"})
        await push_cluster.jobs_settled()
        assert push_cluster.outbox_users() == ["pat", "pat"]

        api.client(pat, "PUT", f"/conversations/{conv}/settings", {"muted": False})
        await sender.call("send", {"conversation_id": conv, "body": "x" * 4000, "client_msg_id": "d4"})
        long_push = (await push_cluster.pushes_to("pat-phone", 2))[1]
        assert long_push["notification"]["body"].endswith("\u2026")  # truncated to fit FCM's 4 KB
        assert len(long_push["notification"]["body"]) < 4000
    finally:
        await sender.close()


async def test_room_pushes_only_creator_posts_to_current_members(push_cluster: PushCluster) -> None:
    api = push_cluster.cluster.api
    cre = api.user("cre", "Cre")
    gold, gold2 = api.user("gold", "Gold"), api.user("gold2", "Gold Two")
    bronze, former = api.user("bronze", "Bronze"), api.user("former", "Former")
    api.membership("cre", "gold", 2000)
    api.membership("cre", "gold2", 2000)
    api.membership("cre", "bronze", 300)
    api.membership("cre", "former", 2000)
    api.membership("cre", "former", 2000, "former")
    room = api.room("cre", "Gold room", min_tier_cents=1000)
    for token, name in ((cre, "cre"), (gold, "gold"), (gold2, "gold2"), (bronze, "bronze"), (former, "former")):
        push_cluster.device(token, f"{name}-phone")

    # A patron posts while everyone else (the creator and gold2 included) is offline with a device:
    # a push to anyone would need a fan-out job, committed with the message before the ack.
    patron = await Client(push_cluster.cluster.servers[0].url, gold).connect()
    creator: Client | None = None
    try:
        sent = await patron.call("send", {"conversation_id": room, "body": "patron post", "client_msg_id": "r1"})
        assert sent["ok"]
        with push_cluster.db.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM push_jobs")).scalar() == 0
        await push_cluster.jobs_settled()
        assert push_cluster.outbox_users() == []  # patrons' posts in rooms push nobody

        assert (await patron.call("join", {"conversation_id": room}))["ok"]
        creator = await Client(push_cluster.cluster.servers[1].url, cre).connect()
        assert "gold" in (await creator.call("join", {"conversation_id": room}))["online"]
        await patron.close()
        await creator.wait_for("presence", lambda p: p["user_id"] == "gold" and p["online"] is False)

        msg = (await creator.call("send", {"conversation_id": room, "body": "creator post", "client_msg_id": "r2"}))["message"]
        push = (await push_cluster.pushes_to("gold-phone"))[0]
        await push_cluster.pushes_to("gold2-phone")
        await push_cluster.jobs_settled()
        assert push["notification"] == {"title": "Cre in Gold room", "body": "creator post"}
        assert push["data"] == {"type": "message", "conversation_id": room, "message_id": msg["id"]}
        assert push["android"]["priority"] == "normal"
        assert sorted(push_cluster.outbox_users()) == ["gold", "gold2"]  # not below tier, not former patrons
        # the fake FCM saw the creator post's two pushes and nothing else, the patron post's none
        attempts = push_cluster.fcm.fake.attempts
        assert {d: attempts[f"{d}-phone"] for d in ("cre", "gold", "gold2", "bronze", "former")} == {
            "cre": 0, "gold": 1, "gold2": 1, "bronze": 0, "former": 0}
    finally:
        if creator is not None:
            await creator.close()
        await patron.close()


async def test_notification_push_goes_to_every_device(push_cluster: PushCluster) -> None:
    api = push_cluster.cluster.api
    pat = api.user("pat", "Pat")
    push_cluster.device(pat, "n-phone")
    push_cluster.device(pat, "n-web", "web")
    # online or not, push: true notifications push to every device
    online = await Client(push_cluster.cluster.servers[1].url, pat).connect()
    try:
        r = api.server("POST", "/notifications", {"user_ids": ["pat"], "type": "pledge", "title": "Thanks!",
                                                  "body": "Your pledge went through", "push": True,
                                                  "collapse_key": "pledges", "data": {"amount": 500}})
        assert r.status_code == 202, r.text
        nid = r.json()["notification_ids"][0]
        for device in ("n-phone", "n-web"):
            push = (await push_cluster.pushes_to(device))[0]
            assert push["notification"] == {"title": "Thanks!", "body": "Your pledge went through"}
            assert push["data"]["type"] == "pledge" and push["data"]["notification_id"] == nid
            assert push["data"]["amount"] == "500"
        live = await online.wait_for("notification")
        assert live["id"] == nid and live["read_at"] is None
    finally:
        await online.close()
