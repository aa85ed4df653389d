"""Reports of messages (docs/moderation.md "Reports"): any member reports a room message once;
the creator, their moderators and the backend see the reports and review them (dismiss: the
message stays, and shows again if reports had hidden it; remove: the message is deleted).
A message with open reports from `hide_threshold` different members (3 unless the creator's
setting says otherwise; 0: never) is hidden for everyone but the creator and the moderators
until reviewed.

Storage, validation and wire forms here; the domain in `ReportDesk` (which uses the chat
service's sessions, access checks and delivery). Each process keeps which messages of a room
are hidden (read on the room's first join here, kept current by the `message_hidden` control
message), so join pages hide them without a query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

import webhooks
from chat import moderation, schemas, storage
from chat.auth import Identity
from chat.db import put_row, toggle_row, utcnow
from chat.errors import Invalid, NotFound
from chat.models import HiddenMessage, MessageReport, ReportSettings
from chat.retry import retry_transaction

if TYPE_CHECKING:
    from chat.service import ChatService

REASONS = ("spam", "harassment", "hate", "sexual", "violence", "other")
MAX_NOTE_CHARS = 500
DEFAULT_HIDE_THRESHOLD = 3
MAX_HIDE_THRESHOLD = 100
OPEN, DISMISSED, REMOVED = "open", "dismissed", "removed"
REVIEW_ACTIONS = {"dismiss": DISMISSED, "remove": REMOVED}

_reports: sa.Table = MessageReport.__table__  # type: ignore[assignment]
_hidden: sa.Table = HiddenMessage.__table__  # type: ignore[assignment]
_settings: sa.Table = ReportSettings.__table__  # type: ignore[assignment]


# ---------------------------------------------------------------- validation

def check_reason(data: dict[str, Any]) -> str:
    value = data.get("reason")
    if value not in REASONS:
        raise Invalid(f"reason must be one of {', '.join(REASONS)}")
    return str(value)


def check_note(data: dict[str, Any]) -> str:
    """An optional free-text note (≤ 500 characters after trimming); empty when left out."""
    value = data.get("note")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Invalid("note must be a string")
    if len(value.strip()) > MAX_NOTE_CHARS:
        raise Invalid(f"note is longer than {MAX_NOTE_CHARS} characters")
    return value.strip()


def check_review_action(data: dict[str, Any]) -> str:
    value = data.get("action")
    if value not in REVIEW_ACTIONS:
        raise Invalid("action must be dismiss or remove")
    return str(value)


def check_status(value: Any) -> str | None:
    """A listing's filter: open, resolved (dismissed or removed) or all (None)."""
    if value is None or value == "open":
        return OPEN
    if value in ("resolved", "all"):
        return str(value) if value == "resolved" else None
    raise Invalid("status must be open, resolved or all")


def check_threshold(data: dict[str, Any]) -> int:
    value = schemas.check_int(data, "hide_threshold", minimum=0, maximum=MAX_HIDE_THRESHOLD, required=True)
    assert value is not None
    return value


# ---------------------------------------------------------------- storage

async def get_report(conn: AsyncConnection, message_id: int, reporter_id: str) -> Any:
    c = _reports.c
    return (await conn.execute(sa.select(_reports).where(c.message_id == message_id,
                                                         c.reporter_id == reporter_id))).first()


async def open_count(conn: AsyncConnection, message_id: int) -> int:
    c = _reports.c
    return int(await conn.scalar(sa.select(sa.func.count()).select_from(_reports).where(
        c.message_id == message_id, c.status == OPEN)) or 0)


async def open_counts(conn: AsyncConnection, message_ids: Sequence[int]) -> dict[int, int]:
    if not message_ids:
        return {}
    c = _reports.c
    rows = await conn.execute(sa.select(c.message_id, sa.func.count()).where(
        c.message_id.in_(list(message_ids)), c.status == OPEN).group_by(c.message_id))
    return {int(m): int(n) for m, n in rows}


async def hide_threshold(conn: AsyncConnection, creator_id: str) -> int:
    value = await conn.scalar(sa.select(_settings.c.hide_threshold).where(_settings.c.creator_id == creator_id))
    return DEFAULT_HIDE_THRESHOLD if value is None else int(value)


async def set_hide_threshold(session: AsyncSession, creator_id: str, threshold: int) -> None:
    await put_row(session, ReportSettings, creator_id, creator_id=creator_id, hide_threshold=threshold)


async def hidden_ids(conn: AsyncConnection, conversation_id: int) -> set[int]:
    c = _hidden.c
    return {int(i) for i in await conn.scalars(sa.select(c.message_id).where(c.conversation_id == conversation_id))}


