#!/usr/bin/env python3
"""Backstage side by side with the reference Socket.IO peers, same loadgen, same run.

    .venv/bin/python bench/run_bench.py              # full: fixed, ramp, ramp5, reconnect x 3 reps (~1 h)
    .venv/bin/python bench/run_bench.py --quick      # 1 rep: ramp5 (+ 2-core pairs), reconnect storm
    .venv/bin/python bench/run_bench.py --report bench-results/bench-XXXX.jsonl   # table again
    .venv/bin/python bench/run_bench.py --plot [bench-results/bench-XXXX.jsonl]    # docs/latency-vs-load.png
    .venv/bin/python bench/run_bench.py --profile    # py-spy on one Backstage process under the fixed load

The load generator and the peers live in the shared harness (../shared/bench, read-only);
when it has no node_modules/.venv of its own it is copied to a cache folder
(BENCH_CACHE, default ~/.cache/backstage-bench) and its setup.sh runs there. Nothing of it
is copied into this repository.

Per repetition, targets run in rotated order (like suite.py). Every scenario run gets fresh
servers (pinned with `taskset -c 0`, loadgen on CPU 1, as in suite.py; the *-2core targets:
process k on CPU k, loadgen unpinned); Backstage targets
also get a fresh database cloned from a seed (100 rooms x 50 members, seeded through the
server API once and cached in BENCH_CACHE) and their own Redis prefix; all are removed
afterwards. Peers run from the harness's targets.json (py-mysql on a fresh database too).

Results: one JSON line per run in bench-results/bench-<stamp>.jsonl (loadgen output + rep,
target, suite_scenario, pinning), compatible with the harness's report.py; then a table of
medians with ratios against `node` measured in the same repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
# ../shared/bench next to the checkout, or next to its parent (a git worktree in ../wt/NAME)
DEFAULT_HARNESS = next((d for d in (ROOT.parent / "shared" / "bench", ROOT.parent.parent / "shared" / "bench")
                        if d.is_dir()), ROOT.parent / "shared" / "bench")
SCENARIO_FILE = BENCH / "scenario-backstage.json"
RESULTS = ROOT / "bench-results"

ROOMS, MEMBERS = 100, 50
SEED_VERSION = "1"  # bump when seed_api changes (cached seeds are keyed by it and the schema)
MYSQL_HOST, MYSQL_PORT, MYSQL_USER = "127.0.0.1", 3306, "root"
REDIS_URL = "redis://127.0.0.1:6379/0"

# Same loadgen presets for every target. Shorter than the harness's targets.json presets so
# that 7 targets x 3 scenarios x 3 reps fit in ~15 minutes: ramp from 1,000 deliveries/s
# doubling per 2 s step, then 3 bisections (resolution 2^(1/8) = 9 %).
PRESETS: dict[str, list[str]] = {
    "connect": ["--scenario", "connect", "--clients", str(ROOMS * MEMBERS), "--members", str(MEMBERS),
                "--connect-concurrency", "200", "--hold", "2"],
    "fixed": ["--scenario", "fanout", "--rooms", str(ROOMS), "--members", str(MEMBERS),
              "--deliveries", "2500", "--duration", "6", "--warmup", "2", "--drain", "5"],
    "ramp": ["--scenario", "ramp", "--rooms", str(ROOMS), "--members", str(MEMBERS),
             "--ramp-start", "500", "--ramp-factor", "2", "--ramp-step", "2", "--ramp-warmup", "1",
             "--ramp-bisect", "2", "--ramp-retries", "1", "--p99-limit", "100", "--drain", "3"],
}
# The measurement: the same ramp, 5 senders per room (500 sending sockets, so the
# per-socket limit of 10 msg/s is never near: 2,000 deliveries/s = 40 msg/s = 0.08 per sender).
# Its steps (per-step p50/p99 at each offered load) are also what --plot draws.
# It starts one step lower (250) so that a slow or disturbed server still gets a curve.
PRESETS["ramp5"] = ["--scenario", "ramp", "--rooms", str(ROOMS), "--members", str(MEMBERS), "--senders-per-room", "5",
                    "--ramp-start", "250", "--ramp-factor", "2", "--ramp-step", "2", "--ramp-warmup", "1",
                    "--ramp-bisect", "2", "--ramp-retries", "1", "--p99-limit", "100", "--drain", "3"]
# Not the loadgen: bench/reconnect_storm.js (5,000 sockets connect + auth + join, all dropped at
# once, all reconnect; Backstage's join carries since_seq). Arguments in Runner.reconnect_args.
RECONNECT_BEFORE, RECONNECT_MISSED = 1, 5  # messages per room posted before / during the outage
RECONNECT_DEADLINE = 180  # s after the reconnects start; clients not recovered by then count as not recovered
SCENARIO_ORDER = ["connect", "fixed", "ramp", "ramp5", "reconnect"]
# By default connects/s comes from the setups of the other runs (each starts with the same
# storm: 5,000 clients, 200 in flight, connect + auth + join, on fresh processes), and RSS per
# connection = (server RSS at the end of the fixed run - RSS before the loadgen started) /
# sockets. The separate `connect` scenario (the harness's, RSS read 2 s after the storm) costs
# one more 5,000-socket setup per target, ~40 s for Backstage: add it with --scenarios.
DEFAULT_SCENARIOS = "fixed,ramp,ramp5,reconnect"

PEERS = ["node", "node-2proc", "py-uvloop", "py-mysql"]
BACKSTAGE = {  # name -> (database kind, processes, redis)
    "backstage": ("mysql", 1, True),
    "backstage-2proc": ("mysql", 2, True),
    "backstage-sqlite": ("sqlite", 1, False),
}
# Two processes with a core each (CPU 0 and CPU 1). The machine has 2 cores, so the loadgen
# cannot have one of its own: it runs unpinned (the kernel places it, next to whichever server
# is less busy), for the node peer the same way in the same run. See docs/performance.md.
TWO_CORE = {"node-2core": "node-2proc", "backstage-2core": "backstage-2proc"}
TWO_CORE_SERVER_CPUS = ["0", "1"]
TWO_CORE_LOADGEN_CPUS = ""
# Same-run counterpart of every 2-core target: its scaling is "2 cores / 1 process".
ONE_PROCESS = {"node-2core": "node", "backstage-2core": "backstage"}
ALL_TARGETS = PEERS + list(BACKSTAGE) + list(TWO_CORE)
QUICK_TARGETS = ["node", "py-mysql", "backstage", "node-2core", "backstage-2core"]

# Which targets run a scenario unless --targets names them explicitly (a 2-core target only
# exists for the throughput question, the reconnect storm only needs Backstage and node).
SCENARIO_TARGETS: dict[str, list[str]] = {
    "connect": PEERS + list(BACKSTAGE),
    "fixed": PEERS + list(BACKSTAGE),
    "ramp": PEERS + list(BACKSTAGE),
    "ramp5": ["node", "py-uvloop", "py-mysql", "backstage", "node-2core", "backstage-2core"],
    "reconnect": ["node", "backstage"],
}
QUICK_SCENARIOS = "ramp5,reconnect"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- the harness


def harness_dir(src: Path) -> Path:
    """A ready harness folder: src itself if it is set up, else a cached copy that is."""
    if (src / "node_modules").is_dir() and (src / ".venv" / "bin" / "python").exists():
        return src
    digest = hashlib.sha256()
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_file() and rel.parts[0] not in ("node_modules", ".venv", "results"):
            digest.update(str(rel).encode() + p.read_bytes())
    cache = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "backstage-bench")) / "bench"
    stamp = cache / ".source-sha256"
    if stamp.exists() and stamp.read_text() == digest.hexdigest() and (cache / "node_modules").is_dir() \
            and (cache / ".venv" / "bin" / "python").exists():
        return cache
    log(f"setting up the harness in {cache} (copy of {src})")
    if cache.exists():
        shutil.rmtree(cache)
    shutil.copytree(src, cache, ignore=shutil.ignore_patterns("node_modules", ".venv", "results"))
    for p in [cache, *cache.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    subprocess.run(["bash", str(cache / "setup.sh")], check=True, cwd=cache, stdout=subprocess.DEVNULL)
    stamp.write_text(digest.hexdigest())
    return cache


# ------------------------------------------------------------------------- processes


def free_port(consecutive: int = 1) -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + consecutive > 65535:
            continue
        ok = True
        for extra in range(1, consecutive):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + extra))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port")


def wait_port(port: int, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def pidof(name: str) -> int | None:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def pin(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


class Servers:
    """Processes this runner started; stopped by their own PIDs only."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], cwd: Path, env: dict[str, str] | None, logf: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=logf, stderr=logf, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, timeout: float = 20) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def host_busy_pct(seconds: float = 1.0) -> float:
    """Whole-host busy %, 100 = one core (the loadgen's host_busy_pct scale)."""
    def sample() -> tuple[int, int, int]:
        lines = Path("/proc/stat").read_text().splitlines()
        f = [int(x) for x in lines[0].split()[1:9]]
        ncpu = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
        return sum(f), sum(f) - f[3] - f[4], ncpu
    t0, b0, n = sample()
    time.sleep(seconds)
    t1, b1, _ = sample()
    return round(100.0 * n * (b1 - b0) / max(1, t1 - t0), 1)


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (up to max_wait s) until the host is below `limit` busy %; returns the last reading."""
    end = time.time() + max_wait
    busy = host_busy_pct()
    while busy > limit and time.time() < end:
        log(f"host busy {busy}% (> {limit}%): waiting for a quieter host")
        time.sleep(2)
        busy = host_busy_pct()
    return busy


# ------------------------------------------------------------------------- MariaDB + Redis


def mysql_admin() -> Any:
    import pymysql
    return pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, autocommit=True)


def mysql_url(db: str) -> str:
    return f"mysql+aiomysql://{MYSQL_USER}@{MYSQL_HOST}:{MYSQL_PORT}/{db}"


class Databases:
    """MariaDB databases named bsbench_<run>_<n>, all dropped at the end."""

    def __init__(self, run_id: str) -> None:
        self.run_id, self.n, self.created = run_id, 0, []

    def new(self, tag: str = "") -> str:
        self.n += 1
        name = f"bsbench_{self.run_id}_{self.n}{tag}"
        with mysql_admin() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        self.created.append(name)
        return name

    def clone(self, dump: Path) -> str:
        name = self.new()
        with open(dump, "rb") as f:
            subprocess.run(["mysql", "-h", MYSQL_HOST, "-P", str(MYSQL_PORT), "-u", MYSQL_USER, name],
                           stdin=f, check=True)
        return name

    def drop(self, name: str) -> None:
        with mysql_admin() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            try:
                self.drop(name)
            except Exception as exc:  # keep cleaning the others
                log(f"could not drop {name}: {exc}")


def redis_clear(prefix: str) -> None:
    import redis
    r = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])
    finally:
        r.close()


# ------------------------------------------------------------------------- Backstage


def backstage_env(port: int, database_url: str, redis_prefix: str | None, secret: str, api_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_", "JWT_", "API_KEYS"))}
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "DATABASE_URL": database_url, "JWT_SECRET": secret,
                "API_KEYS": api_key, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    if redis_prefix is not None:
        env.update({"REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix})
    return env


def code_version() -> str:
    """HEAD plus a hash of uncommitted changes to the server's code (others may commit mid-run)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    diff = subprocess.run(["git", "diff", "HEAD", "--", "chat", "run_server.py", "migrations"], cwd=ROOT,
                          capture_output=True).stdout
    return head + (f"+dirty.{hashlib.sha256(diff).hexdigest()[:8]}" if diff else "")


