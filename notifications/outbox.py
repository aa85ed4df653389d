"""Push outbox storage: enqueue in the cause's transaction, claim with a lease, record outcomes.

Functions take an AsyncSession and never commit, except `claim_due` and `record_outcomes_commit`,
which open and commit their own short transactions (no network I/O inside).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.db import utcnow
from notifications.models import Device, PushOutbox

PENDING, SENDING, SENT, FAILED, SKIPPED = "pending", "sending", "sent", "failed", "skipped"

# FCM rejects messages whose payload (notification + data) exceeds 4096 bytes; keep a margin
# for the keys and escaping FCM counts differently from us.
FCM_PAYLOAD_LIMIT = 4096
PAYLOAD_BUDGET = 3800
MAX_TITLE_CHARS = 200
ELLIPSIS = "\u2026"
LAST_ERROR_CHARS = 500


@dataclass(frozen=True)
class PushPayload:
    """What one push shows. `data` values are strings (FCM requires it)."""

    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)
    collapse_key: str | None = None
    high_priority: bool = True

    def to_json(self) -> str:
        return json.dumps(
            {
                "title": self.title,
                "body": self.body,
                "data": self.data,
                "collapse_key": self.collapse_key,
                "priority": "high" if self.high_priority else "normal",
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str) -> PushPayload:
        d = json.loads(raw)
        return cls(
            title=str(d.get("title") or ""),
            body=str(d.get("body") or ""),
            data={str(k): str(v) for k, v in (d.get("data") or {}).items()},
            collapse_key=d.get("collapse_key"),
            high_priority=d.get("priority", "high") == "high",
        )


def _payload_size(title: str, body: str, data: dict[str, str]) -> int:
    doc = {"notification": {"title": title, "body": body}, "data": data}
    return len(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())


def fit_payload(payload: PushPayload) -> PushPayload:
    """Truncate the title, then the body (ending with an ellipsis), so the FCM message fits in 4 KB."""
    title = payload.title
    if len(title) > MAX_TITLE_CHARS:
        title = title[: MAX_TITLE_CHARS - 1] + ELLIPSIS
    data = {str(k): str(v) for k, v in payload.data.items()}
    body = payload.body
    if _payload_size(title, body, data) > PAYLOAD_BUDGET:
        # longest prefix that fits (JSON escaping makes bytes per character vary): binary search
        lo, hi = 0, len(body)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _payload_size(title, body[:mid] + ELLIPSIS, data) <= PAYLOAD_BUDGET:
                lo = mid
            else:
                hi = mid - 1
        body = body[:lo] + ELLIPSIS if lo else ""
    if title == payload.title and body == payload.body and data == payload.data:
        return payload
    return PushPayload(title, body, data, payload.collapse_key, payload.high_priority)


async def enqueue_pushes(
    session: AsyncSession, user_ids: Sequence[str], payload: PushPayload, *, now: datetime | None = None
) -> int:
    """Insert one pending outbox row per device of `user_ids`; returns the row count.

    Runs in the caller's transaction (the message or notification insert); the caller commits and
    then wakes the worker (`PushWorker.wake()` or `notifications.worker.publish_wakeup`).
    """
    users = sorted(set(user_ids))
    if not users:
        return 0
    tokens = (
        await session.execute(sa.select(Device.user_id, Device.token).where(Device.user_id.in_(users)))
    ).all()
    if not tokens:
        return 0
    now = now or utcnow()
    raw = fit_payload(payload).to_json()
    await session.execute(
        sa.insert(PushOutbox),
        [
            {
                "user_id": user_id,
                "device_token": token,
                "payload": raw,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for user_id, token in tokens
        ],
    )
    return len(tokens)


@dataclass(frozen=True)
class ClaimedPush:
    """An outbox row leased to one worker until `lease_until`. `attempts` includes this attempt."""

    id: int
    user_id: str
    device_token: str
    payload: PushPayload
    attempts: int
    created_at: datetime
    lease_until: datetime


_CLAIM_COLUMNS = (
    PushOutbox.id,
    PushOutbox.user_id,
    PushOutbox.device_token,
    PushOutbox.payload,
    PushOutbox.attempts,
    PushOutbox.created_at,
)


async def claim_due(
    session_factory: async_sessionmaker[AsyncSession],
    limit: int,
    lease_seconds: float,
    now: datetime | None = None,
) -> list[ClaimedPush]:
    """Lease up to `limit` due rows (pending and due, or sending with an expired lease) and commit.

    MySQL/MariaDB: `FOR UPDATE SKIP LOCKED` at READ COMMITTED (no gap locks), so concurrent
    claimers on several processes get disjoint rows. SQLite: the engine begins with BEGIN
    IMMEDIATE, so the whole claim transaction is already exclusive.

    Rows whose device was deleted (or now belongs to another user) are marked failed here and
    not returned: a push is never sent to a token its user no longer owns.
    """
    now = now or utcnow()
    lease_until = now + timedelta(seconds=lease_seconds)
    async with session_factory() as session:
        dialect = session.bind.dialect.name if session.bind is not None else ""
        mysql = dialect in ("mysql", "mariadb")
        async with session.begin():
            if mysql:  # first statement of the transaction: sets its isolation level
                await session.connection(execution_options={"isolation_level": "READ COMMITTED"})
            pending_q = (
                sa.select(*_CLAIM_COLUMNS)
                .where(PushOutbox.status == PENDING, PushOutbox.next_attempt_at <= now)
                .order_by(PushOutbox.next_attempt_at)
                .limit(limit)
            )
            if mysql:
                pending_q = pending_q.with_for_update(skip_locked=True)
            rows = list((await session.execute(pending_q)).all())
            if len(rows) < limit:
                expired_q = (
                    sa.select(*_CLAIM_COLUMNS)
                    .where(PushOutbox.status == SENDING, PushOutbox.lease_until < now)
                    .limit(limit - len(rows))
                )
                if mysql:
                    expired_q = expired_q.with_for_update(skip_locked=True)
                rows.extend((await session.execute(expired_q)).all())
            if not rows:
                return []
            tokens = sorted({r.device_token for r in rows})
            owners = dict(
                (await session.execute(sa.select(Device.token, Device.user_id).where(Device.token.in_(tokens)))).all()
            )
            live = [r for r in rows if owners.get(r.device_token) == r.user_id]
            gone = [r.id for r in rows if owners.get(r.device_token) != r.user_id]
            if gone:
                await session.execute(
                    sa.update(PushOutbox)
                    .where(PushOutbox.id.in_(gone))
                    .values(status=FAILED, lease_until=None, last_error="device removed", updated_at=now)
                )
            if live:
                await session.execute(
                    sa.update(PushOutbox)
                    .where(PushOutbox.id.in_([r.id for r in live]))
                    .values(
                        status=SENDING,
                        lease_until=lease_until,
                        attempts=PushOutbox.attempts + 1,
                        updated_at=now,
                    )
                )
    return [
        ClaimedPush(
            id=r.id,
            user_id=r.user_id,
            device_token=r.device_token,
            payload=PushPayload.from_json(r.payload),
            attempts=r.attempts + 1,
            created_at=r.created_at,
            lease_until=lease_until,
        )
        for r in live
    ]


@dataclass
class Outcomes:
    """Decisions for one claimed batch, recorded in one transaction.

    `failed` and `skipped` map row id -> reason; `retry` maps row id -> (next attempt, error);
    `dead_tokens` maps a token FCM rejected -> error (its device is deleted and every unsent
    row of that token is marked failed).
    """

    sent: list[int] = field(default_factory=list)
    retry: dict[int, tuple[datetime, str]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    dead_tokens: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sent) + len(self.retry) + len(self.failed) + len(self.skipped)


def _clip(error: str) -> str:
    return error[:LAST_ERROR_CHARS]


async def mark_sent(session: AsyncSession, ids: Sequence[int], now: datetime | None = None) -> None:
    if ids:
        await session.execute(
            sa.update(PushOutbox)
            .where(PushOutbox.id.in_(list(ids)))
            .values(status=SENT, lease_until=None, last_error=None, updated_at=now or utcnow())
        )


async def mark_retry(
    session: AsyncSession, retries: dict[int, tuple[datetime, str]], now: datetime | None = None
) -> None:
    """Back to pending, due at the given time (one UPDATE per row, executemany)."""
    if retries:
        now = now or utcnow()
        await session.execute(
            sa.update(cast(sa.Table, PushOutbox.__table__))
            .where(PushOutbox.__table__.c.id == sa.bindparam("row_id"))
            .values(
                status=PENDING,
                lease_until=None,
                next_attempt_at=sa.bindparam("when"),
                last_error=sa.bindparam("error"),
                updated_at=now,
            ),
            [{"row_id": i, "when": when, "error": _clip(err)} for i, (when, err) in retries.items()],
        )


async def _mark_final(session: AsyncSession, status: str, reasons: dict[int, str], now: datetime) -> None:
    by_reason: dict[str, list[int]] = {}
    for row_id, reason in reasons.items():
        by_reason.setdefault(_clip(reason), []).append(row_id)
    for reason, ids in by_reason.items():
        await session.execute(
            sa.update(PushOutbox)
            .where(PushOutbox.id.in_(ids))
            .values(status=status, lease_until=None, last_error=reason, updated_at=now)
        )


async def mark_failed(session: AsyncSession, reasons: dict[int, str], now: datetime | None = None) -> None:
    await _mark_final(session, FAILED, reasons, now or utcnow())


async def mark_skipped(session: AsyncSession, reasons: dict[int, str], now: datetime | None = None) -> None:
    await _mark_final(session, SKIPPED, reasons, now or utcnow())


async def remove_dead_tokens(session: AsyncSession, dead: dict[str, str], now: datetime | None = None) -> int:
    """Delete the devices of tokens FCM rejected and fail every unsent row of those tokens
    (pending, or claimed by another batch) so they are never sent. Returns devices deleted."""
    if not dead:
        return 0
    now = now or utcnow()
    tokens = list(dead)
    result = await session.execute(sa.delete(Device).where(Device.token.in_(tokens)))
    await session.execute(
        sa.update(PushOutbox)
        .where(PushOutbox.device_token.in_(tokens), PushOutbox.status.in_([PENDING, SENDING]))
        .values(status=FAILED, lease_until=None, last_error="token rejected by FCM", updated_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def record_outcomes(session: AsyncSession, outcomes: Outcomes, now: datetime | None = None) -> int:
    """Write one batch's outcomes (no commit). Returns the number of devices deleted."""
    now = now or utcnow()
    await mark_sent(session, outcomes.sent, now)
    await mark_retry(session, outcomes.retry, now)
    await mark_failed(session, outcomes.failed, now)
    await mark_skipped(session, outcomes.skipped, now)
    # after mark_failed: the rejected rows keep their own FCM error as last_error
    return await remove_dead_tokens(session, outcomes.dead_tokens, now)


