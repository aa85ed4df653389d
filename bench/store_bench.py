"""Messages stored per second through the real ChatService, in process (no sockets, no Redis).

    .venv/bin/python bench/store_bench.py [--backend mysql,sqlite] [--senders 500] [--per-sender 40]

Each scenario gets a fresh database (MariaDB: a new `bench_store_*` database on MYSQL_ADMIN_URL,
dropped afterwards; SQLite: a file in a temporary directory), migrated, with one creator and
room per conversation and every sender an active patron. Every sender is a "socket"
(`connect_socket` + `join`, like a client) that sends its messages one after the other, each
awaiting its ack (closed loop, as `async_handlers=False` makes a real socket do): `--senders`
of them at once, spread round-robin over `--conversations` rooms. Scenarios: 500 senders over
100 conversations, and 500 senders in one conversation.

Reports msgs/s (messages acked / wall time of the sending phase) and the p50/p99 of the send
latency (call to ack), then checks what was stored: every conversation's seqs are exactly
1..n, every (sender, client_msg_id) is stored once, every ack carried its stored seq, and the
messages reached `Delivery.to_conversations` in seq order per conversation.

Runs against whatever `chat` package is first on sys.path: `BACKSTAGE_ROOT=/path/to/checkout`
measures another checkout (e.g. main before the change) with this same script.
MariaDB's `innodb_flush_log_at_trx_commit` is printed (1 = every commit is flushed to disk).
Wrap in `flock /tmp/backstage-bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("BACKSTAGE_ROOT") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

MYSQL_ADMIN_URL = os.environ.get("MYSQL_ADMIN_URL", "mysql+pymysql://root@127.0.0.1:3306/")


class RecordingDelivery:
    """chat.delivery.Delivery's interface, recording the messages handed to it (no sockets)."""

    def __init__(self) -> None:
        from chat.recent import RecentMessages
        self.messages: dict[int, list[int]] = defaultdict(list)
        self.recent = RecentMessages()

    async def to_conversation(self, conversation_id: Any, event: str, data: Any, skip_sid: str | None = None) -> None:
        if event == "message":
            self.messages[int(conversation_id)].append(int(data["seq"]))

    def to_conversations(self, event: str, items: list[tuple[Any, Any]]) -> Any:
        for conversation_id, data in items:
            if event == "message":
                self.messages[int(conversation_id)].append(int(data["seq"]))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def to_user(self, *a: Any, **k: Any) -> None: ...
    async def to_channel(self, *a: Any, **k: Any) -> None: ...
    async def to_socket(self, *a: Any, **k: Any) -> None: ...
    async def enter_conversation(self, *a: Any, **k: Any) -> None: ...
    async def leave_conversation(self, *a: Any, **k: Any) -> None: ...
    async def enter_channel(self, *a: Any, **k: Any) -> None: ...
    async def leave_channel(self, *a: Any, **k: Any) -> None: ...
    async def broadcast_control(self, *a: Any, **k: Any) -> None: ...

    def set_control_handler(self, handler: Any) -> None: ...


def _new_mysql_database() -> tuple[str, str]:
    import pymysql

    u = make_url(MYSQL_ADMIN_URL)
    name = f"bench_store_{secrets.token_hex(4)}"
    conn = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                           password=u.password or "", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()
    return name, u.set(drivername="mysql+aiomysql", database=name).render_as_string(hide_password=False)


def _drop_mysql_database(name: str) -> None:
    import pymysql

    u = make_url(MYSQL_ADMIN_URL)
    conn = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                           password=u.password or "", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


async def _seed(engine: Any, senders: int, conversations: int) -> list[int]:
    from chat.db import utcnow

    now = utcnow()
    md = sa.MetaData()
    async with engine.begin() as conn:
        await conn.run_sync(md.reflect, only=["users", "memberships", "conversations"])
        users, memberships, convs = md.tables["users"], md.tables["memberships"], md.tables["conversations"]
        await conn.execute(sa.insert(users), [
            {"id": f"bench-creator-{r}", "name": f"Creator {r}", "created_at": now, "updated_at": now}
            for r in range(conversations)] + [
            {"id": f"bench-{i}", "name": f"Bench {i}", "created_at": now, "updated_at": now} for i in range(senders)])
        await conn.execute(sa.insert(convs), [
            {"kind": "room", "creator_id": f"bench-creator-{r}", "name": f"Room {r}", "min_tier_cents": 0,
             "post_policy": "everyone", "last_seq": 0, "last_activity_at": now, "created_at": now}
            for r in range(conversations)])
        await conn.execute(sa.insert(memberships), [
            {"creator_id": f"bench-creator-{r}", "patron_id": f"bench-{i}", "tier_cents": 100,
             "status": "active", "updated_at": now}
            for i in range(senders) for r in ([i % conversations])])
        ids = [int(x) for x in (await conn.execute(sa.select(convs.c.id).order_by(convs.c.id))).scalars()]
    return ids


