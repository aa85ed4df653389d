"""The chat domain: who may do what, what is stored, what is emitted.

Imports neither socketio nor aiohttp: transports (chat/sockets.py, chat/http_api.py) call
these methods with an authenticated Identity and already-typed arguments where possible,
and map ChatError to the wire. Every emit happens after the transaction commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from chat import keys, memberblocks, mentions, moderation, reactions, reports, schemas, sendtrace, spaces, storage, threads
from chat.attachments import Attachments
from chat.auth import Identity
from chat.batch import BatchedLookup
from chat.config import Settings
from chat.db import utcnow
from chat.delivery import Delivery
from chat.emitslots import LocalSlots, Slots
from chat.errors import (
    ChatError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    SlowModeLimited,
    SpaceRefused,
    TimedOut,
    Unavailable,
)
from chat.models import Conversation, Membership, Message
from chat.moderation import Standing
from chat.presence import Presence, PresenceCoalescer, PresenceUnavailable
from chat.ratelimit import KeyedBuckets, Quota, UserRateLimiter
from chat.reactions import ReactionCoalescer
from chat.recent import JOIN_EXTRAS, JOIN_PAGE, JOIN_PAGES, POSITIONS_LIMIT, SINCE_PAGE
from chat.reports import ReportDesk
from chat.retry import retry_read, retry_transaction
from chat.slowmode import SlowModeGate
from chat.storage import ConversationMeta
from chat.writer import MessageWriter, Outgoing, PushEnqueueJobs, PushSpec, WebhookMessages

log = logging.getLogger(__name__)
_JOIN_PAGES_CACHE, _JOIN_PAGES_DATABASE = JOIN_PAGES.labels("cache"), JOIN_PAGES.labels("database")
_JOIN_EXTRAS_CACHE, _JOIN_EXTRAS_DATABASE = JOIN_EXTRAS.labels("cache"), JOIN_EXTRAS.labels("database")
T = TypeVar("T")

TYPING_THROTTLE_S = 1.0
TYPING_EXPIRES_S = 6.0  # a "typing: true" not refreshed or cleared within this is cleared for the others


# A join's messages, for reading their reactions and photos: (reader, message ids,
# (sender, client_msg_id) of those messages); and what is read: ({message id: reactions},
# {(sender, client_msg_id): photos}).
JoinExtrasKey = tuple[str, tuple[int, ...], tuple[tuple[str, str], ...]]
JoinExtras = tuple[dict[int, list[dict[str, Any]]], dict[tuple[str, str], list[dict[str, Any]]]]

CONVERSATION_CACHE_SIZE = 10_000
KNOWN_USERS_SIZE = 50_000  # (user_id, name) pairs this process knows are stored
OVERVIEW_LIMIT = 100  # blocked + timed-out members per creator in the page's moderation overview


@dataclass(frozen=True)
class Access:
    read: bool
    post: bool
    reason: str = ""
    timed_out_until: datetime | None = None  # set when a timeout is what forbids posting
    # chat spaces (chat/spaces.py): "archived" or "guidelines" when that is what forbids posting
    refusal: str = ""
    guidelines_version: int | None = None


_ARCHIVED = Access(True, False, spaces.ARCHIVED_TEXT, refusal="archived")


DIRECT_BLOCKED = "one of you blocks the other: no direct messages between you"


def timed_out_error(until: datetime) -> TimedOut:
    left = max(1, math.ceil((until - utcnow()).total_seconds()))
    minutes, seconds = divmod(left, 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours} h {minutes} min" if hours else (f"{minutes} min {seconds} s" if minutes else f"{seconds} s")
    return TimedOut(f"timed out by a moderator: you can post again in {text}", until, left)


@dataclass
class SocketState:
    user: Identity
    conversations: set[int] = field(default_factory=set)
    channels: set[str] = field(default_factory=set)
    # What `join` established about posting, per joined conversation; dropped by the control
    # messages that take it away (`revoke`, `post_revoked`), so a send checks nothing else.
    posting: dict[int, Access] = field(default_factory=dict)
    # Presence joins in flight: a disconnect waits for them, so its release reaches Redis after
    # their increments (else a join racing its socket's disconnect leaves the user online).
    presence_ops: set[asyncio.Future[None]] = field(default_factory=set)


def access_rule(conv: ConversationMeta, user_id: str, membership: tuple[str, int] | None,
                standing: Standing | None = None) -> Access:
    """Who reads and who posts. `membership` is (status, tier_cents) of the user's membership
    with the creator (rooms) or of the conversation's patron (direct conversations); `standing`
    the sanction of that same pair (docs/moderation.md): a block outweighs any membership, a
    timeout forbids posting in the creator's rooms until it ends."""
    blocked = standing is not None and standing.blocked
    if conv.kind == "room":
        if user_id == conv.creator_id:
            return _ARCHIVED if conv.archived else Access(True, True)
        if blocked:
            return Access(False, False, "blocked by the creator")
        if membership is None or membership[0] != "active" or membership[1] < conv.min_tier_cents:
            return Access(False, False, "not a member of this room")
        if conv.archived:
            return _ARCHIVED
        if conv.post_policy == "creator":
            return Access(True, False, "only the creator posts in this room")
        until = standing.timeout_until if standing is not None else None
        if until is not None and until > utcnow():
            return Access(True, False, "timed out by a moderator", until)
        return Access(True, True)
    if user_id not in (conv.creator_id, conv.patron_id):
        return Access(False, False, "not a member of this conversation")
    if blocked:
        if user_id == conv.patron_id:
            return Access(False, False, "blocked by the creator")
        return Access(True, False, "this member is blocked")
    if membership is None or membership[0] != "active":
        return Access(True, False, "the membership has ended")
    return Access(True, True)


def _forbidden(access: Access) -> ChatError:
    if access.timed_out_until is not None:
        return timed_out_error(access.timed_out_until)
    if access.refusal:
        return SpaceRefused(access.reason, access.refusal, access.guidelines_version)
    return Forbidden(access.reason)


def membership_key(conv: ConversationMeta, user_id: str) -> tuple[str, str] | None:
    """The membership access_rule needs, None when it needs none."""
    if conv.kind == "room":
        return None if user_id == conv.creator_id else (conv.creator_id, user_id)
    if user_id not in (conv.creator_id, conv.patron_id):
        return None
    return conv.creator_id, conv.patron_id or ""


def _counted(counts: list[dict[str, Any]], emoji: str, delta: int) -> list[dict[str, Any]]:
    """`counts` ([{emoji, count}], first-used order) after one reaction with `emoji` was added
    (+1, a new emoji goes last) or removed (-1, an emoji at 0 goes away)."""
    out = [dict(c) for c in counts]
    for c in out:
        if c["emoji"] == emoji:
            c["count"] += delta
            break
    else:
        if delta > 0:
            out.append({"emoji": emoji, "count": delta})
    return [c for c in out if c["count"] > 0]


def _db_unavailable() -> ChatError:
    return Unavailable("database unavailable, nothing was stored; retry")


