"""Webhooks to the backend (webhooks/, docs/webhooks.md), against a real HTTP receiver (aiohttp on
a free port, on a thread of its own) that checks every request with the publisher's
verify_webhook:

- `record` writes in the caller's transaction (rolled back: nothing), disabled types write nothing;
- the worker delivers each event once, signed; 500s and timeouts are retried with backoff, then
  delivered; past the retry window the event is `failed`, listed and replayable;
- two workers (two engines, as two processes) never send the same event at the same time, and a
  dead worker's claimed rows are sent by another after the lease;
- end to end on server processes (SQLite; MariaDB + Redis with two processes, each with its inline
  worker): `message.created` once per message, never two requests of one event at once,
  the server API's failed list and replay;
- bad settings are one clear line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backstage_publisher import WebhookVerificationError, verify_webhook
from chat import migrate
from chat.config import ConfigError, Settings
from chat.db import create_engine, session_factory, utcnow
from tests.conftest import Cluster, MySQLDatabases
from tests.support import ROOT, free_port, migrated_sqlite, sync_engine
from webhooks import (
    DEFAULT_EVENT_TYPES,
    EVENT_TYPES,
    MEMBER_BLOCKED,
    MEMBER_TIMED_OUT,
    MESSAGE_CREATED,
    MODERATION_ACTION,
    outbox,
    record,
    record_many,
)
from webhooks.models import WebhookOutbox
from webhooks.worker import WebhookOptions, WebhookWorker, retry_delay

SECRET = "whsec-test-0123456789abcdef0123456789"
WAIT = 30.0  # the longest any awaited condition may take before the test fails


# ---------------------------------------------------------------- the receiver


@dataclass
class Received:
    event_id: str
    event: dict[str, Any]
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP endpoint. `script(event_id, n)` (n = 1 for the first request of that event)
    says what to answer: an HTTP status, or "hang" (no answer until the receiver stops)."""

    script: Callable[[str, int], int | str] = lambda event_id, n: 200
    port: int = field(default_factory=free_port)
    delivered: list[Received] = field(default_factory=list)  # answered 2xx
    requests: Counter[str] = field(default_factory=Counter)  # every request, per event id
    bad_signatures: int = 0
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: int = 0  # most requests of ONE event in flight at once
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = verify_webhook(SECRET, request.headers, body)
        except WebhookVerificationError:
            with self.cond:
                self.bad_signatures += 1
                self.cond.notify_all()
            return web.Response(status=400)
        event_id = event["id"]
        assert request.headers["Backstage-Event-Id"] == event_id
        with self.cond:
            self.requests[event_id] += 1
            n = self.requests[event_id]
            self.in_flight[event_id] += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight[event_id])
        try:
            action = self.script(event_id, n)
            if action == "hang":
                assert self._release is not None
                await self._release.wait()
                return web.Response(status=503)
            await asyncio.sleep(0)  # let other requests overlap this one
            status = int(action)
            if 200 <= status < 300:
                with self.cond:
                    self.delivered.append(Received(event_id, event, dict(request.headers), body))
            return web.Response(status=status, text="ok")
        finally:
            with self.cond:
                self.in_flight[event_id] -= 1
                self.cond.notify_all()

    def start(self) -> Receiver:
        ready = threading.Event()
        self._release: asyncio.Event | None = None

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._release = asyncio.Event()
            self._stop = asyncio.Event()
            app = web.Application()
            app.router.add_post("/hook", self._handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        def both() -> None:
            assert self._release is not None
            self._release.set()
            self._stop.set()

        self._loop.call_soon_threadsafe(both)
        self._thread.join(10)

    def wait(self, predicate: Callable[[Receiver], bool], timeout: float = WAIT) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self), timeout), (self.requests, len(self.delivered))

    async def await_(self, predicate: Callable[[Receiver], bool], timeout: float = WAIT) -> None:
        await asyncio.to_thread(self.wait, predicate, timeout)

    def delivered_ids(self) -> list[str]:
        with self.cond:
            return [r.event_id for r in self.delivered]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


