"""Removal of uploads never sent (docs/api.md "Photos"): an upload that no send claimed within
UPLOAD_TTL_S is removed, its row from the database and its two blobs (file and thumbnail) from
the store, by a sweep every UPLOAD_SWEEP_INTERVAL_S on every server process (a task on the
server's loop: short transactions and a few blob deletes).

Two steps, so that no row ever names a removed blob and no blob is forgotten:

1. `expire_unused`: one short transaction per batch locks up to `limit` unused rows older than
   the cutoff (MariaDB: SELECT ... FOR UPDATE SKIP LOCKED at READ COMMITTED, so sweeps of
   several processes take disjoint rows and never wait for a send; SQLite: BEGIN IMMEDIATE
   already serialises), deletes them and writes their blob keys to `blob_deletions`. A send's
   claim (chat/attachments.py `claim`, in the writer's transaction) is an UPDATE conditional on
   the row being unused, so whichever commits first wins: a send that loses gets `invalid`
   (its claim found the row gone) or `not_found` (its check did); a sweep that loses skips the
   row (locked by the send, or no longer unused). No blob is touched while a row names it.
2. `delete_blobs`: `blob_deletions` rows are leased (chat/leases.py: several processes share
   the work, a dead process's rows return when the lease ends), their blobs deleted (deletes
   are idempotent) and the rows removed. A failed delete puts its row back to pending, due
   again one sweep interval later (doubling up to RETRY_CAP_S): retried by a later sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat import leases, metrics, tasks
from chat.blobs import BlobStore
from chat.db import utcnow
from chat.models import Attachment, BlobDeletion
from chat.retry import retry_transaction
from chat.transport_errors import as_chat_error
from chat.unavailable import cause_of

log = logging.getLogger(__name__)

PENDING, LEASED = "pending", "leased"
BATCH = 500  # uploads per expiry transaction; blob deletions per claim
LEASE_S = 300.0  # a claimed blob deletion returns to the pool after this (its process died)
RETRY_CAP_S = 6 * 3600.0
DELETE_CONCURRENCY = 8  # blob deletes in flight at once
_att = cast(sa.Table, Attachment.__table__)
_deletions = cast(sa.Table, BlobDeletion.__table__)


def _is_mysql(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name in ("mysql", "mariadb")


async def expire_unused(sessions: async_sessionmaker[AsyncSession], older_than: datetime, limit: int,
                        now: datetime) -> int:
    """Delete up to `limit` unused uploads created before `older_than` and record their blobs
    in `blob_deletions`, in one transaction; how many uploads were removed."""
    async with sessions() as session:
        mysql = _is_mysql(session)
        async with session.begin():
            if mysql:
                await session.connection(execution_options={"isolation_level": "READ COMMITTED"})
            query = (sa.select(_att.c.id, _att.c.blob_key, _att.c.thumb_key)
                     .where(_att.c.client_msg_id.is_(None), _att.c.created_at < older_than)
                     .order_by(_att.c.created_at).limit(limit))
            if mysql:
                query = query.with_for_update(skip_locked=True)
            rows = (await session.execute(query)).all()
            if not rows:
                return 0
            result = await session.execute(sa.delete(_att).where(
                _att.c.id.in_([r.id for r in rows]), _att.c.client_msg_id.is_(None)))
            if cast(Any, result).rowcount != len(rows):
                # Cannot happen (the rows are locked, or the transaction is SQLite's only writer):
                # undo rather than record blobs of rows that may still be there.
                raise RuntimeError("unused uploads changed under the sweep's lock")
            await session.execute(sa.insert(_deletions), [
                {"blob_key": key, "status": PENDING, "attempts": 0, "next_attempt_at": now,
                 "created_at": now, "updated_at": now}
                for r in rows for key in (r.blob_key, r.thumb_key)])
    return len(rows)


@dataclass(frozen=True)
class BlobsDone:
    deleted: int
    failed: int
    first_error: str | None = None


def retry_delay(attempts: int, interval_s: float) -> float:
    """Seconds until a failed delete is due again: one sweep interval, doubling per attempt."""
    return float(min(RETRY_CAP_S, interval_s * 2.0 ** max(0, attempts - 1)))


async def delete_blobs(sessions: async_sessionmaker[AsyncSession], blobs: BlobStore, owner: str, *,
                       limit: int, interval_s: float, clock: Callable[[], datetime] = utcnow,
                       lease_s: float = LEASE_S) -> BlobsDone:
    """Lease up to `limit` due blob deletions, delete the blobs, then remove the rows of those
    deleted and put the others back (due again after `retry_delay`)."""
    rows, _ = await leases.claim(
        sessions, BlobDeletion, (BlobDeletion.id, BlobDeletion.blob_key, BlobDeletion.attempts),
        pending=PENDING, leased=LEASED, owner=owner, limit=limit, lease_seconds=lease_s, now=clock())
    if not rows:
        return BlobsDone(0, 0)
    slots = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def one(key: str) -> str | None:
        async with slots:
            try:
                await blobs.delete(key)
                return None
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"[:500]

    errors = await asyncio.gather(*(one(r.blob_key) for r in rows))
    deleted = [r.id for r, error in zip(rows, errors, strict=True) if error is None]
    failed = [(r, error) for r, error in zip(rows, errors, strict=True) if error is not None]

    async def record() -> None:
        now = clock()
        async with sessions() as session, session.begin():
            if deleted:
                await session.execute(sa.delete(_deletions).where(
                    _deletions.c.id.in_(deleted), _deletions.c.lease_owner == owner))
            for row, error in failed:  # `attempts` counts this one already (the claim did)
                await session.execute(sa.update(_deletions).where(
                    _deletions.c.id == row.id, _deletions.c.lease_owner == owner).values(
                    status=PENDING, lease_owner=None, lease_until=None, last_error=error, updated_at=now,
                    next_attempt_at=now + timedelta(seconds=retry_delay(row.attempts + 1, interval_s))))

    # Not recorded (the database failed): the rows return when the lease ends; deleting again is harmless.
    await retry_transaction(record, attempts=3)
    return BlobsDone(len(deleted), len(failed), failed[0][1] if failed else None)


async def pending_deletions(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int((await session.execute(sa.select(sa.func.count()).select_from(_deletions))).scalar_one())


@dataclass(frozen=True)
class SweepResult:
    removed: int  # uploads (rows)
    blobs_deleted: int
    blob_failures: int


class UploadSweeper:
    """Runs `sweep` every `interval_s` (the first one after a random part of it, so processes
    started together spread out) until stop(). Several processes may sweep at once."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], blobs: BlobStore, *, ttl_s: float,
                 interval_s: float, batch: int = BATCH, clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self.ttl_s, self.interval_s, self.batch = ttl_s, interval_s, batch
        self._clock = clock
        self._owner = f"uploads-{uuid.uuid4().hex[:16]}"
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="upload-sweeper")
        return self._task

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop after the batch in flight (up to `timeout`, then cancel it: a cancelled expiry
        transaction rolls back; leased blob deletions return when their lease ends)."""
        self._stopping.set()
        await tasks.finish(self._task, timeout)

    async def run(self) -> None:
        """Sweep until stop(). Never raises: a failed sweep is logged and the next one tries again."""
        delay = random.uniform(0, self.interval_s)
        while not await self._stopped_within(delay):
            try:
                await self.sweep()
            except Exception as exc:
                if as_chat_error(exc).code == "unavailable":
                    log.warning("upload sweep failed (%s); retrying in %g s", cause_of(exc)[1], self.interval_s)
                else:
                    log.error("upload sweep failed; retrying in %g s", self.interval_s, exc_info=exc)
            delay = self.interval_s

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def sweep(self) -> SweepResult:
        """Remove the uploads unused for ttl_s, then delete due blobs; stops early on stop() and
        leaves the blob step after a batch with failures (the store is likely down)."""
        now = self._clock()
        cutoff = now - timedelta(seconds=self.ttl_s)
        removed = 0
        while not self._stopping.is_set():
            n = await retry_transaction(lambda: expire_unused(self._sessions, cutoff, self.batch, now), attempts=3)
            removed += n
            metrics.UPLOADS_REMOVED.inc(n)
            if n < self.batch:
                break
        deleted = failed = 0
        first_error: str | None = None
        while not self._stopping.is_set():
            done = await delete_blobs(self._sessions, self._blobs, self._owner, limit=self.batch,
                                      interval_s=self.interval_s, clock=self._clock)
            deleted += done.deleted
            failed += done.failed
            first_error = first_error or done.first_error
            metrics.UPLOAD_BLOBS_DELETED.inc(done.deleted)
            metrics.UPLOAD_BLOB_DELETE_FAILURES.inc(done.failed)
            if done.failed or done.deleted < self.batch:
                break
        metrics.UPLOAD_BLOB_DELETIONS_PENDING.set(await pending_deletions(self._sessions))
        if removed or deleted:
            log.info("removed %d uploads unused for %g s; deleted %d blobs", removed, self.ttl_s, deleted)
        if failed:
            log.warning("could not delete %d blobs of removed uploads (%s); a later sweep retries them",
                        failed, first_error)
        return SweepResult(removed, deleted, failed)
