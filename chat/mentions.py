"""@mentions (issue 13.3, docs/api.md "Mentions"): resolved on send, stored with the message,
counted per reader.

A message body mentions a member with `@user_id` or `@Display Name` (case-insensitive, names
with spaces, the longest match at each `@` wins, an id before a name of the same length); a
send may also list `mentions: [user_id]` itself (the page's completion does). Only current
members of the conversation are kept (the room's creator and its active patrons at or above its
tier, not blocked; a direct conversation's pair), never the sender, at most MAX_MENTIONS; the
rest is ignored, not an error.

Cost: a body without "@" and no `mentions` list costs nothing. Otherwise ONE query, before the
message goes to the writer: the members among the ids and names the body could mean (and the
listed ids). The writer stores the result in the batch's own transaction: the `mentions` column
of the message (its wire form) and one `message_mentions` row per mentioned user (chat/writer.py,
chat/storage.py), which `mention_count` counts (unread: after the reader's read position, not
deleted), in the database, so it is exact across processes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from chat.auth import USER_ID_RE
from chat.errors import Invalid
from chat.models import ConversationState, MemberBlock, Membership, Message, MessageMention, Sanction, User
from chat.storage import ConversationMeta

MAX_MENTIONS = 25  # distinct users per message: more in a `mentions` list is invalid, more in the body ignored
MAX_AT_SIGNS = 25  # "@" of a body looked at (the first ones)
MAX_NAME_CHARS = 64  # a display name longer than this is mentioned by id (or the `mentions` list)

# An "@" that starts a mention: not inside a word (so "ann@example.com" mentions nobody), followed
# by something other than a space.
_AT = re.compile(r"(?<![\w@])@(?=[^\s@])")

_users: sa.Table = User.__table__  # type: ignore[assignment]
_memberships: sa.Table = Membership.__table__  # type: ignore[assignment]
_sanctions: sa.Table = Sanction.__table__  # type: ignore[assignment]
_messages: sa.Table = Message.__table__  # type: ignore[assignment]
_states: sa.Table = ConversationState.__table__  # type: ignore[assignment]
_mentions: sa.Table = MessageMention.__table__  # type: ignore[assignment]
_blocks: sa.Table = MemberBlock.__table__  # type: ignore[assignment]


# ---------------------------------------------------------------- the send payload


def check_mentions(data: dict[str, Any]) -> tuple[str, ...]:
    """`mentions` of a send: absent, or a list of up to MAX_MENTIONS user ids."""
    value = data.get("mentions")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid("mentions must be a list of user ids")
    if len(value) > MAX_MENTIONS:
        raise Invalid(f"at most {MAX_MENTIONS} mentions per message")
    for v in value:
        if not isinstance(v, str) or not USER_ID_RE.match(v):
            raise Invalid("mentions must be a list of user ids")
    return tuple(dict.fromkeys(value))


# ---------------------------------------------------------------- parsing a body


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def candidates(body: str) -> list[list[str]]:
    """For each of the first MAX_AT_SIGNS "@" that start a mention, what may follow it as a
    mention, longest first: every prefix of the next MAX_NAME_CHARS characters (up to the end of
    the line) that ends at a word boundary, so "@Ann Lee, hi" offers "Ann Lee, hi", "Ann Lee,",
    "Ann Lee" and "Ann", and "@Annie" does not offer "Ann"."""
    out: list[list[str]] = []
    for at in _AT.finditer(body):
        if len(out) == MAX_AT_SIGNS:
            break
        start = at.end()
        tail = body[start:start + MAX_NAME_CHARS + 1]
        found: list[str] = []
        for i in range(1, min(len(tail), MAX_NAME_CHARS) + 1):
            last = tail[i - 1]
            if last in "\r\n":
                break
            if last.isspace():
                continue
            after = tail[i] if i < len(tail) else ""
            if after and _is_word(after) and _is_word(last):
                continue
            found.append(tail[:i])
        if found:
            out.append(found[::-1])
    return out


def name_key(name: str) -> str:
    """What two display names must share to be the same mention (Python's Unicode lower case;
    SQL compares `LOWER(name)`, on SQLite the same Python function, chat/db.py)."""
    return name.lower()


def pick(tokens: list[list[str]], explicit: Sequence[str], members: dict[str, str], sender_id: str) -> tuple[str, ...]:
    """The mentioned members, in the order the body names them, then the `explicit` ones:
    at each "@" the longest candidate that is a member's id or display name (an id first; a name
    that several members share mentions them all); the sender and non-members left out, at most
    MAX_MENTIONS."""
    by_name: dict[str, list[str]] = {}
    for uid, name in sorted(members.items()):
        by_name.setdefault(name_key(name), []).append(uid)
    found: list[str] = []
    for options in tokens:
        for option in options:
            if option in members:
                found.append(option)
                break
            named = by_name.get(name_key(option))
            if named:
                found.extend(named)
                break
    found.extend(u for u in explicit if u in members)
    return tuple(u for u in dict.fromkeys(found) if u != sender_id)[:MAX_MENTIONS]


# ---------------------------------------------------------------- resolving against members


def _key_sql(conn: AsyncConnection, column: Any) -> Any:
    # SQLite's own LOWER() folds ASCII only: chat/db.py registers `unicode_lower` (Python's).
    return sa.func.unicode_lower(column) if conn.dialect.name == "sqlite" else sa.func.lower(column)


async def members_matching(conn: AsyncConnection, conv: ConversationMeta, ids: Iterable[str],
                           keys: Iterable[str]) -> dict[str, str]:
    """{user_id: display name} of the conversation's current members whose id is in `ids` or
    whose name_key is in `keys`, in one statement. Members: a room's creator, and its patrons
    with an active membership at or above its tier and no block; a direct conversation's pair."""
    ids, keys = sorted(set(ids)), sorted(set(keys))
    u = _users.c
    if conv.kind == "direct":
        pair = [conv.creator_id, conv.patron_id or ""]
        rows = (await conn.execute(sa.select(u.id, u.name).where(u.id.in_(pair)))).all()
        names = {str(uid): str(name or uid) for uid, name in rows}
        both = {uid: names.get(uid, uid) for uid in pair if uid}
        return {uid: name for uid, name in both.items() if uid in ids or name_key(name) in keys}
    m, sn = _memberships.c, _sanctions.c
    match = []
    if ids:
        match.append(m.patron_id.in_(ids))
    if keys:
        match.append(_key_sql(conn, u.name).in_(keys))
    patrons = (sa.select(m.patron_id, u.name)
               .select_from(_memberships.outerjoin(_users, u.id == m.patron_id)
                            .outerjoin(_sanctions, sa.and_(sn.creator_id == m.creator_id, sn.user_id == m.patron_id)))
               .where(m.creator_id == conv.creator_id, m.status == "active", m.tier_cents >= conv.min_tier_cents,
                      sa.or_(sn.blocked.is_(None), sn.blocked.is_(False)), sa.or_(*match)))
    creator = sa.select(u.id, u.name).where(u.id == conv.creator_id)
    rows = (await conn.execute(sa.union_all(patrons, creator))).all()
    out: dict[str, str] = {conv.creator_id: conv.creator_id}
    out.update({str(uid): str(name or uid) for uid, name in rows})
    if conv.creator_id not in ids and name_key(out[conv.creator_id]) not in keys:
        del out[conv.creator_id]
    return out


