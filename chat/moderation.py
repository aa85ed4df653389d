"""Moderation storage and rules (docs/moderation.md): moderators per creator, sanctions
(timeout, block) of a member by a creator, and the moderation log.

A sanction is kept apart from the membership (its own table), so a membership update never
lifts it; chat/service.py reads it wherever access is decided (join, the send check, the
session-based access check) and takes it into `access_rule`.

Every action is written to the log by `record_action`, in the acting transaction, and handed
to `moderation_recorded`: the one place where a later consumer (the webhooks outbox) hooks in.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

import webhooks
from chat import schemas
from chat.auth import USER_ID_RE
from chat.db import put_row, toggle_row
from chat.errors import Invalid
from chat.models import ModerationAction, Moderator, Pin, Sanction, SlowMode

MIN_TIMEOUT_MINUTES = 1
MAX_TIMEOUT_MINUTES = 7 * 24 * 60
MAX_REASON_CHARS = 500
MAX_SLOW_MODE_S = 3600
ACTIONS = ("moderator_added", "moderator_removed", "timeout", "timeout_lifted", "block", "unblock",
           "message_deleted", "slow_mode", "message_pinned", "message_unpinned", "report_dismissed", "report_removed")
MAX_PINS = 3  # pinned messages per room

_moderators = sa.inspect(Moderator).local_table
_sanctions = sa.inspect(Sanction).local_table
_slow_modes = sa.inspect(SlowMode).local_table
_pins = sa.inspect(Pin).local_table


@dataclass(frozen=True)
class Standing:
    """A member's sanction with one creator, as the access rule needs it."""

    blocked: bool
    timeout_until: datetime | None


# ---------------------------------------------------------------- validation

def check_user_id(data: dict[str, Any], field: str, *, required: bool = True) -> str:
    value = data.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not USER_ID_RE.match(value):
        raise Invalid(f"{field} must be 1-64 characters of [A-Za-z0-9_-]")
    return value


def check_minutes(data: dict[str, Any]) -> int:
    """A timeout's length: 1 minute to 7 days, or 0 to lift a running one."""
    minutes = schemas.check_int(data, "minutes", minimum=0, maximum=MAX_TIMEOUT_MINUTES, required=True)
    assert minutes is not None
    return minutes


def check_slow_mode_seconds(data: dict[str, Any]) -> int:
    """Slow mode's interval: 1 s to an hour, or 0 to turn it off."""
    seconds = schemas.check_int(data, "seconds", minimum=0, maximum=MAX_SLOW_MODE_S, required=True)
    assert seconds is not None
    return seconds


def check_reason(data: dict[str, Any]) -> str:
    """An optional free-text reason for the log, trimmed; empty when left out."""
    value = data.get("reason")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Invalid("reason must be a string")
    if len(value.strip()) > MAX_REASON_CHARS:
        raise Invalid(f"reason is longer than {MAX_REASON_CHARS} characters")
    return value.strip()


# ---------------------------------------------------------------- reads

async def get_standing(conn: AsyncConnection, creator_id: str, user_id: str) -> Standing | None:
    c = _sanctions.c
    row = (await conn.execute(sa.select(c.blocked, c.timeout_until).where(
        c.creator_id == creator_id, c.user_id == user_id))).first()
    if row is None:
        return None
    return Standing(bool(row[0]), row[1])


async def is_moderator(conn: AsyncConnection, creator_id: str, user_id: str) -> bool:
    c = _moderators.c
    return (await conn.execute(sa.select(sa.literal(1)).where(
        c.creator_id == creator_id, c.user_id == user_id))).first() is not None


async def blocked_creator_ids(conn: AsyncConnection, user_id: str) -> set[str]:
    c = _sanctions.c
    return set(await conn.scalars(sa.select(c.creator_id).where(c.user_id == user_id, c.blocked.is_(True))))


async def blocked_user_ids(conn: AsyncConnection, creator_id: str, user_ids: list[str]) -> set[str]:
    if not user_ids:
        return set()
    c = _sanctions.c
    return set(await conn.scalars(sa.select(c.user_id).where(
        c.creator_id == creator_id, c.user_id.in_(user_ids), c.blocked.is_(True))))


async def list_moderators(conn: AsyncConnection, creator_id: str) -> list[str]:
    c = _moderators.c
    return list(await conn.scalars(sa.select(c.user_id).where(c.creator_id == creator_id).order_by(c.user_id)))


async def moderated_creator_ids(conn: AsyncConnection, user_id: str) -> list[str]:
    """The creators whose rooms `user_id` moderates."""
    c = _moderators.c
    return list(await conn.scalars(sa.select(c.creator_id).where(c.user_id == user_id).order_by(c.creator_id)))


async def running_timeouts(conn: AsyncConnection, user_id: str, now: datetime) -> list[tuple[str, datetime]]:
    """(creator_id, until) of the timeouts of `user_id` that have not ended."""
    c = _sanctions.c
    rows = await conn.execute(sa.select(c.creator_id, c.timeout_until).where(
        c.user_id == user_id, c.timeout_until > now).order_by(c.creator_id))
    return [(r[0], r[1]) for r in rows.all()]


async def sanctioned_members(conn: AsyncConnection, creator_id: str, now: datetime,
                             limit: int) -> list[tuple[str, bool, datetime | None]]:
    """(user_id, blocked, running timeout's end or None) of the creator's blocked or timed-out
    members, at most `limit`, by user id."""
    c = _sanctions.c
    rows = await conn.execute(sa.select(c.user_id, c.blocked, c.timeout_until).where(
        c.creator_id == creator_id, sa.or_(c.blocked.is_(True), c.timeout_until > now)).order_by(c.user_id).limit(limit))
    return [(r[0], bool(r[1]), r[2] if r[2] is not None and r[2] > now else None) for r in rows.all()]