async def hidden_among(conn: AsyncConnection, message_ids: Sequence[int]) -> set[int]:
    if not message_ids:
        return set()
    c = _hidden.c
    return {int(i) for i in await conn.scalars(sa.select(c.message_id).where(c.message_id.in_(list(message_ids))))}


async def set_hidden(session: AsyncSession, message_id: int, conversation_id: int, on: bool) -> bool:
    """Hide (`on`) or show again; True when it changed something."""
    return await toggle_row(session, HiddenMessage, message_id, on, message_id=message_id,
                            conversation_id=conversation_id)


async def resolve_open(session: AsyncSession, message_id: int, status: str, by: str | None) -> int:
    """Every open report of the message gets `status`; returns how many."""
    c = _reports.c
    result = await session.execute(sa.update(_reports).where(c.message_id == message_id, c.status == OPEN)
                                   .values(status=status, resolved_by=by, resolved_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


async def list_reports(conn: AsyncConnection, creator_id: str, status: str | None, conversation_id: int | None,
                       before_id: int | None, limit: int) -> list[Any]:
    """Newest first: `status` open, resolved (dismissed or removed) or None (all)."""
    c = _reports.c
    q = sa.select(_reports).where(c.creator_id == creator_id)
    if status == OPEN:
        q = q.where(c.status == OPEN)
    elif status == "resolved":
        q = q.where(c.status.in_([DISMISSED, REMOVED]))
    if conversation_id is not None:
        q = q.where(c.conversation_id == conversation_id)
    if before_id is not None:
        q = q.where(c.id < before_id)
    return list(await conn.execute(q.order_by(c.id.desc()).limit(limit)))


def report_wire(r: Any) -> dict[str, Any]:
    return {"id": str(r.id), "message_id": str(r.message_id), "conversation_id": str(r.conversation_id),
            "creator_id": r.creator_id, "sender_id": r.sender_id, "reporter_id": r.reporter_id, "reason": r.reason,
            "note": r.note, "status": r.status, "resolved_by": r.resolved_by,
            "resolved_at": schemas.iso(r.resolved_at), "created_at": schemas.iso(r.created_at)}


# ---------------------------------------------------------------- the domain

class ReportDesk:
    """Reports and their review, on top of the chat service (its sessions, access rules, delete
    path and delivery)."""

    def __init__(self, svc: ChatService) -> None:
        self.svc = svc

    async def report(self, user: Identity, message_id: int, reason: str, note: str) -> dict[str, Any]:
        """Report a room message (not one's own, not a deleted one); a repeat answers the first
        report (`created: false`) and counts nothing. The creator's and moderators' sockets get
        `report_opened`; the backend a `message.reported` webhook; at the threshold everyone in
        the room gets `message_hidden`."""
        svc = self.svc

        async def store() -> tuple[dict[str, Any], dict[str, Any] | None]:
            async with svc.sessions.begin() as session:
                conn = await session.connection()
                # The message's row lock serializes the reports of one message (the threshold is
                # crossed once).
                if await storage.lock_message(conn, message_id) is None:
                    raise NotFound("no such message")
                msg = await storage.get_message(session, message_id)
                assert msg is not None
                conv, _ = await svc._readable(session, user.user_id, msg.conversation_id)
                if conv.kind != "room":
                    raise Invalid("only room messages are reported")
                if msg.sender_id == user.user_id:
                    raise Invalid("you cannot report your own message")
                if msg.deleted:
                    raise Invalid("a deleted message cannot be reported")
                existing = await get_report(conn, message_id, user.user_id)
                if existing is not None:
                    return report_wire(existing), None
                row = MessageReport(message_id=message_id, conversation_id=conv.id, creator_id=conv.creator_id,
                                    sender_id=msg.sender_id, reporter_id=user.user_id, reason=reason, note=note,
                                    status=OPEN)
                try:
                    async with session.begin_nested():
                        session.add(row)
                        await session.flush()
                except sqlalchemy.exc.IntegrityError:  # the same member's concurrent report
                    existing = await get_report(conn, message_id, user.user_id)
                    assert existing is not None
                    return report_wire(existing), None
                wire = report_wire(row)
                count = await open_count(conn, message_id)
                threshold = await hide_threshold(conn, conv.creator_id)
                newly_hidden = False
                if threshold and count >= threshold:
                    newly_hidden = await set_hidden(session, message_id, conv.id, True)
                hidden = newly_hidden or bool(await hidden_among(conn, [message_id]))
                await webhooks.record(session, webhooks.MESSAGE_REPORTED, {
                    "report": wire, "open_reports": count, "hidden": hidden, "hide_threshold": threshold},
                    svc.settings.webhook_events)
                message = (await svc._messages_wire(session, [msg]))[0]
                audience = [conv.creator_id, *await moderation.list_moderators(conn, conv.creator_id)]
                return wire, {"message": message, "open_reports": count, "hidden": hidden,
                              "newly_hidden": newly_hidden, "audience": audience}

        wire, news = await retry_transaction(store)
        if news is None:
            return {"report": wire, "created": False}
        message = news["message"]
        for uid in news["audience"]:
            await svc.delivery.to_user(uid, "report_opened", {
                "report": wire, "message": message, "open_reports": news["open_reports"], "hidden": news["hidden"]})
        if news["newly_hidden"]:
            await svc.set_hidden_live(int(wire["conversation_id"]), message_id, int(message["seq"]), True, None)
        return {"report": wire, "created": True}

    async def list(self, actor_id: str | None, creator_id: str, status: str | None, conversation_id: int | None,
                   before_id: int | None, limit: int) -> dict[str, Any]:
        """The creator's reports, newest first, each with its message (as the moderators see it:
        the body even while hidden), the message's open reports and whether it is hidden."""
        svc = self.svc
        async with svc.sessions() as session:
            await svc._check_moderates(session, creator_id, actor_id)
            conn = await session.connection()
            rows = await list_reports(conn, creator_id, status, conversation_id, before_id, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            ids = sorted({int(r.message_id) for r in rows})
            found = [m for m in [await storage.get_message(session, i) for i in ids] if m is not None]
            messages = {m["id"]: m for m in await svc._messages_wire(session, found)}
            counts = await open_counts(conn, ids)
            hidden = await hidden_among(conn, ids)
        return {"reports": [{**report_wire(r), "message": messages.get(str(r.message_id)),
                             "open_reports": counts.get(int(r.message_id), 0),
                             "hidden": int(r.message_id) in hidden} for r in rows],
                "next_cursor": str(rows[-1].id) if more else None}

    async def review(self, actor_id: str | None, message_id: int, action: str, note: str) -> dict[str, Any]:
        """Resolve every open report of a message: `dismiss` (it stays; shown again if hidden) or
        `remove` (deleted through the ordinary delete path, `message_updated`). By the creator, a
        moderator or the backend (None); logged as `report_dismissed` / `report_removed`."""
        svc = self.svc
        async with svc.sessions() as session:
            msg = await storage.get_message(session, message_id)
            if msg is None:
                raise NotFound("no such message")
            conv = await storage.get_conversation(session, msg.conversation_id)
            assert conv is not None
            if conv.kind != "room":
                raise Invalid("only room messages are reported")
            await svc._check_moderates(session, conv.creator_id, actor_id)
        if action == "remove":  # first: a failure leaves the reports open, and a retry finishes
            actor = None if actor_id is None else Identity(actor_id, None)
            await svc._delete_message(actor, message_id)
        status = REVIEW_ACTIONS[action]

        async def store() -> tuple[int, bool, dict[str, Any], list[str]]:
            async with svc.sessions.begin() as session:
                conn = await session.connection()
                await storage.lock_message(conn, message_id)
                resolved = await resolve_open(session, message_id, status, actor_id)
                was_hidden = await set_hidden(session, message_id, conv.id, False)
                if resolved:
                    await svc._record_action(session, conv.creator_id, actor_id, f"report_{status}", msg.sender_id,
                                             reason=note, message_id=message_id, conversation_id=conv.id)
                fresh = await storage.get_message(session, message_id)
                assert fresh is not None
                wire = (await svc._messages_wire(session, [fresh]))[0]
                audience = [conv.creator_id, *await moderation.list_moderators(conn, conv.creator_id)]
                return resolved, was_hidden, wire, audience

        resolved, was_hidden, wire, audience = await retry_transaction(store)
        if was_hidden:
            await svc.set_hidden_live(conv.id, message_id, int(wire["seq"]), False,
                                      None if wire["deleted"] else wire)
        event = {"message_id": str(message_id), "conversation_id": str(conv.id), "action": action,
                 "by": actor_id, "resolved": resolved}
        if resolved:
            for uid in audience:
                await svc.delivery.to_user(uid, "report_resolved", event)
        return {**event, "message": wire}

    async def settings_of(self, creator_id: str) -> dict[str, Any]:
        async with self.svc.engine.connect() as conn:
            return {"creator_id": creator_id, "hide_threshold": await hide_threshold(conn, creator_id)}

    async def set_settings(self, creator_id: str, threshold: int) -> dict[str, Any]:
        """The creator's threshold (0: reports never hide); it applies to the next reports (a
        message hidden already stays hidden until reviewed)."""
        async def store() -> None:
            async with self.svc.sessions.begin() as session:
                await set_hide_threshold(session, creator_id, threshold)

        await retry_transaction(store)
        return {"creator_id": creator_id, "hide_threshold": threshold}
