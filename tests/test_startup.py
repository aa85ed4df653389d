"""What the configuration promises at start-up (SPEC §1): `--demo` accepts pages served from
http://localhost:* and http://127.0.0.1:*; outside `--demo` the server refuses to start without
JWT_SECRET; deployments with different REDIS_PREFIXes on one Redis never see each other.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import socketio

from tests.conftest import MySQLDatabases
from tests.support import ROOT, Api, Client, ServerProcess, free_port

# ---------------------------------------------------------------- Origin checks


async def socket_accepted(url: str, user_id: str, token: str, origin: str) -> bool:
    """Connect with this Origin header: True if the connection is accepted and usable."""
    client = Client(url, token, headers={"Origin": origin})
    try:
        await client.connect()
    except socketio.exceptions.ConnectionError:
        http = getattr(client.sio.eio, "http", None)  # the refused handshake leaves its session open
        if http is not None and not http.closed:
            await http.close()
        return False
    try:
        ack = await client.call("subscribe", {"channel": f"user:{user_id}"})
        assert ack == {"ok": True}, ack
        return True
    finally:
        await client.close()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("demo") / "backstage.db"
    server = ServerProcess(f"sqlite+aiosqlite:///{db}", args=("--demo",))
    yield server
    server.stop()


LOCAL_ORIGINS = ["http://localhost:5173", "http://127.0.0.1:3000", "http://localhost:8080"]
FOREIGN_ORIGINS = ["https://evil.example", "http://evil.example:5173", "http://localhost.evil.example:5173",
                   "http://127.0.0.1.evil.example", "null"]


async def test_demo_accepts_localhost_origins_and_refuses_foreign_ones(demo_server: ServerProcess) -> None:
    token = Api(demo_server.url).user("demo_origin")
    for origin in [*LOCAL_ORIGINS, demo_server.url]:
        assert await socket_accepted(demo_server.url, "demo_origin", token, origin), origin
    for origin in FOREIGN_ORIGINS:
        assert not await socket_accepted(demo_server.url, "demo_origin", token, origin), origin


# ---------------------------------------------------------------- JWT_SECRET required


@pytest.mark.parametrize("secret", [None, ""], ids=["unset", "empty"])
def test_refuses_to_start_without_jwt_secret(tmp_path: Path, secret: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "DATABASE_", "REDIS_"))}
    env.update(HOST="127.0.0.1", PORT=str(free_port()), DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/b.db")
    if secret is not None:
        env["JWT_SECRET"] = secret
    proc = subprocess.run([sys.executable, str(ROOT / "run_server.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "JWT_SECRET" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr  # a clear message, not a crash
    assert not (tmp_path / "b.db").exists()  # refused before touching anything


# ---------------------------------------------------------------- REDIS_PREFIX isolation


class Deployment:
    """One server with its own database under its own REDIS_PREFIX, on the shared Redis."""

    def __init__(self, database_url: str, redis_url: str, prefix: str) -> None:
        self.server = ServerProcess(database_url, redis_url, prefix)
        self.api = Api(self.server.url)
        # the same users and room, created in the same order: the same ids in both deployments
        self.tokens = {u: self.api.user(u) for u in ("iso_cre", "iso_pat")}
        self.api.membership("iso_cre", "iso_pat", 500)
        self.room = self.api.room("iso_cre", "Isolated")

    def stop(self) -> None:
        self.api.close()
        self.server.stop()


@pytest.fixture(scope="module")
def two_deployments(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix_root: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Deployment]]:
    tag = secrets.token_hex(3)
    a = Deployment(mysql_databases.new(empty=True), redis_url, f"{redis_prefix_root}-iso-a-{tag}")
    try:
        b = Deployment(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('iso')}/b.db", redis_url,
                       f"{redis_prefix_root}-iso-b-{tag}")
    except Exception:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


def bodies(client: Client) -> list[str]:
    return [m["body"] for m in client.events["message"]]


async def test_two_redis_prefixes_on_one_redis_stay_apart(two_deployments: tuple[Deployment, Deployment]) -> None:
    a, b = two_deployments
    assert a.room == b.room  # same conversation id, same user ids: only the prefix tells them apart
    a_cre = await Client(a.server.url, a.tokens["iso_cre"]).connect()
    a_pat = await Client(a.server.url, a.tokens["iso_pat"]).connect()
    b_cre = await Client(b.server.url, b.tokens["iso_cre"]).connect()
    try:
        assert (await a_cre.call("join", {"conversation_id": a.room}))["ok"]
        assert sorted((await a_pat.call("join", {"conversation_id": a.room}))["online"]) == ["iso_cre", "iso_pat"]
        joined = await b_cre.call("join", {"conversation_id": b.room})
        assert joined["online"] == ["iso_cre"], joined  # A's patron is not online in B

        # a message, a typing indicator and a channel event in A...
        assert (await a_pat.call("send", {"conversation_id": a.room, "body": "only in A",
                                          "client_msg_id": "iso-a-1"}))["ok"]
        await a_pat.call("typing", {"conversation_id": a.room, "typing": True})
        r = a.api.server("POST", "/publish", {"channel": "user:iso_cre", "event": "ping", "data": {"from": "A"}})
        assert r.status_code == 200 and r.json()["delivered_to"] == 1, r.text  # B's socket not counted
        await a_cre.wait_for("message", lambda m: m["body"] == "only in A")
        await a_cre.wait_for("event", lambda e: e["data"] == {"from": "A"})

        # ...then markers in B: once they arrive, anything from A would have arrived before them
        assert (await b_cre.call("send", {"conversation_id": b.room, "body": "marker in B",
                                          "client_msg_id": "iso-b-1"}))["ok"]
        r = b.api.server("POST", "/publish", {"channel": "user:iso_cre", "event": "ping", "data": {"from": "B"}})
        assert r.status_code == 200 and r.json()["delivered_to"] == 1, r.text
        await b_cre.wait_for("message", lambda m: m["body"] == "marker in B")
        await b_cre.wait_for("event", lambda e: e["data"] == {"from": "B"})
        assert bodies(b_cre) == ["marker in B"]
        assert [e["data"] for e in b_cre.events["event"]] == [{"from": "B"}]
        assert b_cre.events["presence"] == [] and b_cre.events["typing"] == []

        # and B's traffic never reached A (A's own marker arrives after B's message was relayed)
        assert (await a_pat.call("send", {"conversation_id": a.room, "body": "marker in A",
                                          "client_msg_id": "iso-a-2"}))["ok"]
        await a_cre.wait_for("message", lambda m: m["body"] == "marker in A")
        assert bodies(a_cre) == ["only in A", "marker in A"]
        assert [e["data"] for e in a_cre.events["event"]] == [{"from": "A"}]
    finally:
        for c in (a_cre, a_pat, b_cre):
            await c.close()


async def test_without_demo_localhost_origins_are_refused(two_deployments: tuple[Deployment, Deployment]) -> None:
    a, _ = two_deployments
    token = a.tokens["iso_cre"]
    for origin in LOCAL_ORIGINS:
        assert not await socket_accepted(a.server.url, "iso_cre", token, origin), origin
    assert await socket_accepted(a.server.url, "iso_cre", token, a.server.url)
