"""Threads (docs/api.md, "Threads"): replies to a root message, the root's thread summary, thread
pages, the push audience of a reply, and the coalescing of the roots' `message_updated` events.

A reply is an ordinary message of its conversation (its own gapless `seq`, so `since_seq`
recovery stays one cursor) with `thread_id` = its root's id. Only a message that is not a reply
starts a thread (a reply to a reply is `invalid`). The root keeps its thread's summary in its
own row (`reply_count`, `last_reply_at`, `thread_participants`): the group-commit writer
(chat/writer.py) updates it in the transaction of each batch of replies, one UPDATE for all the
batch's roots, after the batch took its conversations' row locks. Every batch that inserts
replies into a conversation holds that conversation's lock until it commits, so the roots'
read-modify-write (a locking read, then the UPDATE) runs one batch after the other, on any
process: reply_count is exact, whatever the concurrency. A batch of plain messages runs none of
this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from chat.emitslots import LocalSlots, SlotCoalescer, Slots
from chat.errors import Invalid, NotFound
from chat.models import Membership, Message, User
from chat.schemas import iso, message_wire_columns, parse_int_id

log = logging.getLogger(__name__)

MAX_PARTICIPANTS = 5  # user ids in a root's `thread.participants`
UPDATE_INTERVAL_S = 1.0  # at most one `message_updated` per root per second (cluster-wide with Redis)

_messages: sa.Table = Message.__table__  # type: ignore[assignment]
_users: sa.Table = User.__table__  # type: ignore[assignment]


# ---------------------------------------------------------------- payloads


def check_thread_id(data: dict[str, Any]) -> int | None:
    """`thread_id`: a root message's id (string), or absent/null."""
    value = data.get("thread_id")
    if value is None:
        return None
    return parse_int_id(value, "message")


