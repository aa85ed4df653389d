"""The publisher is a distribution of its own: `pip install ./publisher` into a fresh venv without
system site-packages brings httpx and its dependencies only, and a script run there (outside
the repository) publishes to a real server and gets the notification ids back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

from tests.conftest import Cluster
from tests.support import API_KEY, ROOT, Client

# httpx and what httpx 0.2x needs; nothing of the server (orjson, socketio, aiohttp, chat/...)
ALLOWED = {"backstage-publisher", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio",
           "typing-extensions", "exceptiongroup"}

SCRIPT = """
import asyncio, importlib.metadata, importlib.util, json, sys
import backstage_publisher
from backstage_publisher import AsyncPublisher, Publisher, PublishError, RedisPublisher

url, key, user = sys.argv[1:4]
with Publisher(url, key) as pub:
    delivered = pub.publish(f"user:{user}", "from-venv", {"ok": True})
    try:
        pub.publish("nonsense", "e", {})
    except PublishError as err:
        code = err.code

async def main():
    async with AsyncPublisher(url, key) as apub:
        return await apub.notify(user_ids=[user], type="venv", title="From the venv", body="hi")

ids = asyncio.run(main())
try:
    RedisPublisher("redis://127.0.0.1:1/0")
    redis_mode = "available"
except ImportError as err:
    redis_mode = str(err)
print(json.dumps({
    "delivered": delivered, "ids": ids, "code": code, "redis_mode": redis_mode,
    "file": backstage_publisher.__file__, "version": backstage_publisher.__version__,
    "dists": sorted(d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()),
    "server_modules": [m for m in ("chat", "orjson", "socketio", "aiohttp", "redis")
                       if importlib.util.find_spec(m) is not None],
}))
"""


async def test_publisher_installs_and_runs_in_its_own_venv(shared_sqlite: Cluster, tmp_path: Path, uid: Any) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    # the suite's pip installs into the new venv (`--python`): no ensurepip, same indexes and cache
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                              str(ROOT / "publisher")], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    url = shared_sqlite.servers[0].url
    user = uid("venv")
    sock = await Client(url, shared_sqlite.api.user(user)).connect()
    try:
        script = tmp_path / "publish.py"
        script.write_text(SCRIPT)
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
        run = subprocess.run([str(python), "-I", str(script), url, API_KEY, user], cwd=tmp_path, env=clean_env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        out = json.loads(run.stdout)
        assert out["file"].startswith(str(env_dir)) and out["version"]  # the installed copy, not the source tree
        assert set(out["dists"]) <= ALLOWED and {"backstage-publisher", "httpx"} <= set(out["dists"]), out["dists"]
        assert out["server_modules"] == []
        assert out["delivered"] == 1 and out["code"] == "invalid" and len(out["ids"]) == 1
        assert "backstage-publisher[redis]" in out["redis_mode"]
        got = await sock.wait_for("event", lambda e: e["event"] == "from-venv")
        assert got["data"] == {"ok": True}
        note = await sock.wait_for("notification", lambda n: n["id"] == out["ids"][0])
        assert note["title"] == "From the venv"
    finally:
        await sock.close()
