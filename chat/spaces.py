"""Chat spaces (issue 14 part 1, docs/moderation.md "Spaces"): a creator's rooms with a name,
topic and emoji, at most MAX_ACTIVE_SPACES active (not archived) per creator, changed by the
backend (PATCH /api/v1/server/rooms/{id}): renamed, re-gated, archived (read-only) or given
guidelines, and deleted (DELETE /api/v1/server/rooms/{id}).

Guidelines are versioned: every change of the text bumps `guidelines_version`; a member posts in
the room only after accepting the current version (`accept_guidelines`); the creator and the
creator's moderators are exempt. The accepted version is a column of the member's
`conversation_states` row, read by `join` in the statement it already runs (chat/storage.py
join_views), so the send path of a joined socket reads nothing more than before: what `join`
established is kept per socket (SocketState.posting) and dropped by the `room_updated` control
message on every process when the room changes in a way that bears on posting (archive, post
policy, tier, guidelines). The next send of such a socket is checked in the database.

Every change commits, then goes to every process as one control message (`room_updated`,
`room_deleted`, chat/relay.py's control channel) whose handler here applies it to that process's
sockets and only then emits `conversation_updated` / `conversation_deleted` to them, so a client
that heard of a change finds it applied on its own process.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from chat import keys, schemas, storage
from chat.auth import Identity
from chat.db import utcnow
from chat.errors import Conflict, GuidelinesChanged, Invalid, NotFound, SpaceRefused
from chat.models import Attachment, Conversation, ConversationState, Membership
from chat.reactions import check_emoji
from chat.retry import retry_read, retry_transaction
from chat.storage import ConversationMeta

if TYPE_CHECKING:
    from chat.service import ChatService

log = logging.getLogger(__name__)

MAX_ACTIVE_SPACES = 10  # rooms per creator that are not archived
MAX_NAME_CHARS = 200
MAX_TOPIC_CHARS = 500
MAX_GUIDELINES_CHARS = 10_000
MAX_TIER_CENTS = 10**9
PATCH_FIELDS = ("name", "topic", "emoji", "min_tier_cents", "post_policy", "archived", "guidelines")
# Changes after which what a socket's join established about posting no longer holds.
POSTING_FIELDS = frozenset({"archived", "post_policy", "min_tier_cents", "guidelines"})
_CHUNK = 500  # user ids per membership query of a re-gate

ARCHIVED_TEXT = "this space is archived: it is read-only"


# ---------------------------------------------------------------- validation

def _text(data: dict[str, Any], field: str, max_chars: int) -> str:
    """An optional text: trimmed, may be empty (clears it)."""
    value = data.get(field)
    if not isinstance(value, str):
        raise Invalid(f"{field} must be a string")
    value = value.strip()
    if len(value) > max_chars:
        raise Invalid(f"{field} is longer than {max_chars} characters")
    return value


def check_room_emoji(value: Any) -> str | None:
    """A room's emoji: one Unicode emoji (as reactions take it), or null for none."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith(":") and value.endswith(":") and len(value) > 2:
        raise Invalid("emoji must be one Unicode emoji (not a :name:) or null")
    return check_emoji(value)


def check_space_fields(data: dict[str, Any]) -> dict[str, Any]:
    """topic, emoji and guidelines of a room create (each optional)."""
    out: dict[str, Any] = {}
    if data.get("topic") is not None:
        out["topic"] = _text(data, "topic", MAX_TOPIC_CHARS)
    if data.get("emoji") is not None:
        out["emoji"] = check_room_emoji(data["emoji"])
    if data.get("guidelines") is not None:
        out["guidelines"] = _text(data, "guidelines", MAX_GUIDELINES_CHARS)
    return out


