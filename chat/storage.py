"""All chat SQL. Functions take an AsyncSession (or, on the send path, an AsyncConnection) and
never commit; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from chat import driversql
from chat.db import utcnow
from chat.models import (
    Conversation,
    ConversationState,
    MemberBlock,
    Membership,
    Message,
    MessageMention,
    Reaction,
    Sanction,
    User,
)
from chat.moderation import Standing
from chat.schemas import encode_mentions

# ---------------------------------------------------------------- users


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


class RetryTransaction(Exception):  # noqa: N818 (a signal, not an error)
    """Raised inside a transaction that lost a race it cannot resolve in place; the caller
    runs the whole transaction again (chat/retry.py)."""


def _insert_or_update(session: AsyncSession, model: Any, values: dict[str, Any], update: list[str]) -> Any:
    """One INSERT ... ON DUPLICATE KEY UPDATE (MySQL) / ON CONFLICT DO UPDATE (SQLite) statement:
    it takes the row's lock at once, with no gap lock, so racing upserts neither fail on the
    duplicate key nor deadlock. An empty `update` leaves an existing row as it is."""
    table = model.__table__
    if session.get_bind().dialect.name == "sqlite":
        lite = sqlite_insert(table).values(values)
        keys = [c.name for c in table.primary_key.columns]
        if not update:
            return lite.on_conflict_do_nothing(index_elements=keys)
        return lite.on_conflict_do_update(index_elements=keys, set_={c: lite.excluded[c] for c in update})
    my = mysql_insert(table).values(values)
    if not update:
        first = next(iter(table.primary_key.columns)).name
        return my.on_duplicate_key_update({first: table.c[first]})
    return my.on_duplicate_key_update({c: my.inserted[c] for c in update})


async def upsert_user(session: AsyncSession, user_id: str, name: str | None,
                      avatar_url: str | None = None, *, keep_avatar: bool = True) -> User:
    """Create the user, or update the name (when given) and the avatar (when given or not kept)."""
    now = utcnow()
    values = {"id": user_id, "name": name or user_id, "avatar_url": avatar_url, "created_at": now, "updated_at": now}
    update = (["name"] if name is not None else []) + (["avatar_url"] if not keep_avatar or avatar_url is not None else [])
    await session.execute(_insert_or_update(session, User, values, update + ["updated_at"] if update else []))
    # A locking read: it sees the row as committed now, even one a concurrent upsert created
    # after this transaction's snapshot (a plain read would not, on MySQL).
    user = await session.scalar(sa.select(User).where(User.id == user_id).with_for_update()
                                .execution_options(populate_existing=True))
    assert user is not None
    return user


async def user_names(session: AsyncSession, user_ids: Sequence[str]) -> dict[str, str]:
    if not user_ids:
        return {}
    rows = await session.execute(sa.select(User.id, User.name).where(User.id.in_(set(user_ids))))
    names = {uid: name for uid, name in rows.all()}
    return {uid: names.get(uid, uid) for uid in user_ids}


async def user_profiles(session: AsyncSession, user_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """(name, avatar_url) by user id; an unknown user is named by their id, with no avatar."""
    if not user_ids:
        return {}
    rows = await session.execute(sa.select(User.id, User.name, User.avatar_url).where(User.id.in_(set(user_ids))))
    found = {uid: (name, avatar) for uid, name, avatar in rows.all()}
    return {uid: found.get(uid, (uid, None)) for uid in user_ids}


# ---------------------------------------------------------------- memberships


async def get_membership(session: AsyncSession, creator_id: str, patron_id: str) -> Membership | None:
    return await session.get(Membership, (creator_id, patron_id))


async def upsert_membership(session: AsyncSession, creator_id: str, patron_id: str,
                            tier_cents: int, status: str) -> tuple[Membership, Membership | None]:
    """Returns the membership and a detached copy of what it was before (None if new).

    Never a locking read of a row that may be missing: on InnoDB that takes a gap lock, and
    two transactions holding gap locks in one creator's range deadlock on their inserts
    (measured: 324 deadlocks in 2,048 concurrent upserts). So a plain read decides: an existing
    row is locked by key (a record lock) and updated; a missing one is inserted in one atomic
    statement. RetryTransaction when a concurrent upsert inserted it in between (its `before`
    is then unknown here)."""
    where = sa.and_(Membership.creator_id == creator_id, Membership.patron_id == patron_id)
    exists = await session.scalar(sa.select(sa.literal(1)).select_from(Membership).where(where))
    now = utcnow()
    if exists is None:
        values = {"creator_id": creator_id, "patron_id": patron_id, "tier_cents": tier_cents,
                  "status": status, "updated_at": now}
        result = await session.execute(_insert_or_update(session, Membership, values,
                                                         ["tier_cents", "status", "updated_at"]))
        # MySQL (with CLIENT_FOUND_ROWS, as SQLAlchemy connects): 1 = inserted, 2 = updated an
        # existing row. SQLite says 1 either way, but BEGIN IMMEDIATE left it no race to lose.
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise RetryTransaction("membership inserted concurrently")
        m = await session.scalar(sa.select(Membership).where(where).with_for_update()
                                 .execution_options(populate_existing=True))
        assert m is not None
        return m, None
    m = await session.scalar(sa.select(Membership).where(where).with_for_update()
                             .execution_options(populate_existing=True))
    assert m is not None
    before = Membership(creator_id=creator_id, patron_id=patron_id, tier_cents=m.tier_cents, status=m.status)
    m.tier_cents, m.status = tier_cents, status
    m.updated_at = now
    await session.flush()
    return m, before


async def list_patron_memberships(session: AsyncSession, patron_id: str) -> list[Membership]:
    rows = await session.scalars(
        sa.select(Membership).where(Membership.patron_id == patron_id, Membership.status == "active"))
    return list(rows)


async def list_active_patron_ids(session: AsyncSession, creator_id: str, min_tier_cents: int = 0) -> list[str]:
    """The creator's active patrons at `min_tier_cents` or above, less those the creator blocked."""
    blocked = sa.select(Sanction.user_id).where(
        Sanction.creator_id == creator_id, Sanction.user_id == Membership.patron_id, Sanction.blocked.is_(True))
    rows = await session.scalars(
        sa.select(Membership.patron_id).where(
            Membership.creator_id == creator_id, Membership.status == "active",
            Membership.tier_cents >= min_tier_cents, ~blocked.exists()))
    return list(rows)


