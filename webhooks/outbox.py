"""Webhook outbox storage: write in the cause's transaction, claim with a lease, record outcomes.

`record`/`record_many` run in the caller's transaction (an AsyncSession or AsyncConnection) and
never commit: the event exists if and only if the thing it reports was committed. The worker's
functions (`claim_due`, `finish`) open and commit their own short transactions, with no network
I/O inside.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from chat import leases
from chat.db import utcnow
from webhooks.models import WebhookOutbox

PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"
STATUSES = (PENDING, SENDING, DELIVERED, FAILED)
LAST_ERROR_CHARS = 500

OUTBOX = cast(sa.Table, WebhookOutbox.__table__)


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex


def _row(event_type: str, data: Any, now: datetime) -> dict[str, Any]:
    event_id = new_event_id()
    body = orjson.dumps({"id": event_id, "type": event_type, "created_at": iso(now), "data": data}).decode()
    return {"event_id": event_id, "event_type": event_type, "body": body, "status": PENDING, "attempts": 0,
            "next_attempt_at": now, "lease_owner": None, "lease_until": None, "last_status": None,
            "last_error": None, "window_start": now, "delivered_at": None, "created_at": now, "updated_at": now}


_BULK_INSERT = ("INSERT INTO webhook_outbox (event_id, event_type, body, status, attempts, next_attempt_at, "
                "window_start, created_at, updated_at) VALUES ")
_BULK_SQL = {"sqlite": _BULK_INSERT + "(?, ?, ?, ?, ?, ?, ?, ?, ?)",  # the drivers' parameter styles
             "mysql": _BULK_INSERT + "(%s, %s, %s, %s, %s, %s, %s, %s, %s)"}


async def record_many(conn: AsyncConnection | AsyncSession, event_type: str, items: Sequence[Any],
                      enabled: Collection[str]) -> int:
    """One event per item of `items` (its `data`), in ONE multi-row INSERT in the caller's
    transaction; nothing (and no query) when `event_type` is not in `enabled`. Returns the count.

    The send path's group commit calls this once per batch (`message.created`): the rows go to
    the driver as plain tuples (one timestamp for the batch, the nullable columns left NULL),
    without SQLAlchemy's per-row, per-column bind processing, which cost about as much as
    storing the message itself.
    """
    if event_type not in enabled or not items:
        return 0
    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    now = utcnow()
    created = iso(now)
    naive = now.replace(tzinfo=None)  # UTCDateTime's stored form
    sqlite = conn.dialect.name == "sqlite"
    # SQLAlchemy's SQLite DateTime stores this exact text (so comparisons with its binds hold)
    stamp: Any = naive.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else naive
    sql = _BULK_SQL["sqlite" if sqlite else "mysql"]
    rows = []
    for data in items:
        event_id = new_event_id()
        body = orjson.dumps({"id": event_id, "type": event_type, "created_at": created, "data": data}).decode()
        rows.append((event_id, event_type, body, PENDING, 0, stamp, stamp, stamp, stamp))
    await conn.exec_driver_sql(sql, rows)
    return len(items)


async def record(conn: AsyncConnection | AsyncSession, event_type: str, data: Any,
                 enabled: Collection[str]) -> str | None:
    """Write one event to the outbox in the caller's transaction (no commit); returns its id, or
    None when `event_type` is not enabled (WEBHOOK_EVENTS, i.e. `settings.webhook_events`)."""
    if event_type not in enabled:
        return None
    row = _row(event_type, data, utcnow())
    await conn.execute(sa.insert(OUTBOX).values(**row))
    return str(row["event_id"])


# ---------------------------------------------------------------- the worker side


@dataclass(frozen=True)
class ClaimedEvent:
    id: int
    event_id: str
    event_type: str
    body: str
    attempts: int  # including this one
    window_start: datetime
    reclaimed: bool = False  # its previous worker's lease expired (that worker died or hung)


_CLAIM_COLUMNS = (WebhookOutbox.id, WebhookOutbox.event_id, WebhookOutbox.event_type, WebhookOutbox.body,
                  WebhookOutbox.attempts, WebhookOutbox.window_start)


async def claim_due(session_factory: async_sessionmaker[AsyncSession], owner: str, limit: int,
                    lease_seconds: float, now: datetime | None = None) -> list[ClaimedEvent]:
    """Lease up to `limit` due rows (pending and due, or sending with an expired lease) to `owner`
    and commit. MariaDB: FOR UPDATE SKIP LOCKED at READ COMMITTED, so concurrent claimers get
    disjoint rows; SQLite: the transaction is BEGIN IMMEDIATE (exclusive) already."""
    rows, due = await leases.claim(session_factory, WebhookOutbox, _CLAIM_COLUMNS, pending=PENDING, leased=SENDING,
                                   owner=owner, limit=limit, lease_seconds=lease_seconds, now=now or utcnow())
    return [ClaimedEvent(id=r.id, event_id=r.event_id, event_type=r.event_type, body=r.body,
                         attempts=r.attempts + 1, window_start=r.window_start, reclaimed=i >= due)
            for i, r in enumerate(rows)]


@dataclass(frozen=True)
class Outcome:
    row_id: int
    status: str  # DELIVERED, PENDING (retry at `retry_at`) or FAILED
    http_status: int | None
    error: str | None
    retry_at: datetime | None = None


async def finish(session_factory: async_sessionmaker[AsyncSession], owner: str, outcomes: Sequence[Outcome],
                 now: datetime | None = None) -> int:
    """Record attempts' outcomes, each only if `owner` still holds its row (a worker whose lease
    expired writes nothing). Returns the rows updated."""
    if not outcomes:
        return 0
    now = now or utcnow()
    t = OUTBOX
    async with session_factory() as session, session.begin():
        result = await session.execute(
            sa.update(t).where(t.c.id == sa.bindparam("row_id"), t.c.lease_owner == owner, t.c.status == SENDING)
            .values(status=sa.bindparam("new_status"), last_status=sa.bindparam("http_status"),
                    last_error=sa.bindparam("error"), next_attempt_at=sa.bindparam("retry_at"),
                    delivered_at=sa.bindparam("delivered_at"), lease_owner=None, lease_until=None, updated_at=now),
            [{"row_id": o.row_id, "new_status": o.status, "http_status": o.http_status,
              "error": o.error[:LAST_ERROR_CHARS] if o.error else None, "retry_at": o.retry_at or now,
              "delivered_at": now if o.status == DELIVERED else None} for o in outcomes])
        return int(getattr(result, "rowcount", 0) or 0)


# ---------------------------------------------------------------- the server API


def delivery_wire(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "event_id": row.event_id, "event_type": row.event_type, "status": row.status,
            "attempts": row.attempts, "last_status": row.last_status, "last_error": row.last_error,
            "next_attempt_at": iso(row.next_attempt_at) if row.status == PENDING else None,
            "delivered_at": iso(row.delivered_at) if row.delivered_at else None,
            "created_at": iso(row.created_at), "updated_at": iso(row.updated_at)}


async def list_deliveries(session: AsyncSession, status: str | None, before: int | None,
                          limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Newest first, `limit` rows with id < before; (deliveries, has_more)."""
    q = sa.select(WebhookOutbox).order_by(WebhookOutbox.id.desc()).limit(limit + 1)
    if status is not None:
        q = q.where(WebhookOutbox.status == status)
    if before is not None:
        q = q.where(WebhookOutbox.id < before)
    rows = list((await session.execute(q)).scalars().all())
    return [delivery_wire(r) for r in rows[:limit]], len(rows) > limit


