"""Settings at start-up (issue 12.2): every bad value is one line naming the variable and the fix,
exit code 2, no traceback (JSON when LOG_FORMAT=json); risky-but-legal values are warnings; an
unreachable database at start is retried with one line per attempt; the ready line says where the
server listens and what it uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import API_KEY, JWT_SECRET, ROOT, ServerProcess, free_port, migrated_sqlite


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    prefixes = ("JWT_", "DATABASE_", "REDIS_", "LOG_", "API_KEYS", "PUSH_", "FIREBASE_", "HOST", "PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(HOST="127.0.0.1", PORT=str(free_port()), JWT_SECRET=JWT_SECRET, API_KEYS=API_KEY,
               DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/b.db")
    env.update(extra)
    return env


def run_server(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run_server.py"), *args], cwd=tmp_path,
                          env=clean_env(tmp_path, **extra), capture_output=True, text=True, timeout=60)


BAD = [
    # (variable, value, words the one line must contain: the fix)
    ("DATABASE_URL", "mysql://backstage:pw@db.internal:3306/backstage", "mysql+aiomysql://"),
    ("DATABASE_URL", "sqlite:///backstage.db", "sqlite+aiosqlite:///"),
    ("PORT", "abc", "1-65535"),
    ("PORT", "70000", "1-65535"),
    ("LOG_LEVEL", "verbose", "DEBUG, INFO, WARNING"),
    ("LOG_FORMAT", "xml", "text or json"),
    ("PUSH_WORKER", "bogus", "inline"),
    ("FIREBASE_CREDENTIALS", "/nonexistent/service-account.json", "service account JSON"),
    ("REDIS_URL", "localhost:6379", "redis://"),
    ("MAX_SOCKETS_PER_USER", "0", "greater than 0"),
]


@pytest.mark.parametrize(("name", "value", "fix"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path, name: str, value: str, fix: str) -> None:
    proc = run_server(tmp_path, **{name: value})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"configuration error: {name}"), lines
    assert fix in lines[0], lines
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert "pw@" not in proc.stderr  # a DATABASE_URL's password is never echoed
    assert not (tmp_path / "b.db").exists()  # refused before touching anything


def test_the_push_worker_process_reports_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    """`python -m notifications.worker` (the Procfile's worker) validates like the web process."""
    proc = subprocess.run([sys.executable, "-m", "notifications.worker"], cwd=ROOT,
                          env=clean_env(tmp_path, DATABASE_URL="mysql://u:pw@db:3306/x"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: DATABASE_URL"), proc.stderr
    assert "mysql+aiomysql://" in lines[0] and "Traceback" not in proc.stderr and "pw@" not in proc.stderr


def test_bad_settings_are_json_lines_when_log_format_is_json(tmp_path: Path) -> None:
    proc = run_server(tmp_path, LOG_FORMAT="json", PORT="abc", PUSH_WORKER="bogus")
    assert proc.returncode == 2, proc.stderr
    records = [json.loads(line) for line in proc.stderr.strip().splitlines()]
    assert [(r["level"], r["variable"]) for r in records] == [("ERROR", "PORT"), ("ERROR", "PUSH_WORKER")]
    assert "1-65535" in records[0]["message"]


def test_warnings_for_risky_settings(tmp_path: Path) -> None:
    proc = run_server(tmp_path, "migrate", API_KEYS="", JWT_SECRET="short-secret")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 3, proc.stderr
    assert "API_KEYS is unset" in warnings[0]
    assert "JWT_SECRET is shorter than 32 characters" in warnings[1]
    assert "short-secret" not in proc.stderr  # the secret itself is never logged
    assert "SQLite outside --demo" in warnings[2]
    quiet = run_server(tmp_path, "migrate")  # keys set, a long secret: only the SQLite warning
    quiet_warnings = [line for line in quiet.stderr.splitlines() if " WARNING " in line]
    assert len(quiet_warnings) == 1 and "SQLite outside --demo" in quiet_warnings[0], quiet.stderr


@pytest.mark.parametrize("dependency", ["database", "redis"])
def test_unreachable_dependency_at_start_is_retried_one_line_at_a_time(tmp_path: Path, dependency: str) -> None:
    closed_port = free_port()  # nothing listens there
    if dependency == "database":
        env = clean_env(tmp_path, DATABASE_URL=f"mysql+aiomysql://u:secretpw@127.0.0.1:{closed_port}/db")
        named = f"database mysql (127.0.0.1:{closed_port}/db)"
    else:
        env = clean_env(tmp_path, REDIS_URL=f"redis://:secretpw@127.0.0.1:{closed_port}/0")
        named = f"redis redis (127.0.0.1:{closed_port}, prefix 'backstage')"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_server.py")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while sum("unreachable at start" in line for line in seen) < 2 and time.monotonic() < deadline:
            seen.append(proc.stdout.readline())
        errors = [line for line in seen if "unreachable at start" in line]
        assert len(errors) == 2, "".join(seen)
        assert named in errors[0] and "retrying in 1 s" in errors[0], errors
        assert "retrying in 2 s" in errors[1]  # backoff
        assert proc.poll() is None  # still waiting, not crashed
        assert "Traceback" not in "".join(seen) and "secretpw" not in "".join(seen)
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
@pytest.mark.parametrize("process", ["server", "worker"])
def test_unreachable_redis_at_start_then_ready_once_it_appears(tmp_path: Path, mysql_url: str, process: str) -> None:
    """The web server and the push worker (PUSH_WORKER=external) alike: Redis on a port that
    refuses is one ERROR line per attempt with backoff; once a redis-server listens on that port,
    the process becomes ready (its ready line) without a restart."""
    from tests.faults import OwnRedis

    port = free_port()
    env = clean_env(tmp_path, DATABASE_URL=mysql_url, REDIS_URL=f"redis://127.0.0.1:{port}/0",
                    REDIS_PREFIX=f"startup-{process}-{port}", PUSH_WORKER="external")
    command = [str(ROOT / "run_server.py")] if process == "server" else ["-m", "notifications.worker"]
    ready_line = "ready: listening on" if process == "server" else "push worker ready"
    proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    redis = None
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        while sum("unreachable at start" in line for line in seen) < 2:
            line = proc.stdout.readline()
            assert line, "".join(seen)  # the process ended instead of waiting
            seen.append(line)
        errors = [line for line in seen if "unreachable at start" in line]
        assert f"redis (127.0.0.1:{port}" in errors[0] and "retrying in 1 s" in errors[0], errors
        assert "retrying in 2 s" in errors[1]
        assert proc.poll() is None and "Traceback" not in "".join(seen)
        redis = OwnRedis(port)  # the service appears
        while not any(ready_line in line for line in seen):
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        assert proc.poll() is None
        assert "Traceback" not in "".join(seen), "".join(seen)
    finally:
        proc.terminate()
        proc.wait(15)
        if redis is not None:
            redis.stop()


def test_ready_line_names_address_database_and_relay(tmp_path: Path, mysql_url: str, redis_url: str,
                                                     redis_prefix: str) -> None:
    server = ServerProcess(mysql_url, redis_url=redis_url, redis_prefix=redis_prefix)
    try:
        ready = [line for line in server.log().splitlines() if "ready: listening on" in line]
        assert len(ready) == 1, server.log()
        assert f"listening on http://127.0.0.1:{server.port}, database mysql (" in ready[0]
        assert f"relay redis (127.0.0.1:6379, prefix '{redis_prefix}')" in ready[0], ready
    finally:
        server.stop()
    server = ServerProcess(migrated_sqlite(tmp_path / "r.db"))
    try:
        assert f"database sqlite ({tmp_path}/r.db), relay in-process" in server.log(), server.log()
    finally:
        server.stop()