# ---------------------------------------------------------------- conversations


async def get_conversation(session: AsyncSession, conversation_id: int) -> Conversation | None:
    return await session.get(Conversation, conversation_id)


async def insert_room(session: AsyncSession, creator_id: str, name: str, min_tier_cents: int,
                      post_policy: str) -> Conversation:
    conv = Conversation(kind="room", creator_id=creator_id, name=name,
                        min_tier_cents=min_tier_cents, post_policy=post_policy)
    session.add(conv)
    await session.flush()
    return conv


async def find_room(session: AsyncSession, creator_id: str, external_id: str, *, lock: bool = False) -> Conversation | None:
    """The creator's room with this external_id. `lock`: a shared locking read, which sees the row
    as committed now (a plain read on MySQL sees this transaction's snapshot)."""
    q = sa.select(Conversation).where(Conversation.creator_id == creator_id, Conversation.external_id == external_id)
    if lock:
        q = q.with_for_update(read=True).execution_options(populate_existing=True)
    return await session.scalar(q)


async def insert_room_once(session: AsyncSession, creator_id: str, external_id: str, name: str,
                           min_tier_cents: int, post_policy: str) -> tuple[Conversation, bool]:
    """The creator's room with this external_id, inserted unless it exists; True if inserted.

    One INSERT that skips a duplicate (creator_id, external_id) instead of failing (MySQL
    INSERT IGNORE, SQLite ON CONFLICT DO NOTHING): racing creates on any process wait on the
    unique index entry and all but one insert nothing, with no error to roll back and no gap
    lock taken by a locking read of a missing row (see upsert_membership). The caller reads
    first without locking, so a repeated create takes no lock at all."""
    now = utcnow()
    values = {"kind": "room", "creator_id": creator_id, "external_id": external_id, "name": name,
              "min_tier_cents": min_tier_cents, "post_policy": post_policy, "last_seq": 0,
              "last_activity_at": now, "created_at": now}
    if session.get_bind().dialect.name == "sqlite":
        stmt: Any = sqlite_insert(_conversations).values(values).on_conflict_do_nothing(
            index_elements=["creator_id", "external_id"])
    else:
        stmt = sa.insert(_conversations).values(values).prefix_with("IGNORE")
    result = await session.execute(stmt)
    created = result.rowcount == 1  # type: ignore[attr-defined]
    conv = await find_room(session, creator_id, external_id, lock=True)
    assert conv is not None
    return conv, created


async def list_rooms(session: AsyncSession, creator_id: str | None, after_id: int | None,
                     limit: int) -> list[Conversation]:
    """Rooms in id order (of one creator, or all), those after `after_id`."""
    q = sa.select(Conversation).where(Conversation.kind == "room")
    if creator_id is not None:
        q = q.where(Conversation.creator_id == creator_id)
    if after_id is not None:
        q = q.where(Conversation.id > after_id)
    return list(await session.scalars(q.order_by(Conversation.id).limit(limit)))


def direct_key(creator_id: str, patron_id: str) -> str:
    return f"{creator_id}/{patron_id}"


async def get_direct(session: AsyncSession, creator_id: str, patron_id: str) -> Conversation | None:
    return await session.scalar(
        sa.select(Conversation).where(Conversation.direct_key == direct_key(creator_id, patron_id)))


async def insert_direct(session: AsyncSession, creator_id: str, patron_id: str) -> Conversation:
    conv = Conversation(kind="direct", creator_id=creator_id, patron_id=patron_id,
                        direct_key=direct_key(creator_id, patron_id), name="",
                        min_tier_cents=0, post_policy="everyone")
    session.add(conv)
    await session.flush()
    return conv


async def list_rooms_of_creators(session: AsyncSession, creator_ids: Sequence[str]) -> list[Conversation]:
    if not creator_ids:
        return []
    rows = await session.scalars(
        sa.select(Conversation).where(Conversation.kind == "room",
                                      Conversation.creator_id.in_(set(creator_ids))))
    return list(rows)


async def list_directs_of_user(session: AsyncSession, user_id: str) -> list[Conversation]:
    rows = await session.scalars(
        sa.select(Conversation).where(
            Conversation.kind == "direct",
            sa.or_(Conversation.creator_id == user_id, Conversation.patron_id == user_id)))
    return list(rows)


async def take_next_seq(session: AsyncSession, conversation_id: int, now: datetime) -> int:
    """Increment and return the conversation's last_seq.

    The UPDATE takes the conversation row's write lock (MySQL) or the database write lock
    (SQLite, BEGIN IMMEDIATE) until commit, so concurrent senders on any process get
    consecutive seqs and a rolled-back send leaves no gap.
    """
    await session.execute(
        sa.update(Conversation).where(Conversation.id == conversation_id)
        .values(last_seq=Conversation.last_seq + 1, last_activity_at=now)
        .execution_options(synchronize_session=False))
    seq = await session.scalar(sa.select(Conversation.last_seq).where(Conversation.id == conversation_id))
    assert seq is not None
    return int(seq)


async def last_seqs(conn: AsyncConnection, conversation_ids: list[int]) -> dict[int, int]:
    """last_seq of each of these conversations (the relay's resync, chat/delivery.py)."""
    out: dict[int, int] = {}
    for i in range(0, len(conversation_ids), 500):
        rows = await conn.execute(sa.select(Conversation.id, Conversation.last_seq)
                                  .where(Conversation.id.in_(conversation_ids[i:i + 500])))
        out.update({int(cid): int(seq or 0) for cid, seq in rows})
    return out


async def get_last_seq(session: AsyncSession, conversation_id: int) -> int:
    seq = await session.scalar(sa.select(Conversation.last_seq).where(Conversation.id == conversation_id))
    return int(seq or 0)


# ---------------------------------------------------------------- messages


async def insert_message(session: AsyncSession, conversation_id: int, seq: int, sender_id: str,
                         body: str, client_msg_id: str, now: datetime) -> Message:
    msg = Message(conversation_id=conversation_id, seq=seq, sender_id=sender_id, body=body,
                  client_msg_id=client_msg_id, created_at=now, deleted=False)
    session.add(msg)
    await session.flush()
    return msg