async def resolve(conn: AsyncConnection, conv: ConversationMeta, sender_id: str, body: str,
                  explicit: Sequence[str]) -> tuple[str, ...]:
    """The members `body` and the `explicit` list mention (see `pick`); one query, none when
    there is nothing to look up."""
    tokens = candidates(body) if "@" in body else []
    if not tokens and not explicit:
        return ()
    ids = {o for options in tokens for o in options if USER_ID_RE.match(o)} | set(explicit)
    keys = {name_key(o) for options in tokens for o in options}
    members = await members_matching(conn, conv, ids, keys)
    return pick(tokens, explicit, members, sender_id) if members else ()


async def still_members(session: AsyncSession, creator_id: str, room_tier: int, user_ids: Sequence[str],
                        after: str | None) -> list[str]:
    """Those of `user_ids` (above `after`, in id order) who still read the creator's room of this
    tier: the creator, and patrons with an active membership at the tier (blocks are left out by
    the push worker's caller, like mutes). For the push of a message that mentions them."""
    wanted = sorted(u for u in set(user_ids) if after is None or u > after)
    if not wanted:
        return []
    m = _memberships.c
    patrons = set(await session.scalars(sa.select(m.patron_id).where(
        m.creator_id == creator_id, m.patron_id.in_(wanted), m.status == "active", m.tier_cents >= room_tier)))
    return [u for u in wanted if u == creator_id or u in patrons]


# ---------------------------------------------------------------- counting unread mentions


