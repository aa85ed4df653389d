"""Push throughput: outbox rows committed -> FCM requests received, through the real firebase-admin
SDK and tests/fakefcm.py, against a bare `send_each_async` loop measured in the same run.

    .venv/bin/python bench/push_bench.py [--pushes 1500] [--runs 3] [--profile]
    .venv/bin/python bench/push_bench.py --fanout [--patrons 10000] [--big 100000] [--compare /work/main]

--fanout: a creator's post to N patrons through real server processes (see FANOUT below): ack
time vs a patron's post, time until every device is pushed, chat latency in another room of
the same process while the fan-out runs, and PUSH_WORKER=external with 1 vs 2 workers.

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


# --- fan-out -------------------------------------------------------------------------------------
# FANOUT: servers are `run_server.py` processes (MariaDB + Redis, the fake FCM of this process);
# patrons, memberships and devices are seeded with bulk SQL. Acks are measured with a Socket.IO
# client here while no worker runs (PUSH_WORKER=external, none started), so they show the send
# path alone. The chat probe is a child process (its own GIL, away from the fake FCM's thread):
# a patron of another creator in another room of the same server, sending every 125 ms (the
# per-user rate limit is 10/s),
# recording each ack's latency; first without a fan-out, then while one runs.


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def probe_child(url: str, room: str, token: str, seconds: float, interval: float) -> dict[str, Any]:
    """Send every `interval` s for `seconds` (or until SIGUSR1); the acks' latencies in ms."""
    from tests.support import Client

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stop.set)
    client = await Client(url, token).connect()
    await client.call("join", {"conversation_id": room})
    lat: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    print("READY", flush=True)
    while time.perf_counter() < end and not stop.is_set():
        t0 = time.perf_counter()
        ack = await client.call("send", {"conversation_id": room, "body": f"probe {i}",
                                         "client_msg_id": f"probe-{os.getpid()}-{i}"}, timeout=30)
        lat.append((time.perf_counter() - t0) * 1000)
        assert ack.get("ok"), ack
        i += 1
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))
    await client.close()
    return {"n": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": max(lat)}


class Fanout:
    def __init__(self, args: argparse.Namespace) -> None:
        from tests.fakefcm import FakeFCMServer

        self.args = args
        self.tmp = tempfile.TemporaryDirectory(prefix="fanoutbench-")
        self.fcm = FakeFCMServer(Path(self.tmp.name))
        self.fcm.fake.record_messages = False
        self.dbs: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def _admin(self, sql: str) -> None:
        Bench._admin(self, sql)  # type: ignore[arg-type]

    def new_db(self) -> str:
        name = f"fanoutbench_{secrets.token_hex(3)}"
        self._admin("CREATE DATABASE `%s` CHARACTER SET utf8mb4" % name)
        self.dbs.append(name)
        from sqlalchemy.engine import make_url

        return make_url(MYSQL_ADMIN_URL).set(drivername="mysql+aiomysql", database=name).render_as_string(
            hide_password=False)

    def server(self, root: Path, db_url: str, prefix: str, **env: str) -> Any:
        from tests.support import ServerProcess

        full = {"FIREBASE_CREDENTIALS": self.fcm.credentials_path, "FCM_ENDPOINT": self.fcm.endpoint,
                "LOG_LEVEL": "WARNING", **env}
        cwd = os.getcwd()
        os.chdir(root)  # ServerProcess runs ROOT/run_server.py; point ROOT at the code under test
        import tests.support as support

        old_root = support.ROOT
        support.ROOT = root
        try:
            return ServerProcess(db_url, REDIS_URL, prefix, env=full,
                                 log_path=Path(self.tmp.name) / f"server-{secrets.token_hex(2)}.log")
        finally:
            support.ROOT = old_root
            os.chdir(cwd)

    def worker(self, db_url: str, prefix: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=REDIS_URL, REDIS_PREFIX=prefix,
                   FIREBASE_CREDENTIALS=self.fcm.credentials_path, FCM_ENDPOINT=self.fcm.endpoint,
                   LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-m", "notifications.worker"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    @staticmethod
    def seed(db_url: str, creator: str, start: int, count: int) -> None:
        """Patrons fan{start..start+count} of `creator` with one device each (bulk SQL)."""
        import sqlalchemy as sa
        from sqlalchemy.engine import make_url

        engine = sa.create_engine(make_url(db_url).set(drivername="mysql+pymysql"))
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        with engine.begin() as conn:
            for lo in range(start, start + count, 10_000):
                ids = [f"fan{i:07d}" for i in range(lo, min(start + count, lo + 10_000))]
                conn.execute(sa.text("INSERT INTO users (id, name, created_at, updated_at) "
                                     "VALUES (:u, :u, :n, :n)"), [{"u": u, "n": now} for u in ids])
                conn.execute(sa.text("INSERT INTO memberships (creator_id, patron_id, tier_cents, status, "
                                     "updated_at) VALUES (:c, :u, 500, 'active', :n)"),
                             [{"c": creator, "u": u, "n": now} for u in ids])
                conn.execute(sa.text("INSERT INTO devices (token, user_id, platform, created_at, updated_at) "
                                     "VALUES (:t, :u, 'android', :n, :n)"),
                             [{"t": f"{u}-phone", "u": u, "n": now} for u in ids])
        engine.dispose()

    def setup(self, server: Any) -> dict[str, str]:
        """cre's room A (the fan-out), oth's room B with two patrons (the probe), and tokens."""
        from tests.support import Api, make_token

        api = Api(server.url)
        try:
            api.user("cre", "Cre")
            api.user("oth", "Oth")
            for p in ("pa", "pb"):
                api.user(p, p)
                api.membership("oth", p, 500)
            room_a = api.room("cre", "Fans")
            room_b = api.room("oth", "Other room")
            # pb stays offline with a phone: oth's posts in room B warm the worker's FCM client up
            assert api.client(make_token("pb"), "POST", "/devices",
                              {"token": f"warm-{secrets.token_hex(4)}", "platform": "android"}).status_code == 201
        finally:
            api.close()
        return {"room_a": room_a, "room_b": room_b, "cre": make_token("cre", "Cre"),
                "patron": make_token("fan0000001"), "pa": make_token("pa"), "oth": make_token("oth", "Oth")}

    def warm_up(self, loop: asyncio.AbstractEventLoop, url: str, t: dict[str, str]) -> None:
        """One push end to end (OAuth token, connections) before any clock starts."""
        base = self.fcm.fake.total_delivered
        loop.run_until_complete(self.acks(url, t["oth"], t["room_b"], 1, "warm"))
        self.wait_delivered(base + 1, 60)

    async def acks(self, url: str, token: str, room: str, n: int, tag: str) -> list[float]:
        from tests.support import Client

        client = await Client(url, token).connect()
        out = []
        try:
            for i in range(n):
                t0 = time.perf_counter()
                ack = await client.call("send", {"conversation_id": room, "body": f"{tag} {i}",
                                                 "client_msg_id": f"{tag}-{secrets.token_hex(4)}"}, timeout=120)
                out.append((time.perf_counter() - t0) * 1000)
                assert ack.get("ok"), ack
        finally:
            await client.close()
        return out

    def probe(self, url: str, room: str, token: str, seconds: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, __file__, "--child", "probe", "--url", url, "--room", room,
                                 "--token", token, "--seconds", str(seconds)],
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        return proc

    @staticmethod
    def probe_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
        out, _ = proc.communicate(timeout=300)
        return dict(json.loads(out.strip().splitlines()[-1]))

    def wait_delivered(self, target: int, timeout: float = 600) -> float:
        t0 = time.perf_counter()
        while self.fcm.fake.total_delivered < target:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"only {self.fcm.fake.total_delivered} of {target} pushes in {timeout} s")
            time.sleep(0.01)
        return time.perf_counter() - t0

    # -- the scenarios

    def ack_times(self, root: Path, label: str, big: int) -> dict[str, Any]:
        """Acks with no worker running: the send path alone."""
        db = self.new_db()
        srv = self.server(root, db, f"fanoutbench-{secrets.token_hex(3)}", PUSH_WORKER="external")
        try:
            t = self.setup(srv)
            self.seed(db, "cre", 0, self.args.patrons)
            loop = asyncio.new_event_loop()
            res: dict[str, Any] = {"label": label}
            loop.run_until_complete(self.acks(srv.url, t["patron"], t["room_a"], 3, "warm"))
            res["patron"] = loop.run_until_complete(self.acks(srv.url, t["patron"], t["room_a"], 7, "pat"))
            res["creator"] = loop.run_until_complete(self.acks(srv.url, t["cre"], t["room_a"], 5, "cre"))
            if big:
                self.seed(db, "cre", self.args.patrons, big - self.args.patrons)
                res["creator_big"] = loop.run_until_complete(self.acks(srv.url, t["cre"], t["room_a"], 3, "big"))
            loop.close()
            return res
        finally:
            srv.stop()

    def during_fanout(self, root: Path, label: str, **env: str) -> dict[str, Any]:
        """Inline worker: probe latency without, then with a creator's post fanning out."""
        db = self.new_db()
        srv = self.server(root, db, f"fanoutbench-{secrets.token_hex(3)}", **env)
        try:
            t = self.setup(srv)
            self.seed(db, "cre", 0, self.args.patrons)
            loop = asyncio.new_event_loop()
            loop.run_until_complete(self.acks(srv.url, t["pa"], t["room_b"], 3, "warm"))
            self.warm_up(loop, srv.url, t)
            quiet = self.probe_result(self.probe(srv.url, t["room_b"], t["pa"], 8))
            base = self.fcm.fake.total_delivered
            probe = self.probe(srv.url, t["room_b"], t["pa"], 600)
            t0 = time.perf_counter()
            ack = loop.run_until_complete(self.acks(srv.url, t["cre"], t["room_a"], 1, "fan"))[0]
            self.wait_delivered(base + self.args.patrons)
            all_pushed = time.perf_counter() - t0
            probe.send_signal(signal.SIGUSR1)
            busy = self.probe_result(probe)
            loop.close()
            return {"label": label, "ack": ack, "all_pushed": all_pushed, "quiet": quiet, "busy": busy}
        finally:
            srv.stop()

    def external(self, workers: int) -> dict[str, Any]:
        db = self.new_db()
        prefix = f"fanoutbench-{secrets.token_hex(3)}"
        srv = self.server(ROOT, db, prefix, PUSH_WORKER="external")
        try:
            t = self.setup(srv)
            self.seed(db, "cre", 0, self.args.patrons)
            procs = [self.worker(db, prefix) for _ in range(workers)]
            loop = asyncio.new_event_loop()
            for _ in range(workers):  # each worker's first push (either may take it): both warm
                self.warm_up(loop, srv.url, t)
            base = self.fcm.fake.total_delivered
            t0 = time.perf_counter()
            loop.run_until_complete(self.acks(srv.url, t["cre"], t["room_a"], 1, "ext"))
            self.wait_delivered(base + self.args.patrons)
            wall = time.perf_counter() - t0
            loop.close()
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
            return {"workers": workers, "wall": wall, "rate": self.args.patrons / wall}
        finally:
            srv.stop()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for name in self.dbs:
            self._admin("DROP DATABASE IF EXISTS `%s`" % name)
        self.fcm.stop()
        self.tmp.cleanup()


def run_fanout(args: argparse.Namespace) -> int:
    f = Fanout(args)
    started = time.perf_counter()
    compare = Path(args.compare) if args.compare else None
    acks, fans, ext = [], [], []
    try:
        acks.append(f.ack_times(ROOT, "push jobs (this branch)", args.big))
        if compare:
            acks.append(f.ack_times(compare, f"per-device rows ({compare})", 0))
        fans.append(f.during_fanout(ROOT, "jobs, inline worker on its own thread (default)"))
        fans.append(f.during_fanout(ROOT, "jobs, inline worker on the server's loop", PUSH_WORKER_THREAD="0"))
        if compare:
            fans.append(f.during_fanout(compare, f"per-device rows, inline worker ({compare})"))
        for n in (1, 2):
            ext.append(f.external(n))
    finally:
        f.close()
    n = args.patrons
    print(f"\n{n} patrons (one device each, all offline), {os.cpu_count()} CPUs, "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| send path | patron's post ack (median) | creator's post ack (median) |"
          + (f" creator's post, {args.big} patrons |" if args.big else ""))
    print("| --- | ---: | ---: |" + (" ---: |" if args.big else ""))
    for a in acks:
        big = f" {statistics.median(a['creator_big']):.0f} ms |" if "creator_big" in a else (" - |" if args.big else "")
        print(f"| {a['label']} | {statistics.median(a['patron']):.0f} ms | {statistics.median(a['creator']):.0f} ms |{big}")
    print("\n| inline worker | creator's post ack | all pushed after | pushes/s | other room ack p50 / p99 "
          "quiet | during the fan-out |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in fans:
        q, b = r["quiet"], r["busy"]
        print(f"| {r['label']} | {r['ack']:.0f} ms | {r['all_pushed']:.1f} s | {n / r['all_pushed']:.0f} | "
              f"{q['p50']:.0f} / {q['p99']:.0f} ms | {b['p50']:.0f} / {b['p99']:.0f} ms (max {b['max']:.0f}, "
              f"{b['n']} sends) |")
    print("\n| PUSH_WORKER=external | post -> all pushed | pushes/s |")
    print("| --- | ---: | ---: |")
    for e in ext:
        print(f"| {e['workers']} worker process(es) | {e['wall']:.1f} s | {e['rate']:.0f} |")
    return 0


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile one worker process and print the top")
    ap.add_argument("--fanout", action="store_true", help="the fan-out scenarios (FANOUT above)")
    ap.add_argument("--patrons", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=100_000, help="also the ack with this many patrons (0: skip)")
    ap.add_argument("--compare", help="another checkout (e.g. /work/main) measured in the same run")
    ap.add_argument("--child", choices=["bare", "worker", "probe"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--room", help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=10, help=argparse.SUPPRESS)
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
    if args.child == "probe":
        print(json.dumps(asyncio.run(probe_child(args.url, args.room, args.token, args.seconds, 0.125))))
        return 0
    if args.fanout:
        return run_fanout(args)

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