# ---------------------------------------------------------------- in-process database


@pytest.fixture(scope="session")
def webhook_mysql_url(mysql_databases: MySQLDatabases) -> str:
    return mysql_databases.new()


@dataclass
class Db:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    url: str

    async def rows(self) -> dict[str, WebhookOutbox]:
        async with self.sessions() as s:
            return {r.event_id: r for r in (await s.execute(sa.select(WebhookOutbox))).scalars().all()}


@pytest.fixture(params=["sqlite", "mysql"])
async def db(request: Any, tmp_path: Any) -> AsyncIterator[Db]:
    url = (f"sqlite+aiosqlite:///{tmp_path}/wh.db" if request.param == "sqlite"
           else request.getfixturevalue("webhook_mysql_url"))
    engine = create_engine(url)
    await migrate.upgrade(engine)
    async with engine.begin() as conn:  # the MariaDB database is shared by this module's tests
        await conn.execute(sa.delete(WebhookOutbox))
    yield Db(engine, session_factory(engine), url)
    await engine.dispose()


def options(url: str, **kw: Any) -> WebhookOptions:
    base = WebhookOptions(url=url, secrets=(SECRET,), timeout_s=2.0, lease_s=5.0, retry_base_s=0.05,
                          retry_cap_s=0.2, max_age_s=60.0, poll_s=0.05)
    return replace(base, **kw)


async def add_events(db: Db, n: int, event_type: str = MEMBER_BLOCKED) -> list[str]:
    async with db.sessions() as s, s.begin():
        ids = [await record(s, event_type, {"creator_id": "cre", "user_id": f"u{i}"}, EVENT_TYPES) for i in range(n)]
    return [i for i in ids if i is not None]


# ---------------------------------------------------------------- record


async def test_record_is_part_of_the_callers_transaction(db: Db) -> None:
    async with db.sessions() as s, s.begin():
        kept = await record(s, MEMBER_BLOCKED, {"user_id": "a"}, DEFAULT_EVENT_TYPES)
    with pytest.raises(RuntimeError):
        async with db.sessions() as s, s.begin():
            await record(s, MEMBER_BLOCKED, {"user_id": "b"}, DEFAULT_EVENT_TYPES)
            raise RuntimeError("the cause fails: its event must go with it")
    async with db.engine.begin() as conn:  # a Core connection works too (the writer's)
        many = await record_many(conn, MESSAGE_CREATED, [{"message": {"id": "1"}}, {"message": {"id": "2"}}],
                                 {MESSAGE_CREATED})
    rows = await db.rows()
    assert kept is not None and kept.startswith("evt_") and many == 2
    assert sorted(r.event_type for r in rows.values()) == [MEMBER_BLOCKED, MESSAGE_CREATED, MESSAGE_CREATED]
    body = __import__("json").loads(rows[kept].body)
    assert body["id"] == kept and body["type"] == MEMBER_BLOCKED and body["data"] == {"user_id": "a"}
    assert body["created_at"].endswith("Z") and rows[kept].status == "pending"


async def test_disabled_event_types_write_nothing(db: Db) -> None:
    async with db.sessions() as s, s.begin():
        assert await record(s, MESSAGE_CREATED, {"message": {}}, DEFAULT_EVENT_TYPES) is None  # opt-in
        assert await record(s, MEMBER_BLOCKED, {}, frozenset()) is None  # WEBHOOK_URL unset
        assert await record_many(s, MESSAGE_CREATED, [{}, {}], DEFAULT_EVENT_TYPES) == 0
    assert await db.rows() == {}
    assert Settings().webhook_events == frozenset()  # no WEBHOOK_URL: nothing is enabled
    assert MESSAGE_CREATED not in Settings.from_env({"WEBHOOK_URL": "https://b.example/h",
                                                     "WEBHOOK_SECRET": SECRET}).webhook_events


# ---------------------------------------------------------------- delivery


async def run_until(worker: WebhookWorker, condition: Callable[[], Any]) -> None:
    worker.start()
    try:
        await condition()
    finally:
        await worker.stop()