async def get_message(session: AsyncSession, message_id: int) -> Message | None:
    return await session.get(Message, message_id)


async def list_messages(session: AsyncSession, conversation_id: int, *, before_seq: int | None = None,
                        after_seq: int | None = None, limit: int = 50,
                        include_replies: bool = True) -> tuple[list[Message], bool]:
    """Ascending by seq: `limit` just after after_seq, else just before before_seq, else the last.
    The bool says more messages lie beyond the page in the direction read. Without
    `include_replies`, thread replies are left out (chat/threads.py)."""
    q = sa.select(Message).where(Message.conversation_id == conversation_id)
    if not include_replies:
        q = q.where(Message.thread_id.is_(None))
    if after_seq is not None:
        q = q.where(Message.seq > after_seq)
        if before_seq is not None:
            q = q.where(Message.seq < before_seq)
        rows = list(await session.scalars(q.order_by(Message.seq.asc()).limit(limit + 1)))
        return rows[:limit], len(rows) > limit
    if before_seq is not None:
        q = q.where(Message.seq < before_seq)
    rows = list(await session.scalars(q.order_by(Message.seq.desc()).limit(limit + 1)))
    has_more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return rows, has_more


async def last_messages(session: AsyncSession, conversation_ids: Sequence[int]) -> dict[int, Message]:
    """The newest message of each conversation (one query through the (conversation_id, seq) index)."""
    if not conversation_ids:
        return {}
    rows = await session.scalars(
        sa.select(Message).join(Conversation, sa.and_(
            Conversation.id == Message.conversation_id, Conversation.last_seq == Message.seq))
        .where(Message.conversation_id.in_(set(conversation_ids))))
    return {m.conversation_id: m for m in rows}


async def count_unread(session: AsyncSession, conversation_id: int, user_id: str, after_seq: int) -> int:
    n = await session.scalar(
        sa.select(sa.func.count()).select_from(Message).where(
            Message.conversation_id == conversation_id, Message.seq > after_seq,
            Message.sender_id != user_id, Message.deleted.is_(False)))
    return int(n or 0)


async def count_unread_many(session: AsyncSession, user_id: str,
                            read_positions: dict[int, int]) -> dict[int, int]:
    """Unread counts of many conversations in one query."""
    if not read_positions:
        return {}
    cond = sa.or_(*[sa.and_(Message.conversation_id == cid, Message.seq > pos)
                    for cid, pos in read_positions.items()])
    rows = await session.execute(
        sa.select(Message.conversation_id, sa.func.count()).where(
            cond, Message.sender_id != user_id, Message.deleted.is_(False))
        .group_by(Message.conversation_id))
    counts = {cid: 0 for cid in read_positions}
    counts.update({cid: int(n) for cid, n in rows.all()})
    return counts


# ---------------------------------------------------------------- per-user state


async def get_states(session: AsyncSession, user_id: str,
                     conversation_ids: Sequence[int]) -> dict[int, ConversationState]:
    if not conversation_ids:
        return {}
    rows = await session.scalars(
        sa.select(ConversationState).where(ConversationState.user_id == user_id,
                                           ConversationState.conversation_id.in_(set(conversation_ids))))
    return {s.conversation_id: s for s in rows}


async def _upsert_state(session: AsyncSession, user_id: str, conversation_id: int, *, last_read_seq: int = 0,
                        muted: bool = False, update: str) -> None:
    """INSERT ... ON DUPLICATE KEY UPDATE (MySQL) / ON CONFLICT DO UPDATE (SQLite): one statement
    that takes the row's write lock at once, so racing first reads or mutes neither fail nor deadlock.
    `update` names the column a conflict updates: last_read_seq (forward only) or muted."""
    values = {"user_id": user_id, "conversation_id": conversation_id, "last_read_seq": last_read_seq, "muted": muted}
    current = ConversationState.__table__.c

    def changes(new: Any) -> dict[str, Any]:
        if update == "last_read_seq":
            return {"last_read_seq": sa.case((current.last_read_seq < new.last_read_seq, new.last_read_seq),
                                             else_=current.last_read_seq)}
        return {"muted": new.muted}

    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        lite = sqlite_insert(ConversationState).values(values)
        await session.execute(lite.on_conflict_do_update(index_elements=["user_id", "conversation_id"],
                                                         set_=changes(lite.excluded)))
    else:
        my = mysql_insert(ConversationState).values(values)
        await session.execute(my.on_duplicate_key_update(changes(my.inserted)))


async def get_state(session: AsyncSession, user_id: str, conversation_id: int) -> ConversationState:
    """The user's state in the conversation; a transient default when there is none yet."""
    state = await session.get(ConversationState, (user_id, conversation_id))
    return state or ConversationState(user_id=user_id, conversation_id=conversation_id, last_read_seq=0, muted=False)


async def move_read_position(session: AsyncSession, user_id: str, conversation_id: int, seq: int) -> None:
    """Move the read position forward to seq (never backwards), atomically."""
    await _upsert_state(session, user_id, conversation_id, last_read_seq=seq, update="last_read_seq")


async def advance_read_position(session: AsyncSession, user_id: str, conversation_id: int, seq: int) -> int:
    """move_read_position, then the resulting position."""
    await move_read_position(session, user_id, conversation_id, seq)
    # A locking read: it sees the row as committed now (a concurrent first read may have created
    # it after this transaction's snapshot), not as of the snapshot.
    position = await session.scalar(sa.select(ConversationState.last_read_seq).where(
        ConversationState.user_id == user_id, ConversationState.conversation_id == conversation_id).with_for_update())
    return int(position or 0)


async def set_muted(session: AsyncSession, user_id: str, conversation_id: int, muted: bool) -> None:
    await _upsert_state(session, user_id, conversation_id, muted=muted, update="muted")


async def read_positions(session: AsyncSession, conversation_id: int, *, exclude: str,
                         limit: int = 100) -> list[tuple[str, str, int]]:
    """(user_id, name, last_read_seq) of the furthest readers of a conversation, but `exclude`."""
    rows = await session.execute(
        sa.select(ConversationState.user_id, User.name, ConversationState.last_read_seq)
        .join(User, User.id == ConversationState.user_id, isouter=True)
        .where(ConversationState.conversation_id == conversation_id, ConversationState.user_id != exclude,
               ConversationState.last_read_seq > 0)
        .order_by(ConversationState.last_read_seq.desc()).limit(limit))
    return [(uid, name or uid, int(seq)) for uid, name, seq in rows.all()]


