"""Push outbox + worker, end to end through the real firebase-admin SDK and the fake FCM server.

MariaDB (a fresh database per test) for everything; SQLite too for the basic path. The only
fakes are the FCM server (tests/fakefcm.py) and, in one test, a session factory that fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chat.db import create_engine, session_factory, utcnow
from chat.keys import RedisKeys
from chat.migrate import upgrade
from notifications.fcm import FcmSender, Outcome, classify_exception
from notifications.models import Device, PushOutbox
from notifications.outbox import (
    FCM_PAYLOAD_LIMIT,
    PushPayload,
    claim_due,
    enqueue_pushes,
    fit_payload,
)
from notifications.worker import PushWorker, WorkerOptions, publish_wakeup, retry_delay
from tests.fakefcm import FakeFCM, FakeFCMServer

ROOT = Path(__file__).resolve().parents[1]

FAST = WorkerOptions(
    batch_size=100,
    concurrency=2,
    lease_seconds=30.0,
    poll_interval=0.05,
    retry_base=0.05,
    retry_cap=0.2,
    error_backoff=0.05,
    stats_interval=0.1,
)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def fake(fcm_server: FakeFCMServer) -> FakeFCM:
    fcm_server.fake.reset()
    return fcm_server.fake


@pytest.fixture
async def sender(fcm_server: FakeFCMServer) -> AsyncIterator[FcmSender]:
    """The real transport: a firebase App on this test's loop, pointed at the fake."""
    s = FcmSender(fcm_server.credentials_path, fcm_server.endpoint)
    yield s
    await s.aclose()


async def _schema(engine: AsyncEngine) -> None:
    """The schema the way production builds it: the Alembic migrations, not the models."""
    await upgrade(engine)