async def get_slow_mode(conn: AsyncConnection, conversation_id: int) -> int:
    """The room's slow mode in seconds, 0 when off."""
    c = _slow_modes.c
    return int(await conn.scalar(sa.select(c.seconds).where(c.conversation_id == conversation_id)) or 0)


async def set_slow_mode(session: AsyncSession, conversation_id: int, seconds: int) -> None:
    await put_row(session, SlowMode, conversation_id, conversation_id=conversation_id, seconds=seconds)


async def pinned_ids(conn: AsyncConnection, conversation_id: int) -> list[int]:
    """The room's pinned messages, oldest pin first."""
    c = _pins.c
    return [int(i) for i in await conn.scalars(sa.select(c.message_id).where(c.conversation_id == conversation_id)
                                                .order_by(c.pinned_at, c.message_id))]


async def set_pinned(session: AsyncSession, conversation_id: int, message_id: int, actor_id: str | None,
                     on: bool) -> bool:
    """Pin or unpin; True when it changed something. The caller holds the conversation's pins
    locked (see ChatService.pin_message) to keep MAX_PINS."""
    return await toggle_row(session, Pin, (conversation_id, message_id), on,
                            conversation_id=conversation_id, message_id=message_id, pinned_by=actor_id)


async def list_actions(session: AsyncSession, creator_id: str, before_id: int | None,
                       limit: int) -> list[ModerationAction]:
    """The creator's log, newest first, `limit` entries with an id below `before_id`."""
    q = sa.select(ModerationAction).where(ModerationAction.creator_id == creator_id)
    if before_id is not None:
        q = q.where(ModerationAction.id < before_id)
    return list(await session.scalars(q.order_by(ModerationAction.id.desc()).limit(limit)))


# ---------------------------------------------------------------- writes

async def set_moderator(session: AsyncSession, creator_id: str, user_id: str, on: bool) -> bool:
    """Appoint (`on`) or remove; True when it changed something."""
    return await toggle_row(session, Moderator, (creator_id, user_id), on, creator_id=creator_id, user_id=user_id)


async def _sanction_row(session: AsyncSession, creator_id: str, user_id: str) -> Sanction:
    # Locked: two moderators acting on one member at once serialize here.
    row = await session.get(Sanction, (creator_id, user_id), with_for_update=True)
    if row is None:
        row = Sanction(creator_id=creator_id, user_id=user_id, blocked=False, timeout_until=None)
        session.add(row)
    return row


async def set_timeout(session: AsyncSession, creator_id: str, user_id: str, until: datetime | None) -> None:
    row = await _sanction_row(session, creator_id, user_id)
    row.timeout_until = until
    await session.flush()


async def set_blocked(session: AsyncSession, creator_id: str, user_id: str, blocked: bool) -> None:
    row = await _sanction_row(session, creator_id, user_id)
    row.blocked = blocked
    await session.flush()


async def record_action(session: AsyncSession, creator_id: str, actor_id: str | None, action: str,
                        target_id: str | None, *, reason: str = "", until: datetime | None = None,
                        message_id: int | None = None, conversation_id: int | None = None,
                        seconds: int | None = None, webhook_events: Collection[str] = ()) -> dict[str, Any]:
    """One log entry, in the caller's transaction; returns its wire form. `webhook_events`:
    the enabled webhook types (settings.webhook_events)."""
    row = ModerationAction(creator_id=creator_id, actor_id=actor_id, action=action, target_id=target_id,
                           reason=reason, until=until, message_id=message_id, conversation_id=conversation_id,
                           seconds=seconds)
    session.add(row)
    await session.flush()
    wire = action_wire(row)
    await moderation_recorded(session, wire, webhook_events)
    return wire


async def moderation_recorded(session: AsyncSession, entry: dict[str, Any], webhook_events: Collection[str]) -> None:
    """Called for every moderation action, inside the transaction that stored it (after the log
    row): the webhooks outbox events (docs/webhooks.md) commit or roll back with the action.
    Every action is a `moderation.action` (the log entry); a block is also `member.blocked`
    and a timeout `member.timed_out`. Types not enabled write nothing."""
    await webhooks.record(session, webhooks.MODERATION_ACTION, entry, webhook_events)
    member = {"creator_id": entry["creator_id"], "user_id": entry["target_id"], "by": entry["actor_id"],
              "reason": entry["reason"], "action_id": entry["id"]}
    if entry["action"] == "block":
        await webhooks.record(session, webhooks.MEMBER_BLOCKED, member, webhook_events)
    elif entry["action"] == "timeout":
        await webhooks.record(session, webhooks.MEMBER_TIMED_OUT, {**member, "until": entry["until"]}, webhook_events)


def action_wire(a: ModerationAction) -> dict[str, Any]:
    return {"id": str(a.id), "creator_id": a.creator_id, "actor_id": a.actor_id, "action": a.action,
            "target_id": a.target_id, "message_id": None if a.message_id is None else str(a.message_id),
            "conversation_id": None if a.conversation_id is None else str(a.conversation_id), "seconds": a.seconds,
            "until": None if a.until is None else schemas.iso(a.until), "reason": a.reason,
            "created_at": schemas.iso(a.created_at)}