async def muted_user_ids(session: AsyncSession, conversation_id: int, user_ids: Sequence[str]) -> set[str]:
    if not user_ids:
        return set()
    rows = await session.scalars(
        sa.select(ConversationState.user_id).where(
            ConversationState.conversation_id == conversation_id,
            ConversationState.user_id.in_(set(user_ids)), ConversationState.muted.is_(True)))
    return set(rows)


# ---------------------------------------------------------------- the send path (Core, no ORM)
#
# chat/writer.py stores a batch of messages in one transaction with these; each is one
# statement whatever the batch size.

_conversations: sa.Table = Conversation.__table__  # type: ignore[assignment]
_messages: sa.Table = Message.__table__  # type: ignore[assignment]
_states: sa.Table = ConversationState.__table__  # type: ignore[assignment]
_users: sa.Table = User.__table__  # type: ignore[assignment]
_memberships: sa.Table = Membership.__table__  # type: ignore[assignment]
_sanctions: sa.Table = Sanction.__table__  # type: ignore[assignment]
_message_mentions: sa.Table = MessageMention.__table__  # type: ignore[assignment]
_member_blocks: sa.Table = MemberBlock.__table__  # type: ignore[assignment]

SENT_COLUMNS = (_messages.c.id, _messages.c.conversation_id, _messages.c.seq, _messages.c.sender_id,
                _messages.c.body, _messages.c.client_msg_id, _messages.c.created_at,
                _messages.c.edited_at, _messages.c.deleted,
                # threads (chat/threads.py fields_of)
                _messages.c.thread_id, _messages.c.reply_count, _messages.c.last_reply_at,
                _messages.c.thread_participants,
                _messages.c.mentions)  # chat/mentions.py (schemas.decode_mentions)


@dataclass(frozen=True)
class ConversationMeta:
    """What the send path needs of a conversation; none of it changes after creation."""

    id: int
    kind: str
    creator_id: str
    patron_id: str | None
    name: str
    min_tier_cents: int
    post_policy: str
    # Chat spaces (chat/spaces.py): these change with PATCH /rooms/{id}; the processes' cached
    # copies are dropped by the `room_updated` control message.
    topic: str = ""
    emoji: str | None = None
    archived: bool = False
    guidelines_version: int = 0
    has_guidelines: bool = False  # the current version asks to be accepted (non-empty text)


def conversation_meta_of(conv: Conversation) -> ConversationMeta:
    return ConversationMeta(conv.id, conv.kind, conv.creator_id, conv.patron_id, conv.name,
                            conv.min_tier_cents, conv.post_policy, conv.topic or "", conv.emoji,
                            conv.archived_at is not None, conv.guidelines_version or 0, bool(conv.guidelines))


def _meta_columns() -> tuple[Any, ...]:
    """ConversationMeta's columns, in its order (`_meta_of_row` reads them back)."""
    c = _conversations.c
    return (c.id, c.kind, c.creator_id, c.patron_id, c.name, c.min_tier_cents, c.post_policy, c.topic, c.emoji,
            c.archived_at, c.guidelines_version, sa.func.length(sa.func.coalesce(c.guidelines, "")))


def _meta_of_row(row: Any) -> ConversationMeta:
    return ConversationMeta(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7] or "", row[8],
                            row[9] is not None, int(row[10] or 0), bool(row[11]))


async def get_conversation_meta(conn: AsyncConnection, conversation_id: int) -> ConversationMeta | None:
    row = (await conn.execute(sa.select(*_meta_columns()).where(_conversations.c.id == conversation_id))).first()
    return None if row is None else _meta_of_row(row)


async def get_membership_state(conn: AsyncConnection, creator_id: str, patron_id: str) -> tuple[str, int] | None:
    """(status, tier_cents) of a membership, None if there is none."""
    c = _memberships.c
    row = (await conn.execute(sa.select(c.status, c.tier_cents).where(
        c.creator_id == creator_id, c.patron_id == patron_id))).first()
    return None if row is None else (str(row[0]), int(row[1]))


