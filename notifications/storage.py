"""All notification-feed, device and idempotency SQL: async functions taking an AsyncSession.

None of them commits; the caller owns the transaction (notifications/service.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from notifications.models import Device, Notification, NotificationRequest

INSERT_CHUNK = 1000  # rows per multi-row INSERT ... RETURNING


# ---------------------------------------------------------------- feed


async def insert_notifications(session: AsyncSession, user_ids: Sequence[str], type_: str, title: str,
                               body: str, data_json: str, now: datetime) -> list[int]:
    """One row per recipient; returns the new ids in the order of `user_ids`."""
    ids: list[int] = []
    for start in range(0, len(user_ids), INSERT_CHUNK):
        chunk = user_ids[start:start + INSERT_CHUNK]
        rows = [{"user_id": u, "type": type_, "title": title, "body": body, "data": data_json,
                 "created_at": now, "read_at": None} for u in chunk]
        result = await session.scalars(
            sa.insert(Notification).returning(Notification.id, sort_by_parameter_order=True), rows)
        ids.extend(result.all())
    return ids


async def list_notifications(session: AsyncSession, user_id: str, *, before_id: int | None, limit: int,
                             unread_only: bool) -> tuple[list[Notification], bool]:
    """The user's notifications newest first (by id), below `before_id`; has_more if more remain."""
    q = sa.select(Notification).where(Notification.user_id == user_id)
    if before_id is not None:
        q = q.where(Notification.id < before_id)
    if unread_only:
        q = q.where(Notification.read_at.is_(None))
    rows = list((await session.scalars(q.order_by(Notification.id.desc()).limit(limit + 1))).all())
    return rows[:limit], len(rows) > limit


async def mark_notifications_read(session: AsyncSession, user_id: str, ids: Sequence[int] | None,
                                  now: datetime) -> int:
    """Set read_at on the user's unread rows (all of them when `ids` is None); returns rows changed.
    Ids of other users' rows are never touched (the user_id condition)."""
    q = sa.update(Notification).where(Notification.user_id == user_id, Notification.read_at.is_(None))
    if ids is not None:
        if not ids:
            return 0
        q = q.where(Notification.id.in_(list(ids)))
    result = await session.execute(q.values(read_at=now))
    return int(getattr(result, "rowcount", 0) or 0)


async def count_unread_notifications(session: AsyncSession, user_id: str) -> int:
    count = await session.scalar(
        sa.select(sa.func.count()).select_from(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None)))
    return int(count or 0)


# ---------------------------------------------------------------- idempotency


async def get_request(session: AsyncSession, idempotency_key: str) -> NotificationRequest | None:
    return await session.get(NotificationRequest, idempotency_key, populate_existing=True)


async def insert_request(session: AsyncSession, idempotency_key: str, notification_ids_json: str,
                         now: datetime) -> None:
    """Raises IntegrityError (at once, via flush) when the key exists; on MySQL a concurrent
    uncommitted insert of the same key blocks here until that transaction ends."""
    await session.execute(sa.insert(NotificationRequest).values(
        idempotency_key=idempotency_key, notification_ids=notification_ids_json, created_at=now))


async def set_request_ids(session: AsyncSession, idempotency_key: str, notification_ids_json: str) -> None:
    await session.execute(sa.update(NotificationRequest)
                          .where(NotificationRequest.idempotency_key == idempotency_key)
                          .values(notification_ids=notification_ids_json))


# ---------------------------------------------------------------- devices


async def users_with_devices(session: AsyncSession, user_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    unique = sorted(set(user_ids))
    for start in range(0, len(unique), INSERT_CHUNK):
        rows = await session.scalars(sa.select(Device.user_id).distinct()
                                     .where(Device.user_id.in_(unique[start:start + INSERT_CHUNK])))
        found.update(rows.all())
    return found


async def get_device(session: AsyncSession, token: str, *, for_update: bool = False) -> Device | None:
    q = sa.select(Device).where(Device.token == token)
    if for_update:
        q = q.with_for_update()
    return (await session.scalars(q)).first()


async def insert_device(session: AsyncSession, token: str, user_id: str, platform: str, now: datetime) -> None:
    await session.execute(sa.insert(Device).values(token=token, user_id=user_id, platform=platform,
                                                   created_at=now, updated_at=now))


async def update_device(session: AsyncSession, token: str, user_id: str, platform: str, now: datetime) -> None:
    await session.execute(sa.update(Device).where(Device.token == token)
                          .values(user_id=user_id, platform=platform, updated_at=now))


async def delete_device(session: AsyncSession, token: str, user_id: str) -> bool:
    """Delete the token only if it belongs to `user_id`; True if a row was deleted."""
    result = await session.execute(sa.delete(Device).where(Device.token == token, Device.user_id == user_id))
    return bool(getattr(result, "rowcount", 0))