def backstage_argv() -> list[str]:
    if os.environ.get("BENCH_GC_STATS"):  # record garbage-collector pauses (bench/gc_stats.py)
        return [sys.executable, str(BENCH / "gc_stats.py")]
    return [sys.executable, str(ROOT / "run_server.py")]


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} not ready in {timeout}s")


async def seed_api(base_url: str, api_key: str, concurrency: int = 16) -> list[str]:
    """Users bench-{i} (named like the loadgen's JWTs, so connecting writes nothing), one
    creator per room, active memberships, and 100 rooms; returns the room ids in order."""
    import httpx
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url + "/api/v1/server", headers=headers, timeout=30) as http:
        sem = asyncio.Semaphore(concurrency)

        async def call(method: str, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
            for attempt in range(6):
                async with sem:
                    r = await http.request(method, path, json=body)
                if r.status_code != 503:
                    break
                await asyncio.sleep(0.05 * 2 ** attempt)  # 503 = a deadlock on MariaDB (see docs/performance.md)
            if r.status_code != status:
                raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:200]}")
            return r.json()

        async def memberships_of(r: int) -> None:  # one creator's memberships one at a time
            for i in range(r * MEMBERS, (r + 1) * MEMBERS):
                await call("PUT", f"/memberships/{creators[r]}/bench-{i}", {"tier_cents": 500, "status": "active"})

        creators = [f"bench-creator-{r}" for r in range(ROOMS)]
        await asyncio.gather(*(call("PUT", f"/users/{c}", {"name": f"Creator {r}"}) for r, c in enumerate(creators)))
        await asyncio.gather(*(call("PUT", f"/users/bench-{i}", {"name": f"Bench {i}"}) for i in range(ROOMS * MEMBERS)))
        # Concurrent PUTs of new memberships of one creator deadlock on MariaDB (gap locks of
        # SELECT ... FOR UPDATE on absent rows), so each creator's go one at a time.
        await asyncio.gather(*(memberships_of(r) for r in range(ROOMS)))
        rooms = []
        for r, c in enumerate(creators):  # in order: line r of the ids file is room r
            out = await call("POST", "/rooms", {"creator_id": c, "name": f"Bench room {r}", "min_tier_cents": 0,
                                                "post_policy": "everyone"}, status=201)
            rooms.append(str(out["conversation"]["id"]))
        return rooms


