"""Server processes forked from a warm parent (the standard library's forkserver).

The suite starts hundreds of `run_server.py` processes; each spent ~1.5-2.5 s of CPU importing
the same libraries (SQLAlchemy, pydantic, aiohttp, socket.io, redis, ...) before it served a
request, most of the suite's CPU on a 2-core host. A forkserver imports those libraries once per
test process; each server is then a fork of it that runs `run_server.main()` with its own
environment, working directory and log file: a separate process with its own PID, signals and
exit code, like `python run_server.py`.

Only third-party libraries are preloaded, never the project's own modules (they read settings
and register metrics when imported), so a server imports and configures the project as a fresh
`python run_server.py` does. Tests of the command line itself (exit codes before start-up, the
Procfile, `migrate`) still start real interpreters.

This module is imported in each forked server: it must stay light (no test helpers).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

# The server's heavy third-party imports (measured with -X importtime on run_server + chat.app).
PRELOAD = [
    "asyncio", "ssl", "uuid", "decimal", "email.utils", "http.cookies", "zoneinfo",
    "sqlalchemy", "sqlalchemy.orm", "sqlalchemy.ext.asyncio", "sqlalchemy.dialects.mysql",
    "sqlalchemy.dialects.mysql.aiomysql", "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.sqlite.aiosqlite", "aiomysql", "pymysql", "aiosqlite",
    "pydantic", "pydantic_settings", "aiohttp", "aiohttp.web", "socketio", "engineio",
    "redis", "redis.asyncio", "hiredis", "jwt", "cryptography", "orjson", "uvloop",
    "prometheus_client", "limits", "limits.aio", "PIL.Image", "PIL.ImageOps", "regex", "dotenv",
    "engineio.async_drivers.aiohttp",
]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def _serve(args: list[str], env: dict[str, str], cwd: str, log_path: str) -> None:
    """In the forked child: become `python run_server.py ARGS` with this environment."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["run_server.py", *args]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import run_server

    sys.exit(run_server.main(args))


class ForkedServer:
    """The part of `subprocess.Popen` the tests use, for a forked server."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self._process = _context.Process(target=_serve, args=(args, env, str(cwd), str(log_path)),
                                         name="run_server", daemon=False)
        # multiprocessing re-imports the parent's __main__ in the child (pytest's, or a script
        # read from stdin, which fails): a server needs none of it, so the child is shown none.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            self._process.start()
        finally:
            sys.modules["__main__"] = main
        self.pid: int = self._process.pid  # type: ignore[assignment]

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("run_server.py", timeout or 0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