async def find_sent(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Stored messages by (sender_id, client_msg_id), for the keys given (SENT_COLUMNS)."""
    if not keys:
        return {}
    c = _messages.c
    rows = await conn.execute(sa.select(*SENT_COLUMNS).where(
        sa.tuple_(c.sender_id, c.client_msg_id).in_(sorted(set(keys)))))
    return {(r.sender_id, r.client_msg_id): r for r in rows}


async def take_seq_ranges(conn: AsyncConnection, counts: dict[int, int], now: datetime) -> dict[int, int]:
    """Add counts[cid] to each conversation's last_seq and return the new last_seq per conversation,
    so a conversation's new messages get seqs last - n + 1 .. last.

    The UPDATE write-locks the conversation rows until commit (MySQL: in primary key order, so
    two batches never wait on each other in a cycle; SQLite: BEGIN IMMEDIATE already holds the
    database), so concurrent batches on any process get consecutive ranges and a rolled-back
    batch leaves no gap."""
    if not counts:
        return {}
    c = _conversations.c
    ids = sorted(counts)
    if len(ids) == 1:
        increment: Any = counts[ids[0]]
    else:
        increment = sa.case({cid: counts[cid] for cid in ids}, value=c.id)
    update = sa.update(_conversations).where(c.id.in_(ids)).values(
        last_seq=c.last_seq + increment, last_activity_at=now)
    if conn.dialect.name == "sqlite":
        rows = await conn.execute(update.returning(c.id, c.last_seq))
    else:  # MariaDB has no UPDATE ... RETURNING; this transaction reads its own update
        await conn.execute(update)
        rows = await conn.execute(sa.select(c.id, c.last_seq).where(c.id.in_(ids)))
    return {int(cid): int(last) for cid, last in rows.all()}


async def insert_messages(conn: AsyncConnection, rows: list[dict[str, Any]]) -> dict[tuple[int, int], int]:
    """Insert messages (one multi-row INSERT ... RETURNING per page of rows); returns their ids by
    (conversation_id, seq). Raises IntegrityError when a (sender_id, client_msg_id) exists."""
    c = _messages.c
    result = await conn.execute(sa.insert(_messages).returning(c.id, c.conversation_id, c.seq), rows)
    return {(int(cid), int(seq)): int(mid) for mid, cid, seq in result.all()}


@dataclass(frozen=True)
class NewMessage:
    """A message for `store_new_messages`: its seq is `back` below its conversation's new last_seq."""

    conversation_id: int
    back: int
    sender_id: str
    body: str
    client_msg_id: str
    thread_id: int | None = None  # a reply's root (chat/threads.py)
    mentions: tuple[str, ...] = ()  # the mentioned user ids (chat/mentions.py)


class RowsLocked(Exception):  # noqa: N818 (a signal, not an error)
    """`store_new_messages(..., commit=True)`: a conversation row of the batch was locked by
    another transaction (FOR UPDATE NOWAIT); nothing was written, the transaction rolled back."""


# MariaDB's answer to FOR UPDATE NOWAIT on a locked row (ER_LOCK_WAIT_TIMEOUT; MySQL 8 would
# say ER_LOCK_NOWAIT, 3572).
_NOWAIT_LOCKED = (1205, 3572)


async def store_new_messages(conn: AsyncConnection, counts: dict[int, int], messages: Sequence[NewMessage],
                             positions: dict[tuple[str, int], int], now: datetime,
                             commit: bool = False) -> dict[tuple[str, str], tuple[int, int]]:
    """MariaDB, in ONE round trip (one multi-statement query): `take_seq_ranges` (counts),
    `insert_messages` and `move_read_positions` (positions: (user_id, conversation_id) -> back)
    for messages assumed new, their seqs computed by the server from the updated last_seq.
    Returns (id, seq) by (sender_id, client_msg_id).

    The same statements as the three functions, in the same order, so the same locks in the
    same order. A (sender_id, client_msg_id) already stored (a retry: nothing looked for it) or a
    missing conversation (seq NULL) makes the INSERT fail with IntegrityError: the caller rolls
    back and writes the batch the careful way. Parameters are escaped by the driver, as for
    every statement (aiomysql always speaks the multi-statement protocol).

    commit=True (`conn` in autocommit mode, chat/db.py `create_read_engine`): the whole
    transaction in that one query, `BEGIN; SELECT ... FOR UPDATE NOWAIT` of the conversation rows
    (primary-key order); the statements; `COMMIT`. The rows are then locked only while the
    server runs the query and commits, never while this process waits for a CPU or its event
    loop between a result and its COMMIT. MariaDB stops a multi-statement query at its first
    error, so COMMIT runs only if everything before it succeeded; on any error this sends
    ROLLBACK (the connection is in autocommit mode again after it) and raises: `RowsLocked`
    when a row was locked, else the error as for commit=False."""
    # Only placeholders are joined into the text (hence the noqa: S608); every value is a parameter.
    ids = sorted(counts)
    at = now.astimezone(UTC).replace(tzinfo=None)
    last = "(SELECT last_seq FROM conversations WHERE id = %s) - %s"
    params: list[Any] = []
    if commit:
        params += ids
    cases = " ".join("WHEN %s THEN %s" for _ in ids)
    for cid in ids:
        params += (cid, counts[cid])
    params.append(at)
    params += ids
    sql = [f"UPDATE conversations SET last_seq = last_seq + CASE id {cases} END, last_activity_at = %s "  # noqa: S608
           f"WHERE id IN ({', '.join('%s' for _ in ids)})"]
    values = ", ".join(f"(%s, {last}, %s, %s, %s, %s, NULL, 0, %s, %s)" for _ in messages)
    for m in messages:
        params += (m.conversation_id, m.conversation_id, m.back, m.sender_id, m.body, m.client_msg_id, at,
                   m.thread_id, encode_mentions(m.mentions))
    sql.append("INSERT INTO messages (conversation_id, seq, sender_id, body, client_msg_id, created_at, edited_at, "  # noqa: S608
               f"deleted, thread_id, mentions) VALUES {values} RETURNING id, seq, sender_id, client_msg_id")
    mentioned = [(uid, m.conversation_id, m.back) for m in messages for uid in m.mentions]
    if mentioned:  # mention_count's rows (chat/mentions.py), keyed by the seq the INSERT got
        sql.append("INSERT INTO message_mentions (user_id, conversation_id, seq) VALUES "  # noqa: S608
                   + ", ".join(f"(%s, %s, {last})" for _ in mentioned))
        for uid, cid, back in mentioned:
            params += (uid, cid, cid, back)
    if positions:
        keys = sorted(positions)
        sql.append("INSERT INTO conversation_states (user_id, conversation_id, last_read_seq, muted) VALUES "  # noqa: S608
                   + ", ".join(f"(%s, %s, {last}, 0)" for _ in keys)
                   + " ON DUPLICATE KEY UPDATE last_read_seq = GREATEST(last_read_seq, VALUES(last_read_seq))")
        for uid, cid in keys:
            params += (uid, cid, cid, positions[(uid, cid)])
    if commit:
        sql[:0] = ["BEGIN", f"SELECT id FROM conversations WHERE id IN ({', '.join('%s' for _ in ids)}) "  # noqa: S608
                            "ORDER BY id FOR UPDATE NOWAIT"]
        sql.append("COMMIT")
    statement = ";\n".join(sql)
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    rows: Any = ()
    try:
        async with driver.cursor() as cursor:
            await cursor.execute(statement, params)
            while True:  # the INSERT ... RETURNING's rows: the last result set with rows
                if cursor.description:
                    rows = await cursor.fetchall()
                if not await cursor.nextset():
                    break
    except conn.dialect.loaded_dbapi.Error as exc:
        # What SQLAlchemy does for its own statements: its exception classes, and a dead
        # connection invalidated (so `retrying` runs the transaction again on a fresh one).
        invalidated = bool(conn.dialect.is_disconnect(exc, raw.dbapi_connection, None))
        if commit and not invalidated:
            try:
                await driver.rollback()
            except conn.dialect.loaded_dbapi.Error:
                invalidated = True
        if invalidated:
            await conn.invalidate(exc)
        if commit and not invalidated and exc.args and exc.args[0] in _NOWAIT_LOCKED:
            raise RowsLocked(str(exc)) from exc
        raise sa.exc.DBAPIError.instance(statement, params, exc, conn.dialect.loaded_dbapi.Error,
                                         connection_invalidated=invalidated) from exc
    return {(sender, cmid): (int(mid), int(seq)) for mid, seq, sender, cmid in rows}


async def insert_mentions(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """mention_count's rows of newly stored messages: {user_id, conversation_id, seq} each."""
    if rows:
        await conn.execute(sa.insert(_message_mentions), rows)


def _read_positions_upsert(dialect: str) -> Any:
    """One statement, built once per dialect and run with many parameter sets: the driver sends
    them as one multi-row INSERT (MySQL) or runs them in one call (SQLite), and SQLAlchemy's
    compiled cache applies whatever the batch size."""
    current = _states.c
    if dialect == "sqlite":
        lite = sqlite_insert(_states)
        return lite.on_conflict_do_update(index_elements=["user_id", "conversation_id"], set_={
            "last_read_seq": sa.func.max(current.last_read_seq, lite.excluded.last_read_seq)})
    my = mysql_insert(_states)
    return my.on_duplicate_key_update(last_read_seq=sa.func.greatest(current.last_read_seq, my.inserted.last_read_seq))


_UPSERTS: dict[str, Any] = {}


async def move_read_positions(conn: AsyncConnection, positions: dict[tuple[str, int], int]) -> None:
    """move_read_position for many (user_id, conversation_id) at once, in key order (rows locked
    in the same order by every batch)."""
    if not positions:
        return
    dialect = conn.dialect.name
    stmt = _UPSERTS.get(dialect)
    if stmt is None:
        stmt = _UPSERTS[dialect] = _read_positions_upsert(dialect)
    await conn.execute(stmt, [{"user_id": uid, "conversation_id": cid, "last_read_seq": seq, "muted": False}
                              for (uid, cid), seq in sorted(positions.items())])


async def user_names_of(conn: AsyncConnection, user_ids: Sequence[str]) -> dict[str, str]:
    if not user_ids:
        return {}
    rows = await conn.execute(sa.select(_users.c.id, _users.c.name).where(_users.c.id.in_(set(user_ids))))
    names = {uid: name for uid, name in rows.all()}
    return {uid: names.get(uid, uid) for uid in user_ids}


# ---------------------------------------------------------------- join (Core, no ORM)


@dataclass(frozen=True)
class JoinView:
    """What `join` reads before deciding: the conversation, the membership access_rule needs,
    the user's read position and unread count, and the names and avatars of a direct conversation's pair."""

    conversation: ConversationMeta
    membership: tuple[str, int] | None
    last_read_seq: int
    unread: int
    creator_name: str
    patron_name: str
    creator_avatar: str | None = None
    patron_avatar: str | None = None
    last_seq: int = 0  # the conversation's, as of this read (the join's cache check, chat/recent.py)
    standing: Standing | None = None  # the sanction of the membership's pair (chat/moderation.py)
    guidelines: str = ""  # the room's guidelines text (chat/spaces.py)
    accepted_guidelines_version: int = 0  # the joiner's accepted version
    blocks: frozenset[str] = frozenset()  # whom the user of the pair blocks (chat/memberblocks.py)


JOIN_VIEWS_BATCH = 64  # (conversation, user) pairs per statement of join_views


def _join_views_statement(n: int) -> Any:
    """What `join` reads first, for n (conversation_id, user_id) pairs at once: the conversation
    row, the membership access_rule needs (rooms: the user's with the creator; direct
    conversations: the pair's), the user's read position and unread count, the pair's names and
    avatars, the conversation's last_seq, and whom the user blocks (chat/memberblocks.py: the
    blocked ids joined by commas, user ids have none). The pairs are a derived table `k`
    (SELECT :c0, :u0 UNION ALL ...); every row carries its pair's index."""
    rows = [sa.select(sa.literal_column(str(i)).label("i"),
                      sa.bindparam(f"c{i}", type_=sa.BigInteger()).label("cid"),
                      sa.bindparam(f"u{i}", type_=_users.c.id.type).label("uid")) for i in range(n)]
    k = (rows[0] if n == 1 else sa.union_all(*rows)).subquery("k")
    c, m, s, sn = _conversations.c, _memberships.alias("m"), _states.alias("s"), _sanctions.alias("sn")
    creator, patron = _users.alias("uc"), _users.alias("up")
    msg = _messages.alias("um")
    blocks = _member_blocks.alias("mb")
    position = sa.func.coalesce(s.c.last_read_seq, 0)
    unread = (sa.select(sa.func.count()).select_from(msg).where(
        msg.c.conversation_id == c.id, msg.c.seq > position, msg.c.sender_id != k.c.uid,
        msg.c.deleted.is_(False)).scalar_subquery())
    blocked = sa.select(sa.func.group_concat(blocks.c.blocked_id)).where(blocks.c.blocker_id == k.c.uid).scalar_subquery()
    pair_patron = sa.case((c.kind == "direct", c.patron_id), else_=k.c.uid)
    return (sa.select(c.id, c.kind, c.creator_id, c.patron_id, c.name, c.min_tier_cents, c.post_policy,
                      m.c.status, m.c.tier_cents, position, unread, creator.c.name, patron.c.name,
                      creator.c.avatar_url, patron.c.avatar_url, c.last_seq, k.c.i, sn.c.blocked, sn.c.timeout_until,
                      # chat spaces (chat/spaces.py): from 19 on
                      c.topic, c.emoji, c.archived_at, c.guidelines_version, c.guidelines,
                      sa.func.coalesce(s.c.accepted_guidelines_version, 0),
                      blocked)  # 25
            .select_from(k.join(_conversations, c.id == k.c.cid)
                         .outerjoin(m, sa.and_(m.c.creator_id == c.creator_id, m.c.patron_id == pair_patron))
                         .outerjoin(sn, sa.and_(sn.c.creator_id == c.creator_id, sn.c.user_id == pair_patron))
                         .outerjoin(s, sa.and_(s.c.user_id == k.c.uid, s.c.conversation_id == c.id))
                         .outerjoin(creator, creator.c.id == c.creator_id)
                         .outerjoin(patron, patron.c.id == c.patron_id)))


def _join_view_of(row: Any) -> JoinView:
    meta = ConversationMeta(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[19] or "", row[20],
                            row[21] is not None, int(row[22] or 0), bool(row[23]))
    status, tier = row[7], row[8]
    return JoinView(meta, None if status is None else (str(status), int(tier)), int(row[9]), int(row[10]),
                    row[11] or meta.creator_id, row[12] or (meta.patron_id or ""), row[13], row[14],
                    int(row[15] or 0), None if row[17] is None else Standing(bool(row[17]), row[18]),
                    row[23] or "", int(row[24] or 0), frozenset(row[25].split(",")) if row[25] else frozenset())


async def join_views(conn: AsyncConnection, pairs: Sequence[tuple[int, str]]) -> dict[tuple[int, str], JoinView]:
    """join_view for many (conversation_id, user_id) pairs, one statement per JOIN_VIEWS_BATCH of
    them (the joins of a storm, chat/batch.py); pairs whose conversation does not exist are absent.
    The statements are compiled once per dialect and (padded: at most 7 shapes) batch size and
    run on the driver's own cursor (chat/driversql.py): building and executing them through SQLAlchemy cost more CPU
    per join than the database took to run them (connect-storm profiles)."""
    out: dict[tuple[int, str], JoinView] = {}
    for chunk in driversql.padded_chunks(pairs, JOIN_VIEWS_BATCH):  # a repeated pair: its row again
        prepared = driversql.prepare(conn.dialect, _join_views_statement, len(chunk))
        params: dict[str, Any] = {}
        for i, (cid, uid) in enumerate(chunk):
            params[f"c{i}"], params[f"u{i}"] = cid, uid
        for row in await driversql.fetch(conn, prepared, params):
            out[chunk[int(row[16])]] = _join_view_of(row)
    return out


def _message_page_statement(after: bool, limit: int, include_replies: bool = True) -> Any:
    c = _messages.c
    q = (sa.select(*SENT_COLUMNS, _users.c.name)
         .select_from(_messages.outerjoin(_users, _users.c.id == c.sender_id))
         .where(c.conversation_id == sa.bindparam("conversation_id")))
    if not include_replies:
        q = q.where(c.thread_id.is_(None))
    if after:
        q = q.where(c.seq > sa.bindparam("after_seq")).order_by(c.seq.asc())
    else:
        q = q.order_by(c.seq.desc())
    return q.limit(limit)


_MESSAGE_PAGES: dict[tuple[bool, int, bool], Any] = {}


async def message_page(conn: AsyncConnection, conversation_id: int, *, after_seq: int | None,
                       limit: int, include_replies: bool = True) -> tuple[list[Any], bool]:
    """list_messages' page (`limit` after after_seq, else the last `limit`), ascending by seq, in
    one statement: rows of SENT_COLUMNS plus the sender's `name` (None if the user is unknown)."""
    key = (after_seq is not None, limit + 1, include_replies)
    stmt = _MESSAGE_PAGES.get(key)
    if stmt is None:
        stmt = _MESSAGE_PAGES[key] = _message_page_statement(*key)
    params: dict[str, Any] = {"conversation_id": conversation_id}
    if after_seq is not None:
        params["after_seq"] = after_seq
    rows = list((await conn.execute(stmt, params)).all())
    has_more = len(rows) > limit
    rows = rows[:limit]
    if after_seq is None:
        rows.reverse()
    return rows, has_more


def _read_positions_statement() -> Any:
    st = _states.c
    return (sa.select(st.user_id, _users.c.name, st.last_read_seq)
            .select_from(_states.outerjoin(_users, _users.c.id == st.user_id))
            .where(st.conversation_id == sa.bindparam("conversation_id"), st.last_read_seq > 0)
            # Ties by user id, so the answer is the same from the database and from chat/recent.py.
            .order_by(st.last_read_seq.desc(), st.user_id).limit(sa.bindparam("limit", type_=sa.Integer())))


_READ_POSITIONS = _read_positions_statement()


async def top_read_positions(conn: AsyncConnection, conversation_id: int, limit: int) -> list[tuple[str, str, int]]:
    """(user_id, name, last_read_seq) of the `limit` furthest readers of a conversation (the
    join answer's `read_positions` are the first 100 of them but the joiner's)."""
    rows = await conn.execute(_READ_POSITIONS, {"conversation_id": conversation_id, "limit": limit})
    return [(uid, name or uid, int(seq)) for uid, name, seq in rows.all()]


def _user_names_statement(n: int) -> Any:
    return sa.select(_users.c.id, _users.c.name).where(_users.c.id.in_([sa.bindparam(f"u{i}", type_=_users.c.id.type)
                                                                         for i in range(n)]))


USER_NAMES_BATCH = 64  # ids per statement of stored_user_names


async def stored_user_names(conn: AsyncConnection, user_ids: Sequence[str]) -> dict[str, str]:
    """The stored names of those of `user_ids` that exist: one statement per USER_NAMES_BATCH,
    compiled once per dialect and (padded) size, on the driver's cursor (chat/driversql.py)."""
    out: dict[str, str] = {}
    for chunk in driversql.padded_chunks(user_ids, USER_NAMES_BATCH):
        prepared = driversql.prepare(conn.dialect, _user_names_statement, len(chunk))
        for uid, name in await driversql.fetch(conn, prepared, {f"u{i}": u for i, u in enumerate(chunk)}):
            out[str(uid)] = str(name)
    return out


# ---------------------------------------------------------------- reactions (Core, no ORM)
#
# ChatService.react changes one message's reactions in one transaction that first write-locks
# the message row, so every change to that message's reactions, on any process, runs one
# after the other: the limits and the counts read inside it are exact (SQLite: BEGIN
# IMMEDIATE already serializes writers). Counts are COUNT(*) of rows, never a stored number.

_reactions: sa.Table = Reaction.__table__  # type: ignore[assignment]


async def lock_message(conn: AsyncConnection, message_id: int) -> tuple[int, bool] | None:
    """(conversation_id, deleted) of a message, its row write-locked until commit; None if none."""
    c = _messages.c
    row = (await conn.execute(sa.select(c.conversation_id, c.deleted).where(c.id == message_id)
                              .with_for_update())).first()
    return None if row is None else (int(row[0]), bool(row[1]))


async def reaction_counts(conn: AsyncConnection, message_id: int) -> list[dict[str, Any]]:
    """[{emoji, count}] of a message, in the order each emoji was first used."""
    r = _reactions.c
    q = (sa.select(r.emoji, sa.func.count()).where(r.message_id == message_id).group_by(r.emoji)
         .order_by(sa.func.min(r.created_at), r.emoji))
    return [{"emoji": str(e), "count": int(n)} for e, n in (await conn.execute(q)).all()]


async def locked_reactions(conn: AsyncConnection, message_id: int, user_id: str) -> tuple[list[dict[str, Any]], set[str]]:
    """reaction_counts, and the emoji of `user_id`'s reactions, in one locking read (the rows
    as committed now, whatever the transaction's snapshot)."""
    r = _reactions.c
    mine = sa.func.max(sa.case((r.user_id == user_id, 1), else_=0))
    q = (sa.select(r.emoji, sa.func.count(), mine).where(r.message_id == message_id).group_by(r.emoji)
         .order_by(sa.func.min(r.created_at), r.emoji).with_for_update())
    rows = (await conn.execute(q)).all()
    return [{"emoji": str(e), "count": int(n)} for e, n, _ in rows], {str(e) for e, _, m in rows if m}


async def insert_reaction(conn: AsyncConnection, message_id: int, user_id: str, emoji: str, now: datetime) -> None:
    await conn.execute(sa.insert(_reactions).values(message_id=message_id, user_id=user_id, emoji=emoji,
                                                    created_at=now))


async def delete_reaction(conn: AsyncConnection, message_id: int, user_id: str, emoji: str) -> None:
    r = _reactions.c
    await conn.execute(sa.delete(_reactions).where(r.message_id == message_id, r.user_id == user_id,
                                                   r.emoji == emoji))


def _summaries_statement() -> Any:
    r = _reactions.c
    mine = sa.func.max(sa.case((r.user_id == sa.bindparam("reader", type_=r.user_id.type), 1), else_=0))
    return (sa.select(r.message_id, r.emoji, sa.func.count(), mine)
            .where(r.message_id.in_(sa.bindparam("ids", expanding=True)))
            .group_by(r.message_id, r.emoji)
            .order_by(r.message_id, sa.func.min(r.created_at), r.emoji))


_SUMMARIES = _summaries_statement()


def _counts_statement(n: int) -> Any:
    r = _reactions.c
    return (sa.select(r.message_id, r.emoji, sa.func.count())
            .where(r.message_id.in_([sa.bindparam(f"m{i}", type_=sa.BigInteger()) for i in range(n)]))
            .group_by(r.message_id, r.emoji)
            .order_by(r.message_id, sa.func.min(r.created_at), r.emoji))


def _mine_statement() -> Any:
    r = _reactions.c
    return sa.select(r.message_id, r.emoji, r.user_id).where(
        r.message_id.in_(sa.bindparam("ids", expanding=True)), r.user_id.in_(sa.bindparam("readers", expanding=True)))


_MINE = _mine_statement()


async def reaction_counts_many(conn: AsyncConnection, message_ids: Sequence[int]) -> dict[int, list[tuple[str, int]]]:
    """{message_id: [(emoji, count)]} of the messages that have reactions, in
    `reaction_summaries`' order: one statement per 256 messages, compiled once per dialect and
    (padded) size and run on the driver's cursor (chat/driversql.py)."""
    counts: dict[int, list[tuple[str, int]]] = {}
    for chunk in driversql.padded_chunks(sorted(set(message_ids))):
        prepared = driversql.prepare(conn.dialect, _counts_statement, len(chunk))
        for mid, emoji, count in await driversql.fetch(conn, prepared, {f"m{i}": m for i, m in enumerate(chunk)}):
            counts.setdefault(int(mid), []).append((str(emoji), int(count)))
    return counts


async def reaction_counts_for_readers(conn: AsyncConnection, message_ids: Sequence[int], reader_ids: Sequence[str]
                                      ) -> tuple[dict[int, list[tuple[str, int]]], set[tuple[int, str, str]]]:
    """For many readers at once (the joins of a storm): {message_id: [(emoji, count)]} in
    `reaction_summaries`' order, and the (message_id, emoji, reader) reactions of those readers.
    The counts: `reaction_counts_many`; the readers' own: one more statement when any of the
    messages has a reaction."""
    counts = await reaction_counts_many(conn, message_ids)
    mine: set[tuple[int, str, str]] = set()
    if counts:
        rows = await conn.execute(_MINE, {"ids": sorted(counts), "readers": sorted(set(reader_ids))})
        mine = {(int(mid), str(emoji), str(uid)) for mid, emoji, uid in rows.all()}
    return counts, mine


async def reaction_summaries(conn: AsyncConnection, message_ids: Sequence[int],
                             reader_id: str) -> dict[int, list[dict[str, Any]]]:
    """{message_id: [{emoji, count, me}]} for the messages that have reactions, `me` for reader_id."""
    out: dict[int, list[dict[str, Any]]] = {}
    rows = await conn.execute(_SUMMARIES, {"ids": sorted(set(message_ids)), "reader": reader_id})
    for mid, emoji, count, mine in rows.all():
        out.setdefault(int(mid), []).append({"emoji": str(emoji), "count": int(count), "me": bool(mine)})
    return out


async def reactors(conn: AsyncConnection, message_id: int, emoji: str | None,
                   limit: int) -> dict[str, list[dict[str, str]]]:
    """{emoji: [{id, name}]}: the first `limit` users who reacted with each emoji (or one emoji),
    oldest first."""
    r = _reactions.c
    rank = sa.func.row_number().over(partition_by=r.emoji, order_by=(r.created_at, r.user_id)).label("rank")
    inner = sa.select(r.emoji, r.user_id, r.created_at, rank).where(r.message_id == message_id)
    if emoji is not None:
        inner = inner.where(r.emoji == emoji)
    sub = inner.subquery()
    rows = await conn.execute(
        sa.select(sub.c.emoji, sub.c.user_id, _users.c.name)
        .select_from(sub.outerjoin(_users, _users.c.id == sub.c.user_id))
        .where(sub.c.rank <= limit).order_by(sub.c.emoji, sub.c.rank))
    out: dict[str, list[dict[str, str]]] = {}
    for e, uid, name in rows.all():
        out.setdefault(str(e), []).append({"id": str(uid), "name": str(name or uid)})
    return out