class Seeds:
    """One seeded database per kind, made once through the server API, cloned per run."""

    def __init__(self, work: Path, dbs: Databases, secret: str, api_key: str, logf: Any) -> None:
        self.work, self.dbs, self.secret, self.api_key, self.logf = work, dbs, secret, api_key, logf
        self.room_files: dict[str, Path] = {}
        self.mysql_dump: Path | None = None
        self.sqlite_seed: Path | None = None

    def _seed(self, kind: str, database_url: str) -> None:
        servers = Servers()
        port = free_port()
        try:
            p = servers.start(backstage_argv(), ROOT, backstage_env(port, database_url, None, self.secret, self.api_key),
                              self.logf)
            wait_ready(port, p)
            t0 = time.time()
            rooms = asyncio.run(seed_api(f"http://127.0.0.1:{port}", self.api_key))
            log(f"seeded {kind}: {ROOMS} rooms x {MEMBERS} members through the API in {time.time() - t0:.1f}s")
        finally:
            servers.stop()
        f = self.work / f"room-ids-{kind}.txt"
        f.write_text("\n".join(rooms) + "\n")
        self.room_files[kind] = f

    @staticmethod
    def cache_dir() -> Path:
        """Seeds are kept between invocations, keyed by the schema and this file."""
        digest = hashlib.sha256()
        for p in sorted([*(ROOT / "migrations").rglob("*.py"), ROOT / "chat" / "models.py"]):
            digest.update(p.read_bytes())
        digest.update(SEED_VERSION.encode())
        return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "backstage-bench")) / "seeds" / digest.hexdigest()[:16]

    def ensure(self, kind: str) -> None:
        if kind in self.room_files:
            return
        cache = self.cache_dir()
        seed_file = cache / ("seed-mysql.sql" if kind == "mysql" else "seed.db")
        rooms_file = cache / f"room-ids-{kind}.txt"
        if seed_file.exists() and rooms_file.exists():
            self.room_files[kind] = rooms_file
            if kind == "mysql":
                self.mysql_dump = seed_file
            else:
                self.sqlite_seed = seed_file
            log(f"seed {kind}: cached in {cache}")
            return
        self._make(kind)
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.mysql_dump if kind == "mysql" else self.sqlite_seed, seed_file)  # type: ignore[arg-type]
        shutil.copyfile(self.room_files[kind], rooms_file)

    def _make(self, kind: str) -> None:
        if kind == "mysql":
            name = self.dbs.new("_seed")
            self._seed(kind, mysql_url(name))
            self.mysql_dump = self.work / "seed-mysql.sql"
            with open(self.mysql_dump, "wb") as f:
                subprocess.run(["mysqldump", "-h", MYSQL_HOST, "-P", str(MYSQL_PORT), "-u", MYSQL_USER,
                                "--single-transaction", name], stdout=f, check=True)
            self.dbs.drop(name)
        else:
            self.sqlite_seed = self.work / "seed.db"
            self._seed(kind, f"sqlite+aiosqlite:///{self.sqlite_seed}")
            import sqlite3
            with sqlite3.connect(self.sqlite_seed) as conn:  # everything into the main file before copies
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def fresh(self, kind: str, tag: str) -> tuple[str, Any]:
        """(DATABASE_URL, cleanup) of a fresh copy of the seed."""
        self.ensure(kind)
        if kind == "mysql":
            assert self.mysql_dump is not None
            name = self.dbs.clone(self.mysql_dump)
            return mysql_url(name), lambda: self.dbs.drop(name)
        assert self.sqlite_seed is not None
        path = self.work / f"run-{tag}.db"
        shutil.copyfile(self.sqlite_seed, path)
        return f"sqlite+aiosqlite:///{path}", lambda: [Path(str(path) + s).unlink(missing_ok=True) for s in ("", "-wal", "-shm")]


def backstage_loadgen_args(secret: str, room_file: Path) -> list[str]:
    proto = json.loads(SCENARIO_FILE.read_text())["protocol"]
    return ["--scenario-file", str(SCENARIO_FILE), "--jwt-secret", secret, "--room-ids-file", str(room_file),
            "--join-payload", json.dumps(proto["join"]["payload"]),
            "--message-payload", json.dumps(proto["message"]["payload"])]


# ------------------------------------------------------------------------- one target, one rep


