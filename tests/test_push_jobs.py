"""Push fan-out jobs (notifications/jobs.py): the send transaction writes ONE job whatever the
audience; the worker expands it after the commit under SPEC §6's rules, resumes a half-expanded
job after a SIGKILL without duplicates, and never expands a job twice when workers run side by
side. Real servers and `python -m notifications.worker` processes on MariaDB (+ Redis), SQLite
where it matters, the real firebase-admin SDK against the fake FCM server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Cluster, MySQLDatabases
from tests.fakefcm import FakeFCMServer
from tests.support import ROOT, Client, ServerProcess, make_token, migrated_sqlite, sync_engine


def seed_patrons(db: sa.Engine, creator: str, count: int, *, prefix: str = "fan", tier: int = 500,
                 devices: int = 1) -> list[str]:
    """Bulk SQL, not the API: `count` active patrons of `creator` with `devices` tokens each."""
    now = datetime.now(UTC).replace(tzinfo=None)
    users = [f"{prefix}{i:06d}" for i in range(count)]
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (id, name, created_at, updated_at) VALUES (:id, :id, :now, :now)"),
                     [{"id": u, "now": now} for u in users])
        conn.execute(sa.text("INSERT INTO memberships (creator_id, patron_id, tier_cents, status, updated_at) "
                             "VALUES (:c, :p, :t, 'active', :now)"),
                     [{"c": creator, "p": u, "t": tier, "now": now} for u in users])
        conn.execute(sa.text("INSERT INTO devices (token, user_id, platform, created_at, updated_at) "
                             "VALUES (:tok, :u, 'android', :now, :now)"),
                     [{"tok": f"{u}-dev{d}", "u": u, "now": now} for u in users for d in range(devices)])
    return users


def rows(db: sa.Engine, sql: str, **params: Any) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(sa.text(sql), params).all())


def count(db: sa.Engine, sql: str) -> int:
    return int(rows(db, sql)[0][0])


async def wait_for(check: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met in {timeout} s")
        await asyncio.sleep(0.05)


def jobs_done(db: sa.Engine) -> bool:
    return count(db, "SELECT COUNT(*) FROM push_jobs WHERE status <> 'done'") == 0


def start_worker(database_url: str, fcm: FakeFCMServer, log: Path, **env: str) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_", "PUSH_"))}
    full.update({"DATABASE_URL": database_url, "FIREBASE_CREDENTIALS": fcm.credentials_path,
                 "FCM_ENDPOINT": fcm.endpoint, "PYTHONUNBUFFERED": "1", **env})
    return subprocess.Popen([sys.executable, "-m", "notifications.worker"], cwd=ROOT, env=full,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the send path writes one job


@pytest.fixture
def external(fcm_server: FakeFCMServer, mysql_databases: MySQLDatabases, redis_url: str,
             redis_prefix: str) -> Iterator[tuple[ServerProcess, str, sa.Engine]]:
    """One server with PUSH_WORKER=external and no worker running: jobs stay as written."""
    fcm_server.fake.reset()
    url = mysql_databases.new()
    server = ServerProcess(url, redis_url, redis_prefix, env={
        "PUSH_WORKER": "external", "FIREBASE_CREDENTIALS": fcm_server.credentials_path,
        "FCM_ENDPOINT": fcm_server.endpoint})
    db = sync_engine(url)
    yield server, url, db
    db.dispose()
    server.stop()


async def test_send_writes_one_job_whatever_the_audience(
        external: tuple[ServerProcess, str, sa.Engine], fcm_server: FakeFCMServer, tmp_path: Path) -> None:
    from tests.support import Api

    server, url, db = external
    api = Api(server.url)
    try:
        cre = api.user("cre", "Cre")
        room = api.room("cre", "Fans")
        seed_patrons(db, "cre", 300)
        pat = make_token("fan000007")
        r = api.client(cre, "POST", f"/conversations/{room}/messages", {"body": "to all", "client_msg_id": "c1"})
        assert r.status_code == 201, r.text
        message_id = r.json()["message"]["id"]
        jobs = rows(db, "SELECT kind, conversation_id, message_id, sender_id, status, payload FROM push_jobs")
        assert [(k, str(c), str(m), s, st) for k, c, m, s, st, _ in jobs] == [
            ("message", room, message_id, "cre", "pending")]
        payload = json.loads(jobs[0][5])
        assert payload["title"] == "Cre in Fans" and payload["body"] == "to all"
        assert payload["data"] == {"type": "message", "conversation_id": room, "message_id": message_id}
        assert count(db, "SELECT COUNT(*) FROM push_outbox") == 0  # no per-device rows at send time

        # a patron's post in a room pushes nobody: no job at all
        r = api.client(pat, "POST", f"/conversations/{room}/messages", {"body": "hi", "client_msg_id": "p1"})
        assert r.status_code == 201, r.text
        assert count(db, "SELECT COUNT(*) FROM push_jobs") == 1

        # a channel notification to the 300 patrons: one job too
        r = api.server("POST", "/notifications", {"channel": "creator:cre", "type": "post_published",
                                                  "title": "New post", "body": "Read it", "push": True,
                                                  "data": {"post_id": 9}})
        assert r.status_code == 202, r.text
        ids = r.json()["notification_ids"]
        assert len(ids) == 300
        assert rows(db, "SELECT kind, status FROM push_jobs ORDER BY id") == [
            ("message", "pending"), ("notification", "pending")]
        assert count(db, "SELECT COUNT(*) FROM push_outbox") == 0

        # a worker expands both: every device once, the notification with each recipient's own id
        fake = fcm_server.fake
        worker = start_worker(url, fcm_server, tmp_path / "worker.log", PUSH_EXPAND_BATCH="64")
        try:
            await wait_for(lambda: fake.total_delivered >= 600 and jobs_done(db), what="600 pushes")
        finally:
            stop_worker(worker)
        assert fake.total_delivered == 600
        owner = {f"fan{i:06d}-dev0": f"fan{i:06d}" for i in range(300)}
        by_user = {u: nid for u, nid in rows(db, "SELECT user_id, id FROM notifications")}
        for token in owner:
            chat, note = sorted(fake.delivered_messages(token), key=lambda m: m["data"]["type"])
            assert chat["data"]["message_id"] == message_id
            assert note["data"] == {"type": "post_published", "post_id": "9",
                                    "notification_id": str(by_user[owner[token]])}
    finally:
        api.close()


# ---------------------------------------------------------------- expansion follows SPEC §6


@pytest.fixture(params=["sqlite", "mysql"])
def inline(request: Any, tmp_path: Path, fcm_server: FakeFCMServer, mysql_databases: MySQLDatabases,
           redis_url: str, redis_prefix: str) -> Iterator[tuple[Cluster, sa.Engine]]:
    """SQLite: one process, memory presence. MariaDB: two processes sharing Redis. The inline
    worker (on its own thread) with two users per expansion batch, so pages split the audience."""
    fcm_server.fake.reset()
    env = {"FIREBASE_CREDENTIALS": fcm_server.credentials_path, "FCM_ENDPOINT": fcm_server.endpoint,
           "PUSH_EXPAND_BATCH": "2"}
    if request.param == "sqlite":
        url = migrated_sqlite(tmp_path / "backstage.db")
        cluster = Cluster(url, None, "unused", 1, env=env)
    else:
        url = mysql_databases.new()
        cluster = Cluster(url, redis_url, redis_prefix, 2, env=env)
    db = sync_engine(url)
    yield cluster, db
    db.dispose()
    cluster.stop()


async def test_expansion_honours_mute_presence_membership_and_sender(
        inline: tuple[Cluster, sa.Engine], fcm_server: FakeFCMServer) -> None:
    cluster, db = inline
    api, fake = cluster.api, fcm_server.fake
    tokens = {u: api.user(u, u.title()) for u in ("cre", "p1", "p2", "p3", "p4", "p5", "p6", "p7")}
    for u in ("p1", "p2", "p3", "p4", "p6", "p7"):
        api.membership("cre", u, 2000)
    api.membership("cre", "p5", 100)  # below the room's tier
    api.membership("cre", "p4", 2000, "former")
    room = api.room("cre", "Gold", min_tier_cents=1000)
    for u in tokens:
        assert api.client(tokens[u], "POST", "/devices", {"token": f"{u}-phone", "platform": "android"}).status_code == 201
    assert api.client(tokens["p7"], "POST", "/devices", {"token": "p7-tablet", "platform": "ios"}).status_code == 201
    assert api.client(tokens["p3"], "PUT", f"/conversations/{room}/settings", {"muted": True}).status_code == 200

    # p2 is online on the last process (the other one, on MariaDB); the creator posts from the first
    online = await Client(cluster.servers[-1].url, tokens["p2"]).connect()
    creator = await Client(cluster.servers[0].url, tokens["cre"]).connect()
    try:
        sent = await creator.call("send", {"conversation_id": room, "body": "gold news", "client_msg_id": "g1"})
        assert sent["ok"], sent
        await wait_for(lambda: jobs_done(db), what="job expanded")
        outbox = rows(db, "SELECT user_id, device_token FROM push_outbox ORDER BY device_token")
        assert outbox == [("p1", "p1-phone"), ("p6", "p6-phone"), ("p7", "p7-phone"), ("p7", "p7-tablet")]
        await wait_for(lambda: fake.total_delivered == 4, what="4 pushes")
        push = fake.delivered_messages("p7-tablet")[0]
        assert push["notification"] == {"title": "Cre in Gold", "body": "gold news"}
        assert push["data"] == {"type": "message", "conversation_id": room, "message_id": sent["message"]["id"]}

        # direct: the other side if offline and not muted; never the sender
        direct = api.direct(tokens["cre"], "p1")
        await creator.call("send", {"conversation_id": direct, "body": "just you", "client_msg_id": "d1"})
        await wait_for(lambda: jobs_done(db), what="direct job expanded")
        p1 = await Client(cluster.servers[-1].url, tokens["p1"]).connect()
        try:  # p1 answers: the creator (online) gets nothing
            await p1.call("send", {"conversation_id": direct, "body": "thanks", "client_msg_id": "d2"})
            await wait_for(lambda: jobs_done(db), what="direct jobs expanded")
        finally:
            await p1.close()
        assert api.client(tokens["p1"], "PUT", f"/conversations/{direct}/settings", {"muted": True}).status_code == 200
        await creator.call("send", {"conversation_id": direct, "body": "muted", "client_msg_id": "d3"})
        await wait_for(lambda: jobs_done(db), what="muted direct job expanded")
        assert rows(db, "SELECT user_id FROM push_outbox WHERE id > 4 ORDER BY id") == [("p1",)]
        await wait_for(lambda: fake.total_delivered == 5, what="the direct push")
        assert [m["notification"]["body"] for m in fake.delivered_messages("p1-phone")] == ["gold news", "just you"]
        assert fake.delivered_messages("cre-phone") == []
    finally:
        await creator.close()
        await online.close()


# ---------------------------------------------------------------- crashes and concurrent workers


async def prepare_jobs(url: str, creator: str, patrons: int, posts: int) -> sa.Engine:
    """A room of `creator` with `patrons` patrons (one device each) and `posts` pending fan-out
    jobs written through the send path's hook (notifications.jobs.push_enqueue_jobs)."""
    from chat.db import create_engine
    from chat.migrate import upgrade
    from notifications.jobs import push_enqueue_jobs

    engine = create_engine(url)
    await upgrade(engine)
    db = sync_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (id, name, created_at, updated_at) VALUES (:c, :c, :n, :n)"),
                     {"c": creator, "n": now})
        conn.execute(sa.text(
            "INSERT INTO conversations (kind, creator_id, name, min_tier_cents, post_policy, last_seq, "
            "last_activity_at, created_at) VALUES ('room', :c, 'Big', 0, 'creator', 0, :n, :n)"), {"c": creator, "n": now})
    room = rows(db, "SELECT id FROM conversations")[0][0]
    seed_patrons(db, creator, patrons)
    async with engine.begin() as conn:
        await push_enqueue_jobs(conn, [{"conversation_id": room, "message_id": 1000 + i, "sender_id": creator,
                                        "payload": {"title": "Big", "body": f"post {i}", "data": {"n": str(i)},
                                                    "collapse_key": None, "high_priority": False}}
                                       for i in range(posts)])
    await engine.dispose()
    return db


