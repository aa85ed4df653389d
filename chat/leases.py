"""Leased claims of durable work rows (push fan-out jobs: notifications/jobs.py; webhook
deliveries: webhooks/outbox.py). A row is claimable when it is pending and due, or when it is
leased and its lease expired (its worker died or hung)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from chat.db import UTCDateTime, utcnow


class LeasedWork:
    """The columns `claim` works on, shared by the leased work tables (push_jobs,
    webhook_outbox, blob_deletions): a row is `pending` until due at next_attempt_at, leased to
    `lease_owner` until lease_until, and keeps its attempts and last error."""

    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


async def claim(session_factory: async_sessionmaker[AsyncSession], model: Any, columns: Sequence[Any], *,
                pending: str, leased: str, owner: str, limit: int, lease_seconds: float,
                now: datetime) -> tuple[list[Any], int]:
    """Lease up to `limit` rows of `model` (columns status, next_attempt_at, lease_owner,
    lease_until, attempts, updated_at) to `owner`, counting one attempt each, and commit. Returns
    the claimed rows (`columns`, attempts as before this claim) and how many of them were due
    (the rest were taken over from an expired lease). MariaDB: FOR UPDATE SKIP LOCKED at READ
    COMMITTED, so concurrent claimers get disjoint rows; SQLite: BEGIN IMMEDIATE already is."""
    async with session_factory() as session:
        mysql = session.bind is not None and session.bind.dialect.name in ("mysql", "mariadb")
        async with session.begin():
            if mysql:
                await session.connection(execution_options={"isolation_level": "READ COMMITTED"})

            async def select(q: Any, n: int) -> list[Any]:
                q = q.limit(n)
                if mysql:
                    q = q.with_for_update(skip_locked=True)
                return list((await session.execute(q)).all())

            rows = await select(sa.select(*columns).where(model.status == pending, model.next_attempt_at <= now)
                                .order_by(model.next_attempt_at), limit)
            due = len(rows)
            if due < limit:
                rows += await select(sa.select(*columns).where(model.status == leased, model.lease_until < now),
                                     limit - due)
            if rows:
                await session.execute(
                    sa.update(model).where(model.id.in_([r.id for r in rows]))
                    .values(status=leased, lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds),
                            attempts=model.attempts + 1, updated_at=now))
    return rows, due
