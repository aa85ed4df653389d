"""CPU of the connect + join storm's database work, in process (no sockets, no Redis).

    .venv/bin/python bench/joinread_bench.py [--backend mysql,sqlite] [--users 5000] [--rooms 100]
                                             [--in-flight 200] [--repeat 3]

A fresh database (MariaDB: a new `bench_store_*` database, dropped afterwards; SQLite: a
temporary file), migrated and seeded like bench/store_bench.py (users `bench-{i}` named as
their tokens, one room per creator, every user an active patron of one room). Then, through
the real ChatService (in-memory presence, a recording delivery): `--users` sockets `connect_socket`
+ `join` their room, `--in-flight` at once (a first-connect storm: every user unknown to the
process), all disconnect, `--missed` messages per room are stored (straight into the
database), and all connect + join again with `since_seq` (a reconnect storm: users and blocks
known to the process; each join gets the messages it missed, with their reactions and photos).
Reports the process CPU time (`time.process_time`) per connect + join of each storm: the share of the bench's server CPU spent outside the
socket.io layers — the database reads of connect and join (batched: chat/batch.py), access
rules, presence, the join answer.

Runs against whatever `chat` package is first on sys.path: `BACKSTAGE_ROOT=/path/to/checkout`
measures another checkout (e.g. main before a change) with this same script.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("BACKSTAGE_ROOT") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # alembic.ini's prepend_sys_path (the migrations import the checkout's packages)
sys.path.insert(1, str(Path(__file__).resolve().parent))

import store_bench  # noqa: E402  (bench/store_bench.py: the database helpers and the recording delivery)


class Delivery(store_bench.RecordingDelivery):
    """What ChatService asks of chat.delivery.Delivery on connect, join and disconnect."""

    async def enter_conversation(self, *a: Any, **k: Any) -> bool:
        return True  # hears every event (as with a confirmed relay subscription): joins may answer from `recent`

    async def to_conversation_each(self, *a: Any, **k: Any) -> None: ...
    def set_sender_blocks(self, *a: Any, **k: Any) -> None: ...
    def set_recovery_handler(self, *a: Any, **k: Any) -> None: ...


def presence() -> Any:
    """chat.presence.MemoryPresence whose `online_in` does not scan every (conversation, user)
    pair of the process (O(sockets) per join: it would outweigh what is measured here; the
    bench's server uses Redis presence)."""
    from collections import defaultdict

    from chat.presence import MemoryPresence


    class Presence(MemoryPresence):
        def __init__(self) -> None:
            super().__init__()
            self._online: dict[str, set[str]] = defaultdict(set)

        async def join(self, conversation_id: str, user_id: str, sid: str) -> bool:
            self._online[conversation_id].add(user_id)
            return await super().join(conversation_id, user_id, sid)

        async def online_in(self, conversation_id: str) -> list[str]:
            return sorted(self._online[conversation_id])

    return Presence()


async def storm(service: Any, users: list[Any], rooms: list[int], in_flight: int, since: int | None,
                tag: str, expect: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for every user's connect_socket + join, `in_flight` at once."""
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with sem:
            sid = f"{tag}-{i}"
            await service.connect_socket(sid, users[i])
            answer = await service.join(sid, rooms[i], since)
            assert len(answer["messages"]) == expect, answer

    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(users))))
    return time.process_time() - cpu0, time.perf_counter() - wall0


async def missed_messages(engine: Any, rooms: list[int], per_room: int, start: int) -> None:
    """`per_room` messages in every room, straight into the database (seqs start.., last_seq moved
    along): what the reconnect storm's joins with `since_seq` get (and read reactions and photos of)."""
    import sqlalchemy as sa

    from chat.db import utcnow

    now = utcnow().replace(tzinfo=None)
    async with engine.begin() as conn:
        await conn.execute(sa.text(
            "INSERT INTO messages (conversation_id, seq, sender_id, body, client_msg_id, created_at, deleted) "
            "VALUES (:cid, :seq, :sender, :body, :cmid, :now, :deleted)"),
            [{"cid": cid, "seq": seq, "sender": f"bench-creator-{r}", "body": f"m{seq}", "cmid": f"m-{cid}-{seq}",
              "now": now, "deleted": False} for r, cid in enumerate(rooms) for seq in range(start, start + per_room)])
        await conn.execute(sa.text("UPDATE conversations SET last_seq = :last"), {"last": start + per_room - 1})


async def scenario(url: str, n_users: int, n_rooms: int, in_flight: int, repeat: int, missed: int) -> dict[str, Any]:
    from chat import migrate
    from chat.auth import Identity
    from chat.config import Settings
    from chat.db import create_engine, create_read_engine, session_factory
    from chat.service import ChatService

    engine = create_engine(url)
    await migrate.upgrade(engine)
    conv_ids = await store_bench._seed(engine, n_users, n_rooms)
    users = [Identity(f"bench-{i}", f"Bench {i}") for i in range(n_users)]
    rooms = [conv_ids[i % n_rooms] for i in range(n_users)]
    first, again = [], []
    for rep in range(repeat):
        read_engine = create_read_engine(url)
        service = ChatService(session_factory(engine), Delivery(), presence(),  # type: ignore[arg-type]
                              Settings(database_url=url), read_engine=read_engine)
        first.append(await storm(service, users, rooms, in_flight, None, f"a{rep}", rep * missed))
        for i in range(n_users):
            await service.disconnect_socket(f"a{rep}-{i}")
        await missed_messages(engine, conv_ids, missed, 1 + rep * missed)
        again.append(await storm(service, users, rooms, in_flight, rep * missed, f"b{rep}", missed))
        for i in range(n_users):
            await service.disconnect_socket(f"b{rep}-{i}")
        await read_engine.dispose()
    await engine.dispose()

    def ms(runs: list[tuple[float, float]]) -> dict[str, Any]:
        return {"cpu_ms_per_join": round(statistics.median(c for c, _ in runs) * 1000 / n_users, 3),
                "runs_cpu_ms": [round(c * 1000 / n_users, 3) for c, _ in runs],
                "joins_per_s": round(n_users / statistics.median(w for _, w in runs))}

    return {"users": n_users, "rooms": n_rooms, "in_flight": in_flight, "missed": missed, "first": ms(first), "reconnect": ms(again)}


async def run(args: argparse.Namespace) -> None:
    for backend in args.backend.split(","):
        if backend == "mysql":
            name, url = store_bench._new_mysql_database()
            try:
                r = await scenario(url, args.users, args.rooms, args.in_flight, args.repeat, args.missed)
            finally:
                store_bench._drop_mysql_database(name)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                r = await scenario(f"sqlite+aiosqlite:///{tmp}/bench.db", args.users, args.rooms, args.in_flight,
                                   args.repeat, args.missed)
        r["backend"], r["root"] = backend, str(ROOT)
        print(json.dumps(r), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="mysql")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--in-flight", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=1, help="storms on the same database (the first storms after the first find messages)")
    ap.add_argument("--missed", type=int, default=5, help="messages per room sent while the sockets are away")
    asyncio.run(run(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
