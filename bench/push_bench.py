"""Push throughput: outbox rows committed -> FCM requests received, through the real firebase-admin
SDK and tests/fakefcm.py, against a bare `send_each_async` loop measured in the same run.

    .venv/bin/python bench/push_bench.py [--pushes 1500] [--runs 3] [--profile]

Needs MariaDB (MYSQL_ADMIN_URL, default root@127.0.0.1:3306) and Redis (TEST_REDIS_URL); creates a
database and a Redis prefix of its own and removes them. Workers and the bare loop run as child
processes so their CPU (time.process_time) is measured alone; the fake FCM runs in a thread here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MYSQL_ADMIN_URL = os.environ.get("MYSQL_ADMIN_URL", "mysql+pymysql://root@127.0.0.1:3306/")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def sample_payload(i: int) -> Any:
    from notifications.outbox import PushPayload

    return PushPayload(
        title="Alice in #general",
        body=f"message number {i}: " + "lorem ipsum " * 8,
        data={"type": "message", "conversation_id": "c1", "message_id": str(i)},
        collapse_key="c1",
        high_priority=True,
    )


# --- children ------------------------------------------------------------------------------------


async def bare_child(n: int, inflight: int, prefix: str) -> dict[str, float]:
    """The baseline: build messages and call send_each_async in batches of 500, nothing else."""
    import firebase_admin
    from firebase_admin import credentials, messaging

    from notifications.fcm import build_message, redirect_fcm_endpoint

    redirect_fcm_endpoint(os.environ["FCM_ENDPOINT"])
    app = firebase_admin.initialize_app(credentials.Certificate(os.environ["FIREBASE_CREDENTIALS"]), name="bare")
    await messaging.send_each_async([build_message(f"{prefix}-warm", sample_payload(0))], app=app)
    sem = asyncio.Semaphore(inflight)

    async def one(start: int) -> None:
        async with sem:
            msgs = [build_message(f"{prefix}-{i}", sample_payload(i)) for i in range(start, min(n, start + 500))]
            batch = await messaging.send_each_async(msgs, app=app)
            assert batch.failure_count == 0, [r.exception for r in batch.responses if r.exception][:3]

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*[one(s) for s in range(0, n, 500)])
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}


async def worker_child(concurrency: int, profile: str | None) -> None:
    """A push worker process like `python -m notifications.worker`, plus READY / CPU reporting."""
    import redis.asyncio as aioredis

    from chat.config import Settings
    from chat.db import create_engine, session_factory
    from chat.keys import RedisKeys
    from notifications.fcm import FcmSender, PushRequest
    from notifications.worker import PushWorker, WorkerOptions

    settings = Settings.from_env()
    engine = create_engine(settings.database_url)
    sender = FcmSender(settings.firebase_credentials or "", settings.fcm_endpoint)
    await sender.send([PushRequest(f"warm-{os.getpid()}", sample_payload(0))])  # App, token, connection
    redis = aioredis.Redis.from_url(settings.redis_url or REDIS_URL)
    worker = PushWorker(session_factory(engine), sender, WorkerOptions(concurrency=concurrency),
                        redis=redis, keys=RedisKeys(settings.redis_prefix))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.stop()))
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0 = time.process_time()
    print("READY", flush=True)
    await worker.run()
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    print(json.dumps({"cpu": cpu}), flush=True)
    await sender.aclose()
    await redis.aclose()
    await engine.dispose()


# --- parent --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from tests.fakefcm import FakeFCMServer

        self.args = args
        self.tmp = tempfile.TemporaryDirectory(prefix="pushbench-")
        self.fcm = FakeFCMServer(Path(self.tmp.name))
        self.fcm.fake.record_messages = False
        self.run_id = secrets.token_hex(3)
        self.db_name = f"pushbench_{self.run_id}"
        self.prefix = f"pushbench-{self.run_id}"
        self._admin("CREATE DATABASE `%s` CHARACTER SET utf8mb4" % self.db_name)
        from sqlalchemy.engine import make_url

        self.db_url = make_url(MYSQL_ADMIN_URL).set(drivername="mysql+aiomysql", database=self.db_name)
        self.env = dict(
            os.environ,
            DATABASE_URL=self.db_url.render_as_string(hide_password=False),
            FIREBASE_CREDENTIALS=self.fcm.credentials_path,
            FCM_ENDPOINT=self.fcm.endpoint,
            REDIS_URL=REDIS_URL,
            REDIS_PREFIX=self.prefix,
            LOG_LEVEL="WARNING",
            PYTHONPATH=str(ROOT),
        )
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._setup_db())

    def _admin(self, sql: str) -> None:
        import pymysql
        from sqlalchemy.engine import make_url

        u = make_url(MYSQL_ADMIN_URL)
        conn = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                               password=u.password or "", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    async def _setup_db(self) -> None:
        import redis.asyncio as aioredis

        import chat.models  # noqa: F401
        import notifications.models  # noqa: F401
        from chat.db import Base, create_engine, session_factory
        from notifications.models import Device

        self.engine = create_engine(self.env["DATABASE_URL"])
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        self.sf = session_factory(self.engine)
        n = self.args.pushes
        async with self.sf() as s, s.begin():
            s.add_all([Device(user_id=f"u{i}", token=f"bench-{i}", platform="android") for i in range(n)])
        self.redis = aioredis.Redis.from_url(REDIS_URL)

    async def _enqueue_all(self) -> float:
        from chat.keys import RedisKeys
        from notifications.outbox import enqueue_pushes
        from notifications.worker import publish_wakeup

        n = self.args.pushes
        async with self.sf() as s, s.begin():
            # one payload per commit keeps the insert cheap; the bench measures sending, not producing
            await enqueue_pushes(s, [f"u{i}" for i in range(n)], sample_payload(1))
        t0 = time.perf_counter()
        await publish_wakeup(self.redis, RedisKeys(self.prefix))
        return t0

    async def _all_sent(self) -> bool:
        import sqlalchemy as sa

        from notifications.models import PushOutbox

        async with self.sf() as s:
            left = await s.scalar(sa.select(sa.func.count()).where(PushOutbox.status != "sent"))
        return left == 0

    def bare(self, inflight: int, run: int) -> dict[str, float]:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "bare", "--pushes", str(self.args.pushes),
             "--inflight", str(inflight), "--prefix", f"bare{inflight}-{run}"],
            env=self.env, capture_output=True, text=True, timeout=120, check=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        n = self.args.pushes
        return {"rate": n / res["wall"], "cpu_ms": 1000 * res["cpu"] / n}

    def workers(self, processes: int, concurrency: int, runs: int, profile: str | None = None) -> list[dict[str, float]]:
        procs = []
        for p in range(processes):
            cmd = [sys.executable, __file__, "--child", "worker", "--concurrency", str(concurrency)]
            if profile and p == 0:
                cmd += ["--profile-out", profile]
            procs.append(subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, text=True))
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        results = []
        n = self.args.pushes
        fake = self.fcm.fake
        for _ in range(runs):
            self.loop.run_until_complete(self._truncate())
            base = fake.total_delivered
            t0 = self.loop.run_until_complete(self._enqueue_all())
            deadline = time.perf_counter() + 120
            while fake.total_delivered < base + n and time.perf_counter() < deadline:
                time.sleep(0.005)
            wall = time.perf_counter() - t0
            while not self.loop.run_until_complete(self._all_sent()):
                time.sleep(0.05)
            results.append({"rate": n / wall, "wall": wall})
        cpu = 0.0
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            cpu += json.loads(out.strip().splitlines()[-1])["cpu"]
        cpu_ms = 1000 * cpu / (n * runs)  # includes idle polling between runs (small)
        for r in results:
            r["cpu_ms"] = cpu_ms
        return results

    async def _truncate(self) -> None:
        import sqlalchemy as sa

        from notifications.models import PushOutbox

        async with self.sf() as s, s.begin():
            await s.execute(sa.delete(PushOutbox))

    def close(self) -> None:
        self.loop.run_until_complete(self.redis.aclose())
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()
        self._admin("DROP DATABASE IF EXISTS `%s`" % self.db_name)
        self.fcm.stop()
        self.tmp.cleanup()


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile one worker process and print the top")
    ap.add_argument("--child", choices=["bare", "worker"], help=argparse.SUPPRESS)
    ap.add_argument("--inflight", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--concurrency", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="bare", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "bare":
        print(json.dumps(asyncio.run(bare_child(args.pushes, args.inflight, args.prefix))))
        return 0
    if args.child == "worker":
        asyncio.run(worker_child(args.concurrency, args.profile_out))
        return 0

    bench = Bench(args)
    started = time.perf_counter()
    table: list[tuple[str, list[dict[str, float]]]] = []
    try:
        if args.profile:
            out = str(Path(bench.tmp.name) / "worker.prof")
            bench.workers(1, 2, 1, profile=out)
            import pstats

            stats = pstats.Stats(out)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(30)
            return 0
        for inflight in (1, 4):
            table.append((f"bare send_each_async, {inflight} batch(es) in flight",
                          [bench.bare(inflight, r) for r in range(args.runs)]))
        table.append(("worker, 1 process, 1 batch in flight", bench.workers(1, 1, args.runs)))
        table.append(("worker, 1 process, 2 batches in flight", bench.workers(1, 2, args.runs)))
        table.append(("worker, 2 processes, 2 batches in flight", bench.workers(2, 2, args.runs)))
    finally:
        bench.close()
    baseline = median(table[0][1], "rate")
    print(f"\n{args.pushes} pushes per run, median of {args.runs} runs, {os.cpu_count()} CPUs "
          f"({time.perf_counter() - started:.0f} s)\n")
    print(f"| {'setup':<44} | pushes/s | vs bare (1) | CPU ms/push |")
    print(f"| {'-' * 44} | -------: | ----------: | ----------: |")
    for name, rows in table:
        rate = median(rows, "rate")
        print(f"| {name:<44} | {rate:8.0f} | {rate / baseline:10.2f}x | {median(rows, 'cpu_ms'):11.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