async def test_each_event_delivered_once_signed(db: Db, receiver: Receiver) -> None:
    ids = await add_events(db, 5)
    worker = WebhookWorker(db.sessions, options(receiver.url))
    await run_until(worker, lambda: receiver.await_(lambda r: len(r.delivered) >= 5))
    assert sorted(receiver.delivered_ids()) == sorted(ids) and receiver.bad_signatures == 0
    rows = await db.rows()
    assert {r.status for r in rows.values()} == {"delivered"} and {r.attempts for r in rows.values()} == {1}
    assert all(r.last_status == 200 and r.delivered_at is not None for r in rows.values())
    got = receiver.delivered[0]
    assert got.headers["Backstage-Event-Type"] == MEMBER_BLOCKED
    assert got.headers["Content-Type"] == "application/json"
    assert got.body.decode() == rows[got.event_id].body  # exactly the stored (signed) bytes
    assert sum(receiver.requests.values()) == 5  # delivered rows are final: nothing is sent again


async def test_500_and_timeout_retried_with_backoff_then_delivered(db: Db, receiver: Receiver) -> None:
    failing, slow = await add_events(db, 2)

    def script(event_id: str, n: int) -> int | str:
        if event_id == failing:
            return 500 if n <= 2 else 200
        return "hang" if n == 1 else 204

    receiver.script = script
    worker = WebhookWorker(db.sessions, options(receiver.url, timeout_s=0.5, lease_s=5.0))
    await run_until(worker, lambda: receiver.await_(lambda r: len(r.delivered) >= 2))
    rows = await db.rows()
    assert (rows[failing].status, rows[failing].attempts, rows[failing].last_status) == ("delivered", 3, 200)
    assert (rows[slow].status, rows[slow].attempts, rows[slow].last_status) == ("delivered", 2, 204)
    assert receiver.requests == Counter({failing: 3, slow: 2})
    # (the hung first request of `slow` is still open at the receiver when the retry comes: the
    # worker gave up on it after WEBHOOK_TIMEOUT_S; the receiver deduplicates on the event id)
    bodies = {r.event_id: r.body for r in receiver.delivered}
    assert bodies[failing].decode() == rows[failing].body  # the same event, same id, every attempt


def test_backoff_is_exponential_capped_and_jittered() -> None:
    opts = WebhookOptions(url="http://x", secrets=(SECRET,), retry_base_s=60, retry_cap_s=6 * 3600)
    lows = [retry_delay(n, opts, rng=lambda: 0.0) for n in range(1, 12)]
    highs = [retry_delay(n, opts, rng=lambda: 1.0) for n in range(1, 12)]
    assert lows[:4] == [30, 60, 120, 240] and highs[:4] == [60, 120, 240, 480]
    assert highs[-1] == 6 * 3600 and lows[-1] == 3 * 3600  # capped, half of it random
    assert retry_delay(1, opts, retry_after=900, rng=lambda: 0.0) == 900  # Retry-After honoured
    assert retry_delay(1, opts, retry_after=10**9, rng=lambda: 0.0) == 6 * 3600  # ...up to the cap
    assert 0.5 < sum(retry_delay(3, opts) for _ in range(200)) / 200 / 240 < 0.9  # jitter in [120, 240]