@pytest.fixture
async def mysql_engine(mysql_databases: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(mysql_databases.new())
    await _schema(engine)
    yield engine
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    await engine.dispose()


@pytest.fixture(params=["mysql", "sqlite"])
async def any_engine(request: pytest.FixtureRequest, mysql_databases: Any, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = mysql_databases.new() if request.param == "mysql" else f"sqlite+aiosqlite:///{tmp_path / 'push.db'}"
    engine = create_engine(url)
    await _schema(engine)
    yield engine
    await engine.dispose()


# --- helpers -----------------------------------------------------------------------------------


async def add_devices(sf: async_sessionmaker[AsyncSession], pairs: list[tuple[str, str]]) -> None:
    async with sf() as s, s.begin():
        s.add_all([Device(user_id=u, token=t, platform="android") for u, t in pairs])


async def enqueue(sf: async_sessionmaker[AsyncSession], users: list[str], payload: PushPayload | None = None) -> int:
    async with sf() as s, s.begin():
        return await enqueue_pushes(s, users, payload or PushPayload("Alice", "hello"))


async def rows(sf: async_sessionmaker[AsyncSession]) -> list[PushOutbox]:
    async with sf() as s:
        return list((await s.execute(sa.select(PushOutbox).order_by(PushOutbox.id))).scalars())


async def device_tokens(sf: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sf() as s:
        return set((await s.execute(sa.select(Device.token))).scalars())


async def wait_until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def all_final(sf: async_sessionmaker[AsyncSession]) -> bool:
    return all(r.status in ("sent", "failed", "skipped") for r in await rows(sf))


class running:
    """async with running(worker): the worker runs in the background for the block."""

    def __init__(self, worker: PushWorker) -> None:
        self.worker = worker

    async def __aenter__(self) -> PushWorker:
        self.worker.start()
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        await self.worker.stop()


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# --- storage -----------------------------------------------------------------------------------


def test_fit_payload_truncates_body_under_fcm_limit() -> None:
    p = fit_payload(PushPayload("T" * 500, "é\"" * 5000, {"type": "message", "conversation_id": "c1"}, "c1"))
    doc = {"notification": {"title": p.title, "body": p.body}, "data": p.data}
    assert len(json.dumps(doc, ensure_ascii=False).encode()) < FCM_PAYLOAD_LIMIT
    assert p.body.endswith("\u2026") and len(p.body) > 1000 and len(p.title) <= 200
    short = PushPayload("t", "b")
    assert fit_payload(short) is short


async def test_enqueue_one_row_per_device(any_engine: AsyncEngine) -> None:
    sf = session_factory(any_engine)
    await add_devices(sf, [("u1", "tok-a"), ("u1", "tok-b"), ("u2", "tok-c"), ("u3", "tok-d")])
    assert await enqueue(sf, ["u1", "u2", "u1", "nobody"], PushPayload("t", "x" * 10_000)) == 3
    assert await enqueue(sf, []) == 0
    got = await rows(sf)
    assert sorted(r.device_token for r in got) == ["tok-a", "tok-b", "tok-c"]
    assert {r.status for r in got} == {"pending"} and {r.attempts for r in got} == {0}
    assert len(PushPayload.from_json(got[0].payload).body) < 4000


# --- delivery ----------------------------------------------------------------------------------


async def test_push_delivered_with_fcm_shape(any_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender) -> None:
    sf = session_factory(any_engine)
    await add_devices(sf, [("u1", "tok-1"), ("u2", "tok-2")])
    await enqueue(
        sf, ["u1"],
        PushPayload("Alice in #general", "hi there", {"type": "message", "conversation_id": "c42", "message_id": "7"},
                    collapse_key="c42", high_priority=True),
    )
    await enqueue(sf, ["u2"], PushPayload("Bob", "quiet", {"type": "mention"}, collapse_key=None, high_priority=False))
    sent_before = metric("backstage_push_sent_total")
    async with running(PushWorker(sf, sender, FAST)):
        await wait_until(lambda: all_final(sf), what="rows sent")
    assert [(r.status, r.attempts, r.lease_until) for r in await rows(sf)] == [("sent", 1, None)] * 2
    [m1] = fake.delivered_messages("tok-1")
    assert m1 == {
        "token": "tok-1",
        "notification": {"title": "Alice in #general", "body": "hi there"},
        "data": {"type": "message", "conversation_id": "c42", "message_id": "7"},
        "android": {"collapse_key": "c42", "priority": "high"},
        "apns": {"headers": {"apns-collapse-id": "c42", "apns-priority": "10"}},
    }
    [m2] = fake.delivered_messages("tok-2")
    assert m2["android"] == {"priority": "normal"} and m2["apns"] == {"headers": {"apns-priority": "5"}}
    assert fake.sends[0]["project"] == "demo-chat"
    assert metric("backstage_push_sent_total") - sent_before == 2


async def test_unregistered_token_removed_and_never_sent_again(
    mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender
) -> None:
    sf = session_factory(mysql_engine)
    await add_devices(sf, [("u1", "dead"), ("u1", "alive")])
    fake.rules["dead"] = {"fcm": "UNREGISTERED"}
    await enqueue(sf, ["u1"])
    await enqueue(sf, ["u1"])  # a second pending row for the dead token, claimed in a later batch
    removed_before = metric("backstage_push_tokens_removed_total")
    opts = replace(FAST, batch_size=1, concurrency=1)
    async with running(PushWorker(sf, sender, opts)):
        await wait_until(lambda: all_final(sf), what="rows final")
    assert await device_tokens(sf) == {"alive"}
    by_token: dict[str, list[str]] = {}
    for r in await rows(sf):
        by_token.setdefault(r.device_token, []).append(r.status)
    assert by_token == {"dead": ["failed", "failed"], "alive": ["sent", "sent"]}
    assert fake.attempts["dead"] == 1  # the second row was failed without being sent
    assert metric("backstage_push_tokens_removed_total") - removed_before == 1
    assert await enqueue(sf, ["u1"]) == 1  # the device is gone: no new rows for it


async def test_invalid_token_removed_but_invalid_payload_keeps_device(
    mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender
) -> None:
    sf = session_factory(mysql_engine)
    await add_devices(sf, [("u1", "bad-token"), ("u2", "bad-payload")])
    fake.rules["bad-token"] = {"fcm": "INVALID_ARGUMENT"}
    fake.rules["bad-payload"] = {"fcm": "INVALID_PAYLOAD"}
    await enqueue(sf, ["u1", "u2"])
    async with running(PushWorker(sf, sender, FAST)):
        await wait_until(lambda: all_final(sf), what="rows final")
    assert await device_tokens(sf) == {"bad-payload"}
    final = {r.device_token: (r.status, r.attempts) for r in await rows(sf)}
    assert final == {"bad-token": ("failed", 1), "bad-payload": ("failed", 1)}


async def test_transient_errors_retried_until_delivered(
    mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender
) -> None:
    sf = session_factory(mysql_engine)
    tokens = ["unavailable", "internal", "html502", "quota"]
    await add_devices(sf, [(f"u-{t}", t) for t in tokens])
    fake.rules.update({
        "unavailable": {"fcm": "UNAVAILABLE", "times": 6},  # the SDK itself tries 503s 5 times
        "internal": {"fcm": "INTERNAL", "times": 5},
        "html502": {"fcm": "HTML_502", "times": 2},
        "quota": {"fcm": "QUOTA_EXCEEDED", "times": 1, "retry_after": 1},
    })
    await enqueue(sf, [f"u-{t}" for t in tokens])
    opts = replace(FAST, retry_cap=5.0)  # lets Retry-After: 1 through uncapped
    async with running(PushWorker(sf, sender, opts)):
        await wait_until(lambda: all_final(sf), timeout=60, what="rows delivered")
    final = {r.device_token: (r.status, r.attempts) for r in await rows(sf)}
    assert final == {"unavailable": ("sent", 2), "internal": ("sent", 2), "html502": ("sent", 3), "quota": ("sent", 2)}
    assert {t: fake.delivered[t] for t in tokens} == dict.fromkeys(tokens, 1)
    quota = [s["at"] for s in fake.sends if s["target"] == "quota"]
    assert quota[1] - quota[0] >= 0.9  # Retry-After honoured


async def test_token_endpoint_down_retries_batch(mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender) -> None:
    sf = session_factory(mysql_engine)
    await add_devices(sf, [("u1", "t1"), ("u2", "t2")])
    fake.token_down = True
    await enqueue(sf, ["u1", "u2"])
    async with running(PushWorker(sf, sender, FAST)):
        await wait_until(lambda: _attempted(sf, 2), what="failed attempts")
        assert fake.total_requests == 0
        pending = await rows(sf)
        assert all(r.status in ("pending", "sending") and r.last_error for r in pending)
        fake.token_down = False
        await wait_until(lambda: all_final(sf), what="delivery after recovery")
    assert {r.status for r in await rows(sf)} == {"sent"}
    assert fake.delivered == {"t1": 1, "t2": 1}


async def _attempted(sf: async_sessionmaker[AsyncSession], n: int) -> bool:
    return all(r.attempts >= n for r in await rows(sf))


async def test_give_up_after_max_attempts(mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender) -> None:
    sf = session_factory(mysql_engine)
    await add_devices(sf, [("u1", "always-quota")])
    fake.rules["always-quota"] = {"fcm": "QUOTA_EXCEEDED"}
    await enqueue(sf, ["u1"])
    async with running(PushWorker(sf, sender, replace(FAST, max_attempts=3))):
        await wait_until(lambda: all_final(sf), what="give-up")
    [row] = await rows(sf)
    assert (row.status, row.attempts) == ("failed", 3)
    assert row.last_error and row.last_error.startswith("gave up after 3 attempts")
    assert fake.attempts["always-quota"] == 3
    assert await device_tokens(sf) == {"always-quota"}  # transient failures never remove a device


async def test_abandoned_claim_is_redelivered_once_after_lease(
    mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender
) -> None:
    sf = session_factory(mysql_engine)
    await add_devices(sf, [(f"u{i}", f"crash-{i}") for i in range(5)])
    await enqueue(sf, [f"u{i}" for i in range(5)])
    # a worker claims the rows and dies before sending
    claimed = await claim_due(sf, limit=3, lease_seconds=1.0, now=utcnow())
    assert len(claimed) == 3
    async with running(PushWorker(sf, sender, FAST)):
        await wait_until(lambda: fake.total_delivered >= 2, what="unclaimed rows")
        assert {r.status for r in await rows(sf) if r.id in {c.id for c in claimed}} == {"sending"}
        await wait_until(lambda: all_final(sf), what="redelivery after lease")
    assert {r.status for r in await rows(sf)} == {"sent"}
    assert fake.delivered == {f"crash-{i}": 1 for i in range(5)}
    assert {r.attempts for r in await rows(sf) if r.id in {c.id for c in claimed}} == {2}


async def test_two_workers_never_send_a_row_twice(
    mysql_databases: Any, fake: FakeFCM, fcm_server: FakeFCMServer
) -> None:
    url = mysql_databases.new()
    engines = [create_engine(url), create_engine(url)]
    await _schema(engines[0])
    sf0 = session_factory(engines[0])
    n = 1500
    await add_devices(sf0, [(f"u{i}", f"multi-{i}") for i in range(n)])
    await enqueue(sf0, [f"u{i}" for i in range(n)])
    fake.record_messages = False
    senders = [FcmSender(fcm_server.credentials_path, fcm_server.endpoint) for _ in engines]
    opts = replace(FAST, batch_size=50, concurrency=3)
    workers = [PushWorker(session_factory(e), s, opts) for e, s in zip(engines, senders, strict=True)]
    try:
        for w in workers:
            w.start()
        await wait_until(lambda: all_final(sf0), timeout=90, what="all rows sent")
    finally:
        for w in workers:
            await w.stop()
        for s in senders:
            await s.aclose()
    assert {r.status for r in await rows(sf0)} == {"sent"}
    assert fake.total_requests == n and len(fake.delivered) == n
    assert set(fake.delivered.values()) == {1}
    assert all(w.batches_done > 0 for w in workers), [w.batches_done for w in workers]
    for e in engines:
        assert e.pool.checkedout() == 0  # type: ignore[attr-defined]
        await e.dispose()


async def test_no_credentials_marks_skipped(any_engine: AsyncEngine) -> None:
    sf = session_factory(any_engine)
    await add_devices(sf, [("u1", "t1")])
    await enqueue(sf, ["u1"])
    async with running(PushWorker(sf, None, FAST)):
        await wait_until(lambda: all_final(sf), what="skipped")
    [row] = await rows(sf)
    assert (row.status, row.last_error) == ("skipped", "FCM not configured")


async def test_deleted_device_is_not_sent(mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender) -> None:
    sf = session_factory(mysql_engine)
    await add_devices(sf, [("u1", "logged-out"), ("u1", "kept")])
    await enqueue(sf, ["u1"])
    async with sf() as s, s.begin():  # the user logs out before the worker runs
        await s.execute(sa.delete(Device).where(Device.token == "logged-out"))
    async with running(PushWorker(sf, sender, FAST)):
        await wait_until(lambda: all_final(sf), what="rows final")
    final = {r.device_token: (r.status, r.last_error) for r in await rows(sf)}
    assert final == {"logged-out": ("failed", "device removed"), "kept": ("sent", None)}
    assert fake.attempts["logged-out"] == 0


async def test_worker_loop_survives_exceptions(mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender) -> None:
    real = session_factory(mysql_engine)
    failures = {"left": 3}

    def flaky_factory() -> AsyncSession:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("database went away")
        return real()

    await add_devices(real, [("u1", "t1")])
    await enqueue(real, ["u1"])
    async with running(PushWorker(flaky_factory, sender, FAST)) as worker:  # type: ignore[arg-type]
        await wait_until(lambda: all_final(real), what="delivery after errors")
        assert worker._task is not None and not worker._task.done()
    assert failures["left"] == 0 and fake.delivered == {"t1": 1}


async def test_redis_wakeup_from_another_process(
    mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender, redis_url: str, redis_prefix: str
) -> None:
    sf = session_factory(mysql_engine)
    keys = RedisKeys(redis_prefix)
    r_worker, r_producer = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    await add_devices(sf, [("u0", "t0"), ("u1", "t1")])
    await enqueue(sf, ["u0"])
    worker = PushWorker(sf, sender, replace(FAST, poll_interval=60.0), redis=r_worker, keys=keys)
    try:
        async with running(worker):
            await wait_until(lambda: _subscribed(r_producer, keys), what="subscription")
            # t0 sent: its claim is over and the loop went to sleep (60 s) before sending it
            await wait_until(lambda: all_final(sf), timeout=10, what="first delivery")
            await enqueue(sf, ["u1"])
            await publish_wakeup(r_producer, keys)
            await wait_until(lambda: all_final(sf), timeout=10, what="woken delivery")
    finally:
        await r_worker.aclose()
        await r_producer.aclose()
    assert fake.delivered == {"t0": 1, "t1": 1}


async def _subscribed(r: aioredis.Redis, keys: RedisKeys) -> bool:
    counts = await r.pubsub_numsub(keys.push_wakeup_channel)
    return bool(counts and counts[0][1] >= 1)


async def test_inline_wake_without_polling(mysql_engine: AsyncEngine, fake: FakeFCM, sender: FcmSender) -> None:
    sf = session_factory(mysql_engine)
    await add_devices(sf, [("u0", "t0"), ("u1", "t1")])
    await enqueue(sf, ["u0"])
    async with running(PushWorker(sf, sender, replace(FAST, poll_interval=60.0))) as worker:
        # t0 sent: its claim is over and the loop went to sleep (60 s) before sending it
        await wait_until(lambda: all_final(sf), timeout=10, what="first delivery")
        await enqueue(sf, ["u1"])
        worker.wake()
        await wait_until(lambda: all_final(sf), timeout=10, what="woken delivery")
    assert fake.delivered == {"t0": 1, "t1": 1}


def test_worker_process_delivers_and_exits_on_sigterm(
    mysql_databases: Any, fake: FakeFCM, fcm_server: FakeFCMServer, redis_url: str, redis_prefix: str
) -> None:
    url = mysql_databases.new()

    async def setup() -> None:
        engine = create_engine(url)
        await _schema(engine)
        sf = session_factory(engine)
        await add_devices(sf, [("u1", "proc-1")])
        await enqueue(sf, ["u1"])
        await engine.dispose()

    asyncio.run(setup())
    env = dict(os.environ, DATABASE_URL=url, FIREBASE_CREDENTIALS=fcm_server.credentials_path,
               FCM_ENDPOINT=fcm_server.endpoint, REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, LOG_LEVEL="INFO")
    proc = subprocess.Popen([sys.executable, "-m", "notifications.worker"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while fake.delivered.get("proc-1") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.delivered.get("proc-1") == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out.decode()
    assert b"proc-1" not in out and b"hello" not in out  # no tokens or bodies in the logs


# --- policy and classification -----------------------------------------------------------------


def test_retry_delay_policy() -> None:
    opts = WorkerOptions()
    assert all(retry_delay(1, opts) <= 10 for _ in range(200))  # first retry within 10 s
    assert all(retry_delay(n, opts) <= 300 for n in range(1, 30) for _ in range(20))
    assert retry_delay(1, opts, rng=lambda: 0.0) == 4.0 and retry_delay(2, opts, rng=lambda: 1.0) == 16.0
    assert retry_delay(1, opts, retry_after=120, rng=lambda: 0.0) == 120
    assert retry_delay(1, opts, retry_after=10_000) == 300  # Retry-After capped at 5 minutes


def test_classify_non_firebase_errors() -> None:
    import google.auth.exceptions as gexc

    assert classify_exception(gexc.RefreshError("down")).outcome is Outcome.RETRY
    assert classify_exception(ValueError("bug")).outcome is Outcome.FAILED
    assert "secret-token" not in (classify_exception(ValueError("bad secret-token"), "secret-token").error or "")


async def test_claim_skips_rows_locked_by_another_claimer(mysql_engine: AsyncEngine) -> None:
    sf = session_factory(mysql_engine)
    await add_devices(sf, [(f"u{i}", f"lock-{i}") for i in range(10)])
    await enqueue(sf, [f"u{i}" for i in range(10)])
    results = await asyncio.gather(*[claim_due(sf, 4, 60, utcnow()) for _ in range(4)])
    ids = [c.id for batch in results for c in batch]
    assert len(ids) == len(set(ids)) == 10
    later = utcnow() + timedelta(seconds=120)  # every lease expired: all due again, once
    again = await asyncio.gather(*[claim_due(sf, 10, 60, later) for _ in range(2)])
    assert sorted(c.id for b in again for c in b) == sorted(ids)
