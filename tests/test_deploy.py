"""Deployable (issue 12.1, 12.3): the socket.io client ships inside the package at package-lock's
version, so a copy without node_modules serves a page that connects; a missing asset makes /readyz
answer 503 and start-up log an ERROR; the Procfile's processes run as documented; `--demo` keeps its
JWT secret and API key across restarts, so its sign-in links keep working.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import API_KEY, JWT_SECRET, ROOT, fetch, free_port, make_token

VENDOR = ROOT / "chat" / "static" / "vendor" / "socket.io.esm.min.js"


class Proc:
    """A server command started in its own process group (stopped by that id only)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_ready(self, url: str, timeout: float = 30) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: httpx.Response | None = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log()}"
            try:
                last = fetch("GET", url + "/readyz", timeout=1)
                if last.status_code == 200 or "static" in last.text:
                    return last
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready in {timeout}s ({last}):\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    prefixes = ("JWT_", "DATABASE_", "REDIS_", "LOG_", "API_KEYS", "PUSH_", "FIREBASE_", "HOST", "PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(HOST="127.0.0.1", PORT=str(free_port()), JWT_SECRET=JWT_SECRET, API_KEYS=API_KEY,
               DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/b.db", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


# ---------------------------------------------------------------- the shipped socket.io client


def test_shipped_client_is_package_locks_version() -> None:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/socket.io-client"]["version"]
    banner = re.search(r"Socket\.IO v(\d+\.\d+\.\d+)", VENDOR.read_text()[:200])
    assert banner is not None and banner.group(1) == locked, (banner, locked)
    assert "MIT" in (VENDOR.parent / "socket.io-client.LICENSE").read_text()
    installed = ROOT / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
    if installed.exists():  # after `npm ci`: byte for byte the same build
        assert installed.read_bytes() == VENDOR.read_bytes()


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """What a pip-only deploy has: the Python package, migrations and entry point; no node_modules."""
    dest = tmp_path / "app"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("chat", "notifications", "webhooks", "migrations"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("run_server.py", "alembic.ini"):
        shutil.copy(ROOT / name, dest / name)
    assert not (dest / "node_modules").exists()
    return dest


def test_page_works_without_node_modules(tmp_path: Path, package_copy: Path) -> None:
    env = server_env(tmp_path)
    url = f"http://127.0.0.1:{env['PORT']}"
    server = Proc([sys.executable, str(package_copy / "run_server.py")], package_copy, env, tmp_path / "s.log")
    try:
        assert server.wait_ready(url).status_code == 200
        page = fetch("GET", url + "/")
        assert page.status_code == 200 and "app.js" in page.text, page.text
        assert 'from "/static/vendor/socket.io.esm.min.js"' in fetch("GET", url + "/static/app.js").text
        client = fetch("GET", url + "/static/vendor/socket.io.esm.min.js")
        assert client.status_code == 200, client.text
        assert client.headers["Content-Type"].startswith("text/javascript")
        assert client.content == VENDOR.read_bytes()
        assert " ERROR " not in server.log()
        browser_connects(url)
    finally:
        server.stop()


def browser_connects(url: str) -> None:
    """Debian's Chromium opens the page and its socket connects (the module import resolved)."""
    from playwright.sync_api import sync_playwright

    from tests.browser_support import CHROMIUM, launch, open_chat

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: run `make browser`"
    with sync_playwright() as p:
        browser = launch(p)
        try:
            chat = open_chat(browser, url, make_token("deploy_user", "Deploy User"))
            assert chat.errors == []
        finally:
            browser.close()


def test_missing_static_asset_fails_readyz_and_logs_error(tmp_path: Path, package_copy: Path) -> None:
    (package_copy / "chat" / "static" / "vendor" / "socket.io.esm.min.js").unlink()
    (package_copy / "chat" / "static" / "backstage-client.js").unlink()
    env = server_env(tmp_path)
    url = f"http://127.0.0.1:{env['PORT']}"
    server = Proc([sys.executable, str(package_copy / "run_server.py")], package_copy, env, tmp_path / "s.log")
    try:
        ready = server.wait_ready(url)
        assert ready.status_code == 503, ready.text
        assert "chat/static/vendor/socket.io.esm.min.js" in ready.json()["problems"]["static"]
        assert "chat/static/backstage-client.js" in ready.json()["problems"]["static"]
        errors = [line for line in server.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "static assets missing" in errors[0], server.log()
    finally:
        server.stop()


# ---------------------------------------------------------------- Procfile


def procfile() -> dict[str, str]:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    entries = dict(line.split(":", 1) for line in lines)
    return {name.strip(): command.strip() for name, command in entries.items()}


def test_procfile_lists_release_web_and_worker() -> None:
    entries = procfile()
    assert entries == {"release": "python run_server.py migrate",
                       "web": "HOST=${HOST:-0.0.0.0} python run_server.py",
                       "worker": "python -m notifications.worker"}
    for command in entries.values():
        shlex.split(command)  # each line is one shell command


def platform_env(tmp_path: Path) -> dict[str, str]:
    """What a platform gives the process: PORT, no HOST; `python` is this interpreter."""
    env = server_env(tmp_path)
    del env["HOST"]
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def test_procfile_release_migrates(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", "-c", procfile()["release"]], cwd=ROOT, env=platform_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "latest migration" in proc.stdout and (tmp_path / "b.db").exists()


def test_procfile_web_listens_on_all_interfaces_on_port(tmp_path: Path) -> None:
    env = platform_env(tmp_path)
    port = int(env["PORT"])
    server = Proc(["bash", "-c", procfile()["web"]], ROOT, env, tmp_path / "web.log")
    try:
        assert server.wait_ready(f"http://127.0.0.1:{port}").status_code == 200
        assert f"ready: listening on http://0.0.0.0:{port}" in server.log(), server.log()
        # 127.0.0.2 reaches a socket bound to 0.0.0.0, not one bound to 127.0.0.1 only.
        with socket.create_connection(("127.0.0.2", port), timeout=5):
            pass
    finally:
        server.stop()


def listen_backlog(port: int) -> int:
    """The accept-queue size of the socket listening on 127.0.0.1:port (ss's Send-Q)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in out.splitlines() if ln.strip()]
    return int(line.split()[2])


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_listen_backlog_sets_the_accept_queue(tmp_path: Path) -> None:
    """LISTEN_BACKLOG reaches listen(2): aiohttp's default of 128 dropped SYNs in reconnect storms."""
    sizes = {}
    for name, extra in (("default", {}), ("set", {"LISTEN_BACKLOG": "77"})):
        env = server_env(tmp_path, **extra)
        port = int(env["PORT"])
        server = Proc([sys.executable, str(ROOT / "run_server.py")], ROOT, env, tmp_path / f"{name}.log")
        try:
            server.wait_ready(f"http://127.0.0.1:{port}")
            sizes[name] = listen_backlog(port)
        finally:
            server.stop()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert sizes == {"default": min(4096, somaxconn), "set": 77}


# ---------------------------------------------------------------- --demo persistence


def demo_start(tmp_path: Path, env: dict[str, str], n: int) -> tuple[Proc, str, str]:
    """Start --demo; return it, Alice's sign-in token and the printed API key."""
    url = f"http://127.0.0.1:{env['PORT']}"
    server = Proc([sys.executable, str(ROOT / "run_server.py"), "--demo"], tmp_path, env, tmp_path / f"demo{n}.log")
    server.wait_ready(url)
    deadline = time.monotonic() + 30
    while "/api/v1/server/notifications" not in server.log():  # the links follow readiness
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    log = server.log()
    token = re.search(r"Alice .*\?token=(\S+)", log)
    key = re.search(r"Server API key \(kept in .*\): (\S+)", log)
    assert token and key, log
    assert f"curl -H 'Authorization: Bearer {key.group(1)}'" in log  # a ready-to-paste server API call
    return server, token.group(1), key.group(1)


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = server_env(tmp_path)
    del env["JWT_SECRET"], env["API_KEYS"]
    yield env


def test_demo_secret_and_api_key_survive_a_restart(tmp_path: Path, demo_env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{demo_env['PORT']}"
    first, token, key = demo_start(tmp_path, demo_env, 1)
    first.stop()
    stored = tmp_path / ".backstage-demo.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert "SQLite outside --demo" not in first.log()
    second, _, key_again = demo_start(tmp_path, demo_env, 2)
    try:
        assert key_again == key
        me = fetch("GET", url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text  # the first start's link still signs in
        assert me.json()["user"]["id"] == "alice"
        sent = fetch("POST", url + "/api/v1/server/notifications", headers={"Authorization": f"Bearer {key}"},
                          json={"user_ids": ["alice"], "type": "demo", "title": "Hello", "body": "From curl"})
        assert sent.status_code == 202, sent.text
        assert key not in second.log().split("Server API key", 1)[0]  # printed once, in the banner
    finally:
        second.stop()


def test_demo_file_is_ignored_by_git() -> None:
    proc = subprocess.run(["git", "check-ignore", "-q", ".backstage-demo.json"], cwd=ROOT)
    assert proc.returncode == 0