class ChatService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], delivery: Delivery,
                 presence: Presence, settings: Settings,
                 push_enqueue_jobs: PushEnqueueJobs | None = None,
                 push_wake: Callable[[], Awaitable[None]] | None = None,
                 unread_notifications: Callable[[AsyncSession, str], Awaitable[int]] | None = None,
                 user_sends: UserRateLimiter | None = None,
                 webhook_messages: WebhookMessages | None = None,
                 read_engine: AsyncEngine | None = None,
                 attachments: Attachments | None = None,
                 slow_gate: SlowModeGate | None = None,
                 emit_slots: Slots | None = None) -> None:
        self.sessions = sessions
        self.attachments = attachments
        self.engine: AsyncEngine = sessions.kw["bind"]
        # Autocommit connections without a ROLLBACK on return (chat/db.py create_read_engine) for
        # the read-only statements of connect and join.
        self.read_engine: AsyncEngine = read_engine or self.engine
        self.recent = delivery.recent  # what join answers from (chat/recent.py)
        self.delivery = delivery
        self.presence = presence
        self.settings = settings
        self._unread_notifications = unread_notifications
        # Thread roots' `message_updated` (at most one per root per second) and `reaction` events
        # (5 per message per second): cluster-wide with Redis's slots, else per process
        # (chat/emitslots.py).
        emit_slots = emit_slots or LocalSlots()
        self.thread_events = threads.ThreadCoalescer(self._emit_message_updated, self._reread_root,
                                                     slots=emit_slots)
        self.writer = MessageWriter(self.engine, self._deliver_messages,
                                    push_enqueue_jobs=push_enqueue_jobs, push_wake=push_wake,
                                    webhook_messages=webhook_messages, thread_updates=self.thread_events.note,
                                    commit_engine=read_engine)  # autocommit: plain batches in one query
        # What the send path needs of conversations, filled by `join` and the full send check.
        # Kind, creator and patron never change; a room's name, tier, post policy, archive and
        # guidelines do (chat/spaces.py), and its `room_updated` control message drops the entry.
        self._conversations: dict[int, ConversationMeta] = {}
        # Bumped by every control message that takes access away: a `join` whose database check
        # raced one does not remember what it read.
        self._control_epoch = 0
        self.sockets: dict[str, SocketState] = {}
        self._user_sockets: dict[str, set[str]] = {}
        self.socket_sends = KeyedBuckets(settings.send_rate_per_s, settings.send_burst)
        # HTTP sends, per user: cluster-wide with Redis (chat/app.py passes the shared one).
        self.user_sends = user_sends or UserRateLimiter(settings.send_rate_per_s, settings.send_burst)
        self._typing_timers: dict[tuple[str, int], asyncio.TimerHandle] = {}
        # Users whose row this process wrote or read, with the stored name: a connect with a
        # verified token of a known user with an unchanged name touches no database.
        self._known_users: OrderedDict[str, str] = OrderedDict()
        # The stored names of users it does not know, read for many connects at once in a storm.
        self._stored_names: BatchedLookup[str, str] = BatchedLookup(self._read_user_names)
        # What each join reads first (access, read position, unread count): one statement for the
        # joins waiting at that moment.
        self._join_views: BatchedLookup[tuple[int, str], storage.JoinView] = BatchedLookup(
            self._read_join_views, max_batch=4 * storage.JOIN_VIEWS_BATCH)
        # The reactions and photos of the messages joins return: one checkout and at most
        # three statements for the joins waiting at that moment (a reconnect storm's rejoins
        # each carry the messages they missed).
        self._join_extras: BatchedLookup[JoinExtrasKey, JoinExtras] = BatchedLookup(
            self._read_join_extras, max_batch=256)
        self.presence_events = PresenceCoalescer(self._emit_presence, settings.presence_window_s)
        self.socket_reacts = KeyedBuckets(settings.send_rate_per_s, settings.send_burst)
        self.reaction_events = ReactionCoalescer(self._emit_reaction, self._recount_reactions, slots=emit_slots)
        # Slow mode (docs/moderation.md): the gate (cluster-wide with Redis), and per process the
        # rooms' intervals and who moderates whom, read on first use and kept current by the
        # `slow_mode` and `moderation` control messages.
        self.slow_gate = slow_gate or SlowModeGate()
        self._slow_modes: dict[int, int] = {}
        self._moderators: dict[tuple[str, str], bool] = {}
        self._pins: dict[int, list[int]] = {}  # room -> pinned message ids, kept by `pins` control messages
        # Reads in flight, shared by the concurrent joins of a room (a join storm reads once).
        self._in_flight: dict[tuple[str, int, str], asyncio.Future[Any]] = {}
        # Reports and blocks between members (docs/moderation.md): the rooms' messages hidden by
        # reports, read on a room's first join and kept by `message_hidden` control messages; who
        # blocks whom among the local sockets (chat/memberblocks.py), which delivery consults.
        self.reports = ReportDesk(self)
        self._hidden: dict[int, set[int]] = {}
        self.member_blocks = memberblocks.BlockIndex(self._read_blocks)
        delivery.set_sender_blocks(self.member_blocks.blocker_sids)
        self.spaces = spaces.Spaces(self)  # chat spaces: rooms changed or deleted, guidelines
        delivery.set_control_handler(self._on_control)
        delivery.set_recovery_handler(self.recheck_access)

    # ============================================================ access rules

    async def _access(self, session: AsyncSession, user_id: str, conv: Conversation) -> Access:
        meta = storage.conversation_meta_of(conv)
        key = membership_key(meta, user_id)
        m = await storage.get_membership(session, *key) if key is not None else None
        standing = await moderation.get_standing(await session.connection(), *key) if key is not None else None
        return access_rule(meta, user_id, None if m is None else (m.status, m.tier_cents), standing)

    async def _readable(self, session: AsyncSession, user_id: str, conversation_id: int) -> tuple[Conversation, Access]:
        conv = await storage.get_conversation(session, conversation_id)
        if conv is None:
            raise NotFound("no such conversation")
        access = await self._access(session, user_id, conv)
        if not access.read:
            raise Forbidden(access.reason)
        return conv, access

    async def _conversation_wire(self, session: AsyncSession, conv: Conversation) -> dict[str, Any]:
        return (await self._conversations_wire(session, [conv]))[0]

    @staticmethod
    async def _conversations_wire(session: AsyncSession, convs: Sequence[Conversation]) -> list[dict[str, Any]]:
        """Wire forms; the members (name, avatar) of direct conversations come from one query."""
        pairs = {c.id: [c.creator_id, c.patron_id or ""] for c in convs if c.kind == "direct"}
        profiles = await storage.user_profiles(session, [u for pair in pairs.values() for u in pair])
        return [schemas.conversation_wire(c, [_member_wire(u, *profiles[u]) for u in pairs[c.id]] if c.id in pairs else None)
                for c in convs]

    async def _messages_wire(self, session: AsyncSession, messages: Sequence[Message],
                             reader_id: str | None = None) -> list[dict[str, Any]]:
        """Wire forms; with `reader_id`, their `reactions` as that reader sees them; without,
        no `reactions` key (`message_updated` goes to every reader alike: reactions unchanged)."""
        names = await storage.user_names(session, list({m.sender_id for m in messages}))
        wires = [schemas.message_wire(m, names[m.sender_id]) for m in messages]
        if reader_id is None:
            for wire in wires:
                del wire["reactions"]
        else:
            wires = await reactions.attach_reactions(await session.connection(), wires, reader_id)
        await self._with_attachments(session, wires)
        return wires

    async def _with_attachments(self, conn: Any, wires: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages' photos (chat/attachments.py), read with `conn` (connection or session)."""
        if self.attachments is not None and wires:
            await self.attachments.fill(conn, wires)
        return wires

    # ============================================================ sockets: lifecycle

    async def connect_socket(self, sid: str, user: Identity) -> None:
        known = self._known_users.get(user.user_id)
        if known is None or (user.name and known != user.name):
            known = await self._stored_names.get(user.user_id)
            if known is None or (user.name and known != user.name):
                before = known
                async with self.sessions.begin() as session:
                    known = (await storage.upsert_user(session, user.user_id, user.name)).name
                if before is not None and before != known:
                    await self._renamed(user.user_id)
            self._know_user(user.user_id, known)
        else:
            self._known_users.move_to_end(user.user_id)
        state = SocketState(user)
        self.sockets[sid] = state
        self._user_sockets.setdefault(user.user_id, set()).add(sid)
        channel = keys.user_channel(user.user_id)
        await self.delivery.enter_channel(sid, channel)
        await self.presence.connect(user.user_id, sid, [channel])
        state.channels.add(channel)

    async def _read(self, read: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`read(conn)` on the autocommit read pool, once more if its connection was dead (chat/retry.py)."""
        return await retry_read(self.read_engine, read)

    async def _read_join_views(self, pairs: list[tuple[int, str]]) -> dict[tuple[int, str], storage.JoinView]:
        return await self._read(lambda conn: storage.join_views(conn, pairs))

    async def _read_user_names(self, user_ids: list[str]) -> dict[str, str]:
        return await self._read(lambda conn: storage.stored_user_names(conn, user_ids))

    def _know_user(self, user_id: str, name: str) -> None:
        self._known_users[user_id] = name
        self._known_users.move_to_end(user_id)
        if len(self._known_users) > KNOWN_USERS_SIZE:
            self._known_users.popitem(last=False)

    async def disconnect_socket(self, sid: str) -> None:
        state = self.sockets.pop(sid, None)
        self.member_blocks.unregister(sid)
        self.socket_sends.forget(sid)
        self.socket_reacts.forget(sid)
        if state is None:
            return
        for conversation_id in state.conversations:
            await self._stop_typing(sid, state.user.user_id, conversation_id)
        user_sids = self._user_sockets.get(state.user.user_id)
        if user_sids is not None:
            user_sids.discard(sid)
            if not user_sids:
                del self._user_sockets[state.user.user_id]
        if state.presence_ops:
            await asyncio.wait(set(state.presence_ops))
        for cid, user_id in await self.presence.disconnect(state.user.user_id, sid):
            self.presence_events.announce(cid, user_id, False)

    async def _emit_presence(self, conversation_id: str, events: list[tuple[str, bool, str | None]]) -> None:
        """SPEC §4 `presence` events of one conversation, produced together (PresenceCoalescer),
        handed to the fan-out together (one write per socket for all of them)."""
        await self.delivery.to_conversation_each(conversation_id, "presence", [
            ({"conversation_id": conversation_id, "user_id": user_id, "online": online}, skip_sid)
            for user_id, online, skip_sid in events])

    def socket_user(self, sid: str) -> Identity:
        state = self.sockets.get(sid)
        if state is None:
            raise Forbidden("not connected")
        return state.user

    async def me(self, user: Identity) -> dict[str, Any]:
        async with self.sessions.begin() as session:
            row = await storage.get_user(session, user.user_id)
            if row is None:
                row = await storage.upsert_user(session, user.user_id, user.name)
            unread = 0
            if self._unread_notifications is not None:
                unread = await self._unread_notifications(session, user.user_id)
            mention_total = await self._mention_total(await session.connection(), user.user_id)
            return {"user": {"id": row.id, "name": row.name, "avatar_url": row.avatar_url},
                    "unread_notifications": unread, "mention_count": mention_total}

    @staticmethod
    async def _mention_total(conn: Any, user_id: str) -> int:
        """`/me`'s mention_count: the unread mentions of the conversations the user may read
        now (those the conversation list shows); one query, and one more when there are any."""
        counts = await mentions.count_all_unread(conn, user_id)
        if not counts:
            return 0
        views = await storage.join_views(conn, [(cid, user_id) for cid in sorted(counts)])
        return sum(counts[cid] for (cid, _), view in views.items()
                   if access_rule(view.conversation, user_id, view.membership, view.standing).read)

    # ============================================================ conversations

    async def join(self, sid: str, conversation_id: int, since_seq: int | None,
                   include_replies: bool = True) -> dict[str, Any]:
        state = self._socket_state(sid)
        user = state.user
        epoch = self._control_epoch
        block_changes = self.member_blocks.changes  # the view carries the joiner's blocks too
        view = await self._join_views.get((conversation_id, user.user_id))
        if view is None:
            raise NotFound("no such conversation")
        conv = view.conversation
        access = access_rule(conv, user.user_id, view.membership, view.standing)
        if not access.read:
            raise Forbidden(access.reason)
        if conv.kind == "direct" and access.post and await self._direct_blocked(conv):
            access = Access(True, False, DIRECT_BLOCKED)
        # chat spaces: posting waits for the current guidelines to be accepted (moderators exempt)
        pending = spaces.guidelines_pending(conv, user.user_id, view.accepted_guidelines_version)
        if pending and await self._is_moderator(conv.creator_id, user.user_id):
            pending = False
        if pending and access.post:
            access = Access(True, False, spaces.guidelines_refused(conv).message, refusal="guidelines",
                            guidelines_version=conv.guidelines_version)
        self._remember(conv)
        # The socket may have disconnected during any await: answer it (nobody listens) without
        # touching the state its disconnect already released.
        self._still_connected(sid, state)
        # Before entering the room: from now on live messages of senders the user blocks skip it.
        blocked = await self.member_blocks.register(sid, user.user_id, (view.blocks, block_changes))
        if self.sockets.get(sid) is not state:
            self.member_blocks.unregister(sid)
            raise Forbidden("not connected")
        # Enter the room before reading messages, so nothing committed in between is missed
        # (the client drops duplicates by seq).
        hears_all = await self.delivery.enter_conversation(sid, conversation_id)
        self._still_connected(sid, state)
        state.conversations.add(conversation_id)
        if epoch == self._control_epoch:
            state.posting[conversation_id] = access
        else:
            state.posting.pop(conversation_id, None)
        cid = str(conversation_id)
        in_flight: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.presence_ops.add(in_flight)
        try:
            first, online = await self.presence.join_listing(cid, user.user_id, sid)
        finally:
            state.presence_ops.discard(in_flight)
            in_flight.set_result(None)
        if first:
            self.presence_events.announce(cid, user.user_id, True, sid)
        self._still_connected(sid, state)
        messages, has_more, positions = await self._join_page(conversation_id, since_seq, view.last_seq,
                                                              user.user_id, hears_all)
        if not include_replies:  # the main view without thread replies: read from the database
            messages, has_more = await self._join_page_without_replies(conversation_id, since_seq)
        if messages:
            messages = await self._join_extras_of(user.user_id, messages)
            messages = await self._as_seen_by(user.user_id, conv, messages, blocked)
        members = None
        if conv.kind == "direct":
            members = [_member_wire(conv.creator_id, view.creator_name, view.creator_avatar),
                       _member_wire(conv.patron_id or "", view.patron_name, view.patron_avatar)]
        return {
            "conversation": _meta_wire(conv, members, view.guidelines),
            "messages": messages,
            "has_more": has_more,
            "online": online,
            "unread_count": view.unread,
            "last_read_seq": view.last_read_seq,
            # Where the others have read to, for "seen" receipts before any live `read` event.
            "read_positions": positions,
            "slow_mode_s": await self._slow_mode_of(conversation_id) if conv.kind == "room" else 0,
            "pinned": await self._as_seen_by(user.user_id, conv, await self._pinned_wires(conversation_id), blocked)
            if conv.kind == "room" else [],
            "guidelines_accepted": not pending,
        }

    async def _join_extras_of(self, reader_id: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copies of a join's messages with their reactions (the reader's own `me`) and photos
        (freshly signed URLs: cached messages' may have expired), read for the joins waiting at
        that moment together (`_read_join_extras`), like `reactions.attach_reactions` +
        `Attachments.fill` would for each."""
        live = [m for m in messages if not m.get("deleted")]
        if self.recent.all_bare(int(messages[0]["conversation_id"]), (int(m["id"]) for m in live)):
            # Known without reactions and photos (chat/recent.py): nothing to read; the cached
            # wires already say so, and are shared rather than copied.
            _JOIN_EXTRAS_CACHE.inc()
            return [m if _bare_wire(m, self.attachments is not None) else
                    {**m, "reactions": [], **({"attachments": []} if self.attachments is not None else {})}
                    for m in messages]
        _JOIN_EXTRAS_DATABASE.inc()
        key = (reader_id, tuple(int(m["id"]) for m in live),
               tuple((m["sender"]["id"], m["client_msg_id"]) for m in live) if self.attachments is not None else ())
        found = await self._join_extras.get(key)
        summaries, photos = found if found is not None else ({}, {})
        out = []
        for m in messages:
            deleted = bool(m.get("deleted"))
            wire = {**m, "reactions": [] if deleted else summaries.get(int(m["id"]), [])}
            if self.attachments is not None:
                wire["attachments"] = [] if deleted else photos.get((m["sender"]["id"], m["client_msg_id"]), [])
            out.append(wire)
        return out

    async def _read_join_extras(self, keys: list[JoinExtrasKey]) -> dict[JoinExtrasKey, JoinExtras]:
        ids = sorted({mid for _, mids, _ in keys for mid in mids})
        readers = sorted({reader for reader, _, _ in keys})
        files = sorted({k for _, _, fks in keys for k in fks})

        async def read(conn: AsyncConnection) -> tuple[Any, Any, Any]:
            counts, mine = await storage.reaction_counts_for_readers(conn, ids, readers) if ids else ({}, set())
            photos = await self.attachments.by_keys(conn, files) if files and self.attachments is not None else {}
            return counts, mine, photos

        counts, mine, photos = await self._read(read)
        out: dict[JoinExtrasKey, JoinExtras] = {}
        for key in keys:
            reader, mids, fks = key
            summaries = {mid: [{"emoji": e, "count": n, "me": (mid, e, reader) in mine} for e, n in counts[mid]]
                         for mid in mids if mid in counts}
            out[key] = (summaries, {k: photos[k] for k in fks if k in photos})
        return out

    async def _join_page(self, conversation_id: int, since_seq: int | None, last_seq: int, user_id: str,
                         hears_all: bool) -> tuple[list[dict[str, Any]], bool, list[dict[str, Any]]]:
        """The join answer's messages, has_more and read_positions: from `recent` when it holds
        them (chat/recent.py), else one read (which fills `recent` when this process hears
        every event of the conversation)."""
        fill = None
        if hears_all:
            entry = await self.recent.ready(conversation_id)
            if entry is not None and entry.complete_to(last_seq):
                page, positions = entry.page(since_seq), entry.read_positions(user_id)
                if page is not None and positions is not None:
                    _JOIN_PAGES_CACHE.inc()
                    return page.messages, page.has_more, positions
                if positions is not None and since_seq is not None:  # since_seq reaches further back
                    _JOIN_PAGES_DATABASE.inc()
                    rows, has_more = await self._read(lambda conn: storage.message_page(
                        conn, conversation_id, after_seq=since_seq, limit=SINCE_PAGE))
                    return [_row_wire(r) for r in rows], has_more, positions
            fill = self.recent.begin_fill(conversation_id)
        _JOIN_PAGES_DATABASE.inc()

        async def read_page(conn: AsyncConnection) -> tuple[list[dict[str, Any]], bool, Any,
                                                            list[dict[str, Any]], bool, list[int]]:
            rows, older = await storage.message_page(conn, conversation_id, after_seq=None, limit=JOIN_PAGE)
            top = await storage.top_read_positions(conn, conversation_id, POSITIONS_LIMIT + 1)
            recent = [_row_wire(r) for r in rows]
            # For the entry: which of its messages have no reactions and no photos (then the
            # joins that answer them read neither, chat/recent.py "Bare messages").
            bare = await self._bare_ids(conn, recent) if fill is not None else []
            if since_seq is None:
                return recent, older, top, recent, older, bare
            if older and rows and since_seq < rows[0].seq - 1:  # reaches further back than the page
                since_rows, has_more = await storage.message_page(conn, conversation_id, after_seq=since_seq,
                                                                  limit=SINCE_PAGE)
                return recent, older, top, [_row_wire(r) for r in since_rows], has_more, bare
            return recent, older, top, [w for w in recent if w["seq"] > since_seq], False, bare

        try:
            recent, older, top, messages, has_more, bare = await self._read(read_page)
        except BaseException:
            if fill is not None:
                self.recent.abandon_fill(conversation_id, fill)
            raise
        if fill is not None:
            self.recent.finish_fill(conversation_id, fill, recent, older, top, bare)
        positions = [{"user_id": uid, "name": name, "seq": seq} for uid, name, seq in top if uid != user_id]
        return messages, has_more, positions[:POSITIONS_LIMIT]

    async def _bare_ids(self, conn: AsyncConnection, wires: list[dict[str, Any]]) -> list[int]:
        """The ids of these (not deleted) messages that have no reactions and no photos."""
        live = [w for w in wires if not w.get("deleted")]
        if not live:
            return []
        counts = await storage.reaction_counts_many(conn, [int(w["id"]) for w in live])
        photos = await self.attachments.by_keys(conn, [(w["sender"]["id"], w["client_msg_id"]) for w in live]) \
            if self.attachments is not None else {}
        return [int(w["id"]) for w in live
                if int(w["id"]) not in counts and (w["sender"]["id"], w["client_msg_id"]) not in photos]

    async def _join_page_without_replies(self, conversation_id: int,
                                         since_seq: int | None) -> tuple[list[dict[str, Any]], bool]:
        """The join answer's messages and has_more with `include_replies: false` (chat/threads.py)."""
        rows, has_more = await self._read(lambda conn: storage.message_page(
            conn, conversation_id, after_seq=since_seq, limit=JOIN_PAGE if since_seq is None else SINCE_PAGE,
            include_replies=False))
        return [_row_wire(r) for r in rows], has_more

    def _socket_state(self, sid: str) -> SocketState:
        state = self.sockets.get(sid)
        if state is None:
            raise Forbidden("not connected")
        return state

    def _still_connected(self, sid: str, state: SocketState) -> None:
        if self.sockets.get(sid) is not state:
            raise Forbidden("not connected")

    async def leave(self, sid: str, conversation_id: int) -> dict[str, Any]:
        user = self.socket_user(sid)
        if conversation_id not in self.sockets[sid].conversations:
            await self._require_conversation(conversation_id)  # leaving a room not joined is a no-op
        await self._leave_local(sid, user.user_id, conversation_id)
        return {}

    async def _require_conversation(self, conversation_id: int) -> None:
        """not_found for an id that names no conversation (SPEC §5)."""
        async with self.sessions() as session:
            if await storage.get_conversation(session, conversation_id) is None:
                raise NotFound("no such conversation")

    async def _leave_local(self, sid: str, user_id: str, conversation_id: int) -> None:
        state = self.sockets.get(sid)
        if state is None or conversation_id not in state.conversations:
            return
        state.conversations.discard(conversation_id)
        state.posting.pop(conversation_id, None)
        await self._stop_typing(sid, user_id, conversation_id)
        await self.delivery.leave_conversation(sid, conversation_id)
        cid = str(conversation_id)
        if await self.presence.leave(cid, user_id, sid):
            self.presence_events.announce(cid, user_id, False)

    async def history(self, user: Identity, conversation_id: int, page: schemas.PageQuery, *,
                      thread_id: int | None = None, include_replies: bool = True) -> dict[str, Any]:
        """A page of the conversation, or of one thread (`thread_id`: its root and replies), or of
        the conversation without thread replies (`include_replies` false)."""
        async with self.sessions() as session:
            conv, _ = await self._readable(session, user.user_id, conversation_id)
            answer = await self._history_page(session, conversation_id, page, user.user_id,
                                              thread_id=thread_id, include_replies=include_replies)
            blocked = self.member_blocks.blocked_by(user.user_id)
            if blocked is None:
                blocked = await memberblocks.blocked_ids(await session.connection(), user.user_id)
        answer["messages"] = await self._as_seen_by(user.user_id, storage.conversation_meta_of(conv),
                                                    answer["messages"], blocked)
        return answer

    async def _history_page(self, session: AsyncSession, conversation_id: int,
                            page: schemas.PageQuery, reader_id: str, *, thread_id: int | None = None,
                            include_replies: bool = True) -> dict[str, Any]:
        if thread_id is not None:
            messages, has_more = await threads.thread_page(
                session, conversation_id, thread_id, before_seq=page.before_seq, after_seq=page.after_seq,
                limit=page.limit)
        else:
            messages, has_more = await storage.list_messages(
                session, conversation_id, before_seq=page.before_seq, after_seq=page.after_seq, limit=page.limit,
                include_replies=include_replies)
        return {"messages": await self._messages_wire(session, messages, reader_id), "has_more": has_more}

    async def list_conversations(self, user: Identity) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            memberships = await storage.list_patron_memberships(session, user.user_id)
            blocked = await moderation.blocked_creator_ids(await session.connection(), user.user_id)
            tiers = {m.creator_id: m.tier_cents for m in memberships if m.creator_id not in blocked}
            rooms = await storage.list_rooms_of_creators(session, [*tiers, user.user_id])
            convs = [r for r in rooms if r.creator_id == user.user_id or tiers.get(r.creator_id, -1) >= r.min_tier_cents]
            convs += [d for d in await storage.list_directs_of_user(session, user.user_id)
                      if not (d.patron_id == user.user_id and d.creator_id in blocked)]
            ids = [c.id for c in convs]
            states = await storage.get_states(session, user.user_id, ids)
            positions = {cid: (states[cid].last_read_seq if cid in states else 0) for cid in ids}
            unread = await storage.count_unread_many(session, user.user_id, positions)
            mention_counts = await mentions.count_unread(await session.connection(), user.user_id, positions)
            last = await storage.last_messages(session, ids)
            last_wire = {m["conversation_id"]: m
                         for m in await self._messages_wire(session, list(last.values()), user.user_id)}
            await self._hide_last_messages(session, user.user_id, convs, last_wire)
            convs.sort(key=lambda c: (c.last_activity_at, c.id), reverse=True)
            return [{
                "conversation": wire,
                "last_message": last_wire.get(str(c.id)),
                "unread_count": unread[c.id],
                "mention_count": mention_counts[c.id],
                "muted": bool(states[c.id].muted) if c.id in states else False,
            } for c, wire in zip(convs, await self._conversations_wire(session, convs), strict=True)]

    async def open_direct(self, user: Identity, other_id: str) -> dict[str, Any]:
        """The direct conversation between a creator and one of their active patrons."""
        if other_id == user.user_id:
            raise Invalid("user_id must be another user")
        async with self.sessions.begin() as session:
            if await storage.get_user(session, other_id) is None:
                raise NotFound("no such user")
            pair = None
            for creator, patron in ((user.user_id, other_id), (other_id, user.user_id)):
                m = await storage.get_membership(session, creator, patron)
                if m is not None and m.status == "active":
                    pair = (creator, patron)
                    break
            standing = await moderation.get_standing(await session.connection(), *pair) if pair is not None else None
            if standing is not None and standing.blocked:
                raise Forbidden("blocked by the creator")
            if await memberblocks.blocked_between(await session.connection(), user.user_id, other_id):
                raise Forbidden(DIRECT_BLOCKED)
            if pair is None:
                # An existing conversation stays readable after the membership ends.
                for creator, patron in ((user.user_id, other_id), (other_id, user.user_id)):
                    conv = await storage.get_direct(session, creator, patron)
                    if conv is not None:
                        return await self._conversation_wire(session, conv)
                raise Forbidden("direct conversations are between a creator and an active patron")
            conv = await storage.get_direct(session, *pair)
            if conv is None:
                try:
                    async with session.begin_nested():
                        conv = await storage.insert_direct(session, *pair)
                except sqlalchemy.exc.IntegrityError:
                    conv = await storage.get_direct(session, *pair)
                    assert conv is not None
            return await self._conversation_wire(session, conv)

    async def set_muted(self, user: Identity, conversation_id: int, muted: bool) -> dict[str, Any]:
        async with self.sessions.begin() as session:
            await self._readable(session, user.user_id, conversation_id)
            await storage.set_muted(session, user.user_id, conversation_id, muted)
        return {"conversation_id": str(conversation_id), "muted": muted}

    # ============================================================ messages

    def check_socket_rate(self, sid: str) -> None:
        if not self.socket_sends.take(sid):
            raise RateLimited("at most 10 messages per second")

    async def check_user_rate(self, user_id: str) -> Quota:
        """One HTTP send of `user_id` against the per-user limit; RateLimited (with the Retry-After
        and RateLimit-* headers) when over it, else the quota left, for the answer's headers."""
        quota = await self.user_sends.hit(user_id)
        if not quota.allowed:
            raise RateLimited(f"at most {self.user_sends.item.amount} messages per "
                              f"{self.user_sends.item.multiples} s per user; retry after Retry-After",
                              quota.headers())
        return quota

    async def send_message(self, user: Identity, conversation_id: int, body: str,
                           client_msg_id: str, *, sid: str | None = None,
                           attachment_ids: Sequence[int] = (),
                           trace: sendtrace.Trace | None = None, thread_id: int | None = None,
                           mentions: Sequence[str] = ()) -> dict[str, Any]:
        """Store a message and deliver it. Idempotent on (sender, client_msg_id); returns only
        after commit. The caller has applied the rate limit.

        From a socket that joined the conversation and may post there, nothing is read: `join`
        checked access and the control messages take it away again. Any other send (HTTP, a
        socket that has not joined, or one that may not post) is checked against the database.

        `attachment_ids`: the sender's unused uploads (chat/attachments.py), claimed atomically
        with the message; a retry answers with the original message and its photos.

        `thread_id`: a reply to that root message of the conversation (chat/threads.py), checked
        in the writer's batch; a room reply pushes its thread's people, not the room.
        `mentions`: user ids the sender mentions besides the body's @mentions (chat/mentions.py)."""
        if not body and not attachment_ids:
            raise Invalid("body must not be empty")
        if attachment_ids and self.attachments is None:
            raise Invalid("attachments are not enabled on this server")
        conv = self._may_post_from_socket(sid, conversation_id)
        if conv is None:
            self._check_timed_out(sid, conversation_id)
            epoch = self._control_epoch
            try:
                checked = await self._check_send(user, conversation_id, body, client_msg_id, thread_id)
            except TimedOut as exc:
                state = self.sockets.get(sid) if sid is not None else None
                if state is not None and conversation_id in state.conversations and epoch == self._control_epoch:
                    state.posting[conversation_id] = Access(True, False, "timed out by a moderator", exc.until)
                raise
            if isinstance(checked, dict):
                return {"message": await self._retried(checked)}
            conv = checked
            state = self.sockets.get(sid) if sid is not None else None
            if state is not None and conversation_id in state.conversations and epoch == self._control_epoch:
                state.posting[conversation_id] = Access(True, True)  # e.g. a membership active again
        slot = False  # a slow-mode slot taken for this send, given back if it stores nothing
        if conv.kind == "room" and user.user_id != conv.creator_id:
            original = await self._check_slow_mode(conv, user, client_msg_id)
            if isinstance(original, dict):
                return {"message": original}
            slot = original
        try:
            # A body without "@" and no list pays nothing (not even a coroutine).
            mentioned = await self._mentioned(conv, user.user_id, body, mentions) if mentions or "@" in body else ()
            push = None
            if conv.kind == "direct":
                push = PushSpec(None)
            elif user.user_id == conv.creator_id or thread_id is not None:
                push = PushSpec(conv.name)
            elif mentioned:
                push = PushSpec(conv.name, mention=True)
            photos = (await self.attachments.for_send(user.user_id, client_msg_id, attachment_ids)
                      if attachment_ids and self.attachments is not None else ())
            stored = await self.writer.store(Outgoing(conversation_id, user.user_id, user.name or None, body,
                                                      client_msg_id, push, photos, thread_id=thread_id,
                                                      mentions=mentioned), trace)
            if not stored.created:
                return {"message": await self._retried(stored.message)}
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning("send failed: %s", type(exc).__name__)
            if slot:
                await self.slow_gate.release(conversation_id, user.user_id)
            raise _db_unavailable() from None
        except ChatError:
            if slot:
                await self.slow_gate.release(conversation_id, user.user_id)
            raise
        return {"message": stored.message}

    async def _mentioned(self, conv: ConversationMeta, sender_id: str, body: str,
                         explicit: Sequence[str]) -> tuple[str, ...]:
        """The members a send mentions (chat/mentions.py): one query at most (a database error
        fails the send as `unavailable`, its slow-mode slot given back, like the store's)."""
        return await self._read(lambda conn: mentions.resolve(conn, conv, sender_id, body, explicit))

    async def _check_slow_mode(self, conv: ConversationMeta, user: Identity, client_msg_id: str) -> dict[str, Any] | bool:
        """Take the member's slow-mode slot in the room (True; False when the room has no slow
        mode for them), or refuse with the wait; a retry of a message already stored is answered
        with it (the original) instead."""
        try:
            seconds = await self._slow_mode_of(conv.id)
            if not seconds or await self._is_moderator(conv.creator_id, user.user_id):
                return False
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning("slow mode check failed: %s", type(exc).__name__)
            raise _db_unavailable() from None
        wait = await self.slow_gate.take(conv.id, user.user_id, seconds)
        if not wait:
            return True
        async with self.engine.connect() as conn:
            row = (await storage.find_sent(conn, [(user.user_id, client_msg_id)])).get((user.user_id, client_msg_id))
            if row is not None and row.conversation_id == conv.id:
                name = user.name or (await storage.user_names_of(conn, [user.user_id]))[user.user_id]
                return schemas.message_wire_columns(row.id, row.conversation_id, row.seq, row.sender_id, name, row.body,
                                                    row.client_msg_id, row.created_at, row.edited_at, row.deleted,
                                                    **threads.fields_of(row), mentions=schemas.decode_mentions(row.mentions))
        raise SlowModeLimited(f"slow mode: one message per {seconds} s in this room; wait {wait} s", wait)

    async def _slow_mode_of(self, conversation_id: int) -> int:
        seconds = self._slow_modes.get(conversation_id)
        if seconds is None:
            seconds = (await self._load_room_moderation(conversation_id))[0]
        return seconds

    async def _once(self, key: tuple[str, int, str], read: Callable[[], Awaitable[Any]]) -> Any:
        """`read()`, or the result of the same read already in flight."""
        fut = self._in_flight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(read())
            self._in_flight[key] = fut
            fut.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return await asyncio.shield(fut)

    async def _load_room_moderation(self, conversation_id: int) -> tuple[int, list[int]]:
        """A room's slow mode and pinned ids, read once (cached until a control message changes them)."""
        async def read() -> tuple[int, list[int]]:
            epoch = self._control_epoch

            async def read_both(conn: AsyncConnection) -> tuple[int, list[int]]:
                return (await moderation.get_slow_mode(conn, conversation_id),
                        await moderation.pinned_ids(conn, conversation_id))

            seconds, ids = await self._read(read_both)
            if epoch == self._control_epoch:
                if len(self._slow_modes) >= CONVERSATION_CACHE_SIZE or len(self._pins) >= CONVERSATION_CACHE_SIZE:
                    self._slow_modes.clear()
                    self._pins.clear()
                self._slow_modes[conversation_id] = seconds
                self._pins[conversation_id] = ids
            return seconds, ids

        result: tuple[int, list[int]] = await self._once(("room", conversation_id, ""), read)
        return result

    async def _pinned_wires(self, conversation_id: int) -> list[dict[str, Any]]:
        """The join answer's `pinned`: the room's pinned messages (not deleted ones), without
        `reactions` (alike for every reader). Which ones is kept per process; a room with pins costs
        one read per join, shared by the joins in flight (a join storm reads once)."""
        ids = self._pins.get(conversation_id)
        if ids is None:
            ids = (await self._load_room_moderation(conversation_id))[1]
        if not ids:
            return []

        async def read() -> list[dict[str, Any]]:
            async with self.sessions() as session:
                found = [await storage.get_message(session, i) for i in ids]
                return await self._messages_wire(session, [m for m in found if m is not None and not m.deleted])

        wires: list[dict[str, Any]] = await self._once(("pins", conversation_id, ""), read)
        return wires

    async def pin_message(self, actor_id: str | None, message_id: int, on: bool) -> dict[str, Any]:
        """Pin (`on`) or unpin a room message: its creator, their moderators or the backend (None);
        at most MAX_PINS per room (`conflict`). Everyone in the room gets `pins`."""
        async def store() -> tuple[int, list[int]]:
            async with self.sessions.begin() as session:
                msg = await storage.get_message(session, message_id)
                if msg is None:
                    raise NotFound("no such message")
                # The room's row lock serializes pins of one room (MAX_PINS holds under concurrency).
                conv = await session.get(Conversation, msg.conversation_id, with_for_update=True)
                assert conv is not None
                if conv.kind != "room":
                    raise Invalid("only room messages are pinned")
                await self._check_moderates(session, conv.creator_id, actor_id)
                conn = await session.connection()
                if on and msg.deleted:
                    raise Invalid("a deleted message cannot be pinned")
                if on and message_id not in await moderation.pinned_ids(conn, conv.id) and len(
                        await moderation.pinned_ids(conn, conv.id)) >= moderation.MAX_PINS:
                    raise Conflict(f"at most {moderation.MAX_PINS} pinned messages per room; unpin one first")
                if await moderation.set_pinned(session, conv.id, message_id, actor_id, on):
                    await self._record_action(session, conv.creator_id, actor_id,
                                                   "message_pinned" if on else "message_unpinned", msg.sender_id,
                                                   message_id=message_id, conversation_id=conv.id)
                return conv.id, await moderation.pinned_ids(conn, conv.id)

        cid, ids = await retry_transaction(store)
        await self.delivery.broadcast_control({"type": "pins", "conversation_id": cid, "message_ids": ids})
        wire = {"conversation_id": str(cid), "message_ids": [str(i) for i in ids]}
        await self.delivery.to_conversation(cid, "pins", wire)
        return wire

    async def _is_moderator(self, creator_id: str, user_id: str) -> bool:
        known = self._moderators.get((creator_id, user_id))
        if known is None:
            epoch = self._control_epoch
            async with self.engine.connect() as conn:
                known = await moderation.is_moderator(conn, creator_id, user_id)
            if epoch == self._control_epoch:
                if len(self._moderators) >= KNOWN_USERS_SIZE:
                    self._moderators.clear()
                self._moderators[(creator_id, user_id)] = known
        return known

    def _check_timed_out(self, sid: str | None, conversation_id: int) -> None:
        """A socket whose join (or last send) found a timeout still running is refused without a
        database read; a `moderation` control message lifting it drops what the socket knew."""
        state = self.sockets.get(sid) if sid is not None else None
        access = state.posting.get(conversation_id) if state is not None else None
        if access is not None and access.timed_out_until is not None and access.timed_out_until > utcnow():
            raise timed_out_error(access.timed_out_until)

    async def _retried(self, wire: dict[str, Any]) -> dict[str, Any]:
        """A retry's original message, with its photos."""
        if self.attachments is None:
            return wire
        async with self.engine.connect() as conn:
            return (await self._with_attachments(conn, [wire]))[0]

    def _may_post_from_socket(self, sid: str | None, conversation_id: int) -> ConversationMeta | None:
        state = self.sockets.get(sid) if sid is not None else None
        if state is None or conversation_id not in state.conversations:
            return None
        access = state.posting.get(conversation_id)
        if access is None or not access.post:
            return None  # the full check answers, with its reason (or a retry's original)
        return self._conversations.get(conversation_id)

    async def _check_send(self, user: Identity, conversation_id: int, body: str,
                          client_msg_id: str, thread_id: int | None = None) -> ConversationMeta | dict[str, Any]:
        """The database check of a send: the conversation, a retry's original, then access.
        Returns the conversation, or the original message when this is a retry."""
        async def check() -> tuple[ConversationMeta, dict[str, Any] | None, tuple[str, int] | None, Standing | None,
                                   int]:
            async with self.engine.connect() as conn:
                conv = await storage.get_conversation_meta(conn, conversation_id)
                if conv is None:
                    raise NotFound("no such conversation")
                row = (await storage.find_sent(conn, [(user.user_id, client_msg_id)])).get((user.user_id, client_msg_id))
                if row is not None:
                    if row.conversation_id != conversation_id or (row.body != body and not row.deleted):
                        raise Conflict("client_msg_id was already used for a different message")
                    if row.thread_id != thread_id:
                        raise Conflict("client_msg_id was already used for a message in another thread")
                    name = user.name or (await storage.user_names_of(conn, [user.user_id]))[user.user_id]
                    return conv, schemas.message_wire_columns(row.id, row.conversation_id, row.seq, row.sender_id, name, row.body,
                                              row.client_msg_id, row.created_at, row.edited_at, row.deleted,
                                              **threads.fields_of(row),
                                              mentions=schemas.decode_mentions(row.mentions)), None, None, 0
                key = membership_key(conv, user.user_id)
                if key is None:
                    return conv, None, None, None, 0
                if conv.kind == "direct" and await memberblocks.blocked_between(conn, *key):
                    raise Forbidden(DIRECT_BLOCKED)
                # chat spaces: the member's accepted guidelines version, read only where it matters
                accepted = (await spaces.accepted_version(conn, conversation_id, user.user_id)
                            if spaces.guidelines_pending(conv, user.user_id, 0) else 0)
                return (conv, None, await storage.get_membership_state(conn, *key),
                        await moderation.get_standing(conn, *key), accepted)

        try:
            conv, original, membership, standing, accepted = await retry_transaction(check, attempts=3)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning("send check failed: %s", type(exc).__name__)
            raise _db_unavailable() from None
        self._remember(conv)
        if original is not None:
            return original
        access = access_rule(conv, user.user_id, membership, standing)
        if not access.post:
            raise _forbidden(access)
        if spaces.guidelines_pending(conv, user.user_id, accepted) and not await self._is_moderator(
                conv.creator_id, user.user_id):
            raise spaces.guidelines_refused(conv)
        return conv

    def _remember(self, conv: ConversationMeta) -> None:
        if len(self._conversations) >= CONVERSATION_CACHE_SIZE and conv.id not in self._conversations:
            self._conversations.clear()  # refilled by the next joins and sends
        self._conversations[conv.id] = conv

    def _deliver_messages(self, messages: list[dict[str, Any]]) -> Awaitable[None]:
        """The writer's hand-off after each commit, in seq order per conversation: local sockets
        written at once, the relay's publish awaitable."""
        return self.delivery.to_conversations("message", [(int(w["conversation_id"]), w) for w in messages])

    async def _emit_message_updated(self, wire: dict[str, Any]) -> None:
        await self.delivery.to_conversation(int(wire["conversation_id"]), "message_updated", wire)

    async def _reread_root(self, root_id: int) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            return await threads.root_wire(conn, root_id)

    async def edit_message(self, user: Identity, message_id: int, body: str) -> dict[str, Any]:
        async with self.sessions.begin() as session:
            msg = await storage.get_message(session, message_id)
            if msg is None:
                raise NotFound("no such message")
            conv, _ = await self._readable(session, user.user_id, msg.conversation_id)
            if msg.sender_id != user.user_id:
                raise Forbidden("only the author edits a message")
            spaces.check_not_archived(conv)
            if msg.deleted:
                raise Invalid("a deleted message cannot be edited")
            if await reports.hidden_among(await session.connection(), [message_id]):
                raise Forbidden("a message hidden by reports cannot be edited until it is reviewed")
            msg.body, msg.edited_at = body, utcnow()
            await session.flush()
            wire = (await self._messages_wire(session, [msg]))[0]
        await self.delivery.to_conversation(msg.conversation_id, "message_updated", wire)
        return {"message": wire}

    async def delete_message(self, user: Identity, message_id: int) -> dict[str, Any]:
        return await self._delete_message(user, message_id)

    async def _delete_message(self, user: Identity | None, message_id: int) -> dict[str, Any]:
        """Delete as `user` (their own messages; a room's creator or one of the creator's
        moderators any in the room), or as the backend (None: any message). A delete of someone
        else's message goes to the moderation log."""
        async with self.sessions.begin() as session:
            msg = await storage.get_message(session, message_id)
            if msg is None:
                raise NotFound("no such message")
            conv_creator = None
            if user is not None and msg.sender_id != user.user_id:
                conv = await storage.get_conversation(session, msg.conversation_id)
                assert conv is not None  # messages cascade with their conversation
                allowed = conv.kind == "room" and (
                    conv.creator_id == user.user_id
                    or await moderation.is_moderator(await session.connection(), conv.creator_id, user.user_id))
                if not allowed:
                    await self._readable(session, user.user_id, msg.conversation_id)  # not_found/forbidden as before
                    raise Forbidden("only the author, the room's creator or its moderators delete a message")
                conv_creator = conv.creator_id
            elif user is not None:
                await self._readable(session, user.user_id, msg.conversation_id)
            changed = not msg.deleted
            if changed:
                msg.deleted, msg.body, msg.edited_at = True, "", utcnow()
                await session.flush()
                if conv_creator is not None and user is not None:
                    await self._record_action(session, conv_creator, user.user_id, "message_deleted",
                                                   msg.sender_id, message_id=msg.id)
            wire = (await self._messages_wire(session, [msg]))[0]
        if changed:
            await self.delivery.to_conversation(msg.conversation_id, "message_updated", wire)
        return {"message": wire}

    async def _record_action(self, session: AsyncSession, creator_id: str, actor_id: str | None, action: str,
                             target_id: str | None, **kw: Any) -> dict[str, Any]:
        """A moderation log entry and its webhooks, in `session`'s transaction (chat/moderation.py)."""
        return await moderation.record_action(session, creator_id, actor_id, action, target_id,
                                              webhook_events=self.settings.webhook_events, **kw)

    # ============================================================ reactions

    def check_socket_react_rate(self, sid: str) -> None:
        if not self.socket_reacts.take(sid):
            raise RateLimited(f"at most {self.settings.send_rate_per_s:g} reactions per second")

    async def _reactable(self, user: Identity, message_id: int, conversation_id: int | None) -> int:
        """The message's conversation, when `user` may react there: anyone who reads a room
        (posting policy aside), and in a direct conversation whoever may post."""
        async with self.sessions() as session:
            msg = await storage.get_message(session, message_id)
            if msg is None or (conversation_id is not None and msg.conversation_id != conversation_id):
                raise NotFound("no such message")
            conv, access = await self._readable(session, user.user_id, msg.conversation_id)
            if conv.kind == "direct" and not access.post:
                raise Forbidden(access.reason)
            spaces.check_not_archived(conv)
            return msg.conversation_id

    async def react(self, user: Identity, message_id: int, emoji: str, on: bool, *,
                    conversation_id: int | None = None) -> dict[str, Any]:
        """Add (`on`) or remove one reaction, idempotently; returns {count, reactions} as of the
        commit. The members get a `reaction` event (coalesced per message, chat/reactions.py)."""
        try:
            cid = await retry_transaction(lambda: self._reactable(user, message_id, conversation_id), attempts=3)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning("react check failed: %s", type(exc).__name__)
            raise _db_unavailable() from None

        async def store() -> tuple[bool, set[str], list[dict[str, Any]]]:
            async with self.engine.begin() as conn:
                locked = await storage.lock_message(conn, message_id)  # first: see chat/storage.py
                if locked is None:
                    raise NotFound("no such message")
                if locked[1]:
                    raise Invalid("a deleted message takes no reactions")
                counts, mine = await storage.locked_reactions(conn, message_id, user.user_id)
                if on == (emoji in mine):
                    return False, mine, counts  # already so: nothing changes
                if on:
                    if len(mine) >= reactions.MAX_PER_USER:
                        raise Conflict(f"at most {reactions.MAX_PER_USER} reactions of yours on one message")
                    if len(counts) >= reactions.MAX_PER_MESSAGE and all(c["emoji"] != emoji for c in counts):
                        raise Conflict(f"at most {reactions.MAX_PER_MESSAGE} different emoji on one message")
                    await storage.insert_reaction(conn, message_id, user.user_id, emoji, utcnow())
                    mine.add(emoji)
                else:
                    await storage.delete_reaction(conn, message_id, user.user_id, emoji)
                    mine.discard(emoji)
                return True, mine, _counted(counts, emoji, 1 if on else -1)

        try:
            changed, mine, counts = await retry_transaction(store)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning("react failed: %s", type(exc).__name__)
            raise _db_unavailable() from None
        count = next((c["count"] for c in counts if c["emoji"] == emoji), 0)
        if changed:
            await self.reaction_events.note({
                "message_id": str(message_id), "conversation_id": str(cid), "emoji": emoji,
                "user_id": user.user_id, "on": on, "count": count, "reactions": counts})
        return {"count": count, "reactions": [{**c, "me": c["emoji"] in mine} for c in counts]}

    async def _emit_reaction(self, event: dict[str, Any]) -> None:
        await self.delivery.to_conversation(event["conversation_id"], "reaction", event)

    async def _recount_reactions(self, message_id: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return await storage.reaction_counts(conn, message_id)

    async def list_reactions(self, user: Identity, conversation_id: int, message_id: int, emoji: str | None,
                             limit: int) -> dict[str, Any]:
        """A message's reactions with who reacted (the first `limit` per emoji, oldest first)."""
        async with self.sessions() as session:
            await self._readable(session, user.user_id, conversation_id)
            msg = await storage.get_message(session, message_id)
            if msg is None or msg.conversation_id != conversation_id:
                raise NotFound("no such message")
            if msg.deleted:
                return {"reactions": []}
            conn = await session.connection()
            summary = (await storage.reaction_summaries(conn, [message_id], user.user_id)).get(message_id, [])
            users = await storage.reactors(conn, message_id, emoji, limit)
        return {"reactions": [{**r, "users": users.get(r["emoji"], [])}
                              for r in summary if emoji is None or r["emoji"] == emoji]}

    async def find_members(self, user: Identity, conversation_id: int, query: str, limit: int) -> dict[str, Any]:
        """Members of a conversation the user reads, for `@` completion (chat/mentions.py)."""
        async with self.sessions() as session:
            conv, _ = await self._readable(session, user.user_id, conversation_id)
            found = await mentions.find_members(await session.connection(), storage.conversation_meta_of(conv),
                                                query, limit)
        return {"members": found}

    # ============================================================ typing and read receipts

    async def typing(self, sid: str, conversation_id: int, typing: bool) -> dict[str, Any]:
        user = self.socket_user(sid)
        if conversation_id not in self.sockets[sid].conversations:
            await self._require_conversation(conversation_id)
            raise Forbidden("join the conversation first")
        was_typing = self._cancel_typing_timer(sid, conversation_id)
        if typing:
            loop = asyncio.get_running_loop()
            self._typing_timers[(sid, conversation_id)] = loop.call_later(
                TYPING_EXPIRES_S, lambda: asyncio.ensure_future(self._typing_expired(sid, user.user_id, conversation_id)))
            # "typing: true" is relayed at most once per TYPING_THROTTLE_S per user.
            if not await self.presence.typing_allowed(str(conversation_id), user.user_id, TYPING_THROTTLE_S):
                return {}
        elif not was_typing:
            return {}
        await self._emit_typing(sid, user.user_id, conversation_id, typing)
        return {}

    async def _emit_typing(self, sid: str, user_id: str, conversation_id: int, typing: bool) -> None:
        await self.delivery.to_conversation(conversation_id, "typing", {
            "conversation_id": str(conversation_id), "user_id": user_id, "typing": typing}, skip_sid=sid)

    def _cancel_typing_timer(self, sid: str, conversation_id: int) -> bool:
        timer = self._typing_timers.pop((sid, conversation_id), None)
        if timer is None:
            return False
        timer.cancel()
        return True

    async def _typing_expired(self, sid: str, user_id: str, conversation_id: int) -> None:
        self._typing_timers.pop((sid, conversation_id), None)
        try:
            await self._emit_typing(sid, user_id, conversation_id, False)
        except Exception:
            log.warning("typing expiry not delivered", exc_info=True)

    async def sent_from_socket(self, sid: str, conversation_id: int) -> None:
        """A socket that sent a message is no longer typing there."""
        state = self.sockets.get(sid)
        if state is not None:
            await self._stop_typing(sid, state.user.user_id, conversation_id)

    async def _stop_typing(self, sid: str, user_id: str, conversation_id: int) -> None:
        """A socket that sends, leaves or disconnects stops typing there."""
        if self._cancel_typing_timer(sid, conversation_id):
            await self._emit_typing(sid, user_id, conversation_id, False)

    async def mark_read(self, user: Identity, conversation_id: int, seq: int,
                        skip_sid: str | None = None) -> dict[str, Any]:
        async with self.sessions.begin() as session:
            await self._readable(session, user.user_id, conversation_id)
            last = await storage.get_last_seq(session, conversation_id)
            if seq > last:
                raise Invalid(f"seq is beyond the conversation's last message ({last})")
            before = (await storage.get_state(session, user.user_id, conversation_id)).last_read_seq
            position = await storage.advance_read_position(session, user.user_id, conversation_id, seq)
            unread = await storage.count_unread(session, conversation_id, user.user_id, position)
        if position != before:
            await self.delivery.to_conversation(conversation_id, "read", {
                "conversation_id": str(conversation_id), "user_id": user.user_id, "seq": position}, skip_sid=skip_sid)
        return {"unread_count": unread}

    # ============================================================ channels

    async def check_channel(self, user: Identity, channel: str) -> None:
        match = keys.CHANNEL_RE.match(channel)
        if match is None:
            raise Forbidden("unknown channel")
        kind, ident = match.groups()
        if kind == "user":
            if ident != user.user_id:
                raise Forbidden("only your own user channel")
            return
        async with self.sessions() as session:
            if kind == "creator":
                if ident == user.user_id:
                    return
                m = await storage.get_membership(session, ident, user.user_id)
                if m is None or m.status != "active":
                    raise Forbidden("not an active patron of this creator")
                standing = await moderation.get_standing(await session.connection(), ident, user.user_id)
                if standing is not None and standing.blocked:
                    raise Forbidden("blocked by the creator")
                return
            if not schemas.CANONICAL_ID_RE.match(ident):  # "01" names no room
                raise Forbidden("no such room")
            conv = await storage.get_conversation(session, int(ident))
            if conv is None or conv.kind != "room" or not (await self._access(session, user.user_id, conv)).read:
                raise Forbidden("not a member of this room")

    async def channel_audience(self, channel: str) -> list[str]:
        """The users a channel notification goes to, as of now (SPEC §3): `creator:{id}` the
        creator's active patrons, `room:{id}` the room's members other than its creator,
        `user:{id}` that user. Invalid for anything else, not_found for an unknown room."""
        match = keys.CHANNEL_RE.match(channel)
        if match is None:
            raise Invalid("channel must be user:{id}, creator:{id} or room:{id}")
        kind, ident = match.groups()
        if kind == "user":
            return [ident]
        async with self.sessions() as session:
            if kind == "creator":
                return await storage.list_active_patron_ids(session, ident)
            conv = await storage.get_conversation(session, int(ident)) if ident.isdigit() else None
            if conv is None or conv.kind != "room":
                raise NotFound("no such room")
            return await storage.list_active_patron_ids(session, conv.creator_id, conv.min_tier_cents)

    async def subscribe(self, sid: str, channel: str) -> dict[str, Any]:
        user = self.socket_user(sid)
        await self.check_channel(user, channel)
        state = self._socket_state(sid)  # it may have disconnected meanwhile
        if channel not in state.channels:
            await self.delivery.enter_channel(sid, channel)
            await self.presence.subscribe(channel, sid)
            state.channels.add(channel)
        return {}

    async def unsubscribe(self, sid: str, channel: str) -> dict[str, Any]:
        state = self.sockets.get(sid)
        if state is not None and channel in state.channels:
            state.channels.discard(channel)
            await self.delivery.leave_channel(sid, channel)
            await self.presence.unsubscribe(channel, sid)
        return {}

    async def publish(self, channel: str, event: str, data: Any) -> dict[str, Any]:
        if keys.CHANNEL_RE.match(channel) is None:
            raise Invalid("channel must be user:{id}, creator:{id} or room:{id}")
        delivered = await self.presence.subscriber_count(channel)
        await self.delivery.to_channel(channel, "event", {
            "channel": channel, "event": event, "data": data, "published_at": schemas.iso(utcnow())})
        return {"delivered_to": delivered}

    # ============================================================ server API: users, memberships, rooms

    async def put_user(self, user_id: str, name: str, avatar_url: str | None) -> dict[str, Any]:
        async def store() -> tuple[dict[str, Any], str | None]:
            async with self.sessions.begin() as session:
                row = await storage.get_user(session, user_id)
                before = None if row is None else row.name
                user = await storage.upsert_user(session, user_id, name, avatar_url, keep_avatar=False)
                return {"id": user.id, "name": user.name, "avatar_url": user.avatar_url}, before

        wire, before = await retry_transaction(store)
        # The next connect of this user in this process compares its token's name with the row again.
        self._known_users.pop(user_id, None)
        if before is not None and before != wire["name"]:
            # Every process forgets the name: in the joins it caches (chat/recent.py), in its connect LRU.
            await self._renamed(user_id)
        return wire

    async def _renamed(self, user_id: str) -> None:
        try:
            await self.delivery.broadcast_control({"type": "user_renamed", "user_id": user_id})
        except Exception as exc:  # the renamed user's name may show in cached joins until they are dropped
            log.warning("user_renamed not broadcast (%s)", type(exc).__name__)
            self.recent.clear()

    async def put_membership(self, creator_id: str, patron_id: str, tier_cents: int, status: str) -> dict[str, Any]:
        if creator_id == patron_id:
            raise Invalid("a creator cannot be their own patron")
        async def store() -> tuple[dict[str, Any], list[int], Membership | None, int | None]:
            async with self.sessions.begin() as session:
                return await self._store_membership(session, creator_id, patron_id, tier_cents, status)

        wire, lost_rooms, before, direct_id = await retry_transaction(store)
        ended = before is not None and before.status == "active" and status != "active"
        channels = [keys.room_channel(str(r)) for r in lost_rooms]
        if ended:
            channels.append(keys.creator_channel(creator_id))
        if lost_rooms or channels:
            await self.delivery.broadcast_control({
                "type": "revoke", "user_id": patron_id, "conversation_ids": lost_rooms, "channels": channels},
                access_change=True)
        if ended and direct_id is not None:
            # Both stay readers of their direct conversation, but neither may post in it any more:
            # every process forgets what the sockets' joins established about posting there.
            await self.delivery.broadcast_control({
                "type": "post_revoked", "user_ids": [creator_id, patron_id], "conversation_ids": [direct_id]},
                access_change=True)
        return wire

    @staticmethod
    async def _store_membership(session: AsyncSession, creator_id: str, patron_id: str, tier_cents: int,
                                status: str) -> tuple[dict[str, Any], list[int], Membership | None, int | None]:
        """Returns the membership's wire form, the rooms the patron just lost, the state before,
        and the id of the pair's direct conversation if the membership just ended."""
        for uid in (creator_id, patron_id):
            if await storage.get_user(session, uid) is None:
                await storage.upsert_user(session, uid, None)
        m, before = await storage.upsert_membership(session, creator_id, patron_id, tier_cents, status)
        lost_rooms: list[int] = []
        if before is not None and before.status == "active":
            rooms = await storage.list_rooms_of_creators(session, [creator_id])
            lost_rooms = [r.id for r in rooms if before.tier_cents >= r.min_tier_cents
                          and (status != "active" or tier_cents < r.min_tier_cents)]
        direct_id = None
        if before is not None and before.status == "active" and status != "active":
            direct = await storage.get_direct(session, creator_id, patron_id)
            direct_id = direct.id if direct is not None else None
        return _membership_wire(m), lost_rooms, before, direct_id

    async def create_room(self, creator_id: str, name: str, min_tier_cents: int, post_policy: str,
                          external_id: str | None = None,
                          space: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
        """The room's server-API form, and True when it was created. With an external_id, the
        creator's room with that external_id is returned as it is if it exists (whatever the
        rest of the request), so a retried or repeated create makes one room. A creator has at
        most spaces.MAX_ACTIVE_SPACES rooms that are not archived (`conflict`). `space`: the
        room's topic, emoji and guidelines (chat/spaces.py check_space_fields)."""
        if external_id is not None:  # a repeated create reads, and takes no lock
            async with self.sessions() as session:
                existing = await storage.find_room(session, creator_id, external_id)
                if existing is not None:
                    return room_wire(existing), False

        async def store() -> tuple[dict[str, Any], bool]:
            async with self.sessions.begin() as session:
                await spaces.lock_creator(session, creator_id)  # first: see spaces.lock_creator
                if external_id is not None:
                    existing = await storage.find_room(session, creator_id, external_id)
                    if existing is not None:
                        return room_wire(existing), False
                if await spaces.count_active_rooms(session, creator_id) >= spaces.MAX_ACTIVE_SPACES:
                    raise Conflict(f"a creator has at most {spaces.MAX_ACTIVE_SPACES} active spaces; "
                                   "archive or delete one first")
                if external_id is None:
                    conv, created = await storage.insert_room(session, creator_id, name, min_tier_cents,
                                                              post_policy), True
                else:
                    conv, created = await storage.insert_room_once(session, creator_id, external_id, name,
                                                                   min_tier_cents, post_policy)
                if created and space:
                    conv.topic = space.get("topic", "")
                    conv.emoji = space.get("emoji")
                    if space.get("guidelines"):
                        conv.guidelines, conv.guidelines_version = space["guidelines"], 1
                    await session.flush()
                return room_wire(conv), created

        return await retry_transaction(store)

    async def list_rooms(self, creator_id: str | None, after_id: int | None, limit: int) -> dict[str, Any]:
        """A page of rooms in creation order; `next_cursor` is where the next page starts (None at the end)."""
        async with self.sessions() as session:
            rooms = await storage.list_rooms(session, creator_id, after_id, limit + 1)
        more = len(rooms) > limit
        rooms = rooms[:limit]
        return {"rooms": [room_wire(r) for r in rooms], "next_cursor": str(rooms[-1].id) if more else None}

    async def server_delete_message(self, message_id: int) -> dict[str, Any]:
        """The backend deletes any message: the same outcome and `message_updated` event as its
        author's delete (SPEC §4), without an access check."""
        return await self._delete_message(None, message_id)

    async def server_history(self, conversation_id: int, page: schemas.PageQuery, *, thread_id: int | None = None,
                             include_replies: bool = True) -> dict[str, Any]:
        """The client history page, for the backend: any conversation, no membership needed."""
        async with self.sessions() as session:
            if await storage.get_conversation(session, conversation_id) is None:
                raise NotFound("no such conversation")
            # reactions with their counts, `me` false (the backend is no member)
            return await self._history_page(session, conversation_id, page, reader_id="", thread_id=thread_id,
                                            include_replies=include_replies)

    async def conversation_presence(self, conversation_id: int) -> dict[str, Any]:
        """Who has a socket joined to the conversation on a live process (the join answer's `online`)."""
        await self._require_conversation(conversation_id)
        cid = str(conversation_id)
        return {"conversation_id": cid, "online": await self.presence.online_in(cid)}

    async def channel_presence(self, channel: str) -> dict[str, Any]:
        """Who of the channel's audience has a connected socket anywhere in the cluster, and how
        many sockets are subscribed to the channel (best effort, as `delivered_to`)."""
        match = keys.CHANNEL_RE.match(channel)
        if match is None:
            raise Invalid("channel must be user:{id}, creator:{id} or room:{id}")
        kind, ident = match.groups()
        if kind == "user":
            audience = [ident]
        elif kind == "creator":
            audience = [ident, *await self.channel_audience(channel)]
        else:
            async with self.sessions() as session:
                conv = await storage.get_conversation(session, int(ident)) if schemas.CANONICAL_ID_RE.match(ident) else None
                if conv is None or conv.kind != "room":
                    raise NotFound("no such room")
                creator = conv.creator_id
            audience = [creator, *await self.channel_audience(channel)]
        online = await self.presence.online_users(audience)
        return {"channel": channel, "online": sorted(online),
                "subscribers": await self.presence.subscriber_count(channel)}

    async def disconnect_user(self, user_id: str) -> dict[str, Any]:
        """Disconnect every socket of the user on every process (a control message, like a
        revocation). `was_online`: the user had a connected socket in the cluster just before."""
        was_online = bool(await self.presence.online_users([user_id]))
        await self.delivery.broadcast_control({"type": "disconnect_user", "user_id": user_id})
        return {"user_id": user_id, "was_online": was_online}

    # ============================================================ moderation (docs/moderation.md)

    @staticmethod
    async def _ensure_users(session: AsyncSession, *user_ids: str) -> None:
        for uid in user_ids:
            if await storage.get_user(session, uid) is None:
                await storage.upsert_user(session, uid, None)

    @staticmethod
    async def _check_moderates(session: AsyncSession, creator_id: str, actor_id: str | None) -> bool:
        """Forbidden unless `actor_id` is the creator or one of their moderators (None: the
        backend, always allowed). True when the actor is a moderator (not the creator or backend)."""
        if actor_id is None or actor_id == creator_id:
            return False
        if not await moderation.is_moderator(await session.connection(), creator_id, actor_id):
            raise Forbidden("only the creator and their moderators do this")
        return True

    async def _check_target(self, session: AsyncSession, creator_id: str, actor_id: str | None, target_id: str) -> None:
        if target_id == creator_id:
            raise Forbidden("the creator cannot be moderated in their own rooms")
        if await self._check_moderates(session, creator_id, actor_id) and await moderation.is_moderator(
                await session.connection(), creator_id, target_id):
            raise Forbidden("moderators do not time out or block each other; the creator does")

    async def set_moderator(self, actor_id: str | None, creator_id: str, user_id: str, on: bool) -> dict[str, Any]:
        """Appoint or remove a moderator of `creator_id`: the creator (socket) or the backend (None)."""
        if actor_id is not None and actor_id != creator_id:
            raise Forbidden("only the creator appoints moderators")
        if user_id == creator_id:
            raise Invalid("the creator moderates their rooms already")
        action = "moderator_added" if on else "moderator_removed"

        async def store() -> bool:
            async with self.sessions.begin() as session:
                await self._ensure_users(session, creator_id, user_id)
                changed = await moderation.set_moderator(session, creator_id, user_id, on)
                if changed:
                    await self._record_action(session, creator_id, actor_id, action, user_id)
                return changed

        if await retry_transaction(store):
            await self.delivery.broadcast_control({"type": "moderation", "action": action, "creator_id": creator_id,
                                                   "user_id": user_id, "until": None})
        return {"creator_id": creator_id, "user_id": user_id, "moderator": on}

    async def list_moderators(self, creator_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return {"creator_id": creator_id, "moderators": await moderation.list_moderators(conn, creator_id)}

    async def moderation_overview(self, user: Identity) -> dict[str, Any]:
        """What the page needs of moderation for the signed-in user: whose rooms they moderate,
        their own running timeouts, and, for themselves as a creator and each creator they
        moderate, the moderators and the blocked or timed-out members (docs/api.md)."""
        now = utcnow()
        return await self._read(lambda conn: self._moderation_overview(conn, user.user_id, now))

    async def _moderation_overview(self, conn: AsyncConnection, user_id: str, now: datetime) -> dict[str, Any]:
        moderator_of = await moderation.moderated_creator_ids(conn, user_id)
        timeouts = await moderation.running_timeouts(conn, user_id, now)
        teams = []
        for creator_id in [user_id, *moderator_of]:
            mods = await moderation.list_moderators(conn, creator_id)
            sanctioned = await moderation.sanctioned_members(conn, creator_id, now, OVERVIEW_LIMIT)
            names = await storage.user_names_of(conn, [*mods, *(s[0] for s in sanctioned)])
            teams.append({
                "creator_id": creator_id,
                "moderators": [{"id": m, "name": names[m]} for m in mods],
                "blocked": [{"id": u, "name": names[u]} for u, blocked, _ in sanctioned if blocked],
                "timed_out": [{"id": u, "name": names[u], "until": schemas.iso(until)}
                              for u, _, until in sanctioned if until is not None],
            })
        return {"moderator_of": moderator_of,
                "timeouts": [{"creator_id": c, "until": schemas.iso(u)} for c, u in timeouts],
                "teams": teams}

    async def timeout_member(self, actor_id: str | None, creator_id: str, user_id: str, minutes: int,
                             reason: str) -> dict[str, Any]:
        """Time `user_id` out of the creator's rooms for `minutes` (0 lifts a running timeout)."""
        until = utcnow() + timedelta(minutes=minutes) if minutes else None
        action = "timeout" if minutes else "timeout_lifted"

        async def store() -> None:
            async with self.sessions.begin() as session:
                await self._check_target(session, creator_id, actor_id, user_id)
                await self._ensure_users(session, creator_id, user_id)
                await moderation.set_timeout(session, creator_id, user_id, until)
                await self._record_action(session, creator_id, actor_id, action, user_id, reason=reason,
                                               until=until)

        await retry_transaction(store)
        await self.delivery.broadcast_control({"type": "moderation", "action": action, "creator_id": creator_id,
                                               "user_id": user_id, "until": schemas.iso(until)})
        return {"creator_id": creator_id, "user_id": user_id, "until": schemas.iso(until)}

    async def block_member(self, actor_id: str | None, creator_id: str, user_id: str, on: bool,
                           reason: str) -> dict[str, Any]:
        """Block (`on`) or unblock `user_id`: out of all the creator's rooms, their direct
        conversation and the creator channel at once, on every process, whatever the membership."""
        action = "block" if on else "unblock"

        async def store() -> tuple[bool, bool, list[int], int | None]:
            async with self.sessions.begin() as session:
                await self._check_target(session, creator_id, actor_id, user_id)
                await self._ensure_users(session, creator_id, user_id)
                standing = await moderation.get_standing(await session.connection(), creator_id, user_id)
                changed = (standing is not None and standing.blocked) != on
                demoted = False
                if changed:
                    await moderation.set_blocked(session, creator_id, user_id, on)
                    await self._record_action(session, creator_id, actor_id, action, user_id, reason=reason)
                    # A blocked moderator moderates no more (the creator appoints them again if need be).
                    if on and await moderation.set_moderator(session, creator_id, user_id, False):
                        demoted = True
                        await self._record_action(session, creator_id, actor_id, "moderator_removed", user_id)
                rooms = [r.id for r in await storage.list_rooms_of_creators(session, [creator_id])]
                direct = await storage.get_direct(session, creator_id, user_id)
                return changed, demoted, rooms, direct.id if direct is not None else None

        changed, demoted, rooms, direct_id = await retry_transaction(store)
        if demoted:
            await self.delivery.broadcast_control({"type": "moderation", "action": "moderator_removed",
                                                   "creator_id": creator_id, "user_id": user_id, "until": None})
        if changed:
            lost = [*rooms, *([direct_id] if direct_id is not None else [])]
            await self.delivery.broadcast_control({
                "type": "moderation", "action": action, "creator_id": creator_id, "user_id": user_id, "until": None,
                "conversation_ids": lost if on else [direct_id] if direct_id is not None else [],
                "channels": [keys.room_channel(str(r)) for r in rooms] + [keys.creator_channel(creator_id)] if on else []})
        return {"creator_id": creator_id, "user_id": user_id, "blocked": on}

    async def set_slow_mode(self, actor_id: str | None, conversation_id: int, seconds: int,
                            reason: str = "") -> dict[str, Any]:
        """Slow mode of a room (0: off), by its creator, one of their moderators or the backend (None)."""
        async def store() -> None:
            async with self.sessions.begin() as session:
                conv = await storage.get_conversation(session, conversation_id)
                if conv is None or conv.kind != "room":
                    raise NotFound("no such room")
                await self._check_moderates(session, conv.creator_id, actor_id)
                await moderation.set_slow_mode(session, conversation_id, seconds)
                await self._record_action(session, conv.creator_id, actor_id, "slow_mode", None, reason=reason,
                                               conversation_id=conversation_id, seconds=seconds)

        await retry_transaction(store)
        await self.delivery.broadcast_control({"type": "slow_mode", "conversation_id": conversation_id,
                                               "seconds": seconds})
        wire = {"conversation_id": str(conversation_id), "seconds": seconds}
        await self.delivery.to_conversation(conversation_id, "slow_mode", wire)
        return wire

    async def moderation_log(self, actor_id: str | None, creator_id: str, before_id: int | None,
                             limit: int) -> dict[str, Any]:
        """The creator's moderation log, newest first; `next_cursor` continues it (None at the end)."""
        async with self.sessions() as session:
            await self._check_moderates(session, creator_id, actor_id)
            rows = await moderation.list_actions(session, creator_id, before_id, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"entries": [moderation.action_wire(r) for r in rows],
                "next_cursor": str(rows[-1].id) if more else None}

    async def _moderation_local(self, message: dict[str, Any]) -> None:
        """A moderation action, on this process: what its sockets knew about posting is dropped
        (the next send is checked in the database), a block takes the member out of everything
        of the creator's (as a revoked membership), and the member's sockets hear `moderation`."""
        action, creator_id, user_id = str(message["action"]), str(message["creator_id"]), str(message["user_id"])
        conversation_ids = [int(c) for c in message.get("conversation_ids", [])]
        if action == "block":
            await self._revoke_local(user_id, conversation_ids, [str(c) for c in message.get("channels", [])])
        # The creator's sockets may no longer (block) or may again (unblock) post in the direct one.
        self._forget_posting([creator_id], conversation_ids)
        for sid in self._user_sockets.get(user_id, ()):
            state = self.sockets.get(sid)
            if state is None:
                continue
            for cid in list(state.posting):
                meta = self._conversations.get(cid)
                if meta is None or meta.creator_id == creator_id:
                    state.posting.pop(cid, None)
        event = {"action": action, "creator_id": creator_id, "until": message.get("until")}
        for sid in list(self._user_sockets.get(user_id, ())):
            await self.delivery.to_socket(sid, "moderation", event)

    # ============================================================ reports and blocks between members

    async def _read_blocks(self, user_ids: list[str]) -> dict[str, set[str]]:
        return await self._read(lambda conn: memberblocks.blocked_ids_many(conn, user_ids))

    async def _direct_blocked(self, conv: ConversationMeta) -> bool:
        return await self._read(lambda conn: memberblocks.blocked_between(conn, conv.creator_id, conv.patron_id or ""))

    async def _hidden_of(self, conversation_id: int) -> set[int]:
        """The room's messages hidden by reports: read once per process, kept by control messages."""
        hidden = self._hidden.get(conversation_id)
        if hidden is not None:
            return hidden

        async def read() -> set[int]:
            epoch = self._control_epoch
            ids = await self._read(lambda conn: reports.hidden_ids(conn, conversation_id))
            if epoch == self._control_epoch:
                if len(self._hidden) >= CONVERSATION_CACHE_SIZE:
                    self._hidden.clear()
                self._hidden[conversation_id] = ids
            return ids

        found: set[int] = await self._once(("hidden", conversation_id, ""), read)
        return found

    async def _as_seen_by(self, user_id: str, conv: ConversationMeta, wires: list[dict[str, Any]],
                          blocked: set[str] | None) -> list[dict[str, Any]]:
        """`wires` as `user_id` sees them: a message whose sender they block, or (but for the
        creator and the moderators) one hidden by reports, replaced by its placeholder
        (memberblocks.hidden_wire). Nothing is copied when nothing is hidden."""
        if not wires:
            return wires
        hidden = await self._hidden_of(conv.id) if conv.kind == "room" else set()
        if not blocked and not hidden:
            return wires
        shown = hidden and any(int(w["id"]) in hidden for w in wires)
        if not blocked and not shown:
            return wires
        # The creator and the moderators see a hidden message, marked `hidden: true`.
        moderates = bool(shown) and (user_id == conv.creator_id or await self._is_moderator(conv.creator_id, user_id))
        out = []
        for w in wires:
            if blocked and w["sender"]["id"] in blocked:
                out.append(memberblocks.hidden_wire(w, "blocked"))
            elif shown and int(w["id"]) in hidden and not w.get("deleted"):
                out.append({**w, "hidden": True} if moderates else memberblocks.hidden_wire(w, "reported"))
            else:
                out.append(w)
        return out

    async def _hide_last_messages(self, session: AsyncSession, user_id: str, convs: Sequence[Conversation],
                                  last_wire: dict[str, dict[str, Any]]) -> None:
        """The conversation list's last messages, as `user_id` sees them."""
        if not last_wire:
            return
        conn = await session.connection()
        blocked = await memberblocks.blocked_ids(conn, user_id)
        hidden = await reports.hidden_among(conn, [int(w["id"]) for w in last_wire.values()])
        if not blocked and not hidden:
            return
        for c in convs:
            w = last_wire.get(str(c.id))
            if w is None:
                continue
            if w["sender"]["id"] in blocked:
                last_wire[str(c.id)] = memberblocks.hidden_wire(w, "blocked")
            elif int(w["id"]) in hidden and not w["deleted"] and user_id != c.creator_id and not (
                    await moderation.is_moderator(conn, c.creator_id, user_id)):
                last_wire[str(c.id)] = memberblocks.hidden_wire(w, "reported")

    async def set_hidden_live(self, conversation_id: int, message_id: int, seq: int, hidden: bool,
                              message: dict[str, Any] | None) -> None:
        """After a commit that hid (or showed again) a message: every process's cache, and the
        room's sockets get `message_hidden` (with the message itself when it shows again)."""
        control = {"type": "message_hidden", "conversation_id": conversation_id, "message_id": message_id,
                   "hidden": hidden}
        self._message_hidden_local(control)  # here at once (again when it comes back: idempotent)
        await self.delivery.broadcast_control(control)
        event: dict[str, Any] = {"conversation_id": str(conversation_id), "message_id": str(message_id), "seq": seq,
                                 "hidden": hidden}
        if message is not None:
            event["message"] = message
        await self.delivery.to_conversation(conversation_id, "message_hidden", event)

    async def block_user(self, user: Identity, other_id: str, on: bool) -> dict[str, Any]:
        """`user` blocks (`on`) or unblocks `other_id`: their messages are hidden for `user`
        (history, joins, live on every process) and no direct message goes between them."""
        if other_id == user.user_id:
            raise Invalid("user_id must be another user")

        async def store() -> tuple[bool, list[int]]:
            async with self.sessions.begin() as session:
                if await storage.get_user(session, other_id) is None:
                    raise NotFound("no such user")
                await self._ensure_users(session, user.user_id)
                changed = await memberblocks.set_block(session, user.user_id, other_id, on)
                directs = [d.id for d in (await storage.get_direct(session, user.user_id, other_id),
                                          await storage.get_direct(session, other_id, user.user_id)) if d is not None]
                return changed, directs

        changed, directs = await retry_transaction(store)
        if changed:
            control = {"type": "member_block", "blocker_id": user.user_id, "blocked_id": other_id, "on": on,
                       "conversation_ids": directs}
            # Here at once (a live message sent here right after the ack must be skipped), and on
            # every process when it comes back (idempotent). access_change: a process that misses
            # it reads the blocks again when the relay is back.
            self._member_block_local(control)
            await self.delivery.broadcast_control(control, access_change=True)
            await self.delivery.to_user(user.user_id, "user_blocked", {"user_id": other_id, "blocked": on})
        return {"user_id": other_id, "blocked": on}

    async def list_blocks(self, user_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return {"blocks": memberblocks.blocks_wire(await memberblocks.list_blocks(conn, user_id))}

    def _message_hidden_local(self, message: dict[str, Any]) -> None:
        self._control_epoch += 1  # a read of the room's hidden ids in flight does not keep what it read
        hidden = self._hidden.get(int(message["conversation_id"]))
        if hidden is not None:
            if message.get("hidden"):
                hidden.add(int(message["message_id"]))
            else:
                hidden.discard(int(message["message_id"]))

    def _member_block_local(self, message: dict[str, Any]) -> None:
        self._control_epoch += 1
        blocker, blocked = str(message["blocker_id"]), str(message["blocked_id"])
        self.member_blocks.apply(blocker, blocked, bool(message.get("on")))
        # Both directions: the next send in their direct conversation is checked in the database.
        self._forget_posting([blocker, blocked], [int(c) for c in message.get("conversation_ids", [])])

    # ============================================================ cluster control

    async def _on_control(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "revoke":
            self._control_epoch += 1
            await self._revoke_local(str(message["user_id"]), [int(c) for c in message.get("conversation_ids", [])],
                                     [str(c) for c in message.get("channels", [])])
        elif kind == "user_renamed":
            user_id = str(message.get("user_id"))
            self.recent.drop_user(user_id)
            self._known_users.pop(user_id, None)
        elif kind == "post_revoked":
            self._control_epoch += 1
            self._forget_posting([str(u) for u in message.get("user_ids", [])],
                                 [int(c) for c in message.get("conversation_ids", [])])
        elif kind == "moderation":
            self._control_epoch += 1
            if message.get("action") in ("moderator_added", "moderator_removed"):
                self._moderators[(str(message["creator_id"]), str(message["user_id"]))] = (
                    message["action"] == "moderator_added")
            await self._moderation_local(message)
        elif kind == "pins":
            self._control_epoch += 1
            self._pins[int(message["conversation_id"])] = [int(i) for i in message.get("message_ids", [])]
        elif kind == "slow_mode":
            self._control_epoch += 1
            self._slow_modes[int(message["conversation_id"])] = int(message["seconds"])
        elif kind == "member_block":
            self._member_block_local(message)
        elif kind == "message_hidden":
            self._message_hidden_local(message)
        elif kind in ("room_updated", "room_deleted"):
            await self.spaces.on_control(message)
        elif kind == "disconnect_user":
            for sid in list(self._user_sockets.get(str(message["user_id"]), ())):
                await self.delivery.disconnect(sid)

    async def recheck_access(self) -> None:
        """After the relay recovered, control messages may have been lost with the broadcasts:
        check what every local socket joined and subscribed to against the database, and take
        away what it lost (`access_revoked`, like a revocation). Posting is checked again at
        the next send. One database session; each (user, conversation) pair read once."""
        self._control_epoch += 1
        self._hidden.clear()  # `message_hidden` messages may have been missed
        try:
            await self.member_blocks.reload()
        except Exception as exc:
            log.warning("member blocks not read again after relay recovery (%s)", type(exc).__name__)
        by_user: dict[str, list[str]] = {}
        for sid, state in self.sockets.items():
            state.posting.clear()
            by_user.setdefault(state.user.user_id, []).append(sid)
        lost: dict[str, tuple[set[int], set[str]]] = {}
        async with self.sessions() as session:
            for user_id, sids in by_user.items():
                states = [s for s in (self.sockets.get(sid) for sid in sids) if s is not None]
                convs = set().union(*(s.conversations for s in states)) if states else set()
                channels = set().union(*(s.channels for s in states)) if states else set()
                gone_convs: set[int] = set()
                for cid in convs:
                    conv = await storage.get_conversation(session, cid)
                    if conv is None or not (await self._access(session, user_id, conv)).read:
                        gone_convs.add(cid)
                gone_channels: set[str] = set()
                for channel in channels:
                    try:
                        await self.check_channel(states[0].user, channel)
                    except Forbidden:
                        gone_channels.add(channel)
                if gone_convs or gone_channels:
                    lost[user_id] = (gone_convs, gone_channels)
        for user_id, (gone_convs, gone_channels) in lost.items():
            log.warning("access check after relay recovery: user's sockets lost %d conversations and %d channels",
                        len(gone_convs), len(gone_channels))
            await self._revoke_local(user_id, sorted(gone_convs), sorted(gone_channels))

    def _forget_posting(self, user_ids: list[str], conversation_ids: list[int]) -> None:
        """The next send of these users' sockets in these conversations is checked in the database."""
        for user_id in user_ids:
            for sid in self._user_sockets.get(user_id, ()):
                state = self.sockets.get(sid)
                if state is not None:
                    for conversation_id in conversation_ids:
                        state.posting.pop(conversation_id, None)

    async def _revoke_local(self, user_id: str, conversation_ids: list[int], channels: list[str]) -> None:
        """Take this process's sockets of `user_id` out of conversations and channels they lost."""
        for sid in list(self._user_sockets.get(user_id, ())):
            state = self.sockets.get(sid)
            if state is None:
                continue
            # Channels first: once the client sees access_revoked, nothing of what it lost reaches it.
            # The local state goes first in both; a presence decrement that Redis missed (it is
            # down: the revocation was not relayed either) is the heartbeat's to retry.
            for channel in channels:
                with contextlib.suppress(PresenceUnavailable):
                    await self.unsubscribe(sid, channel)
            for conversation_id in conversation_ids:
                if conversation_id in state.conversations:
                    with contextlib.suppress(PresenceUnavailable):
                        await self._leave_local(sid, user_id, conversation_id)
                    await self.delivery.to_socket(sid, "access_revoked", {"conversation_id": str(conversation_id)})

    @staticmethod
    async def push_audience_page(session: AsyncSession, conversation_id: int, sender_id: str, after: str | None,
                                 limit: int, thread_id: int | None = None,
                                 mentioned: Sequence[str] = (),
                                 message_id: int | None = None) -> tuple[list[str], str | None]:
        """One page of who gets a push for `sender_id`'s message if offline (SPEC §6), for the push
        worker's fan-out job: the other side of a direct conversation; the room's current members
        (active, at or above its tier) for the creator's posts, nobody for others' posts; for a
        room's thread reply (`thread_id`, its root) whoever of the root's author and the thread's
        repliers up to this reply (`message_id`: not those who replied after it) still reads the
        room (chat/threads.py), whoever sent it; in a room, also the
        `mentioned` ones still members (chat/mentions.py). Never the sender, never muted. Scans at
        most `limit` user ids greater than `after`, in order; returns (recipients, where the next
        page starts, None once exhausted). Runs in the caller's session (the worker's own pool)."""
        conv = await storage.get_conversation(session, conversation_id)
        if conv is None:
            return [], None
        resume: str | None = None
        if conv.kind == "direct":
            candidates = sorted(u for u in (conv.creator_id, conv.patron_id) if u and u != sender_id)
            if after is not None:
                candidates = [u for u in candidates if u > after]
        elif thread_id is not None:  # a room's thread reply: the root's author and the repliers
            candidates, resume = await threads.audience_page(session, conv.id, conv.creator_id, conv.min_tier_cents,
                                                             thread_id, after, limit, message_id)
            if mentioned:  # and the mentioned ones in this page's range of ids: each in one page only
                candidates = sorted(set(candidates) | set(await mentions.still_members(
                    session, conv.creator_id, conv.min_tier_cents,
                    [u for u in mentioned if resume is None or u <= resume], after)))
        elif sender_id == conv.creator_id:
            q = sqlalchemy.select(Membership.patron_id).where(
                Membership.creator_id == conv.creator_id, Membership.status == "active",
                Membership.tier_cents >= conv.min_tier_cents)
            if after is not None:
                q = q.where(Membership.patron_id > after)
            candidates = list(await session.scalars(q.order_by(Membership.patron_id).limit(limit)))
            resume = candidates[-1] if len(candidates) == limit else None
        elif mentioned:  # at most mentions.MAX_MENTIONS: one page
            candidates = await mentions.still_members(session, conv.creator_id, conv.min_tier_cents, mentioned, after)
        else:
            return [], None
        muted = await storage.muted_user_ids(session, conv.id, candidates)
        conn = await session.connection()
        muted |= await moderation.blocked_user_ids(conn, conv.creator_id, candidates)
        muted |= await memberblocks.blockers_among(conn, sender_id, candidates)  # they see a placeholder
        return [u for u in candidates if u not in muted and u != sender_id], resume


def _bare_wire(wire: dict[str, Any], photos: bool) -> bool:
    """A message wire that already shows no reactions (and, with photos enabled, no photos)."""
    return wire.get("reactions") == [] and (not photos or wire.get("attachments") == [])


def _row_wire(r: Any) -> dict[str, Any]:
    """A message's wire form from a `storage.message_page` row."""
    return schemas.message_wire_columns(r.id, r.conversation_id, r.seq, r.sender_id, r.name or r.sender_id, r.body,
                                        r.client_msg_id, r.created_at, r.edited_at, r.deleted,
                                        **threads.fields_of(r), mentions=schemas.decode_mentions(r.mentions))


def _member_wire(user_id: str, name: str, avatar_url: str | None) -> dict[str, Any]:
    """A direct conversation's member: `avatar_url` is an extension (docs/api.md), null when unset."""
    return {"id": user_id, "name": name, "avatar_url": avatar_url}


def _meta_wire(c: ConversationMeta, members: list[dict[str, Any]] | None, guidelines: str) -> dict[str, Any]:
    """schemas.conversation_wire from the join's view of the conversation (no ORM object on the join path)."""
    wire: dict[str, Any] = {"id": str(c.id), "kind": c.kind, "creator_id": c.creator_id, "name": c.name,
                            "min_tier_cents": c.min_tier_cents, "post_policy": c.post_policy, "topic": c.topic,
                            "emoji": c.emoji, "archived": c.archived, "guidelines": guidelines,
                            "guidelines_version": c.guidelines_version}
    if members is not None:
        wire["members"] = members
    return wire


room_wire = spaces.room_wire


def _membership_wire(m: Membership) -> dict[str, Any]:
    return {"creator_id": m.creator_id, "patron_id": m.patron_id, "tier_cents": m.tier_cents,
            "status": m.status, "updated_at": schemas.iso(m.updated_at)}
