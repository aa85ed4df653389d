"""Uploads never sent are removed after UPLOAD_TTL_S (chat/uploadsweep.py, docs/api.md "Photos"):
rows and blobs of old unused uploads go, claimed and fresh ones stay, a sweep racing a send never
leaves a message naming a removed blob, a failed blob delete is retried, several sweepers share
the work. On MariaDB and SQLite with the local blob directory (the S3 store: tests/test_photos.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chat.attachments import Attachments, claim
from chat.blobs import LocalBlobStore, new_key
from chat.config import ConfigError, Settings
from chat.db import create_engine, session_factory, utcnow
from chat.errors import NotFound
from chat.migrate import upgrade
from chat.uploadsweep import PENDING, UploadSweeper, delete_blobs, retry_delay
from tests.conftest import Cluster
from tests.support import Client, migrated_sqlite, sync_engine

DAY = 24 * 3600.0


@pytest.fixture(params=["sqlite", "mysql"])
async def engine(request: pytest.FixtureRequest, mysql_databases: Any, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = mysql_databases.new() if request.param == "mysql" else f"sqlite+aiosqlite:///{tmp_path / 'sweep.db'}"
    e = create_engine(url)
    await upgrade(e)
    yield e
    await e.dispose()


@pytest.fixture
async def mysql_engine(mysql_databases: Any) -> AsyncIterator[AsyncEngine]:
    e = create_engine(mysql_databases.new())
    await upgrade(e)
    yield e
    await e.dispose()


class Store(LocalBlobStore):
    """The local directory store, with deletes counted and, while `failing`, refused; `on_delete`
    runs before the first delete (to race a send against the sweep at that exact point)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failing = False
        self.deleted: list[str] = []
        self.on_delete: Any = None

    async def delete(self, key: str) -> None:
        if self.on_delete is not None:
            hook, self.on_delete = self.on_delete, None
            await hook()
        if self.failing:
            raise OSError("the store is down")
        self.deleted.append(key)
        await super().delete(key)

    def files(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}


async def add_upload(engine: AsyncEngine, store: Store, owner: str, age_s: float) -> tuple[int, str, str]:
    """An upload the way chat/attachments.py stores one (blobs, then the row), `age_s` old."""
    file_key, thumb_key = new_key("jpg"), new_key("jpg")
    await store.put(file_key, b"\xff\xd8file", "image/jpeg")
    await store.put(thumb_key, b"\xff\xd8thumb", "image/jpeg")
    async with engine.begin() as conn:
        result = await conn.execute(sa.text(
            "INSERT INTO attachments (owner_id, position, content_type, width, height, size, blob_key, "
            "thumb_content_type, thumb_width, thumb_height, thumb_key, created_at) VALUES "
            "(:owner, 0, 'image/jpeg', 8, 8, 9, :file, 'image/jpeg', 8, 8, :thumb, :at)"),
            {"owner": owner, "file": file_key, "thumb": thumb_key,
             "at": (utcnow() - timedelta(seconds=age_s)).replace(tzinfo=None)})
        return int(result.lastrowid), file_key, thumb_key  # type: ignore[attr-defined]


async def claim_for(engine: AsyncEngine, owner: str, aid: int, cmid: str) -> bool:
    """What the writer does in its transaction for a send with this photo."""
    async with engine.begin() as conn:
        return await claim(conn, owner, 1, cmid, [{"id": str(aid)}])