async def scenario(url: str, senders: int, conversations: int, per_sender: int, via_socket: bool) -> dict[str, Any]:
    from chat import migrate
    from chat.auth import Identity
    from chat.config import Settings
    from chat.db import create_engine, session_factory
    from chat.presence import MemoryPresence
    from chat.service import ChatService

    engine = create_engine(url)
    await migrate.upgrade(engine)
    conv_ids = await _seed(engine, senders, conversations)
    delivery = RecordingDelivery()
    service = ChatService(session_factory(engine), delivery, MemoryPresence(), Settings(database_url=url))  # type: ignore[arg-type]
    takes_sid = "sid" in inspect.signature(service.send_message).parameters

    users = [Identity(f"bench-{i}", f"Bench {i}") for i in range(senders)]
    room_of = [conv_ids[i % conversations] for i in range(senders)]
    for i, user in enumerate(users):
        await service.connect_socket(f"sid-{i}", user)
        await service.join(f"sid-{i}", room_of[i], None)

    latencies: list[float] = []
    acks: dict[tuple[str, str], int] = {}
    failures: list[str] = []

    async def sender(i: int) -> None:
        user, cid = users[i], room_of[i]
        kw = {"sid": f"sid-{i}"} if (via_socket and takes_sid) else {}
        for k in range(per_sender):
            cmid = f"m-{i}-{k}"
            t0 = time.perf_counter()
            try:
                result = await service.send_message(user, cid, f"message {k} from {i}", cmid, **kw)
            except Exception as exc:  # counted, not retried: a benchmark shows failures
                failures.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - t0)
            acks[(user.user_id, cmid)] = int(result["message"]["seq"])

    gc.collect()
    gc.freeze()
    batches_before = getattr(getattr(service, "writer", None), "batches", 0)
    started = time.perf_counter()
    await asyncio.gather(*[sender(i) for i in range(senders)])
    elapsed = time.perf_counter() - started
    writer = getattr(service, "writer", None)
    if writer is not None:
        await writer.close()
    batches = getattr(writer, "batches", 0) - batches_before

    problems = await _check(engine, conv_ids, acks, delivery, senders * per_sender)
    await engine.dispose()
    latencies.sort()
    n = len(latencies)
    return {
        "senders": senders, "conversations": conversations, "messages": n,
        "msgs_per_s": round(n / elapsed, 1), "seconds": round(elapsed, 2),
        "p50_ms": round(latencies[n // 2] * 1000, 2) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if n else None,
        "transactions": batches or None, "failures": len(failures),
        "path": "socket (joined)" if via_socket and takes_sid else "checked",
        "check": "ok" if not problems else problems[:5],
    }


async def _check(engine: Any, conv_ids: list[int], acks: dict[tuple[str, str], int], delivery: RecordingDelivery,
                 expected: int) -> list[str]:
    problems: list[str] = []
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text(
            "SELECT conversation_id, seq, sender_id, client_msg_id FROM messages ORDER BY conversation_id, seq"))).all()
        lasts = dict((await conn.execute(sa.text("SELECT id, last_seq FROM conversations"))).all())
    if len(rows) != expected:
        problems.append(f"{len(rows)} messages stored, {expected} sent")
    by_conv: dict[int, list[int]] = defaultdict(list)
    for cid, seq, _, _ in rows:
        by_conv[int(cid)].append(int(seq))
    for cid in conv_ids:
        seqs = by_conv.get(cid, [])
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"conversation {cid}: seqs not 1..n")
        if int(lasts[cid]) != len(seqs):
            problems.append(f"conversation {cid}: last_seq {lasts[cid]} for {len(seqs)} messages")
        delivered = delivery.messages.get(cid, [])
        if delivered != sorted(delivered) or sorted(delivered) != seqs:
            problems.append(f"conversation {cid}: delivered out of seq order or not exactly once")
    keys = {(s, c) for _, _, s, c in rows}
    if len(keys) != len(rows):
        problems.append("a (sender, client_msg_id) stored twice")
    stored = {(s, c): int(seq) for _, seq, s, c in rows}
    if any(stored.get(k) != seq for k, seq in acks.items()):
        problems.append("an ack's seq differs from the stored one")
    return problems


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    shapes = [(args.senders, args.conversations), (args.senders, 1)]
    for backend in args.backend.split(","):
        for senders, conversations in shapes:
            if backend == "mysql":
                name, url = _new_mysql_database()
                try:
                    r = await scenario(url, senders, conversations, args.per_sender, not args.checked)
                finally:
                    _drop_mysql_database(name)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    url = f"sqlite+aiosqlite:///{tmp}/bench.db"
                    r = await scenario(url, senders, conversations, args.per_sender, not args.checked)
            r["backend"] = backend
            print(json.dumps(r), flush=True)
            results.append(r)
    return results


def mysql_flush_setting() -> str:
    import pymysql

    u = make_url(MYSQL_ADMIN_URL)
    conn = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                           password=u.password or "")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@innodb_flush_log_at_trx_commit, @@version, @@sync_binlog, @@log_bin")
            flush, version, sync_binlog, log_bin = cur.fetchone()  # type: ignore[misc]
    finally:
        conn.close()
    return f"MariaDB {version}: innodb_flush_log_at_trx_commit={flush} sync_binlog={sync_binlog} log_bin={log_bin}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="mysql,sqlite")
    p.add_argument("--senders", type=int, default=500)
    p.add_argument("--conversations", type=int, default=100)
    p.add_argument("--per-sender", type=int, default=40, help="messages each sender sends, one after the other")
    p.add_argument("--checked", action="store_true", help="send without a socket id: the full database check")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True,
                   help="run on uvloop, as run_server.py does")
    args = p.parse_args()
    print(f"code under test: {ROOT} ({os.popen(f'git -C {ROOT} rev-parse --short HEAD 2>/dev/null').read().strip()})")
    if "mysql" in args.backend:
        print(mysql_flush_setting())
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    results = asyncio.run(run(args))
    return 0 if all(r["check"] == "ok" and not r["failures"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