async def test_gives_up_after_the_window_then_listed_and_replayed(db: Db, receiver: Receiver) -> None:
    (event_id,) = await add_events(db, 1)
    receiver.script = lambda e, n: 500
    worker = WebhookWorker(db.sessions, options(receiver.url, max_age_s=1.0, retry_cap_s=0.1))

    async def failed() -> None:
        deadline = time.monotonic() + WAIT
        while (await db.rows())[event_id].status != "failed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)  # polling the database's state, with a deadline

    await run_until(worker, failed)
    attempts = receiver.requests[event_id]
    assert attempts >= 2
    async with db.sessions() as s:
        listed, more = await outbox.list_deliveries(s, "failed", None, 10)
    assert [d["event_id"] for d in listed] == [event_id] and not more
    assert listed[0]["last_status"] == 500 and listed[0]["attempts"] == attempts
    assert listed[0]["last_error"].startswith(f"gave up after {attempts} attempts")

    receiver.script = lambda e, n: 200
    async with db.sessions() as s, s.begin():
        replayed = await outbox.replay(s, int(listed[0]["id"]))
        assert replayed is not None and replayed["status"] == "pending"
    async with db.sessions() as s, s.begin():
        with pytest.raises(outbox.ReplayConflict):  # pending: not replayable again
            await outbox.replay(s, int(listed[0]["id"]))
        assert await outbox.replay(s, 10**15) is None
    worker = WebhookWorker(db.sessions, options(receiver.url))
    await run_until(worker, lambda: receiver.await_(lambda r: len(r.delivered) >= 1))
    assert receiver.delivered_ids() == [event_id]  # the same idempotency id as the failed one
    assert (await db.rows())[event_id].status == "delivered"


async def test_two_workers_never_send_one_event_at_once(db: Db, receiver: Receiver) -> None:
    """Three workers, each with its own engine (as separate processes would have), small claims."""
    ids = await add_events(db, 60)
    engines = [create_engine(db.url) for _ in range(3)]
    try:
        workers = [WebhookWorker(session_factory(e), options(receiver.url, batch_size=2)) for e in engines]
        for w in workers:
            w.start()
        try:
            await receiver.await_(lambda r: len(r.delivered) >= 60)
        finally:
            await asyncio.gather(*(w.stop() for w in workers))
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))
    assert receiver.max_in_flight == 1
    assert sorted(receiver.delivered_ids()) == sorted(ids)  # and each once: leases never expired
    assert {r.status for r in (await db.rows()).values()} == {"delivered"}


async def test_a_dead_workers_claim_is_delivered_after_its_lease(db: Db, receiver: Receiver) -> None:
    (event_id,) = await add_events(db, 1)
    claimed = await outbox.claim_due(db.sessions, "dead-worker", 10, lease_seconds=0.3)
    assert [c.event_id for c in claimed] == [event_id]
    assert await outbox.claim_due(db.sessions, "other", 10, lease_seconds=0.3) == []  # leased: not twice
    worker = WebhookWorker(db.sessions, options(receiver.url))
    await run_until(worker, lambda: receiver.await_(lambda r: len(r.delivered) >= 1))
    row = (await db.rows())[event_id]
    assert (row.status, row.attempts) == ("delivered", 2)
    # the dead worker wakes up: its outcome is not recorded over the new owner's
    stale = outbox.Outcome(claimed[0].id, outbox.PENDING, 500, "late", utcnow() + timedelta(seconds=1))
    assert await outbox.finish(db.sessions, "dead-worker", [stale]) == 0
    assert (await db.rows())[event_id].status == "delivered"


async def test_an_event_whose_workers_kept_dying_fails_at_the_end_of_its_window(db: Db, receiver: Receiver) -> None:
    fresh, dying = await add_events(db, 2)
    async with db.sessions() as s, s.begin():  # both older than the window; `dying` was claimed before
        await s.execute(sa.update(WebhookOutbox).values(window_start=utcnow() - timedelta(seconds=120)))
    for _ in range(2):
        await outbox.claim_due(db.sessions, "dead-worker", 10, lease_seconds=0.0)  # claimed; its worker dies
        async with db.sessions() as s, s.begin():
            await s.execute(sa.update(WebhookOutbox).where(WebhookOutbox.event_id == fresh)
                            .values(status="pending", attempts=0))
    worker = WebhookWorker(db.sessions, options(receiver.url, max_age_s=60.0))
    await run_until(worker, lambda: receiver.await_(lambda r: len(r.delivered) >= 1))
    assert receiver.delivered_ids() == [fresh]  # never tried yet: it gets its attempt, however old
    rows = await db.rows()
    assert (rows[dying].status, rows[dying].attempts) == ("failed", 3) and receiver.requests[dying] == 0
    assert rows[dying].last_error == "gave up after 2 attempts: retry window ended"