def _unread_mentions(user_id: str, *, past_read_position: bool = False) -> Any:
    """Per conversation, how many not-deleted messages mention the user, leaving out those of
    senders the user blocks (shown to them as placeholders); with `past_read_position`, only
    those after the user's read position there."""
    mm, msg, st, b = _mentions.c, _messages.c, _states.c, _blocks.c
    source = _mentions.join(_messages, sa.and_(msg.conversation_id == mm.conversation_id, msg.seq == mm.seq))
    blocked = sa.exists().where(b.blocker_id == mm.user_id, b.blocked_id == msg.sender_id)
    where = [mm.user_id == user_id, msg.deleted.is_(False), ~blocked]
    if past_read_position:
        source = source.outerjoin(_states, sa.and_(st.user_id == mm.user_id, st.conversation_id == mm.conversation_id))
        where.append(mm.seq > sa.func.coalesce(st.last_read_seq, 0))
    return sa.select(mm.conversation_id, sa.func.count()).select_from(source).where(*where).group_by(mm.conversation_id)


async def count_unread(conn: AsyncConnection, user_id: str, positions: dict[int, int]) -> dict[int, int]:
    """`mention_count` of each conversation in `positions` (conversation_id -> the user's read
    position): the messages after it that mention the user and are not deleted; one query."""
    if not positions:
        return {}
    mm = _mentions.c
    q = _unread_mentions(user_id).where(sa.or_(*[sa.and_(mm.conversation_id == cid, mm.seq > pos)
                                                 for cid, pos in positions.items()]))
    counts = dict.fromkeys(positions, 0)
    counts.update({int(cid): int(n) for cid, n in (await conn.execute(q)).all()})
    return counts


async def count_all_unread(conn: AsyncConnection, user_id: str) -> dict[int, int]:
    """{conversation_id: mention_count} of every conversation where the user has an unread
    mention (after their read position there; all of them if they never read it); one query.
    The caller keeps the conversations the user may still read."""
    rows = (await conn.execute(_unread_mentions(user_id, past_read_position=True))).all()
    return {int(cid): int(n) for cid, n in rows}


# ---------------------------------------------------------------- completion: who can be mentioned

MAX_MEMBER_MATCHES = 25
DEFAULT_MEMBER_MATCHES = 10
MAX_QUERY_CHARS = MAX_NAME_CHARS


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def find_members(conn: AsyncConnection, conv: ConversationMeta, query: str,
                       limit: int) -> list[dict[str, Any]]:
    """The conversation's current members (as in members_matching) whose display name, or a word
    of it, or whose id starts with `query` (ignoring case; "" matches everyone), by name then id,
    at most `limit`: [{id, name, avatar_url}]. For the `@` completion of a composer."""
    u = _users.c
    key = name_key(query)
    if conv.kind == "direct":
        pair = [x for x in (conv.creator_id, conv.patron_id) if x]
        rows = (await conn.execute(sa.select(u.id, u.name, u.avatar_url).where(u.id.in_(pair)))).all()
        found = {str(uid): (str(name or uid), avatar) for uid, name, avatar in rows}
        members = [(uid, *found.get(uid, (uid, None))) for uid in pair]
    else:
        m, sn = _memberships.c, _sanctions.c
        name = _key_sql(conn, u.name)
        match: Any = sa.true()
        if key:
            prefix = _like_prefix(key)
            match = sa.or_(name.like(prefix, escape="\\"), name.like("% " + prefix, escape="\\"),
                           _key_sql(conn, m.patron_id).like(prefix, escape="\\"))
        patrons = (sa.select(m.patron_id, u.name, u.avatar_url)
                   .select_from(_memberships.outerjoin(_users, u.id == m.patron_id)
                                .outerjoin(_sanctions, sa.and_(sn.creator_id == m.creator_id,
                                                               sn.user_id == m.patron_id)))
                   .where(m.creator_id == conv.creator_id, m.status == "active",
                          m.tier_cents >= conv.min_tier_cents, sa.or_(sn.blocked.is_(None), sn.blocked.is_(False)),
                          match)
                   .order_by(u.name, m.patron_id).limit(limit + 1))
        rows = (await conn.execute(patrons)).all()
        creator = (await conn.execute(sa.select(u.name, u.avatar_url).where(u.id == conv.creator_id))).first()
        members = [(str(uid), str(nm or uid), avatar) for uid, nm, avatar in rows]
        members.append((conv.creator_id, str(creator[0]) if creator else conv.creator_id,
                        creator[1] if creator else None))
    hits = [(uid, nm, avatar) for uid, nm, avatar in members
            if not key or name_key(uid).startswith(key) or any(w.startswith(key) for w in _words(nm))]
    hits.sort(key=lambda h: (name_key(h[1]), h[0]))
    return [{"id": uid, "name": nm, "avatar_url": avatar} for uid, nm, avatar in hits[:limit]]


def _words(name: str) -> list[str]:
    """The name, and what follows each space in it, lower-cased: "@lee" finds "Ann Lee"."""
    key = name_key(name)
    return [key] + [key[i + 1:] for i, ch in enumerate(key) if ch == " "]
