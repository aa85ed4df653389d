"""Chat tables. Ids are strings on the wire; integer keys are rendered with str()."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from chat.db import Base, BigId, ExactString, UTCDateTime, utcnow
from chat.leases import LeasedWork

USER_ID = ExactString(64)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    avatar_url: Mapped[str | None] = mapped_column(sa.String(1000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Membership(Base):
    """A patron's pledge to a creator, as pushed by the platform backend."""

    __tablename__ = "memberships"

    creator_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    patron_id: Mapped[str] = mapped_column(USER_ID, primary_key=True, index=True)
    tier_cents: Mapped[int] = mapped_column(sa.Integer, default=0)
    status: Mapped[str] = mapped_column(sa.String(16), default="active")  # active | former
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Conversation(Base):
    """A creator's tier-gated `room`, or a `direct` conversation between a creator and a patron.

    `last_seq` is the seq of the newest message; it is incremented under the row lock
    taken by the UPDATE in the sending transaction, which makes seq gapless.
    """

    __tablename__ = "conversations"
    __table_args__ = (sa.UniqueConstraint("creator_id", "external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(8))  # room | direct
    creator_id: Mapped[str] = mapped_column(USER_ID, index=True)
    patron_id: Mapped[str | None] = mapped_column(USER_ID, nullable=True, index=True)
    # "creator_id/patron_id" for direct conversations, NULL for rooms: one direct per pair.
    direct_key: Mapped[str | None] = mapped_column(ExactString(140), nullable=True, unique=True)
    # The platform's own id of a room (server API `external_id`): one room per (creator, external_id).
    external_id: Mapped[str | None] = mapped_column(ExactString(128), nullable=True)
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    min_tier_cents: Mapped[int] = mapped_column(sa.Integer, default=0)
    post_policy: Mapped[str] = mapped_column(sa.String(16), default="everyone")  # everyone | creator
    # Chat spaces (chat/spaces.py, docs/moderation.md): a room's topic, emoji, archive time and
    # guidelines; `guidelines_version` grows by one with every change of `guidelines`.
    topic: Mapped[str] = mapped_column(sa.String(500), default="", server_default="")
    emoji: Mapped[str | None] = mapped_column(ExactString(32), nullable=True)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    guidelines: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    guidelines_version: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    last_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConversationState(Base):
    """Per user and conversation: read position and mute."""

    __tablename__ = "conversation_states"

    user_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    last_read_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    muted: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # The room's guidelines version this user accepted (chat/spaces.py); 0: none.
    accepted_guidelines_version: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        sa.UniqueConstraint("conversation_id", "seq"),
        sa.UniqueConstraint("sender_id", "client_msg_id"),
        # thread pages (thread_id = root) and the main view without replies (thread_id IS NULL)
        sa.Index("ix_messages_conversation_id_thread_id_seq", "conversation_id", "thread_id", "seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    sender_id: Mapped[str] = mapped_column(USER_ID)
    body: Mapped[str] = mapped_column(sa.Text)
    client_msg_id: Mapped[str] = mapped_column(ExactString(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # Threads (chat/threads.py): a reply names its root; a root keeps its thread's summary,
    # updated in the transaction of each batch of replies (reply_count only grows: deleted
    # replies stay in the thread as deleted messages). `thread_participants`: up to 5 user ids
    # of repliers, comma-separated, first repliers first.
    thread_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    reply_count: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    last_reply_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    thread_participants: Mapped[str | None] = mapped_column(sa.String(400), nullable=True)
    # The ids of the users the message mentions, as a JSON list; NULL when none (chat/mentions.py).
    mentions: Mapped[str | None] = mapped_column(sa.Text, nullable=True, default=None)


class MessageMention(Base):
    """One per (mentioned user, message), written with the message (chat/writer.py): what
    `mention_count` counts, through the primary key (user, conversation, seq > read position).
    Keyed by (conversation_id, seq), which the send's one multi-statement query knows before the
    message's id; a deleted message's rows stay and are left out by joining `messages`."""

    __tablename__ = "message_mentions"

    user_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)


class Attachment(Base):
    """An uploaded photo (chat/attachments.py). Unused until a send claims it: then it belongs to
    the message (owner_id = sender_id, client_msg_id) in conversation_id, for good."""

    __tablename__ = "attachments"
    __table_args__ = (sa.Index("ix_attachments_owner_message", "owner_id", "client_msg_id"),
                      # the sweep's scan: unused (client_msg_id NULL) uploads, oldest first
                      sa.Index("ix_attachments_unused", "client_msg_id", "created_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    owner_id: Mapped[str] = mapped_column(USER_ID)
    conversation_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    client_msg_id: Mapped[str | None] = mapped_column(ExactString(64), nullable=True)
    position: Mapped[int] = mapped_column(sa.SmallInteger, default=0)  # order in its message
    content_type: Mapped[str] = mapped_column(sa.String(32))
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)
    size: Mapped[int] = mapped_column(sa.Integer)  # bytes of the stored (re-encoded) file
    blob_key: Mapped[str] = mapped_column(ExactString(64))
    thumb_content_type: Mapped[str] = mapped_column(sa.String(32))
    thumb_width: Mapped[int] = mapped_column(sa.Integer)
    thumb_height: Mapped[int] = mapped_column(sa.Integer)
    thumb_key: Mapped[str] = mapped_column(ExactString(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BlobDeletion(LeasedWork, Base):
    """A blob to remove from the store (chat/uploadsweep.py): written in the transaction that
    deletes the row naming it, so no row ever names a removed blob and no blob is forgotten;
    deleted once the store confirms. Leased like other work rows (chat/leases.py). status:
    pending -> leased (by `lease_owner` until lease_until) -> row deleted, or pending again
    (due at next_attempt_at) after a failed delete."""

    __tablename__ = "blob_deletions"
    __table_args__ = (sa.Index("ix_blob_deletions_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    blob_key: Mapped[str] = mapped_column(ExactString(64))


class Reaction(Base):
    """One user's reaction with one emoji to one message: the primary key makes `react`
    idempotent per (message, user, emoji); counts are COUNT(*) of these rows, never a stored
    number that could drift. `emoji` is compared byte for byte (utf8mb4_bin on MariaDB)."""

    __tablename__ = "reactions"
    __table_args__ = (sa.Index("ix_reactions_message_id_emoji", "message_id", "emoji"),)

    message_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    emoji: Mapped[str] = mapped_column(ExactString(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Moderator(Base):
    """A user the creator appointed to moderate their rooms (docs/moderation.md)."""

    __tablename__ = "moderators"

    creator_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Sanction(Base):
    """A member's standing with one creator: blocked, and/or timed out until `timeout_until`.
    Separate from the membership, so a membership update never lifts it."""

    __tablename__ = "sanctions"

    creator_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(USER_ID, primary_key=True, index=True)
    blocked: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    timeout_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ModerationAction(Base):
    """The moderation log: who (`actor_id`, NULL for the backend) did what to whom, when, why."""

    __tablename__ = "moderation_actions"
    __table_args__ = (sa.Index("ix_moderation_actions_creator_id_id", "creator_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    creator_id: Mapped[str] = mapped_column(USER_ID)
    actor_id: Mapped[str | None] = mapped_column(USER_ID, nullable=True)
    action: Mapped[str] = mapped_column(sa.String(32))
    target_id: Mapped[str | None] = mapped_column(USER_ID, nullable=True)
    message_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    conversation_id: Mapped[int | None] = mapped_column(BigId, nullable=True)  # slow_mode: the room
    seconds: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)  # slow_mode: the interval (0: off)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reason: Mapped[str] = mapped_column(sa.String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SlowMode(Base):
    """A room in slow mode: each member posts at most once per `seconds` (creator and moderators exempt)."""

    __tablename__ = "slow_modes"

    conversation_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    seconds: Mapped[int] = mapped_column(sa.Integer, default=0)


class Pin(Base):
    """A message pinned in its room (at most moderation.MAX_PINS per room), newest pin last."""

    __tablename__ = "pins"

    conversation_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    message_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    pinned_by: Mapped[str | None] = mapped_column(USER_ID, nullable=True)
    pinned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MessageReport(Base):
    """A member's report of a message (docs/moderation.md "Reports"): one per member and message;
    `status` open until the creator, a moderator or the backend reviews the message (all its open
    reports resolve at once: dismissed or removed)."""

    __tablename__ = "message_reports"
    __table_args__ = (
        sa.UniqueConstraint("message_id", "reporter_id"),
        sa.Index("ix_message_reports_creator_status_id", "creator_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("messages.id", ondelete="CASCADE"))
    conversation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("conversations.id", ondelete="CASCADE"))
    creator_id: Mapped[str] = mapped_column(USER_ID)
    sender_id: Mapped[str] = mapped_column(USER_ID)
    reporter_id: Mapped[str] = mapped_column(USER_ID)
    reason: Mapped[str] = mapped_column(sa.String(16))
    note: Mapped[str] = mapped_column(sa.String(500), default="")
    status: Mapped[str] = mapped_column(sa.String(16), default="open")
    resolved_by: Mapped[str | None] = mapped_column(USER_ID, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HiddenMessage(Base):
    """A message hidden by reports from `hide_threshold` members, until reviewed."""

    __tablename__ = "hidden_messages"

    message_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    hidden_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReportSettings(Base):
    """A creator's reports threshold (absent: reports.DEFAULT_HIDE_THRESHOLD; 0: reports never hide)."""

    __tablename__ = "report_settings"

    creator_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    hide_threshold: Mapped[int] = mapped_column(sa.Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class MemberBlock(Base):
    """`blocker_id` hides `blocked_id`'s messages and refuses direct messages with them."""

    __tablename__ = "member_blocks"

    blocker_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    blocked_id: Mapped[str] = mapped_column(USER_ID, primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