class Runner:
    def __init__(self, args: argparse.Namespace, harness: Path, out: Path, work: Path) -> None:
        self.args, self.harness, self.out, self.work = args, harness, out, work
        self.run_id = secrets.token_hex(3)
        self.dbs = Databases(self.run_id)
        self.secret = secrets.token_hex(24)  # hex: a value starting with "-" confuses CLI parsers
        self.api_key = "bench-" + secrets.token_hex(8)
        self.server_log = open(RESULTS / f"servers-{out.stem}.log", "ab")
        self.seeds = Seeds(work, self.dbs, self.secret, self.api_key, self.server_log)
        self.targets_cfg = json.loads((harness / "targets.json").read_text())
        self.redis_prefixes: list[str] = []
        self.n = 0
        self.last_kind: str | None = None  # database kind of the Backstage target started last

    def close(self) -> None:
        self.dbs.drop_all()
        for prefix in self.redis_prefixes:
            try:
                redis_clear(prefix)
            except Exception as exc:
                log(f"could not clear redis prefix {prefix}: {exc}")
        self.server_log.close()

    def watch_arg(self) -> list[str]:
        w = {name: pidof(proc) for name, proc in (("redis", "redis-server"), ("mariadb", "mariadbd"))}
        spec = ",".join(f"{k}={v}" for k, v in w.items() if v)
        return ["--watch", spec] if spec else []

    def placement(self, target: str) -> tuple[list[str], str]:
        """(CPU list of each server process, loadgen CPUs); '' = unpinned."""
        if target in TWO_CORE:
            return (getattr(self.args, "two_core_server_cpus", ",".join(TWO_CORE_SERVER_CPUS)).split(","),
                    getattr(self.args, "two_core_loadgen_cpus", TWO_CORE_LOADGEN_CPUS))
        return [self.args.server_cpus] * 8, self.args.loadgen_cpus  # every process on the same CPUs

    def start_target(self, target: str, servers: Servers) -> tuple[list[int], list[str], Any]:
        """Start the target's processes; returns (ports, extra loadgen args, cleanup)."""
        self.n += 1
        server_cpus, _ = self.placement(target)
        self.last_kind = None
        if target in BACKSTAGE or TWO_CORE.get(target) in BACKSTAGE:
            kind, nprocs, use_redis = BACKSTAGE[TWO_CORE.get(target, target)]
            self.last_kind = kind
            db_url, cleanup = self.seeds.fresh(kind, str(self.n))
            prefix = f"bsbench:{self.run_id}:{self.n}" if use_redis else None
            if prefix:
                self.redis_prefixes.append(prefix)
            base = free_port(nprocs)
            ports = [base + i for i in range(nprocs)]
            procs = [servers.start(pin(server_cpus[k]) + backstage_argv(), ROOT,
                                   backstage_env(port, db_url, prefix, self.secret, self.api_key), self.server_log)
                     for k, port in enumerate(ports)]
            for port, p in zip(ports, procs):
                wait_ready(port, p)
            return ports, backstage_loadgen_args(self.secret, self.seeds.room_files[kind]), cleanup
        argvs = self.targets_cfg["targets"][TWO_CORE.get(target, target)]["procs"]
        db = None
        if target.startswith("py-mysql"):
            db = self.dbs.new("_peer")
        base = free_port(len(argvs))
        ports = [base + i for i in range(len(argvs))]
        for k, argv in enumerate(argvs):
            argv = [a.replace("{port+1}", str(base + 1)).replace("{port}", str(base)) for a in argv]
            if db:
                argv = [mysql_url(db) if a.startswith("mysql+aiomysql://") else a for a in argv]
            servers.start(pin(server_cpus[k]) + argv, self.harness, None, self.server_log)
        for port in ports:
            if not wait_port(port, 30):
                raise RuntimeError(f"{target} did not open port {port}")
        return ports, [], (lambda: self.dbs.drop(db)) if db else (lambda: None)

    def run_target(self, rep: int, target: str) -> None:
        for sc in self.args.plan[target]:
            self.run_one(rep, target, sc)

    def reconnect_args(self, target: str, ports: list[int]) -> list[str]:
        """bench/reconnect_storm.js arguments: Backstage rejoins with since_seq after messages
        were posted while everyone was away; the peers have no history, so a plain storm."""
        common = ["--rooms", str(ROOMS), "--members", str(MEMBERS), "--connect-concurrency", "200",
                  "--reconnect-concurrency", "0", "--attempt-timeout", "30", "--deadline", str(RECONNECT_DEADLINE)]
        if self.last_kind is None:
            return common
        proto = json.loads(SCENARIO_FILE.read_text())["protocol"]
        return common + ["--jwt-secret", self.secret, "--token", proto["token"],
                         "--room-ids-file", str(self.seeds.room_files[self.last_kind]),
                         "--join-payload", json.dumps(proto["join"]["payload"]), "--since-seq",
                         "--http-url", f"http://127.0.0.1:{ports[0]}",
                         "--before", str(RECONNECT_BEFORE), "--missed", str(RECONNECT_MISSED)]

    def run_one(self, rep: int, target: str, sc: str) -> None:
        """Fresh servers (and a fresh database) for every scenario, like suite.py: a 5,000-socket
        disconnect storm at the end of one scenario must not bleed into the next."""
        busy_before = wait_quiet(self.args.quiet_limit, self.args.quiet_wait) if self.args.quiet_wait > 0 else host_busy_pct()
        servers = Servers()
        cleanup: Any = lambda: None
        server_cpus, loadgen_cpus = self.placement(target)
        try:
            ports, extra, cleanup = self.start_target(target, servers)
            pids = [p.pid for p in servers.procs]
            time.sleep(1.0)
            urls = ",".join(f"ws://127.0.0.1:{p}" for p in ports)
            if sc == "reconnect":
                cmd = pin(loadgen_cpus) + ["node", str(BENCH / "reconnect_storm.js"), "--url", urls, "--label", target,
                                           "--server-pid", ",".join(map(str, pids)),
                                           *self.reconnect_args(target, ports), "--quiet"]
            else:
                cmd = pin(loadgen_cpus) + [
                    "node", "loadgen/loadgen.js", "--url", urls,
                    "--label", target, "--server-pid", ",".join(map(str, pids)), *self.watch_arg(),
                    *PRESETS[sc], *extra, "--quiet"]
            log(f"[rep {rep}] {target} {sc}")
            rss_before = sum(rss_kib(p) for p in pids)
            t0 = time.time()
            probing = self.args.cpu_probe and sc != "reconnect"
            if sc == "reconnect" and getattr(self.args, "profile_reconnect", False) and self.last_kind is not None:
                r = self.run_spied([a for a in cmd if a != "--quiet"], pids[0])
            elif probing:
                r, step_times, probe = self.run_probed([a for a in cmd if a != "--quiet"], pids)
            else:
                r = subprocess.run(cmd, cwd=self.harness, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, timeout=600)
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("{")), None)
            if line is None:
                log(f"[rep {rep}] {target} {sc}: no result (rc={r.returncode}) {r.stderr[-800:]}")
                return
            res = json.loads(line)
            if probing:
                res["cpu_probe"] = probe_steps(res, step_times, probe)
            res.update(rep=rep, target=target, suite_scenario=sc, host_busy_before_pct=busy_before,
                       server_rss_kib_before=rss_before,
                       code=code_version() if self.last_kind else None,
                       pinning={"server": server_cpus[:len(pids)], "loadgen": loadgen_cpus},
                       run_seconds=round(time.time() - t0, 1))
            with open(self.out, "a") as f:
                f.write(json.dumps(res) + "\n")
            log(f"[rep {rep}] {target} {sc}: {brief(res)}")
        except Exception as exc:
            log(f"[rep {rep}] {target} {sc}: failed: {exc}")
        finally:
            servers.stop()
            try:
                cleanup()
            except Exception as exc:
                log(f"cleanup of {target} failed: {exc}")
            time.sleep(1.0)


    def run_spied(self, cmd: list[str], server_pid: int) -> Any:
        """The reconnect storm with py-spy on the (first) server for its reconnect window only:
        from the driver's "before:" line (sockets connected, joined, caught up; then the drop,
        the missed posts and the storm) to its result line. Raw profile and its summary are
        written under bench-results/profile-<stamp>/reconnect.txt."""
        import threading

        from profile_backstage import py_spy, summarize  # bench/profile_backstage.py
        spy_exe = py_spy()
        out_dir = RESULTS / time.strftime("profile-%Y%m%d-%H%M%S")
        out_dir.mkdir(parents=True, exist_ok=True)
        prof = out_dir / "reconnect.txt"
        p = subprocess.Popen(cmd, cwd=self.harness, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        spy: list[subprocess.Popen[bytes]] = []
        err: list[str] = []

        def read_err() -> None:
            assert p.stderr is not None
            for ln in p.stderr:
                if ln.startswith("before:") and not spy:
                    spy.append(subprocess.Popen([spy_exe, "record", "-p", str(server_pid), "-r", "200", "--format", "raw",
                                                 "-o", str(prof)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                err.append(ln)
        reader = threading.Thread(target=read_err, daemon=True)
        reader.start()
        try:
            assert p.stdout is not None
            stdout = ""
            for ln in p.stdout:
                stdout += ln
                if ln.startswith("{") and spy:
                    spy[0].send_signal(signal.SIGINT)
            p.wait(timeout=600)
        finally:
            if p.poll() is None:
                p.kill()
            if spy:
                spy[0].wait(30)
        reader.join(timeout=5)
        if prof.exists():
            text = summarize(prof, top=40)
            prof.with_suffix(".summary.txt").write_text(text + "\n")
            log(f"reconnect profile: {prof}")
        return subprocess.CompletedProcess(cmd, p.returncode, stdout, "".join(err))

    def run_probed(self, cmd: list[str], server_pids: list[int]) -> tuple[Any, list[float], Any]:
        """The loadgen with bench/cpu_probe.py sampling alongside; its step lines (stderr, not
        --quiet) are timestamped as they appear: (completed process, step line times, probe)."""
        import threading

        from cpu_probe import CpuProbe  # bench/cpu_probe.py
        p = subprocess.Popen(cmd, cwd=self.harness, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        names: dict[str, list[int]] = {f"server{k}": [pid] for k, pid in enumerate(server_pids)}
        names["loadgen"] = [p.pid]
        for name, proc in (("mariadbd", "mariadbd"), ("redis", "redis-server")):
            if (pid := pidof(proc)) is not None:
                names[name] = [pid]
        probe = CpuProbe(names, hz=self.args.cpu_probe_hz,
                         mysql={"host": MYSQL_HOST, "port": MYSQL_PORT, "user": MYSQL_USER}).start()
        step_times: list[float] = []
        err: list[str] = []

        def read_err() -> None:
            assert p.stderr is not None
            for ln in p.stderr:
                if ln.lstrip().startswith("step "):
                    step_times.append(time.time())
                err.append(ln)
        reader = threading.Thread(target=read_err, daemon=True)
        reader.start()
        try:
            assert p.stdout is not None
            stdout = p.stdout.read()
            p.wait(timeout=600)
        finally:
            if p.poll() is None:
                p.kill()
            probe.stop()
        reader.join(timeout=5)
        return subprocess.CompletedProcess(cmd, p.returncode, stdout, "".join(err)), step_times, probe


def probe_steps(res: dict[str, Any], step_times: list[float], probe: Any) -> dict[str, Any]:
    """cpu_probe windows per ramp step (matched to res["steps"] in order) or of the fixed run.
    A step's line is printed once its measured window and its drain are over; a passing step
    drains within its p99 (< 0.1 s), so its window is taken as the step length before the line,
    less 0.1 s (a failing step's may include up to --drain s of drain: marked approximate)."""
    out: dict[str, Any] = {"hz": probe.hz, "steps": []}
    step_s = float(PRESETS["ramp5"][PRESETS["ramp5"].index("--ramp-step") + 1])
    for st, t in zip(res.get("steps") or [], step_times):
        w = probe.window(t - 0.1 - step_s, t - 0.1)
        out["steps"].append({"target_deliveries_per_s": st.get("target_deliveries_per_s"), "pass": st.get("pass"),
                             "approximate": not st.get("pass"), **(w or {})})
    if not res.get("steps") and probe.samples:
        out["whole_run"] = probe.window(probe.samples[0].t, probe.samples[-1].t)
    return out


def brief(r: dict[str, Any]) -> str:
    sc = r.get("suite_scenario")
    if sc == "reconnect":
        return (f"connect {get(r, 'setup.connects_per_s')}/s; {r.get('recovered')}/{r.get('sockets')} recovered in"
                f" {r.get('recover_seconds')} s (p99 {get(r, 'recover_ms.p99')} ms), failed attempts"
                f" {r.get('failed_attempts')}, recovery errors {r.get('recovery_errors')}, server {r.get('server_cpu_pct')}%")
    if sc in ("ramp", "ramp5"):
        at = r.get("at_max") or {}
        return (f"max {r.get('max_deliveries_per_s')} deliveries/s (p99 {(at.get('latency_ms') or {}).get('p99')} ms,"
                f" server {at.get('server_cpu_pct')}%, loadgen {at.get('loadgen_cpu_pct')}%,"
                f" host {at.get('host_busy_pct')}%); setup {r['setup']['connects_per_s']} conn/s")
    if sc == "fixed":
        lat = r.get("latency_ms") or {}
        return (f"delivered {r.get('delivered_per_s')}/s p50 {lat.get('p50')} p99 {lat.get('p99')} ms lost {r.get('lost')}"
                f" server {r.get('server_cpu_pct')}% host {r.get('host_busy_pct')}%")
    s = r.get("setup") or {}
    return f"{s.get('connects_per_s')} conn/s, {r.get('rss_kib_per_conn')} KiB/conn, errors {s.get('errors')}"


# ------------------------------------------------------------------------- the table


def get(d: Any, path: str) -> Any:
    for k in path.split("."):
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def us_per_delivery(r: dict[str, Any]) -> float | None:
    c, d = r.get("server_cpu_pct"), r.get("delivered_per_s")
    return round(c / 100 * 1e6 / d, 1) if c and d else None


def rss_per_conn_fixed(r: dict[str, Any]) -> float | None:
    after, before, n = r.get("server_rss_kib"), r.get("server_rss_kib_before"), get(r, "setup.sockets")
    return round((after - before) / n, 2) if after and before and n else None


Rows = list[dict[str, Any]]


def in_sc(rows: Rows, sc: str) -> Rows:
    return [r for r in rows if r.get("suite_scenario") == sc]


def one(rows: Rows, sc: str, fn: Any) -> float | None:
    """fn of the target's `sc` run in this repetition (there is one per repetition)."""
    return next((v for v in (fn(r) for r in in_sc(rows, sc)) if v is not None), None)


def step_at(r: dict[str, Any], dps: int) -> dict[str, Any] | None:
    """The ramp step at this offered load (the ramps visit 500 x 2^k, 250 x 2^k exactly)."""
    return next((st for st in r.get("steps") or [] if st.get("target_deliveries_per_s") == dps), None)


def connects_per_s(rows: Rows) -> float | None:
    """connects/s of the `connect` scenario, else the median over the setups of every run of the
    target in the repetition: each run starts with the same storm (5,000 sockets connect + auth +
    join, 200 in flight, on fresh processes), the reconnect driver's first phase included."""
    c = one(rows, "connect", lambda r: get(r, "setup.connects_per_s"))
    vals = [v for v in (get(r, "setup.connects_per_s") for r in rows) if v]
    return c if c is not None else (statistics.median(vals) if vals else None)


def rss_per_conn(rows: Rows) -> float | None:
    v = one(rows, "connect", lambda r: r.get("rss_kib_per_conn"))
    if v is None:
        v = one(rows, "fixed", rss_per_conn_fixed)
    if v is None:  # after the reconnect driver's first connect storm
        v = one(rows, "reconnect", lambda r: round((get(r, "setup.server_rss_kib") - r["server_rss_kib_before"])
                                                 / get(r, "setup.sockets"), 2)
                if get(r, "setup.server_rss_kib") and r.get("server_rss_kib_before") and get(r, "setup.sockets") else None)
    return v


def host_busy(rows: Rows) -> float | None:
    vals = [r.get("host_busy_pct") for r in rows] + [st.get("host_busy_pct") for r in rows for st in r.get("steps") or []]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


COLUMNS = [  # header, value from the target's runs of one repetition, ratio against the baseline?
    ("max deliveries/s (ramp, p99<=100ms)", lambda rs: one(rs, "ramp", lambda r: r.get("max_deliveries_per_s")), True),
    ("max deliveries/s (ramp5: 5 senders/room)", lambda rs: one(rs, "ramp5", lambda r: r.get("max_deliveries_per_s")), True),
    ("p50 ms @2,500/s", lambda rs: one(rs, "fixed", lambda r: get(r, "latency_ms.p50")), True),
    ("p99 ms @2,500/s", lambda rs: one(rs, "fixed", lambda r: get(r, "latency_ms.p99")), True),
    ("server CPU us/delivery @2,500/s", lambda rs: one(rs, "fixed", us_per_delivery), True),
    ("p50 ms @2,000/s (ramp5 step)", lambda rs: one(rs, "ramp5", lambda r: get(step_at(r, 2000), "p50")), True),
    ("p99 ms @2,000/s (ramp5 step)", lambda rs: one(rs, "ramp5", lambda r: get(step_at(r, 2000), "p99")), True),
    ("connects/s (connect+auth+join)", connects_per_s, True),
    ("RSS KiB/conn", rss_per_conn, True),
    ("reconnect storm: s until all 5,000 recovered", lambda rs: one(rs, "reconnect", lambda r: r.get("recover_seconds")
                                                                   if not r.get("not_recovered") else None), True),
    ("host busy % (median of runs)", host_busy, False),
]


def fmt(v: float) -> str:
    if isinstance(v, int) and abs(v) < 100:
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def by_target_rep(rows: Rows) -> dict[str, dict[int, Rows]]:
    by: dict[str, dict[int, Rows]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["target"]][r["rep"]].append(r)
    return by


def ordered(targets: Any) -> list[str]:
    return [t for t in ALL_TARGETS if t in targets] + sorted(set(targets) - set(ALL_TARGETS))


def cell(by: dict[str, dict[int, Rows]], t: str, fn: Any, ratio_to: str | None, nreps: int) -> str:
    """Median over repetitions, (x) = median over repetitions of t/ratio_to in the same one."""
    vals = {rep: fn(rs) for rep, rs in by[t].items()}
    vals = {rep: v for rep, v in vals.items() if v is not None}
    if not vals:
        return "-"
    out = fmt(statistics.median(vals.values()))
    if ratio_to and t != ratio_to and ratio_to in by:
        rat = [v / b for rep, v in vals.items() if (b := fn(by[ratio_to].get(rep, [])))]
        if rat:
            out += f" ({statistics.median(rat):.2f}x)"
    return out + (f" [n={len(vals)}]" if len(vals) != nreps else "")


def ratio_only(by: dict[str, dict[int, Rows]], t: str, fn: Any, base: str) -> str:
    rat = [v / b for rep, rs in by[t].items() if (v := fn(rs)) is not None and (b := fn(by[base].get(rep, [])))]
    return f"{statistics.median(rat):.2f}x" if rat else "-"


def table(rows: Rows, baseline: str = "node") -> str:
    by = by_target_rep(rows)
    targets = [t for t in ordered(by) if t not in TWO_CORE]
    reps = sorted({r["rep"] for r in rows})
    cols = [c for c in COLUMNS if any(c[1](rs) is not None for t in targets for rs in by[t].values())]
    out = [f"medians over {len(reps)} repetition(s); (x) = median over repetitions of target/{baseline} in the same"
           " repetition; connects/s = median over the setups of the target's runs (each the same 5,000-socket storm)\n",
           "| target | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for t in targets:
        out.append("| " + " | ".join([t] + [cell(by, t, fn, baseline if ratio else None, len(reps)) for _, fn, ratio in cols]) + " |")
    return "\n".join(out)


def at_max(sc: str, path: str) -> Any:
    return lambda rs: one(rs, sc, lambda r: get(r, "at_max." + path))


def two_core_table(rows: Rows) -> str:
    """Each 2-core target against its 1-process counterpart from the same repetition."""
    by = by_target_rep(rows)
    reps = sorted({r["rep"] for r in rows})
    lines = []
    for t2 in [t for t in TWO_CORE if t in by]:
        t1 = ONE_PROCESS[t2]
        for sc in ("ramp5", "ramp"):
            if not any(in_sc(rs, sc) for rs in by[t2].values()):
                continue
            mx = lambda rs, sc=sc: one(rs, sc, lambda r: r.get("max_deliveries_per_s"))  # noqa: E731
            lines.append("| " + " | ".join([
                f"{t2} vs {t1}", sc, cell(by, t1, mx, None, len(reps)) if t1 in by else "-",
                cell(by, t2, mx, t1 if t1 in by else None, len(reps)),
                ratio_only(by, t2, mx, "node-2core") if t2 != "node-2core" and "node-2core" in by else "-",
                cell(by, t1, at_max(sc, "server_cpu_pct"), None, len(reps)) if t1 in by else "-",
                cell(by, t2, at_max(sc, "server_cpu_pct"), None, len(reps)),
                cell(by, t2, at_max(sc, "loadgen_cpu_pct"), None, len(reps)),
                cell(by, t2, at_max(sc, "host_busy_pct"), None, len(reps))]) + " |")
    if not lines:
        return ""
    return ("2 processes with a core each (server k on CPU k, loadgen unpinned) vs 1 process (server on CPU 0,"
            " loadgen on CPU 1), same repetition; (x) = 2 cores / 1 process\n\n"
            "| pair | scenario | 1 process: max deliveries/s | 2 cores: max deliveries/s (x 1 process) |"
            " 2 cores (x node-2core) | 1 process: server CPU % at max"
            " | 2 cores: server CPU % at max (sum) | 2 cores: loadgen CPU % at max | 2 cores: host busy % at max |\n"
            + "|---" * 9 + "|\n" + "\n".join(lines))


def reconnect_table(rows: Rows, baseline: str = "node") -> str:
    by = by_target_rep(rows)
    targets = [t for t in ordered(by) if any(in_sc(rs, "reconnect") for rs in by[t].values())]
    if not targets:
        return ""
    reps = sorted({r["rep"] for r in rows})

    def rc(path: str) -> Any:
        return lambda rs: one(rs, "reconnect", lambda r: get(r, path))
    cols = [("first connect: connects/s", rc("setup.connects_per_s"), True),
            ("sockets", rc("sockets"), False),
            ("s until all recovered", lambda rs: one(rs, "reconnect", lambda r: None if r.get("not_recovered")
                                                    else r.get("recover_seconds")), True),
            ("recovered/s", rc("recovered_per_s"), True),
            ("per socket p50 ms", rc("recover_ms.p50"), True),
            ("per socket p99 ms", rc("recover_ms.p99"), True),
            ("not recovered", rc("not_recovered"), False),
            ("failed attempts (retried)", rc("failed_attempts"), False),
            ("messages recovered / missed by the recovered sockets", lambda rs: None, False),
            ("since_seq errors (gap/dup)", rc("recovery_errors"), False),
            ("server CPU % during the storm", rc("server_cpu_pct"), False)]
    out = ["| target | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for t in targets:
        cells = [t]
        for name, fn, ratio in cols:
            if name.startswith("messages"):
                got = cell(by, t, rc("recovered_messages"), None, len(reps))
                want = cell(by, t, rc("expected_messages"), None, len(reps))
                cells.append("-" if want == "-" else f"{got} / {want}")
            else:
                cells.append(cell(by, t, fn, baseline if ratio else None, len(reps)))
        out.append("| " + " | ".join(cells) + " |")
    return ("5,000 sockets connected and joined, all dropped at once, all reconnecting at once (bench/reconnect_storm.js);"
            " Backstage rejoins with since_seq after "
            f"{RECONNECT_MISSED} messages per room were posted while everyone was away, the peer's join has no history;"
            f" (x) = target/{baseline} in the same repetition\n\n" + "\n".join(out))


def per_rep(rows: Rows) -> str:
    """The spread behind the medians: headline values of every repetition."""
    cols = [("ramp max deliveries/s", lambda rs: one(rs, "ramp", lambda r: r.get("max_deliveries_per_s"))),
            ("ramp5 max deliveries/s", lambda rs: one(rs, "ramp5", lambda r: r.get("max_deliveries_per_s"))),
            ("fixed p99 ms", lambda rs: one(rs, "fixed", lambda r: get(r, "latency_ms.p99"))),
            ("fixed lost", lambda rs: one(rs, "fixed", lambda r: r.get("lost"))),
            ("connects/s", connects_per_s),
            ("reconnect s", lambda rs: one(rs, "reconnect", lambda r: r.get("recover_seconds")))]
    by = by_target_rep(rows)
    reps = sorted({r["rep"] for r in rows})
    targets = ordered(by)
    cols = [c for c in cols if any(c[1](rs) is not None for t in targets for rs in by[t].values())]
    out = ["| target | " + " | ".join(c[0] + " (rep " + ", ".join(map(str, reps)) + ")" for c in cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
    for t in targets:
        cells = [t]
        for _, fn in cols:
            vals = [fn(by[t].get(rp, [])) for rp in reps]
            cells.append(" / ".join("-" if v is None else fmt(v) for v in vals))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def probe_table(rows: Rows, common: tuple[int, ...] = (4000, 8000, 16000)) -> str:
    """The cpu_probe windows of each run's highest passing and lowest failing ramp step, and of
    the steps at `common` offered deliveries/s (every ramp5 visits them): CPU % and run-queue wait %
    (100 = one core; wait = runnable but no CPU free) per process."""
    lines = []
    for r in rows:
        delivered = [st.get("delivered_per_s") for st in r.get("steps") or []]
        steps = [{**st, "delivered_per_s": d} for st, d in zip(get(r, "cpu_probe.steps") or [], delivered, strict=False)
                 if "cpu_pct" in st]
        passed = [st["target_deliveries_per_s"] for st in steps if st.get("pass")]
        failed = [st["target_deliveries_per_s"] for st in steps if not st.get("pass")]
        keep = {max(passed, default=None), min(failed, default=None), *common}
        for st in sorted(steps, key=lambda st: st["target_deliveries_per_s"]):
            if st["target_deliveries_per_s"] not in keep:
                continue
            cpu, wait = st["cpu_pct"], st["runq_wait_pct"]
            servers = sorted(n for n in cpu if n.startswith("server"))

            def pair(names: list[str], cpu: dict[str, float] = cpu, wait: dict[str, float] = wait) -> str:
                return " + ".join(f"{cpu[n]:.0f} / {wait[n]:.0f}" for n in names if n in cpu) or "-"
            lines.append("| " + " | ".join([
                r["target"], r["suite_scenario"], f"{st['target_deliveries_per_s']:,}", "pass" if st.get("pass") else "FAIL",
                pair(servers),
                f"{10_000 * sum(cpu[n] for n in servers) / st['delivered_per_s']:.0f}" if st.get("delivered_per_s") else "-",
                pair(["loadgen"]), pair(["mariadbd"]), pair(["redis"]),
                f"{st['host']['busy']:.0f}", f"{st['host']['busy'] - sum(cpu.values()):.0f}", f"{st['host']['softirq']:.1f}",
                str(st.get("innodb_row_lock_ms_per_s", "-")), str(st.get("bench_lock_wait_ms_per_s", "-"))]) + " |")
    if not lines:
        return ""
    return ("cpu_probe per ramp step (CPU % / run-queue wait %, 100 = one core; others = host busy less the"
            " processes named, i.e. other users of the host; a failing step's window may include its drain)\n\n"
            "| target | scenario | offered/s | step | servers | servers' CPU µs per delivery | loadgen | mariadbd | redis"
            " | host busy % | others % | softirq % | InnoDB row-lock wait ms/s (server-wide)"
            " | bench transactions' lock wait ms/s (sampled) |\n" + "|---" * 14 + "|\n" + "\n".join(lines))


def print_report(path: Path, harness: Path | None) -> None:
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith("{")]
    print(f"\n## Backstage vs peers ({path.name})\n")
    print(table(rows))
    for title, text in (("2 cores", two_core_table(rows)), ("Reconnect storm", reconnect_table(rows)),
                        ("CPU probe", probe_table(rows))):
        if text:
            print(f"\n### {title}\n\n{text}")
    print("\nper repetition:\n")
    print(per_rep(rows))
    if harness is not None:
        print("\n## Details (the harness's report.py)\n", flush=True)
        subprocess.run([sys.executable, str(harness / "report.py"), str(path), "--baseline", "node"])


# ------------------------------------------------------------------------- the plot

PLOT_OUT = ROOT / "docs" / "latency-vs-load.png"


def latest_results() -> Path:
    """The newest results file with ramp steps in it."""
    for p in sorted(RESULTS.glob("bench-*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True):
        if any('"steps"' in ln for ln in p.read_text().splitlines()):
            return p
    sys.exit(f"no results with ramp steps in {RESULTS}: run make bench-quick first")


def plot(path: Path, out: Path, scenario: str | None, rep: int | None) -> Path:
    """p50 and p99 against offered load, one line per target, from the ramp steps of ONE run
    (one repetition of one results file): Backstage and the peers side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith("{")]
    ramps = [r for r in rows if r.get("steps") and r.get("target") not in TWO_CORE]
    if scenario is None:  # the 5-senders case when the run has it
        scenario = "ramp5" if any(r["suite_scenario"] == "ramp5" for r in ramps) else "ramp"
    ramps = [r for r in ramps if r["suite_scenario"] == scenario]
    if rep is None:  # the first repetition that has Backstage and both peer kinds
        def score(rp: int) -> tuple[int, int]:
            ts = {r["target"] for r in ramps if r["rep"] == rp}
            return (("backstage" in ts) + ("node" in ts) + any(t.startswith("py") for t in ts), -rp)
        rep = max({r["rep"] for r in ramps}, key=score, default=None)
    ramps = [r for r in ramps if r["rep"] == rep]
    if not ramps:
        sys.exit(f"no {scenario} runs with steps in {path}")
    style = {"backstage": ("tab:red", "o"), "backstage-2proc": ("tab:orange", "o"), "backstage-sqlite": ("tab:brown", "o"),
             "node": ("tab:blue", "s"), "node-2proc": ("tab:cyan", "s"), "py-uvloop": ("tab:green", "^"),
             "py-mysql": ("tab:olive", "v")}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharex=True, sharey=True)
    limit = max((r.get("p99_limit_ms") or 100) for r in ramps)
    for r in sorted(ramps, key=lambda r: ordered([x["target"] for x in ramps]).index(r["target"])):
        steps = sorted(r["steps"], key=lambda st: st["target_deliveries_per_s"])
        color, marker = style.get(r["target"], ("tab:gray", "D"))
        xs = [st["target_deliveries_per_s"] for st in steps]
        for ax, key in zip(axes, ("p50", "p99")):
            ys = [st[key] if st[key] is not None else float("nan") for st in steps]
            ax.plot(xs, ys, "-", color=color, alpha=0.6, label=f"{r['target']} (max {r['max_deliveries_per_s']:,}/s)")
            for x, y, st in zip(xs, ys, steps):  # filled = the step passed (p99 <= limit, no loss, all acks)
                ax.plot([x], [y], marker, color=color, markerfacecolor=color if st["pass"] else "white", markersize=6)
    for ax, key in zip(axes, ("p50", "p99")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (deliveries/s)")
        ax.set_ylabel(f"{key} end-to-end latency (ms)")
        ax.set_title(f"{key} latency vs offered load")
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(limit, color="gray", linestyle=":", linewidth=1)
    axes[1].text(axes[1].get_xlim()[0] * 1.1, limit * 1.1, f"ramp limit: p99 {limit} ms", color="gray", fontsize=8)
    axes[0].legend(fontsize=8, loc="upper left")
    code = next((r.get("code") for r in ramps if r.get("code")), "?")
    senders = "5 senders/room" if scenario == "ramp5" else "1 sender/room"
    fig.suptitle(f"{ROOMS} rooms x {MEMBERS} members, {senders}, open loop; server CPU 0, loadgen CPU 1; "
                 f"{path.name} rep {rep}, Backstage {code}; hollow = step failed", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    log(f"plot of {scenario} rep {rep} ({', '.join(r['target'] for r in ramps)}) -> {out}")
    return out


# ------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"1 rep, targets {','.join(QUICK_TARGETS)}, fixed only")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--targets", default=None, help=f"comma separated, from {','.join(ALL_TARGETS)}")
    ap.add_argument("--scenarios", default=None, help="comma separated, from connect,fixed,ramp")
    ap.add_argument("--harness", type=Path, default=Path(os.environ.get("BENCH_HARNESS", DEFAULT_HARNESS)))
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--loadgen-cpus", default="1")
    ap.add_argument("--two-core-server-cpus", default=",".join(TWO_CORE_SERVER_CPUS),
                    help="CPU of each process of the *-2core targets (on a bigger host: e.g. 2,3)")
    ap.add_argument("--two-core-loadgen-cpus", default=TWO_CORE_LOADGEN_CPUS,
                    help="loadgen CPUs for the *-2core targets ('' = unpinned)")
    ap.add_argument("--quiet-limit", type=float, default=40.0,
                    help="wait before each target until the host is below this busy %% (100 = one core)")
    ap.add_argument("--quiet-wait", type=float, default=0.0, help="max seconds to wait for that (0 = never)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None, help="only print the table of an earlier results file")
    ap.add_argument("--plot", type=Path, nargs="?", const=Path("latest"), default=None,
                    help="only draw latency vs offered load from a results file (default: the newest with ramp steps)")
    ap.add_argument("--plot-out", type=Path, default=PLOT_OUT)
    ap.add_argument("--plot-scenario", default=None, help="ramp5 (default when present) or ramp")
    ap.add_argument("--plot-rep", type=int, default=None)
    ap.add_argument("--cpu-probe", action="store_true",
                    help="sample per-process CPU, run-queue wait, softirq and InnoDB row-lock waits per step"
                         " (bench/cpu_probe.py; stored as cpu_probe in each result, tabled by --report)")
    ap.add_argument("--cpu-probe-hz", type=float, default=10.0)
    ap.add_argument("--profile-reconnect", action="store_true",
                    help="py-spy on Backstage during the reconnect storm's window (drop, missed posts, storm)")
    ap.add_argument("--profile", action="store_true", help="profile Backstage under the fixed load (see bench/profile.py)")
    args, unknown = ap.parse_known_args()
    # Stop cleanly (servers, databases, Redis keys) on SIGTERM too, and on SIGINT even when
    # started in the background by a shell that ignores it.
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    if unknown and not args.profile:
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")

    if args.plot is not None:
        plot(latest_results() if str(args.plot) == "latest" else args.plot, args.plot_out, args.plot_scenario, args.plot_rep)
        return 0
    if not args.harness.is_dir():
        sys.exit(f"harness not found at {args.harness} (pass --harness or BENCH_HARNESS)")
    harness = harness_dir(args.harness.resolve())
    if args.report:
        print_report(args.report, harness)
        return 0
    if args.profile:
        from profile_backstage import main as profile_main  # bench/profile_backstage.py
        return profile_main(harness)

    args.reps = args.reps or (1 if args.quick else 3)
    targets = (args.targets or ",".join(QUICK_TARGETS if args.quick else ALL_TARGETS)).split(",")
    asked = (args.scenarios or (QUICK_SCENARIOS if args.quick else DEFAULT_SCENARIOS)).split(",")
    for sc in asked:
        if sc not in SCENARIO_ORDER:
            sys.exit(f"unknown scenario {sc}")
    args.scenarios = [s for s in SCENARIO_ORDER if s in asked]
    for t in targets:
        if t not in ALL_TARGETS:
            sys.exit(f"unknown target {t}")
    # Named targets run every asked scenario; by default each scenario runs on its SCENARIO_TARGETS.
    args.plan = {t: [sc for sc in args.scenarios if args.targets or t in SCENARIO_TARGETS[sc]] for t in targets}
    targets = [t for t in targets if args.plan[t]]
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / time.strftime("bench-%Y%m%d-%H%M%S.jsonl")
    work = Path(tempfile.mkdtemp(prefix="backstage-bench-"))
    runner = Runner(args, harness, out, work)
    t0 = time.time()
    log(f"results -> {out}; harness {harness}; targets {','.join(targets)}; scenarios {','.join(args.scenarios)};"
        f" reps {args.reps}")
    try:
        for kind in sorted({BACKSTAGE[TWO_CORE.get(t, t)][0] for t in targets if TWO_CORE.get(t, t) in BACKSTAGE}):
            runner.seeds.ensure(kind)
        for rep in range(1, args.reps + 1):
            k = (rep - 1) % len(targets)
            for target in targets[k:] + targets[:k]:
                runner.run_target(rep, target)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        runner.close()
        shutil.rmtree(work, ignore_errors=True)
    log(f"done in {(time.time() - t0) / 60:.1f} min")
    if out.exists():
        print_report(out, harness)
    return 0


if __name__ == "__main__":
    sys.exit(main())