def check_room_patch(data: dict[str, Any]) -> dict[str, Any]:
    """The changes of a PATCH of a room: any of PATCH_FIELDS, at least one (others are ignored)."""
    changes: dict[str, Any] = {}
    if "name" in data:
        changes["name"] = schemas.check_str(data, "name", max_len=MAX_NAME_CHARS)
    if "topic" in data:
        changes["topic"] = _text(data, "topic", MAX_TOPIC_CHARS)
    if "emoji" in data:
        changes["emoji"] = check_room_emoji(data["emoji"])
    if "min_tier_cents" in data:
        changes["min_tier_cents"] = schemas.check_int(data, "min_tier_cents", minimum=0, maximum=MAX_TIER_CENTS,
                                                      required=True)
    if "post_policy" in data:
        if data["post_policy"] not in ("everyone", "creator"):
            raise Invalid('post_policy must be "everyone" or "creator"')
        changes["post_policy"] = data["post_policy"]
    if "archived" in data:
        changes["archived"] = schemas.check_bool(data, "archived")
    if "guidelines" in data:
        changes["guidelines"] = _text(data, "guidelines", MAX_GUIDELINES_CHARS)
    if not changes:
        raise Invalid("give at least one of " + ", ".join(PATCH_FIELDS))
    return changes


def check_version(data: dict[str, Any]) -> int:
    version = schemas.check_int(data, "version", minimum=0, maximum=2**31 - 1, required=True)
    assert version is not None
    return version


# ---------------------------------------------------------------- rules

def guidelines_pending(conv: ConversationMeta, user_id: str, accepted: int) -> bool:
    """Whether `user_id` must accept the room's guidelines before posting (moderators aside: the
    caller checks them, they are cached per process)."""
    return (conv.kind == "room" and conv.has_guidelines and user_id != conv.creator_id
            and accepted < conv.guidelines_version)


def guidelines_refused(conv: ConversationMeta) -> SpaceRefused:
    return SpaceRefused(f"accept the room's guidelines (version {conv.guidelines_version}) before posting here",
                        "guidelines", conv.guidelines_version)


def check_not_archived(conv: Conversation) -> None:
    """Edits and reactions in an archived room are refused, like sends."""
    if conv.kind == "room" and conv.archived_at is not None:
        raise SpaceRefused(ARCHIVED_TEXT, "archived")


# ---------------------------------------------------------------- storage

async def count_active_rooms(session: AsyncSession, creator_id: str) -> int:
    c = Conversation
    return int(await session.scalar(sa.select(sa.func.count()).select_from(c).where(
        c.kind == "room", c.creator_id == creator_id, c.archived_at.is_(None))) or 0)


async def lock_creator(session: AsyncSession, creator_id: str) -> None:
    """The creator's user row, created if missing and write-locked: the creates and unarchives of
    one creator's rooms take turns on it, so MAX_ACTIVE_SPACES holds under concurrency. On
    MariaDB a transaction's snapshot is taken by its first plain read: the callers take this
    lock before any, so their count of active rooms sees every room committed before."""
    await storage.upsert_user(session, creator_id, None)


async def accepted_version(conn: Any, conversation_id: int, user_id: str) -> int:
    s = ConversationState.__table__.c
    return int(await conn.scalar(sa.select(s.accepted_guidelines_version).where(
        s.user_id == user_id, s.conversation_id == conversation_id)) or 0)


async def set_accepted_version(session: AsyncSession, user_id: str, conversation_id: int, version: int) -> None:
    values = {"user_id": user_id, "conversation_id": conversation_id, "last_read_seq": 0, "muted": False,
              "accepted_guidelines_version": version}
    table: sa.Table = ConversationState.__table__  # type: ignore[assignment]
    if session.get_bind().dialect.name == "sqlite":
        lite = sqlite_insert(table).values(values)
        stmt: Any = lite.on_conflict_do_update(index_elements=["user_id", "conversation_id"],
                                               set_={"accepted_guidelines_version": version})
    else:
        stmt = mysql_insert(table).values(values).on_duplicate_key_update(accepted_guidelines_version=version)
    await session.execute(stmt)


