"""Notification feed, devices and the push outbox."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from chat.db import Base, BigId, ExactString, UTCDateTime, utcnow
from chat.leases import LeasedWork

USER_ID = ExactString(64)


class Notification(Base):
    """One row per recipient."""

    __tablename__ = "notifications"
    __table_args__ = (sa.Index("ix_notifications_user_id_id", "user_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(USER_ID)
    type: Mapped[str] = mapped_column(sa.String(64))
    title: Mapped[str] = mapped_column(sa.String(500), default="")
    body: Mapped[str] = mapped_column(sa.Text, default="")
    data: Mapped[str] = mapped_column(sa.Text, default="{}")  # JSON object
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class NotificationRequest(Base):
    """A server-API notification request by idempotency key, with the ids it created."""

    __tablename__ = "notification_requests"

    idempotency_key: Mapped[str] = mapped_column(ExactString(200), primary_key=True)
    notification_ids: Mapped[str] = mapped_column(sa.Text)  # JSON list of strings
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Device(Base):
    __tablename__ = "devices"

    token: Mapped[str] = mapped_column(ExactString(512), primary_key=True)
    user_id: Mapped[str] = mapped_column(USER_ID, index=True)
    platform: Mapped[str] = mapped_column(sa.String(16))  # android | ios | web
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PushOutbox(Base):
    """One push to one device token, written in the transaction of its cause.

    status: pending -> sending (claimed, until lease_until) -> sent | failed | skipped;
    a `sending` row whose lease expired is due again (its worker died).
    """

    __tablename__ = "push_outbox"
    __table_args__ = (sa.Index("ix_push_outbox_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(USER_ID)
    device_token: Mapped[str] = mapped_column(ExactString(512))
    payload: Mapped[str] = mapped_column(sa.Text)  # JSON: {title, body, data, collapse_key, priority}
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PushJob(LeasedWork, Base):
    """One fan-out of pushes to an audience, written in the transaction of its cause (a chat
    message, or a server-API notification to a channel) instead of one outbox row per device.

    The worker expands it after the commit, in batches over the audience ordered by user id
    (chat) or notification id (channel notifications): each batch writes its outbox rows and
    advances `resume_after` in one transaction, so a job resumed by another worker after a crash
    continues exactly where the last committed batch stopped.

    kind: "message" (conversation_id, message_id, sender_id; `audience`: NULL, or the JSON list
    of the user ids the message mentions) | "notification" (`audience`: JSON list of [first,
    last] notification id ranges). status: pending -> expanding (claimed by
    `lease_owner` until lease_until) -> done | failed.
    """

    __tablename__ = "push_jobs"
    __table_args__ = (sa.Index("ix_push_jobs_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    conversation_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    message_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    sender_id: Mapped[str | None] = mapped_column(USER_ID, nullable=True)
    audience: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    payload: Mapped[str] = mapped_column(sa.Text)  # JSON, like push_outbox.payload
    resume_after: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    pushes: Mapped[int] = mapped_column(sa.Integer, default=0)  # outbox rows written so far