# ---------------------------------------------------------------- server processes


def server_env(receiver: Receiver, events: str) -> dict[str, str]:
    return {"WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_EVENTS": events,
            "WEBHOOK_POLL_S": "0.1", "WEBHOOK_RETRY_BASE_S": "0.1", "WEBHOOK_RETRY_CAP_S": "0.2",
            "WEBHOOK_MAX_AGE_S": "1", "WEBHOOK_TIMEOUT_S": "2", "WEBHOOK_LEASE_S": "5"}


@pytest.fixture(params=["sqlite", "mysql"])
def webhook_server(request: Any, tmp_path: Any, receiver: Receiver) -> Iterator[Cluster]:
    """SQLite: one process; MariaDB + Redis: two processes, each with its inline delivery worker."""
    env = server_env(receiver, ",".join(EVENT_TYPES))
    if request.param == "sqlite":
        cluster = Cluster(migrated_sqlite(tmp_path / "backstage.db"), None, "unused", 1, env=env)
    else:
        mysql: MySQLDatabases = request.getfixturevalue("mysql_databases")
        cluster = Cluster(mysql.new(), request.getfixturevalue("redis_url"),
                          f"{request.getfixturevalue('redis_prefix')}-wh", 2, env=env)
    yield cluster
    cluster.stop()


def _statuses(database_url: str) -> Counter[str]:
    engine = sync_engine(database_url)
    try:
        with engine.connect() as conn:
            return Counter(dict(conn.execute(sa.text(
                "SELECT status, COUNT(*) FROM webhook_outbox GROUP BY status")).all()))
    finally:
        engine.dispose()


def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll `check` (a database or server-API read) until it is truthy, up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not (result := check()):
        assert time.monotonic() < deadline, f"not in {WAIT} s: {what}"
        time.sleep(0.05)
    return result


def test_message_created_once_per_message_then_failed_list_and_replay(
        webhook_server: Cluster, receiver: Receiver, uid: Any) -> None:
    server, api = webhook_server.servers[0], webhook_server.api
    cre = api.user(uid("cre"))
    room = api.room(uid("cre"), "Lounge")
    sent = []
    for i in range(4):  # on every process of the cluster in turn
        r = webhook_server.apis[i % len(webhook_server.apis)].client(
            cre, "POST", f"/conversations/{room}/messages", {"body": f"hello {i}", "client_msg_id": f"m{i}"})
        assert r.status_code == 201, r.text
        sent.append(r.json()["message"])
    retry = api.client(cre, "POST", f"/conversations/{room}/messages", {"body": "hello 0", "client_msg_id": "m0"})
    assert retry.status_code in (200, 201) and retry.json()["message"]["id"] == sent[0]["id"]  # a retry: no event
    receiver.wait(lambda r: len(r.delivered) >= 4)
    # the workers record the outcomes after the answers; once delivered, nothing more is sent
    eventually(lambda: _statuses(server.database_url) == Counter({"delivered": 4}), "4 delivered")
    events = [r.event for r in receiver.delivered]
    assert [e["type"] for e in events] == [MESSAGE_CREATED] * 4 and receiver.bad_signatures == 0
    assert sorted(e["data"]["message"]["id"] for e in events) == sorted(m["id"] for m in sent)
    by_id = {e["data"]["message"]["id"]: e["data"]["message"] for e in events}
    assert all(by_id[m["id"]]["body"] == m["body"] and by_id[m["id"]]["seq"] == m["seq"] for m in sent)
    assert len({e["id"] for e in events}) == 4 and sum(receiver.requests.values()) == 4
    assert receiver.max_in_flight == 1

    # the backend is down past the retry window (1 s here): the event is failed, listed, replayable
    receiver.script = lambda e, n: 503
    r = api.client(cre, "POST", f"/conversations/{room}/messages", {"body": "lost?", "client_msg_id": "m9"})
    assert r.status_code == 201
    (failed,) = eventually(lambda: api.server("GET", "/webhooks/deliveries?status=failed").json()["deliveries"],
                           "the event failed")
    assert failed["event_type"] == MESSAGE_CREATED and failed["status"] == "failed" and failed["last_status"] == 503
    assert receiver.requests[failed["event_id"]] == failed["attempts"] >= 2
    receiver.script = lambda e, n: 200
    replay = api.server("POST", f"/webhooks/deliveries/{failed['id']}/replay")
    assert replay.status_code == 202, replay.text
    assert replay.json()["delivery"]["status"] == "pending"
    receiver.wait(lambda rc: failed["event_id"] in rc.delivered_ids())
    eventually(lambda: _statuses(server.database_url) == Counter({"delivered": 5}), "the replay delivered")
    event = next(x.event for x in receiver.delivered if x.event_id == failed["event_id"])
    assert event["data"]["message"]["body"] == "lost?"
    page = api.server("GET", "/webhooks/deliveries?status=delivered&limit=2").json()
    assert page["has_more"] is True and page["deliveries"][0]["event_id"] == failed["event_id"]
    # errors: clear codes, never a 500
    assert api.server("GET", "/webhooks/deliveries?status=lost").json()["error"]["code"] == "invalid"
    assert api.server("GET", "/webhooks/deliveries?limit=0").status_code == 400
    assert api.server("POST", "/webhooks/deliveries/999999999/replay").json()["error"]["code"] == "not_found"
    assert api.server("POST", "/webhooks/deliveries/abc/replay").status_code == 400
    assert api.http.get("/api/v1/server/webhooks/deliveries").status_code == 401