def check_include_replies(data: dict[str, Any]) -> bool:
    """`include_replies`: true (default, SPEC behaviour) or false (the main view without replies)."""
    value = data.get("include_replies", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise Invalid("include_replies must be true or false")
    return value


# ---------------------------------------------------------------- wire


def participants_of(stored: str | None) -> list[str]:
    return [p for p in (stored or "").split(",") if p]


def summary(reply_count: int | None, last_reply_at: datetime | None, participants: str | None) -> dict[str, Any] | None:
    """A root's `thread` ({reply_count, last_reply_at, participants}), None for a message without replies."""
    if not reply_count:
        return None
    return {"reply_count": int(reply_count), "last_reply_at": iso(last_reply_at),
            "participants": participants_of(participants)}


def fields_of(row: Any) -> dict[str, Any]:
    """message_wire_columns' thread arguments from a row or Message with the thread columns."""
    return {"thread_id": row.thread_id, "thread": summary(row.reply_count, row.last_reply_at, row.thread_participants)}


# ---------------------------------------------------------------- the writer's statements


def _root_columns() -> Any:
    c = _messages.c
    name = sa.select(_users.c.name).where(_users.c.id == c.sender_id).scalar_subquery().label("name")
    return sa.select(c.id, c.conversation_id, c.seq, c.sender_id, c.body, c.client_msg_id, c.created_at,
                     c.edited_at, c.deleted, c.thread_id, c.reply_count, c.last_reply_at, c.thread_participants, name)


@dataclass(frozen=True)
class Root:
    conversation_id: int
    thread_id: int | None  # not None: the message is itself a reply
    deleted: bool


async def roots(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, Root]:
    """The would-be roots of a batch's replies (a plain read, before the batch takes its seqs)."""
    c = _messages.c
    rows = await conn.execute(sa.select(c.id, c.conversation_id, c.thread_id, c.deleted)
                              .where(c.id.in_(sorted(set(ids)))))
    return {int(r.id): Root(int(r.conversation_id), r.thread_id, bool(r.deleted)) for r in rows}


def check_root(root: Root | None, conversation_id: int) -> Exception | None:
    """Why a message may not be replied to in `conversation_id` (None: it may)."""
    if root is None or root.conversation_id != conversation_id:
        return NotFound("thread_id names no message of this conversation")
    if root.thread_id is not None:
        return Invalid("thread_id names a reply: reply to the thread's root message instead")
    if root.deleted:
        return Invalid("the thread's root message was deleted")
    return None


@dataclass(frozen=True)
class Reply:
    root_id: int
    sender_id: str
    seq: int


async def update_roots(conn: AsyncConnection, replies: Sequence[Reply], now: datetime) -> list[dict[str, Any]]:
    """Add a batch's new replies to their roots' summaries; returns the roots' wire forms (no
    `reactions`, like every `message_updated`), in root id order.

    Runs after the batch took its conversations' row locks (chat/writer.py): the locking read
    sees the roots as the last batch committed them, and no other batch changes them before
    this one commits. One read and one UPDATE for all the batch's roots."""
    by_root: dict[int, list[Reply]] = {}
    for r in replies:
        by_root.setdefault(r.root_id, []).append(r)
    ids = sorted(by_root)
    c = _messages.c
    # The sender's name as a scalar subquery: a locking read does not lock the rows its
    # subqueries read (the users row stays free for connects).
    rows = (await conn.execute(_root_columns().where(c.id.in_(ids)).order_by(c.id).with_for_update())).all()
    counts: dict[int, int] = {}
    participants: dict[int, str] = {}
    # Never backwards: a batch that waited longer for its locks may commit after one whose
    # replies are newer (its `now` was taken first).
    latest: dict[int, datetime] = {}
    wires: list[dict[str, Any]] = []
    for row in rows:
        rid = int(row.id)
        new = by_root[rid]
        counts[rid] = len(new)
        latest[rid] = now if row.last_reply_at is None else max(row.last_reply_at, now)
        people = participants_of(row.thread_participants)
        for r in sorted(new, key=lambda x: x.seq):
            if len(people) < MAX_PARTICIPANTS and r.sender_id not in people:
                people.append(r.sender_id)
        participants[rid] = ",".join(people)
        wire = message_wire_columns(rid, row.conversation_id, row.seq, row.sender_id, row.name or row.sender_id,
                                    row.body, row.client_msg_id, row.created_at, row.edited_at, row.deleted,
                                    thread_id=row.thread_id,
                                    thread=summary(int(row.reply_count or 0) + len(new), latest[rid], participants[rid]))
        del wire["reactions"]
        wires.append(wire)
    if not counts:
        return []
    found = sorted(counts)
    if len(found) == 1:
        increment: Any = counts[found[0]]
        people_value: Any = participants[found[0]]
        last_value: Any = latest[found[0]]
    else:
        increment = sa.case(counts, value=c.id)
        people_value = sa.case(participants, value=c.id)
        last_value = sa.case({rid: sa.literal(t, c.last_reply_at.type) for rid, t in latest.items()}, value=c.id)
    await conn.execute(sa.update(_messages).where(c.id.in_(found)).values(
        reply_count=c.reply_count + increment, last_reply_at=last_value, thread_participants=people_value))
    return wires


# ---------------------------------------------------------------- reads


async def root_wire(conn: AsyncConnection, root_id: int) -> dict[str, Any] | None:
    """A root's wire form as committed now (no `reactions`), for the trailing `message_updated`."""
    c = _messages.c
    row = (await conn.execute(_root_columns().where(c.id == root_id))).first()
    if row is None:
        return None
    wire = message_wire_columns(row.id, row.conversation_id, row.seq, row.sender_id, row.name or row.sender_id,
                                row.body, row.client_msg_id, row.created_at, row.edited_at, row.deleted,
                                **fields_of(row))
    del wire["reactions"]
    return wire


async def thread_page(session: AsyncSession, conversation_id: int, root_id: int, *, before_seq: int | None,
                      after_seq: int | None, limit: int) -> tuple[list[Message], bool]:
    """A page of a thread (the root, then its replies), ascending by seq, with the semantics of
    storage.list_messages. not_found when `root_id` is no message of the conversation, invalid
    when it is a reply. The replies come through the (conversation_id, thread_id, seq) index;
    the root (its seq is below every reply's) is added where the page reaches it."""
    root = await session.get(Message, root_id)
    if root is None or root.conversation_id != conversation_id:
        raise NotFound("thread_id names no message of this conversation")
    if root.thread_id is not None:
        raise Invalid("thread_id names a reply: use its thread's root message")
    q = sa.select(Message).where(Message.conversation_id == conversation_id, Message.thread_id == root_id)

    def in_range(seq: int) -> bool:
        return (after_seq is None or seq > after_seq) and (before_seq is None or seq < before_seq)

    if after_seq is not None:
        q = q.where(Message.seq > after_seq)
        if before_seq is not None:
            q = q.where(Message.seq < before_seq)
        rows = list(await session.scalars(q.order_by(Message.seq.asc()).limit(limit + 1)))
        if in_range(root.seq):
            rows.insert(0, root)
        return rows[:limit], len(rows) > limit
    if before_seq is not None:
        q = q.where(Message.seq < before_seq)
    rows = list(await session.scalars(q.order_by(Message.seq.desc()).limit(limit + 1)))
    if len(rows) <= limit and in_range(root.seq):
        rows.append(root)
    has_more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return rows, has_more


# ---------------------------------------------------------------- push audience


async def audience_page(session: AsyncSession, conversation_id: int, creator_id: str, room_tier: int, root_id: int,
                        after: str | None, limit: int, reply_id: int | None = None) -> tuple[list[str], str | None]:
    """One page of the users a room reply pushes if offline: the root's author and everyone who
    replied in the thread before it (ids up to `reply_id`: whoever replies later, while the job
    waits, is not pushed for an earlier reply; in user id order, after `after`), who still read the room (its creator,
    or an active membership at the room's tier); muted and blocked ones are left out by the caller.
    Returns (candidates, where the next page starts, None once exhausted)."""
    c = _messages.c
    q = (sa.select(c.sender_id).where(c.conversation_id == conversation_id,
                                      sa.or_(c.id == root_id, c.thread_id == root_id),
                                      *([c.id <= reply_id] if reply_id is not None else [])).distinct()
         .order_by(c.sender_id).limit(limit))
    if after is not None:
        q = q.where(c.sender_id > after)
    people = [str(u) for u in await session.scalars(q)]
    resume = people[-1] if len(people) == limit else None
    patrons = [u for u in people if u != creator_id]
    readers = set()
    if patrons:
        readers = set(await session.scalars(sa.select(Membership.patron_id).where(
            Membership.creator_id == creator_id, Membership.patron_id.in_(patrons),
            Membership.status == "active", Membership.tier_cents >= room_tier)))
    return [u for u in people if u == creator_id or u in readers], resume


# ---------------------------------------------------------------- coalesced `message_updated`

Emit = Callable[[dict[str, Any]], Awaitable[None]]
Reread = Callable[[int], Awaitable[dict[str, Any] | None]]


class ThreadCoalescer:
    """At most one `message_updated` per root per `interval_s`, cluster-wide when the processes
    share Redis (`RedisSlots`), else per process (chat/emitslots.py).

    The first change of a quiet root goes out at once, with the summary its batch committed.
    Changes while the root's slot is taken are held; when it frees, the process that wins it
    reads the root again from the database and sends it as committed then, so the last event
    of a burst carries the final summary, whichever process committed it. `thread.reply_count`
    only grows: a reader keeps the summary with the highest one (docs/api.md).
    """

    def __init__(self, emit: Emit, reread: Reread, interval_s: float = UPDATE_INTERVAL_S,
                 slots: Slots | None = None) -> None:
        self._emit = emit
        self._reread = reread
        self._events: SlotCoalescer[dict[str, Any]] = SlotCoalescer(
            "root", slots or LocalSlots(), interval_s, self._send, self._send_latest)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def interval_s(self) -> float:
        return self._events.interval_s

    def note(self, roots: Sequence[dict[str, Any]]) -> None:
        """Roots whose summary a committed batch changed (their wire forms as of that commit)."""
        loop = asyncio.get_running_loop()
        for wire in roots:
            task = loop.create_task(self._events.note(int(wire["id"]), wire))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, wire: dict[str, Any]) -> None:
        await self._emit(wire)

    async def _send_latest(self, rid: int, _held: dict[str, Any]) -> None:
        wire = await self._reread(rid)  # raises: the coalescer tries again a window later
        if wire is not None:
            await self._emit(wire)

    async def close(self) -> None:
        """At shutdown: drop what is held, wait for sends in flight."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await self._events.close()