async def test_worker_sigkilled_mid_expansion_is_resumed_without_duplicates(
        fcm_server: FakeFCMServer, mysql_databases: MySQLDatabases, tmp_path: Path) -> None:
    fake = fcm_server.fake
    fake.reset()
    url = mysql_databases.new()
    db = await prepare_jobs(url, "big", 2000, 1)
    # The first worker's FCM is unreachable (sends fail transiently and are rescheduled), so every
    # delivery below comes from the second worker: "exactly once" is then exact, not at-least-once.
    first = start_worker(url, fcm_server, tmp_path / "w1.log", PUSH_EXPAND_BATCH="5", PUSH_LEASE_S="3",
                         FCM_ENDPOINT="http://127.0.0.1:9")
    try:
        await wait_for(lambda: 100 <= count(db, "SELECT pushes FROM push_jobs") < 1500, 60, "part-expanded")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    (status, pushes, cursor), = rows(db, "SELECT status, pushes, resume_after FROM push_jobs")
    written = count(db, "SELECT COUNT(*) FROM push_outbox")
    assert status == "expanding" and 0 < pushes < 2000
    assert written == pushes  # the cursor moved with the rows, in one transaction
    assert cursor == f"fan{pushes - 1:06d}"

    # larger pages from here: what matters is where it resumes, not the page size
    second = start_worker(url, fcm_server, tmp_path / "w2.log", PUSH_EXPAND_BATCH="300", PUSH_LEASE_S="3")
    try:
        await wait_for(lambda: jobs_done(db) and count(
            db, "SELECT COUNT(*) FROM push_outbox WHERE status <> 'sent'") == 0, 90, "all sent")
    finally:
        stop_worker(second)
    # exactly one outbox row per device, each sent once by the outbox (a send that times out
    # after FCM accepted it is retried: the outbox itself is at-least-once, see docs/push.md)
    assert count(db, "SELECT COUNT(*) FROM push_outbox") == 2000
    assert count(db, "SELECT COUNT(DISTINCT device_token) FROM push_outbox") == 2000
    assert len(fake.delivered) == 2000 and min(fake.delivered.values()) >= 1
    db.dispose()