def test_moderation_actions_are_webhooks(webhook_server: Cluster, receiver: Receiver, uid: Any) -> None:
    """A block and a timeout (on either process): each a `moderation.action` (the log entry) and a
    `member.blocked` / `member.timed_out`, signed, written in the action's transaction."""
    apis = webhook_server.apis
    cre, pat, other = uid("cre"), uid("pat"), uid("oth")
    for user in (cre, pat, other):
        apis[0].user(user)
        if user != cre:
            apis[0].membership(cre, user, 100)
    r = apis[0].server("PUT", f"/creators/{cre}/blocks/{pat}", {"reason": "spam"})
    assert r.status_code == 200, r.text
    r = apis[-1].server("PUT", f"/creators/{cre}/timeouts/{other}", {"minutes": 5, "reason": "cool down"})
    assert r.status_code == 200, r.text
    until = r.json()["until"]
    receiver.wait(lambda rc: len(rc.delivered) >= 4)
    assert receiver.bad_signatures == 0
    events = [x.event for x in receiver.delivered]
    assert Counter(e["type"] for e in events) == {MODERATION_ACTION: 2, MEMBER_BLOCKED: 1, MEMBER_TIMED_OUT: 1}
    actions = {e["data"]["action"]: e["data"] for e in events if e["type"] == MODERATION_ACTION}
    assert actions["block"]["target_id"] == pat and actions["block"]["reason"] == "spam"
    assert actions["timeout"]["target_id"] == other and actions["timeout"]["until"] == until
    blocked = next(e["data"] for e in events if e["type"] == MEMBER_BLOCKED)
    assert blocked == {"creator_id": cre, "user_id": pat, "by": None, "reason": "spam",
                       "action_id": actions["block"]["id"]}
    timed_out = next(e["data"] for e in events if e["type"] == MEMBER_TIMED_OUT)
    assert timed_out["user_id"] == other and timed_out["until"] == until and timed_out["reason"] == "cool down"


def test_no_webhook_settings_no_rows_on_the_send_path(shared_any_server: Cluster, uid: Any) -> None:
    api = shared_any_server.api
    cre = api.user(uid("cre"))
    room = api.room(uid("cre"))
    r = api.client(cre, "POST", f"/conversations/{room}/messages", {"body": "x", "client_msg_id": "a"})
    assert r.status_code == 201
    assert sum(_statuses(shared_any_server.database_url).values()) == 0
    listed = api.server("GET", "/webhooks/deliveries").json()
    assert listed == {"deliveries": [], "has_more": False}


