"""Fixtures of the publisher's own tests: one real Backstage server process (SQLite, relay and
presence on the real Redis under a prefix of its own) for the whole run, and a scripted HTTP
proxy in front of it that can lose answers or answer 429/503 itself.

The server is started from this repository (`tests/support.py`'s ServerProcess: run_server.py on
a free port); the publisher itself is imported from `publisher/src` (pytest.ini `pythonpath`).
TEST_REDIS_URL (default redis://127.0.0.1:6379/0) points at Redis.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from tests.support import API_KEY, Api, ServerProcess

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class Backstage:
    url: str
    api_key: str
    api: Api
    redis_url: str
    redis_prefix: str


@pytest.fixture(scope="session")
def backstage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backstage]:
    db: Path = tmp_path_factory.mktemp("publisher-server") / "backstage.db"
    prefix = f"bstest-pub-{secrets.token_hex(4)}"
    server = ServerProcess(f"sqlite+aiosqlite:///{db}", REDIS_URL, prefix)
    api = Api(server.url)
    try:
        yield Backstage(server.url, API_KEY, api, REDIS_URL, prefix)
    finally:
        api.close()
        server.stop()
        r = redis_sync.Redis.from_url(REDIS_URL)
        try:
            for key in r.scan_iter(match=f"{prefix}*", count=1000):
                r.delete(key)
        finally:
            r.close()


@pytest.fixture
def uid() -> Any:
    """uid("fan") -> "fan_3f9a1c": ids unique to one test (the server is shared by the run)."""
    suffix = secrets.token_hex(3)
    return lambda name: f"{name}_{suffix}"


class ScriptedProxy:
    """A tiny HTTP proxy in a thread in front of `upstream`. Request n (0-based) is answered by
    `script[n]` when there is one, else forwarded:

    - `(status, headers, body)`: answered by the proxy, the server is never asked;
    - `"lost"`: forwarded, then the answer is replaced by a bare 500, as if lost on the way back.

    Records every request's JSON body and arrival time (time.monotonic, and time.time)."""

    def __init__(self, upstream: str, script: list[Any]) -> None:
        self.upstream, self.script = upstream, script
        self.bodies: list[Any] = []
        self.times: list[float] = []
        self.wall_times: list[float] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                n = len(proxy.bodies)
                proxy.bodies.append(json.loads(raw) if raw else None)
                proxy.times.append(time.monotonic())
                proxy.wall_times.append(time.time())
                step = proxy.script[n] if n < len(proxy.script) else None
                if isinstance(step, tuple):
                    status, headers, body = step
                    self._answer(status, body, headers)
                    return
                r = httpx.request(self.command, proxy.upstream + self.path, content=raw, timeout=15,
                                  headers={"Authorization": self.headers["Authorization"],
                                           "Content-Type": "application/json"})
                if step == "lost":
                    self._answer(500, b"upstream answer lost", {})
                else:
                    self._answer(r.status_code, r.content, {})

            do_GET = do_POST
            do_DELETE = do_POST
            do_PUT = do_POST

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(backstage: Backstage) -> Iterator[Any]:
    """proxy(script) -> a ScriptedProxy in front of the run's server (closed after the test)."""
    made: list[ScriptedProxy] = []

    def make(script: list[Any]) -> ScriptedProxy:
        p = ScriptedProxy(backstage.url, script)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def error_answer(status: int, code: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A scripted answer in the server's error shape."""
    body = json.dumps({"error": {"code": code, "message": "scripted"}}).encode()
    return status, headers or {}, body


@pytest.fixture
def answer() -> Any:
    return error_answer
