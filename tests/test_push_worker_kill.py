"""A push worker process killed with SIGKILL in the middle of a batch loses nothing: its claimed
rows return after the lease and another worker delivers them (real firebase-admin, fake FCM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from chat.db import create_engine, session_factory
from chat.migrate import upgrade
from notifications.models import Device
from notifications.outbox import PushPayload, enqueue_pushes
from tests.conftest import MySQLDatabases
from tests.fakefcm import FakeFCMServer
from tests.support import ROOT, sync_engine

ROWS = 40


def start_worker(database_url: str, fcm: FakeFCMServer, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_"))}
    env.update({"DATABASE_URL": database_url, "FIREBASE_CREDENTIALS": fcm.credentials_path,
                "FCM_ENDPOINT": fcm.endpoint, "PUSH_LEASE_S": "3", "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen([sys.executable, "-m", "notifications.worker"], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def statuses(db: sa.Engine) -> dict[str, int]:
    with db.connect() as conn:
        return dict(conn.execute(sa.text("SELECT status, COUNT(*) FROM push_outbox GROUP BY status")).all())


def wait_until(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_worker_sigkilled_mid_batch_loses_nothing(fcm_server: FakeFCMServer, mysql_databases: MySQLDatabases,
                                                        tmp_path: Path) -> None:
    fake = fcm_server.fake
    fake.reset()
    url = mysql_databases.new()
    engine = create_engine(url)
    await upgrade(engine)
    async with session_factory(engine).begin() as session:
        session.add_all([Device(token=f"kill-{i}", user_id=f"u{i}", platform="android") for i in range(ROWS)])
        await session.flush()
        assert await enqueue_pushes(session, [f"u{i}" for i in range(ROWS)], PushPayload("t", "b")) == ROWS
    await engine.dispose()
    db = sync_engine(url)

    fake.send_delay = 5.0  # FCM answers slowly: the worker is caught with its batch in flight
    first = start_worker(url, fcm_server, tmp_path / "worker1.log")
    try:
        wait_until(lambda: statuses(db).get("sending", 0) == ROWS and len(fake.token_requests) >= 1, 20)
        assert fake.total_requests == 0
        time.sleep(0.5)  # lets the requests get onto the wire (the checks below hold either way)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert statuses(db) == {"sending": ROWS}  # nothing recorded: the worker died mid-batch
        # Revoke the dead worker's OAuth access token: its requests still in flight at the fake land
        # after this and are refused (401), so every accepted push from here on is the survivor's.
        with fake._lock:
            fake.issued.clear()
        assert fake.total_delivered == 0
        first_sign_ins = len(fake.token_requests)

        fake.send_delay = 0.0
        second = start_worker(url, fcm_server, tmp_path / "worker2.log")
        try:
            wait_until(lambda: statuses(db) == {"sent": ROWS}, 30)  # after the 3 s lease
            # every device got exactly one accepted push, and only the second worker could send it
            assert fake.delivered == Counter({f"kill-{i}": 1 for i in range(ROWS)})
            assert len(fake.token_requests) > first_sign_ins  # the survivor signed in with its own token
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        db.dispose()
