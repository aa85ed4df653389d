"""py-spy profiles of one Backstage process (MariaDB + Redis, pinned like the bench) under the
bench load: one profile of the connect storm (5,000 sockets connect + auth + join), one of
the fixed fan-out (2,500 deliveries/s by default), then a summary of each.

    .venv/bin/python bench/run_bench.py --profile [--profile-rate 2500] [--profile-seconds 15]
    .venv/bin/python bench/profile_backstage.py --summarize FILE.txt   # summary of a raw profile

py-spy (PyPI) is installed into $BENCH_CACHE/tools when it is not on PATH. Profiles are
written as collapsed stacks (py-spy --format raw) under bench-results/profile-<stamp>/.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb  # noqa: E402


def py_spy() -> str:
    found = shutil.which("py-spy")
    if found:
        return found
    tools = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "backstage-bench")) / "tools"
    exe = tools / "bin" / "py-spy"
    if not exe.exists():
        rb.log(f"installing py-spy into {tools}")
        subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
        subprocess.run([str(tools / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return str(exe)


def send_events(port: int) -> float:
    import httpx
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    return sum(float(m.group(1)) for m in re.finditer(r'^backstage_socket_events_total\{event="send"[^}]*\} (\S+)$', text, re.M))


# ------------------------------------------------------------------------- summary

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")

CATEGORIES = [  # first match on the innermost frame's file wins
    ("engineio (packets, sockets, queues)", "engineio/"),
    ("socketio (emit, rooms, manager)", "socketio/"),
    ("aiohttp (websocket, http)", "aiohttp/"),
    ("sqlalchemy", "sqlalchemy/"),
    ("aiomysql/pymysql (driver)", "mysql/"),
    ("aiosqlite/sqlite", "sqlite"),
    ("redis client", "redis/"),
    ("prometheus_client", "prometheus_client/"),
    ("jwt", "jwt/"),
    ("chat/ (our code)", "chat/"),
    ("asyncio (event loop, tasks)", "asyncio/"),
    ("other", ""),
]


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        stacks.append((frames, int(n)))
    return stacks


def short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    f = m.group("file")
    for cut in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if cut in f:
            f = f.split(cut, 1)[1]
    return f"{m.group('func')} ({f})"


def summarize(path: Path, top: int = 30) -> str:
    stacks = parse(path)
    total = sum(n for _, n in stacks) or 1
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    for frames, n in stacks:
        if not frames:
            continue
        leaf = frames[-1]
        self_c[short(leaf)] += n
        for name in {short(f) for f in frames}:
            incl[name] += n
        file = (FRAME.match(leaf).group("file") if FRAME.match(leaf) else leaf)  # type: ignore[union-attr]
        cats[next(c for c, key in CATEGORIES if key in file)] += n
    pct = lambda n: f"{100 * n / total:5.1f}%"  # noqa: E731
    out = [f"{path.name}: {total} samples", "", "by package of the innermost Python frame (self time):"]
    out += [f"  {pct(n)}  {c}" for c, n in cats.most_common()]
    out += ["", f"top {top} self:"] + [f"  {pct(n)}  {f}" for f, n in self_c.most_common(top)]
    out += ["", f"top {top} inclusive:"] + [f"  {pct(n)}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


# ------------------------------------------------------------------------- run


def main(harness: Path | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summarize", type=Path, nargs="*", default=None)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profile-target", default="backstage", choices=list(rb.BACKSTAGE))
    ap.add_argument("--profile-rate", type=int, default=2500, help="deliveries/s during the send profile")
    ap.add_argument("--profile-seconds", type=int, default=15)
    ap.add_argument("--harness", type=Path, default=rb.DEFAULT_HARNESS)
    args, _ = ap.parse_known_args()
    if args.summarize:
        for p in args.summarize:
            print(summarize(p) + "\n")
        return 0
    harness = harness or rb.harness_dir(args.harness.resolve())
    spy = py_spy()
    rb.RESULTS.mkdir(exist_ok=True)
    out_dir = rb.RESULTS / time.strftime("profile-%Y%m%d-%H%M%S")
    out_dir.mkdir()
    work = Path(rb.tempfile.mkdtemp(prefix="backstage-profile-"))
    ns = argparse.Namespace(server_cpus="0", loadgen_cpus="1", scenarios=[], quiet_wait=0, quiet_limit=0)
    runner = rb.Runner(ns, harness, out_dir / "loadgen.jsonl", work)
    servers = rb.Servers()
    loadgen = None
    try:
        ports, extra, cleanup = runner.start_target(args.profile_target, servers)
        pid = servers.procs[0].pid
        time.sleep(1)
        seconds = args.profile_seconds
        cmd = rb.pin("1") + ["node", "loadgen/loadgen.js", "--url", ",".join(f"ws://127.0.0.1:{p}" for p in ports),
                             "--label", f"{args.profile_target}-profile", "--server-pid", ",".join(str(p.pid) for p in servers.procs),
                             "--scenario", "fanout", "--rooms", str(rb.ROOMS), "--members", str(rb.MEMBERS),
                             "--deliveries", str(args.profile_rate), "--warmup", "3", "--duration", str(seconds + 4),
                             "--drain", "5", "--out", str(out_dir / "loadgen.jsonl"), *extra]
        rb.log(f"profiling pid {pid}: connect storm, then {args.profile_rate} deliveries/s for {seconds}s")
        connect_prof = out_dir / "connect.txt"
        spy_connect = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "200", "--format", "raw", "-o", str(connect_prof)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        loadgen = subprocess.Popen(cmd, cwd=harness, stdout=subprocess.DEVNULL, stderr=open(out_dir / "loadgen.log", "w"))
        while send_events(ports[0]) == 0 and loadgen.poll() is None:
            time.sleep(0.2)
        spy_connect.send_signal(signal.SIGINT)
        spy_connect.wait(30)
        time.sleep(3)  # warmup
        send_prof = out_dir / "send.txt"
        subprocess.run([spy, "record", "-p", str(pid), "-r", "200", "-d", str(seconds), "--format", "raw",
                        "-o", str(send_prof)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        loadgen.wait(120)
        loadgen = None
        for p in (connect_prof, send_prof):
            if p.exists():
                s = summarize(p)
                (p.with_suffix(".summary.txt")).write_text(s + "\n")
                print(s + "\n")
        print((out_dir / "loadgen.log").read_text())
        rb.log(f"profiles in {out_dir}")
        cleanup()
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
        servers.stop()
        runner.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
