"""Push fan-out jobs: one row per message or channel notification, expanded by the push worker.

The cause's transaction writes ONE `push_jobs` row whatever the audience (10 or 100,000
patrons), so a creator's post is acked as fast as a patron's. After the commit a worker claims
the job (SKIP LOCKED + lease, like the outbox) and expands it in bounded batches: each batch
resolves one page of the audience (ordered by user id for chat messages, by notification id for
channel notifications), drops the users online anywhere in the cluster (chat only), looks up
their devices and, in ONE transaction, inserts the outbox rows and moves the job's
`resume_after` cursor past the page. The cursor update is a compare-and-set on (lease_owner,
resume_after): a worker that lost its lease, or a second worker holding a stale copy, writes
nothing. So a worker killed mid-job leaves a consistent prefix; the next claimer (after the
lease) resumes after the last committed page: every device gets its outbox row exactly once.

The audience of a chat message is the chat domain's business (SPEC §6: who is a member, who
muted the conversation); it arrives as a callable (`ChatAudiencePage`, wired by
notifications/wiring.py from ChatService.push_audience_page), as does presence (`OnlineUsers`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from chat import leases
from chat.db import utcnow
from notifications.models import Device, Notification, PushJob, PushOutbox
from notifications.outbox import PENDING as OUTBOX_PENDING
from notifications.outbox import PushPayload, fit_payload

log = logging.getLogger(__name__)

JOBS = cast(sa.Table, PushJob.__table__)
OUTBOX = cast(sa.Table, PushOutbox.__table__)

MESSAGE, NOTIFICATION = "message", "notification"
PENDING, EXPANDING, DONE, FAILED = "pending", "expanding", "done", "failed"
LAST_ERROR_CHARS = 500
# notification ids have at most 20 digits: the payload is fitted once with the longest one
_LONGEST_ID = "9" * 20

# (session, conversation_id, sender_id, resume_after, limit, thread_id, mentions) -> (recipients,
# next resume_after): one page of the users who get a push for a message if offline (members per
# SPEC §6, muted and the sender excluded; for a room's thread reply, `thread_id` names its root and
# the audience is that thread's, chat/threads.py; `mentions`: the user ids the message mentions,
# who get it too, chat/mentions.py), scanning at most `limit` user ids greater than
# `resume_after` in order; next resume_after is None once the audience is exhausted.
# (session, conversation_id, sender_id, after, limit, thread_id, mentions, message_id)
ChatAudiencePage = Callable[[AsyncSession, int, str, "str | None", int, "int | None", Sequence[str], "int | None"],
                            Awaitable[tuple[list[str], "str | None"]]]
THREAD_AUDIENCE = "thread:"  # a message job's `audience`: "thread:{root id}" for a room's thread reply


def message_audience(job: dict[str, Any]) -> str | None:
    """A message job's `audience` column: "thread:{root id}" for a room's thread reply, then (after
    a space) the JSON list of the user ids the message mentions; None when neither."""
    parts = []
    if job.get("thread_id") is not None:
        parts.append(f"{THREAD_AUDIENCE}{int(job['thread_id'])}")
    if job.get("mentions"):
        parts.append(json.dumps([str(u) for u in job["mentions"]], separators=(",", ":")))
    return " ".join(parts) or None


def parse_message_audience(audience: str | None) -> tuple[int | None, list[str]]:
    """(thread_id, mentions) of a message job's `audience` (message_audience)."""
    if not audience:
        return None, []
    thread_id, rest = None, audience
    if audience.startswith(THREAD_AUDIENCE):
        head, _, rest = audience.partition(" ")
        thread_id = int(head[len(THREAD_AUDIENCE):])
    return thread_id, [str(u) for u in json.loads(rest)] if rest else []
# user ids -> those connected anywhere in the cluster
OnlineUsers = Callable[[Sequence[str]], Awaitable[set[str]]]


def payload_from_dict(payload: dict[str, Any]) -> PushPayload:
    return PushPayload(
        title=str(payload.get("title", "")), body=str(payload.get("body", "")),
        data={str(k): str(v) for k, v in (payload.get("data") or {}).items()},
        collapse_key=payload.get("collapse_key"), high_priority=bool(payload.get("high_priority", True)))


# ---------------------------------------------------------------- producers (in the cause's transaction)