# ---------------------------------------------------------------- the domain

def room_wire(c: Conversation) -> dict[str, Any]:
    """A room as the server API shows it: the conversation object and the platform's external_id."""
    return {**schemas.conversation_wire(c), "external_id": c.external_id}


def _event_wire(c: Conversation) -> dict[str, Any]:
    """A room as members see it (`conversation_updated`): the conversation object."""
    return schemas.conversation_wire(c)


class Spaces:
    """The spaces' operations and their control messages; part of ChatService (`service.spaces`),
    whose sockets' state it changes."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    async def get_room(self, conversation_id: int) -> dict[str, Any]:
        async with self.chat.sessions() as session:
            conv = await storage.get_conversation(session, conversation_id)
            if conv is None or conv.kind != "room":
                raise NotFound("no such room")
            return {"conversation": room_wire(conv)}

    async def update_room(self, conversation_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply a PATCH; unchanged values change nothing (no event, no new guidelines version)."""
        async def store() -> tuple[dict[str, Any], dict[str, Any], set[str], int]:
            async with self.chat.sessions.begin() as session:
                # A locking read first (no snapshot taken yet, see lock_creator).
                conv = await session.get(Conversation, conversation_id, with_for_update=True,
                                         populate_existing=True)
                if conv is None or conv.kind != "room":
                    raise NotFound("no such room")
                old_tier = conv.min_tier_cents
                changed: set[str] = set()
                archived = changes.get("archived")
                if archived is not None and archived != (conv.archived_at is not None):
                    if not archived:
                        await lock_creator(session, conv.creator_id)
                        if await count_active_rooms(session, conv.creator_id) >= MAX_ACTIVE_SPACES:
                            raise Conflict(f"a creator has at most {MAX_ACTIVE_SPACES} active spaces; "
                                           "archive or delete one first")
                    conv.archived_at = utcnow() if archived else None
                    changed.add("archived")
                for name in ("name", "topic", "emoji", "min_tier_cents", "post_policy"):
                    if name in changes and getattr(conv, name) != changes[name]:
                        setattr(conv, name, changes[name])
                        changed.add(name)
                if "guidelines" in changes and (conv.guidelines or "") != changes["guidelines"]:
                    conv.guidelines = changes["guidelines"] or None
                    conv.guidelines_version = (conv.guidelines_version or 0) + 1
                    changed.add("guidelines")
                await session.flush()
                return room_wire(conv), _event_wire(conv), changed, old_tier

        wire, event, changed, old_tier = await retry_transaction(store)
        if changed:
            await self.chat.delivery.broadcast_control({
                "type": "room_updated", "conversation_id": conversation_id, "creator_id": wire["creator_id"],
                "changes": sorted(changed), "posting": bool(changed & POSTING_FIELDS),
                "regated": wire["min_tier_cents"] > old_tier, "conversation": event}, access_change=True)
        return {"conversation": wire}

    async def delete_room(self, conversation_id: int) -> dict[str, Any]:
        """Delete a room and everything in it (messages, reactions, read positions, pins, photos):
        its history is gone. Its members' sockets hear `conversation_deleted` then
        `access_revoked`, on every process."""
        async def store() -> tuple[str, list[str]]:
            async with self.chat.sessions.begin() as session:
                conv = await session.get(Conversation, conversation_id, with_for_update=True)
                if conv is None or conv.kind != "room":
                    raise NotFound("no such room")
                a = Attachment
                blobs = [k for row in (await session.execute(sa.select(a.blob_key, a.thumb_key).where(
                    a.conversation_id == conversation_id))).all() for k in row]
                await session.execute(sa.delete(a).where(a.conversation_id == conversation_id))
                # messages, reactions, read states, pins and slow mode go with it (ON DELETE CASCADE)
                await session.execute(sa.delete(Conversation).where(Conversation.id == conversation_id))
                return conv.creator_id, blobs

        creator_id, blobs = await retry_transaction(store)
        await self.chat.delivery.broadcast_control({"type": "room_deleted", "conversation_id": conversation_id,
                                                    "creator_id": creator_id}, access_change=True)
        if blobs and self.chat.attachments is not None:
            try:
                for key in blobs:
                    await self.chat.attachments.blobs.delete(key)
            except Exception as exc:  # orphaned files cost space, not correctness
                log.warning("photos of a deleted room not removed (%s)", type(exc).__name__)
        return {"conversation_id": str(conversation_id), "deleted": True}

    async def accept_guidelines(self, user: Identity, conversation_id: int, version: int) -> dict[str, Any]:
        """`user` accepts the room's guidelines at `version`, which must be the current one."""
        async def store() -> None:
            async with self.chat.sessions.begin() as session:
                conv, _ = await self.chat._readable(session, user.user_id, conversation_id)
                if version != conv.guidelines_version:
                    raise GuidelinesChanged(f"the guidelines are at version {conv.guidelines_version}; "
                                            "read them and accept that one", conv.guidelines_version)
                await set_accepted_version(session, user.user_id, conversation_id, version)

        await retry_transaction(store)
        # This process's sockets of the user check their next send in the database; those on other
        # processes do anyway (what their join established forbids posting, so it is not kept).
        self.chat._forget_posting([user.user_id], [conversation_id])
        return {"conversation_id": str(conversation_id), "guidelines_version": version}

    # ------------------------------------------------------------ control messages (every process)

    def _local_users(self, conversation_id: int) -> dict[str, list[str]]:
        """This process's sockets joined to the conversation or subscribed to its room channel, by user."""
        channel = keys.room_channel(str(conversation_id))
        users: dict[str, list[str]] = {}
        for sid, state in self.chat.sockets.items():
            if conversation_id in state.conversations or channel in state.channels:
                users.setdefault(state.user.user_id, []).append(sid)
        return users

    async def on_control(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        chat = self.chat
        cid = int(message["conversation_id"])
        chat._control_epoch += 1  # a join racing this does not keep what it read
        chat._conversations.pop(cid, None)
        if kind == "room_deleted":
            chat._slow_modes.pop(cid, None)
            chat._pins.pop(cid, None)
            users = self._local_users(cid)
            for sids in users.values():
                for sid in sids:
                    await chat.delivery.to_socket(sid, "conversation_deleted", {"conversation_id": str(cid)})
            for user_id in users:
                await chat._revoke_local(user_id, [cid], [keys.room_channel(str(cid))])
            chat.recent.drop(cid)
            return
        if message.get("posting"):
            for state in chat.sockets.values():
                state.posting.pop(cid, None)
        if message.get("regated"):
            await self._regated(cid, str(message["creator_id"]), int(message["conversation"]["min_tier_cents"]))
        chat.delivery.to_local_conversation(cid, "conversation_updated", message["conversation"])

    async def _regated(self, conversation_id: int, creator_id: str, min_tier_cents: int) -> None:
        """The room's tier went up: this process's sockets of members below it leave it (and its
        channel) with `access_revoked`, as for a lowered membership."""
        users = sorted(set(self._local_users(conversation_id)) - {creator_id})
        m = Membership

        async def read(conn: AsyncConnection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(users), _CHUNK):
                chunk = users[start:start + _CHUNK]
                found.update(await conn.scalars(sa.select(m.patron_id).where(
                    m.creator_id == creator_id, m.patron_id.in_(chunk), m.status == "active",
                    m.tier_cents >= min_tier_cents)))
            return found

        keep = await retry_read(self.chat.read_engine, read)
        for user_id in users:
            if user_id not in keep:
                await self.chat._revoke_local(user_id, [conversation_id], [keys.room_channel(str(conversation_id))])