async def test_two_workers_expand_and_send_without_duplicates(
        fcm_server: FakeFCMServer, mysql_databases: MySQLDatabases, redis_url: str, redis_prefix: str,
        tmp_path: Path) -> None:
    """Both workers are woken (Redis) by the same commit of 24 jobs (more than one claim takes)
    and claim at the same moment."""
    from chat.db import create_engine
    from notifications.jobs import push_enqueue_jobs

    fake = fcm_server.fake
    fake.reset()
    fake.record_messages = False
    url = mysql_databases.new()
    db = await prepare_jobs(url, "big", 100, 0)
    room = rows(db, "SELECT id FROM conversations")[0][0]
    env = {"PUSH_EXPAND_BATCH": "30", "REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    workers = [start_worker(url, fcm_server, tmp_path / f"w{i}.log", **env) for i in range(2)]
    engine = create_engine(url)
    try:
        for i in range(2):
            await wait_for(lambda i=i: "push worker started" in (tmp_path / f"w{i}.log").read_text(), what="worker up")
        await asyncio.sleep(0.5)  # both subscribed to the wake-up channel (the marker: its log line)
        async with engine.begin() as conn:
            await push_enqueue_jobs(conn, [{"conversation_id": room, "message_id": i, "sender_id": "big",
                                            "payload": {"title": "t", "body": f"post {i}"}} for i in range(24)])
        import redis

        client = redis.Redis.from_url(redis_url)
        client.publish(f"{redis_prefix}:push-wakeup", b"1")
        client.close()
        await wait_for(lambda: fake.total_delivered >= 2400 and jobs_done(db), 90, "2400 pushes")
        await wait_for(lambda: count(db, "SELECT COUNT(*) FROM push_outbox WHERE status <> 'sent'") == 0,
                       30, "outcomes recorded")
    finally:
        await engine.dispose()
        for w in workers:
            stop_worker(w)
    assert count(db, "SELECT COUNT(*) FROM push_outbox") == 2400
    assert count(db, "SELECT COUNT(*) FROM (SELECT device_token, payload FROM push_outbox "
                     "GROUP BY device_token, payload) t") == 2400
    assert fake.total_delivered == 2400 and set(fake.delivered.values()) == {24}
    db.dispose()


async def test_a_worker_that_lost_its_lease_writes_nothing(mysql_databases: MySQLDatabases) -> None:
    """Worker A stalls past its lease; B takes the job over and resumes at the committed cursor;
    A's next page (computed from its stale copy) is refused whole: each device once."""
    from chat.db import create_engine, session_factory
    from chat.service import ChatService
    from notifications import jobs

    url = mysql_databases.new()
    db = await prepare_jobs(url, "big", 10, 1)
    engine = create_engine(url)
    sf = session_factory(engine)

    async def nobody(users: Any) -> set[str]:
        return set()

    async def page(job: jobs.ClaimedJob) -> jobs.Page:
        async with sf() as session:
            return await jobs.message_page(session, job, 4, ChatService.push_audience_page, nobody,
                                           datetime.now(UTC))

    try:
        (a_job,) = await jobs.claim_jobs(sf, "A", 1, 60)
        a_job = await jobs.commit_page(sf, a_job, "A", await page(a_job), 60, datetime.now(UTC))
        a_next = await page(a_job)  # A computes its second page, then stalls
        with db.begin() as conn:
            conn.execute(sa.text("UPDATE push_jobs SET lease_until = '2000-01-01'"))
        (b_job,) = await jobs.claim_jobs(sf, "B", 1, 60)
        assert b_job.resume_after == "fan000003"
        b_job = await jobs.commit_page(sf, b_job, "B", await page(b_job), 60, datetime.now(UTC))
        with pytest.raises(jobs.LeaseLost):
            await jobs.commit_page(sf, a_job, "A", a_next, 60, datetime.now(UTC))
        while b_job.resume_after is not None or count(db, "SELECT COUNT(*) FROM push_jobs WHERE status='done'") == 0:
            b_job = await jobs.commit_page(sf, b_job, "B", await page(b_job), 60, datetime.now(UTC))
        assert rows(db, "SELECT user_id, COUNT(*) FROM push_outbox GROUP BY user_id ORDER BY user_id") == [
            (f"fan{i:06d}", 1) for i in range(10)]
        assert rows(db, "SELECT status, pushes FROM push_jobs") == [("done", 10)]
    finally:
        await engine.dispose()
        db.dispose()