async def push_enqueue_jobs(conn: AsyncConnection, jobs: list[dict[str, Any]]) -> int:
    """Insert one fan-out job per chat message, in the caller's transaction; returns the count.

    A job is {"conversation_id", "message_id", "sender_id", "payload": {title, body, data,
    collapse_key, high_priority}, "thread_id"?, "mentions"?: [user_id]}; both go to `audience`
    (message_audience). The caller commits and then wakes the worker.
    """
    if not jobs:
        return 0
    now = utcnow()
    await conn.execute(sa.insert(JOBS), [
        {"kind": MESSAGE, "conversation_id": int(j["conversation_id"]), "message_id": int(j["message_id"]),
         "sender_id": str(j["sender_id"]),
         "audience": message_audience(j),
         "payload": fit_payload(payload_from_dict(j["payload"])).to_json(), "resume_after": None,
         "status": PENDING, "attempts": 0, "pushes": 0, "next_attempt_at": now, "lease_owner": None,
         "lease_until": None, "last_error": None, "created_at": now, "updated_at": now}
        for j in jobs])
    return len(jobs)


def id_ranges(ids: Sequence[int]) -> list[list[int]]:
    """[[first, last], ...] covering exactly `ids` (a few ranges: multi-row inserts are contiguous)."""
    ranges: list[list[int]] = []
    for i in sorted(set(ids)):
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ranges


async def enqueue_notification_job(session: AsyncSession, notification_ids: Sequence[int],
                                   payload: dict[str, Any]) -> int:
    """One fan-out job for a server-API notification stored as `notification_ids` (one per
    recipient): every device of each recipient gets the payload plus its own notification_id."""
    if not notification_ids:
        return 0
    now = utcnow()
    await session.execute(sa.insert(JOBS).values(
        kind=NOTIFICATION, conversation_id=None, message_id=None, sender_id=None,
        audience=json.dumps(id_ranges(notification_ids), separators=(",", ":")),
        payload=payload_from_dict(payload).to_json(), resume_after=None, status=PENDING, attempts=0, pushes=0,
        next_attempt_at=now, lease_owner=None, lease_until=None, last_error=None, created_at=now, updated_at=now))
    return 1


# ---------------------------------------------------------------- the worker side


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    conversation_id: int | None
    message_id: int | None
    sender_id: str | None
    audience: str | None
    payload: str
    resume_after: str | None
    attempts: int  # including this claim
    created_at: datetime


def new_owner() -> str:
    return uuid.uuid4().hex


async def claim_jobs(session_factory: async_sessionmaker[AsyncSession], owner: str, limit: int,
                     lease_seconds: float, now: datetime | None = None) -> list[ClaimedJob]:
    """Lease up to `limit` jobs (pending and due, or expanding with an expired lease: its worker
    died) to `owner`, and commit. SKIP LOCKED on MySQL, so concurrent claimers get disjoint jobs."""
    now = now or utcnow()
    cols = (PushJob.id, PushJob.kind, PushJob.conversation_id, PushJob.message_id, PushJob.sender_id,
            PushJob.audience, PushJob.payload, PushJob.resume_after, PushJob.attempts, PushJob.created_at)
    rows, _ = await leases.claim(session_factory, PushJob, cols, pending=PENDING, leased=EXPANDING, owner=owner,
                                 limit=limit, lease_seconds=lease_seconds, now=now)
    return [ClaimedJob(id=r.id, kind=r.kind, conversation_id=r.conversation_id, message_id=r.message_id,
                       sender_id=r.sender_id, audience=r.audience, payload=r.payload, resume_after=r.resume_after,
                       attempts=r.attempts + 1, created_at=r.created_at) for r in rows]


class LeaseLost(Exception):
    """Another worker took the job over (this one's lease expired): stop expanding it."""


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]  # outbox rows to insert
    resume_after: str | None  # None: the audience is exhausted, the job is done


async def _devices(session: AsyncSession, user_ids: Sequence[str]) -> list[tuple[str, str]]:
    if not user_ids:
        return []
    result = await session.execute(sa.select(Device.user_id, Device.token)
                                   .where(Device.user_id.in_(sorted(set(user_ids))))
                                   .order_by(Device.user_id, Device.token))
    return [(u, t) for u, t in result.all()]


def _outbox_row(user_id: str, token: str, payload: str, now: datetime) -> dict[str, Any]:
    return {"user_id": user_id, "device_token": token, "payload": payload, "status": OUTBOX_PENDING,
            "attempts": 0, "next_attempt_at": now, "lease_until": None, "last_error": None,
            "created_at": now, "updated_at": now}