class ReplayConflict(Exception):
    """The delivery is pending or being sent: nothing to replay."""


async def replay(session: AsyncSession, row_id: int, now: datetime | None = None) -> dict[str, Any] | None:
    """A failed (or delivered) event back to pending, due now, with a new retry window; the same
    event id and body. None if there is no such delivery; ReplayConflict if it is not finished."""
    now = now or utcnow()
    result = await session.execute(
        sa.update(WebhookOutbox).where(WebhookOutbox.id == row_id, WebhookOutbox.status.in_([FAILED, DELIVERED]))
        .values(status=PENDING, next_attempt_at=now, window_start=now, lease_owner=None, lease_until=None,
                updated_at=now))
    row = (await session.execute(sa.select(WebhookOutbox).where(WebhookOutbox.id == row_id))).scalar_one_or_none()
    if row is None:
        return None
    if int(getattr(result, "rowcount", 0) or 0) != 1:
        raise ReplayConflict(f"delivery {row_id} is {row.status}")
    return delivery_wire(row)


async def purge_finished(session: AsyncSession, older_than: datetime, limit: int = 10_000) -> int:
    """Delete up to `limit` delivered rows last updated before `older_than` (failed rows stay
    until replayed or purged by hand: they are the backend's to look at)."""
    ids = (await session.execute(
        sa.select(WebhookOutbox.id).where(WebhookOutbox.status == DELIVERED, WebhookOutbox.updated_at < older_than)
        .limit(limit))).scalars().all()
    if ids:
        await session.execute(sa.delete(WebhookOutbox).where(WebhookOutbox.id.in_(list(ids))))
    return len(ids)