def test_external_worker_process_delivers(tmp_path: Any, receiver: Receiver) -> None:
    """WEBHOOK_WORKER=external: `python -m notifications.worker` delivers the outbox (the web
    processes do not), and stops cleanly on SIGTERM."""
    url = f"sqlite+aiosqlite:///{tmp_path}/ext.db"

    async def prepare() -> str:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
            async with engine.begin() as conn:
                event_id = await record(conn, MEMBER_BLOCKED, {"user_id": "u"}, DEFAULT_EVENT_TYPES)
        finally:
            await engine.dispose()
        assert event_id is not None
        return event_id

    event_id = asyncio.run(prepare())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "DATABASE_", "REDIS_", "JWT_"))}
    env.update(server_env(receiver, "member.blocked"), WEBHOOK_MAX_AGE_S="600", DATABASE_URL=url, WEBHOOK_WORKER="external",
               PUSH_WORKER="external", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "notifications.worker"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with receiver.cond:
            arrived = receiver.cond.wait_for(lambda: len(receiver.delivered) >= 1, WAIT)
        if arrived:
            eventually(lambda: _statuses(url) == Counter({"delivered": 1}), "recorded as delivered")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert arrived and receiver.delivered_ids() == [event_id], (out, _statuses(url), receiver.requests, receiver.bad_signatures)
    assert proc.returncode == 0, out
    assert "webhook worker started" in out


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(("env", "variable", "words"), [
    ({"WEBHOOK_URL": "https://b.example/h"}, "WEBHOOK_SECRET", "required when WEBHOOK_URL"),
    ({"WEBHOOK_URL": "https://b.example/h", "WEBHOOK_SECRET": "short"}, "WEBHOOK_SECRET", "32+ characters"),
    ({"WEBHOOK_URL": "ftp://b.example/h", "WEBHOOK_SECRET": SECRET}, "WEBHOOK_URL", "http(s) URL"),
    ({"WEBHOOK_URL": "https://b.example/h", "WEBHOOK_SECRET": SECRET, "WEBHOOK_EVENTS": "message.created,nope"},
     "WEBHOOK_EVENTS", "unknown event type nope"),
    ({"WEBHOOK_SECRET": SECRET}, "WEBHOOK_URL", "required when"),
    ({"WEBHOOK_URL": "https://b.example/h", "WEBHOOK_SECRET": SECRET, "WEBHOOK_TIMEOUT_S": "30",
      "WEBHOOK_LEASE_S": "20"}, "WEBHOOK_LEASE_S", "longer than WEBHOOK_TIMEOUT_S"),
    ({"WEBHOOK_WORKER": "sometimes"}, "WEBHOOK_WORKER", "inline"),
    ({"WEBHOOK_RETRY_BASE_S": "-1"}, "WEBHOOK_RETRY_BASE_S", "greater than 0"),
])
def test_bad_settings_are_one_clear_line(env: dict[str, str], variable: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    (line,) = caught.value.problems
    assert line.startswith(variable) and words in line, line
    assert SECRET not in line and "short" not in line.split(":", 1)[0]


def test_good_settings_and_the_exit_code() -> None:
    s = Settings.from_env({"WEBHOOK_URL": "https://b.example/h", "WEBHOOK_SECRET": f"{SECRET},{SECRET}-old",
                           "WEBHOOK_EVENTS": "message.created, member.blocked"})
    assert s.webhook_events == {MESSAGE_CREATED, MEMBER_BLOCKED} and s.webhook_secrets == (SECRET, f"{SECRET}-old")
    assert SECRET not in repr(s)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "DATABASE_", "JWT_"))}
    done = subprocess.run([sys.executable, str(ROOT / "run_server.py"), "migrate"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**env, "WEBHOOK_URL": "https://b.example/h"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "configuration error: WEBHOOK_SECRET: required when WEBHOOK_URL is set (the key webhooks are signed with); "
        "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"]