async def message_page(session: AsyncSession, job: ClaimedJob, limit: int, audience_page: ChatAudiencePage,
                       online_users: OnlineUsers, now: datetime) -> Page:
    assert job.conversation_id is not None and job.sender_id is not None
    thread_id, mentions = parse_message_audience(job.audience)
    recipients, resume_after = await audience_page(session, job.conversation_id, job.sender_id,
                                                   job.resume_after, limit, thread_id, mentions, job.message_id)
    # SPEC §6: offline anywhere in the cluster, as of the expansion
    online = await online_users(recipients) if recipients else set()
    offline = [u for u in recipients if u not in online and u != job.sender_id]
    return Page([_outbox_row(u, t, job.payload, now) for u, t in await _devices(session, offline)], resume_after)


async def notification_page(session: AsyncSession, job: ClaimedJob, limit: int, now: datetime) -> Page:
    ranges = json.loads(job.audience or "[]")
    if not ranges:
        return Page([], None)
    after = int(job.resume_after) if job.resume_after is not None else 0
    q = (sa.select(Notification.id, Notification.user_id)
         .where(sa.or_(*[Notification.id.between(lo, hi) for lo, hi in ranges]), Notification.id > after)
         .order_by(Notification.id).limit(limit))
    notes = list((await session.execute(q)).all())
    resume_after = str(notes[-1].id) if len(notes) == limit else None
    by_user: dict[str, list[str]] = {}
    for user_id, token in await _devices(session, [n.user_id for n in notes]):
        by_user.setdefault(user_id, []).append(token)
    base = PushPayload.from_json(job.payload)
    fitted = fit_payload(replace(base, data={**base.data, "notification_id": _LONGEST_ID}))
    rows: list[dict[str, Any]] = []
    for note in notes:
        tokens = by_user.get(note.user_id)
        if tokens:
            raw = replace(fitted, data={**fitted.data, "notification_id": str(note.id)}).to_json()
            rows.extend(_outbox_row(note.user_id, t, raw, now) for t in tokens)
    return Page(rows, resume_after)


async def commit_page(session_factory: async_sessionmaker[AsyncSession], job: ClaimedJob, owner: str,
                      page: Page, lease_seconds: float, now: datetime) -> ClaimedJob:
    """Insert the page's outbox rows and move the cursor, in one transaction, only if `owner`
    still holds the job at the cursor `job.resume_after` (else LeaseLost, nothing written).
    Returns the job as of the new cursor."""
    t = JOBS
    done = page.resume_after is None
    async with session_factory() as session, session.begin():
        # First statement: takes the job's row lock, so a claimer (SKIP LOCKED) passes it by
        # and a concurrent commit_page of a stale copy waits, then matches nothing.
        result = await session.execute(
            sa.update(t).where(t.c.id == job.id, t.c.lease_owner == owner, t.c.status == EXPANDING,
                               t.c.resume_after.is_(None) if job.resume_after is None
                               else t.c.resume_after == job.resume_after)
            .values(resume_after=page.resume_after if not done else job.resume_after,
                    status=DONE if done else EXPANDING, pushes=t.c.pushes + len(page.rows),
                    lease_owner=None if done else owner,
                    lease_until=None if done else now + timedelta(seconds=lease_seconds), updated_at=now))
        if int(getattr(result, "rowcount", 0) or 0) != 1:
            raise LeaseLost(f"push job {job.id}")
        if page.rows:
            await session.execute(sa.insert(OUTBOX), page.rows)
    return replace(job, resume_after=page.resume_after)


async def release_job(session_factory: async_sessionmaker[AsyncSession], job: ClaimedJob, owner: str,
                      error: str, retry_at: datetime | None, now: datetime | None = None) -> None:
    """After a failed batch: back to pending at `retry_at` (the cursor is kept), or failed when
    `retry_at` is None. No-op if the job is no longer ours."""
    now = now or utcnow()
    async with session_factory() as session, session.begin():
        await session.execute(
            sa.update(PushJob).where(PushJob.id == job.id, PushJob.lease_owner == owner)
            .values(status=PENDING if retry_at is not None else FAILED, next_attempt_at=retry_at or now,
                    lease_owner=None, lease_until=None, last_error=error[:LAST_ERROR_CHARS], updated_at=now))


async def purge_finished_jobs(session: AsyncSession, older_than: datetime, limit: int = 10_000) -> int:
    ids = (await session.execute(
        sa.select(PushJob.id).where(PushJob.status.in_([DONE, FAILED]), PushJob.updated_at < older_than)
        .limit(limit))).scalars().all()
    if ids:
        await session.execute(sa.delete(PushJob).where(PushJob.id.in_(list(ids))))
    return len(ids)


async def pending_jobs(session: AsyncSession) -> int:
    return int(await session.scalar(
        sa.select(sa.func.count()).select_from(PushJob).where(PushJob.status.in_([PENDING, EXPANDING]))) or 0)