async def attachment_ids(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        return {int(r[0]) for r in await conn.execute(sa.text("SELECT id FROM attachments"))}


async def deletions(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(sa.text(
            "SELECT blob_key, status, attempts, next_attempt_at, last_error FROM blob_deletions ORDER BY blob_key")))


def sweeper(engine: AsyncEngine, store: Store, **kw: Any) -> UploadSweeper:
    return UploadSweeper(session_factory(engine), store, **{"ttl_s": DAY, "interval_s": 600.0, **kw})


async def test_old_unused_uploads_go_with_their_files_claimed_and_fresh_ones_stay(
        engine: AsyncEngine, tmp_path: Path) -> None:
    store = Store(tmp_path / "blobs")
    old = [await add_upload(engine, store, "ann", DAY + 60) for _ in range(3)]
    fresh = await add_upload(engine, store, "ann", DAY - 60)
    sent = await add_upload(engine, store, "ann", 3 * DAY)
    assert await claim_for(engine, "ann", sent[0], "m1")

    result = await sweeper(engine, store, batch=2).sweep()  # two expiry batches, two blob batches
    assert (result.removed, result.blobs_deleted, result.blob_failures) == (3, 6, 0)
    assert await attachment_ids(engine) == {fresh[0], sent[0]}
    assert store.files() == {fresh[1], fresh[2], sent[1], sent[2]}
    assert await deletions(engine) == []
    # A send naming a removed upload: not_found (its check finds no row).
    attachments = Attachments(engine, store, Settings())
    try:
        with pytest.raises(NotFound):
            await attachments.for_send("ann", "m2", [old[0][0]])
    finally:
        await attachments.close()
    assert (await sweeper(engine, store).sweep()).removed == 0  # nothing more to do


async def test_a_send_claiming_while_the_sweep_deletes_blobs_is_refused(engine: AsyncEngine, tmp_path: Path) -> None:
    """The rows are gone (committed) before any blob is touched: a send that comes while the
    sweep deletes the blobs finds no unused upload to claim, and its message is never stored."""
    store = Store(tmp_path / "blobs")
    aid, _, _ = await add_upload(engine, store, "ann", DAY + 60)
    claimed: list[bool] = []

    async def send_now() -> None:
        claimed.append(await asyncio.wait_for(claim_for(engine, "ann", aid, "late"), 20))

    store.on_delete = send_now
    assert (await sweeper(engine, store).sweep()).blobs_deleted == 2
    assert claimed == [False]
    assert await attachment_ids(engine) == set() and store.files() == set()


async def test_a_sweep_skips_an_upload_a_send_is_claiming(mysql_engine: AsyncEngine, tmp_path: Path) -> None:
    """MariaDB: a send's claim holds the row (its transaction not committed yet); the sweep
    neither waits for it nor removes the upload, and the message keeps its photo."""
    store = Store(tmp_path / "blobs")
    aid, file_key, thumb_key = await add_upload(mysql_engine, store, "ann", DAY + 60)
    other, _, _ = await add_upload(mysql_engine, store, "bob", DAY + 60)
    async with mysql_engine.connect() as conn:
        tx = await conn.begin()
        assert await claim(conn, "ann", 1, "m1", [{"id": str(aid)}])
        result = await asyncio.wait_for(sweeper(mysql_engine, store).sweep(), 30)
        assert result.removed == 1  # bob's; ann's is being claimed
        await tx.commit()
    assert await attachment_ids(mysql_engine) == {aid}
    assert store.files() == {file_key, thumb_key}
    assert other not in await attachment_ids(mysql_engine)


async def test_sweep_and_claims_racing_never_leave_a_claimed_upload_without_files(
        mysql_engine: AsyncEngine, tmp_path: Path) -> None:
    """Claims and two sweepers at once on MariaDB: each upload is either claimed, with its row
    and files, or removed, with neither; no blob is deleted twice."""
    store = Store(tmp_path / "blobs")
    uploads = [await add_upload(mysql_engine, store, "ann", DAY + 60) for _ in range(40)]
    outcomes = await asyncio.gather(
        *(claim_for(mysql_engine, "ann", aid, f"m{aid}") for aid, _, _ in uploads),
        sweeper(mysql_engine, store, batch=3).sweep(), sweeper(mysql_engine, store, batch=3).sweep())
    claimed = {aid for (aid, _, _), ok in zip(uploads, outcomes[:40], strict=True) if ok}
    removed = outcomes[40].removed + outcomes[41].removed
    assert len(claimed) + removed == 40
    assert await attachment_ids(mysql_engine) == claimed
    assert store.files() == {k for aid, f, t in uploads if aid in claimed for k in (f, t)}
    assert sorted(store.deleted) == sorted(set(store.deleted)) and len(store.deleted) == 2 * removed


async def test_a_failed_blob_delete_is_retried_by_a_later_sweep(engine: AsyncEngine, tmp_path: Path) -> None:
    store = Store(tmp_path / "blobs")
    aid, file_key, thumb_key = await add_upload(engine, store, "ann", DAY + 60)
    now = utcnow()
    clock: list[datetime] = [now]
    s = sweeper(engine, store, clock=lambda: clock[0])
    store.failing = True
    result = await s.sweep()
    assert (result.removed, result.blobs_deleted, result.blob_failures) == (1, 0, 2)
    assert await attachment_ids(engine) == set()  # the row is gone: nobody can claim it any more
    assert store.files() == {file_key, thumb_key}
    rows = await deletions(engine)
    assert [(r.blob_key, r.status, r.attempts) for r in rows] == sorted([(file_key, PENDING, 1), (thumb_key, PENDING, 1)])
    assert all("the store is down" in r.last_error for r in rows)

    store.failing = False
    assert (await s.sweep()).blobs_deleted == 0  # not due yet: one sweep interval later
    clock[0] = now + timedelta(seconds=retry_delay(1, s.interval_s) + 1)
    result = await s.sweep()
    assert (result.removed, result.blobs_deleted, result.blob_failures) == (0, 2, 0)
    assert store.files() == set() and await deletions(engine) == []


async def test_blob_deletions_of_a_dead_sweeper_are_taken_over(engine: AsyncEngine, tmp_path: Path) -> None:
    """A process that claimed blob deletions and died: another takes them when the lease ends."""
    store = Store(tmp_path / "blobs")
    await add_upload(engine, store, "ann", DAY + 60)
    sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
    hung = asyncio.Event()

    async def die() -> None:
        hung.set()
        await asyncio.Event().wait()

    store.on_delete = die
    s = sweeper(engine, store)
    dead = asyncio.create_task(s.sweep())
    await hung.wait()
    dead.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dead
    assert [r.status for r in await deletions(engine)] == ["leased", "leased"]
    assert (await delete_blobs(sessions, store, "other", limit=10, interval_s=600)).deleted == 0  # leased
    later = utcnow() + timedelta(hours=1)
    done = await delete_blobs(sessions, store, "other", limit=10, interval_s=600, clock=lambda: later)
    assert done.deleted == 2 and store.files() == set() and await deletions(engine) == []


def test_upload_ttl_settings() -> None:
    assert (Settings.from_env({}).upload_ttl_s, Settings.from_env({}).upload_sweep_interval_s) == (DAY, 600.0)
    s = Settings.from_env({"UPLOAD_TTL_S": "3600", "UPLOAD_SWEEP_INTERVAL_S": "60"})
    assert (s.upload_ttl_s, s.upload_sweep_interval_s) == (3600.0, 60.0)
    for name in ("UPLOAD_TTL_S", "UPLOAD_SWEEP_INTERVAL_S"):
        with pytest.raises(ConfigError) as err:
            Settings.from_env({name: "0"})
        assert err.value.problems[0].startswith(name)


# ---------------------------------------------------------------- servers


@pytest.fixture(params=["sqlite", "mysql"])
def sweeping_cluster(request: Any, tmp_path: Path, mysql_databases: Any, redis_url: str,
                     redis_prefix: str) -> Iterator[Cluster]:
    """Servers whose uploads expire almost at once, swept continuously: SQLite (one process) and
    MariaDB + Redis (two processes, sweeping at the same time)."""
    env = {"UPLOAD_TTL_S": "0.05", "UPLOAD_SWEEP_INTERVAL_S": "0.02"}
    if request.param == "sqlite":
        cluster = Cluster(migrated_sqlite(tmp_path / "sweep.db"), None, "unused", 1, env=env)
    else:
        cluster = Cluster(mysql_databases.new(), redis_url, redis_prefix, 2, env=env)
    yield cluster
    cluster.stop()


async def test_servers_sweeping_while_photos_are_sent(sweeping_cluster: Cluster, uid: Any) -> None:
    """Sends race the servers' sweeps: a stored message's photos are all there, a refused send is
    `invalid` or `not_found`, and in the end only the sent uploads and their files remain."""
    from tests.test_photos import encoded, room_with, uploaded

    api = sweeping_cluster.api
    room, _, pat, _ = room_with(api, uid)
    senders = [await Client(s.url, pat).connect() for s in sweeping_cluster.servers]
    sent: dict[str, list[dict[str, Any]]] = {}
    refused: list[str] = []
    try:
        for round_ in range(10):  # 20 uploads: the per-user burst
            ids = [uploaded(api, pat, encoded("JPEG")) for _ in range(2)]
            acks = await asyncio.gather(*(c.call("send", {"conversation_id": room, "client_msg_id": f"r{round_}-{i}",
                                                          "attachments": ids}) for i, c in enumerate(senders)))
            for ack in acks:
                if ack["ok"]:
                    sent[ack["message"]["id"]] = ack["message"]["attachments"]
                    assert [a["id"] for a in ack["message"]["attachments"]] == ids
                else:
                    refused.append(ack["error"]["code"])
    finally:
        for c in senders:
            await c.close()
    assert set(refused) <= {"invalid", "not_found"}, refused
    for photos in sent.values():
        for photo in photos:
            for url in (photo["url"], photo["thumb_url"]):
                assert api.http.get(url).status_code == 200, (photo, url)
    kept = {int(p["id"]) for photos in sent.values() for p in photos}
    db = sync_engine(sweeping_cluster.database_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            with db.connect() as conn:
                ids = {int(r[0]) for r in conn.execute(sa.text("SELECT id FROM attachments"))}
                pending = conn.execute(sa.text("SELECT COUNT(*) FROM blob_deletions")).scalar()
            files = [p for p in Path(sweeping_cluster.blob_dir).rglob("*") if p.is_file()]
            if (ids == kept and not pending and len(files) == 2 * len(kept)) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert ids == kept and pending == 0 and len(files) == 2 * len(kept)
    finally:
        db.dispose()
    metrics = api.http.get("/metrics").text
    assert "backstage_uploads_removed_total" in metrics
