"""Where the CPU of the host goes during a bench step: a sampler for `run_bench.py --cpu-probe`.

`CpuProbe` runs in a thread of the bench runner and samples, at a fixed rate (`hz`), for a
set of named processes (the server processes, the load generator, mariadbd, redis-server):

- CPU time (utime + stime of /proc/PID/stat: every thread of the process),
- run-queue wait (/proc/PID/task/*/schedstat, second field: time the threads were runnable
  but waiting for a CPU), i.e. how much of the time the process wanted a core and had none,

and for the host: busy, idle and softirq time of every CPU (/proc/stat), and, on MariaDB,
InnoDB's row-lock waits (SHOW GLOBAL STATUS Innodb_row_lock_time / _waits: server-wide, so
other clients of the same MariaDB count too) and, for the bench's own databases only, the
number of their transactions in LOCK WAIT at each sample (information_schema.INNODB_TRX):
its mean over a window x 1000 estimates their lock-wait ms per second.

`window(t0, t1)` sums the samples whose interval lies in [t0, t1] into per-second rates:
`{"cpu_pct": {name: %}, "runq_wait_pct": {name: %}, "host": {"busy_pct", "idle_pct",
"softirq_pct"}, "innodb_row_lock_ms_per_s", "innodb_row_lock_waits_per_s", "bench_lock_wait_ms_per_s", "seconds"}`
(100 % = one core; a run-queue wait of 40 % = the process's threads waited 0.4 s per second
for a CPU). The runner maps step results of the load generator to windows by the time their
lines appear on its stderr (see run_bench.Runner.run_one).

    .venv/bin/python bench/cpu_probe.py --pids server=123,mariadbd=45 --seconds 5   # by hand
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of the whole process, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_runq_wait_s(pid: int) -> dict[int, float]:
    """Per thread of the process, the time it spent runnable, waiting for a CPU, in seconds
    (per thread: a thread that ends takes its figure with it, e.g. MariaDB's pool threads)."""
    out: dict[int, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out[int(tid)] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return out


def host_cpu() -> dict[str, float]:
    """Aggregate /proc/stat jiffies: total, idle (+iowait), softirq."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    f = [int(x) for x in first[1:9]]
    return {"total": float(sum(f)), "idle": float(f[3] + f[4]), "softirq": float(f[6])}


# Transactions of the bench's databases (run_bench.py names them bsbench_*) waiting for a lock now.
_WAITING = ("SELECT COUNT(*) FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p"
            " ON p.ID = t.trx_mysql_thread_id WHERE t.trx_state = 'LOCK WAIT' AND p.DB LIKE %s")


def innodb_row_locks(conn: Any, db_like: str) -> tuple[float, float, float] | None:
    """(Innodb_row_lock_time ms, Innodb_row_lock_waits: server-wide counters, so other users of
    the MariaDB count too; transactions of databases LIKE db_like in LOCK WAIT at this moment)."""
    if conn is None:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_row_lock_time', 'Innodb_row_lock_waits')")
            got = {name: float(value) for name, value in cur.fetchall()}
            cur.execute(_WAITING, (db_like,))
            waiting = float(cur.fetchone()[0])
        return got["Innodb_row_lock_time"], got["Innodb_row_lock_waits"], waiting
    except Exception:
        return None


@dataclass
class Sample:
    t: float
    cpu: dict[str, float]  # name -> CPU seconds (summed over the name's pids)
    runq: dict[str, dict[int, float]]  # name -> thread id -> run-queue wait seconds
    host: dict[str, float]
    locks: tuple[float, float, float] | None


@dataclass
class CpuProbe:
    """Samples `pids` ({name: [pid, ...]}) every 1/hz s in a thread, from start() to stop()."""

    pids: dict[str, list[int]]
    hz: float = 4.0
    mysql: dict[str, Any] | None = None  # pymysql.connect kwargs; None: no InnoDB figures
    db_like: str = "bsbench\\_%"  # the databases whose transactions in LOCK WAIT are counted
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def _sample(self) -> Sample:
        cpu: dict[str, float] = {}
        runq: dict[str, dict[int, float]] = {}
        for name, pids in self.pids.items():
            c = [proc_cpu_s(p) for p in pids]
            cpu[name] = sum(x for x in c if x is not None)
            runq[name] = {tid: w for p in pids for tid, w in proc_runq_wait_s(p).items()}
        return Sample(time.time(), cpu, runq, host_cpu(), innodb_row_locks(self._conn, self.db_like))

    def _loop(self) -> None:
        period = 1.0 / self.hz
        due = time.monotonic()
        while not self._stop.is_set():
            self.samples.append(self._sample())
            due += period
            self._stop.wait(max(0.0, due - time.monotonic()))

    def start(self) -> CpuProbe:
        if self.mysql is not None:
            try:
                import pymysql
                self._conn = pymysql.connect(autocommit=True, **self.mysql)
            except Exception:
                self._conn = None
        self._thread = threading.Thread(target=self._loop, name="cpu-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._conn is not None:
            self._conn.close()

    def window(self, t0: float, t1: float) -> dict[str, Any] | None:
        """Rates over the samples from the first at or after t0 to the last at or before t1."""
        inside = [s for s in self.samples if t0 <= s.t <= t1]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        secs = b.t - a.t
        jiffies = b.host["total"] - a.host["total"]
        ncpu = os.cpu_count() or 1
        out: dict[str, Any] = {
            "seconds": round(secs, 2),
            "cpu_pct": {n: round(100 * (b.cpu[n] - a.cpu[n]) / secs, 1) for n in self.pids},
            # threads alive at the window's end (a thread born inside it: all of its wait)
            "runq_wait_pct": {n: round(100 * sum(w - a.runq[n].get(t, 0.0) for t, w in b.runq[n].items()) / secs, 1)
                              for n in self.pids},
            "host": {k: round(100 * ncpu * (b.host[k] - a.host[k]) / max(1.0, jiffies), 1) for k in ("idle", "softirq")},
        }
        out["host"]["busy"] = round(100 * ncpu - out["host"]["idle"], 1)
        if a.locks is not None and b.locks is not None:
            out["innodb_row_lock_ms_per_s"] = round((b.locks[0] - a.locks[0]) / secs, 1)
            out["innodb_row_lock_waits_per_s"] = round((b.locks[1] - a.locks[1]) / secs, 1)
        waits = [s.locks[2] for s in inside if s.locks is not None]
        if waits:  # sampled: mean number of the bench's transactions waiting for a lock = ms/s / 1000
            out["bench_lock_wait_ms_per_s"] = round(1000 * sum(waits) / len(waits), 1)
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pids", required=True, help="name=pid[+pid...],...")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--hz", type=float, default=4.0)
    ap.add_argument("--mysql", default="127.0.0.1:3306", help="host:port of MariaDB ('' = none)")
    a = ap.parse_args()
    pids = {k: [int(p) for p in v.split("+")] for k, v in (x.split("=") for x in a.pids.split(","))}
    mysql = None
    if a.mysql:
        host, port = a.mysql.split(":")
        mysql = {"host": host, "port": int(port), "user": "root"}
    probe = CpuProbe(pids, a.hz, mysql).start()
    time.sleep(a.seconds)
    probe.stop()
    print(json.dumps(probe.window(0, time.time())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
