"""The webhook outbox table."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from chat.db import Base, BigId, ExactString, UTCDateTime, utcnow
from chat.leases import LeasedWork


class WebhookOutbox(LeasedWork, Base):
    """One event for the backend, written in the transaction of the thing it reports.

    status: pending -> sending (claimed by `lease_owner` until lease_until) -> delivered | failed;
    a `sending` row whose lease expired is due again (its worker died). `body` is the exact JSON
    sent (and signed) on every attempt; `event_id` is its idempotency id. `window_start` is when
    the retry window began (creation, or the last replay).
    """

    __tablename__ = "webhook_outbox"
    __table_args__ = (sa.Index("ix_webhook_outbox_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ExactString(64), unique=True)
    event_type: Mapped[str] = mapped_column(sa.String(64))
    body: Mapped[str] = mapped_column(sa.Text)
    last_status: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