async def record_outcomes_commit(
    session_factory: async_sessionmaker[AsyncSession], outcomes: Outcomes, now: datetime | None = None
) -> int:
    async with session_factory() as session, session.begin():
        return await record_outcomes(session, outcomes, now)


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    oldest_created_at: datetime | None


async def outbox_stats(session: AsyncSession) -> OutboxStats:
    """Rows still to send (pending or sending) and the creation time of the oldest."""
    row = (
        await session.execute(
            sa.select(sa.func.count(), sa.func.min(PushOutbox.created_at)).where(
                PushOutbox.status.in_([PENDING, SENDING])
            )
        )
    ).one()
    oldest: Any = row[1]
    if isinstance(oldest, str):  # SQLite aggregate results bypass the column type
        oldest = datetime.fromisoformat(oldest)
    if isinstance(oldest, datetime) and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return OutboxStats(depth=int(row[0]), oldest_created_at=oldest)


async def purge_finished(session: AsyncSession, older_than: datetime, limit: int = 10_000) -> int:
    """Delete up to `limit` sent/failed/skipped rows last updated before `older_than`."""
    ids = (
        await session.execute(
            sa.select(PushOutbox.id)
            .where(PushOutbox.status.in_([SENT, FAILED, SKIPPED]), PushOutbox.updated_at < older_than)
            .limit(limit)
        )
    ).scalars().all()
    if not ids:
        return 0
    await session.execute(sa.delete(PushOutbox).where(PushOutbox.id.in_(list(ids))))
    return len(ids)
