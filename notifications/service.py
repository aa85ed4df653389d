"""NotificationService: the notification feed, devices and server-API notifications.

`notify()` writes the feed rows, the idempotency record and the push outbox rows in ONE
transaction; only after it commits are the live `notification` events emitted and the push
worker woken (SPEC §3, §6). Imports neither socketio nor aiohttp, and no chat internals: the
app factory (notifications/wiring.py) injects the channel audience, the delivery function,
the outbox writer and the worker wake-up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.db import utcnow
from chat.errors import Unavailable
from notifications import storage
from notifications.models import Notification

log = logging.getLogger(__name__)

# channel -> user ids of its audience as of now (ChatService.channel_audience); raises
# Invalid for a malformed channel and NotFound for an unknown room.
Audience = Callable[[str], Awaitable[list[str]]]
# (user_id, event, data): emit to every socket of the user across the cluster (Delivery.to_user)
DeliverToUser = Callable[[str, str, Any], Awaitable[None]]
# (session, user_ids, payload) -> outbox rows written, in the caller's transaction
PushEnqueue = Callable[[AsyncSession, Sequence[str], dict[str, Any]], Awaitable[int]]
PushWake = Callable[[], Awaitable[None]]
# (session, notification ids, payload) -> jobs written: ONE fan-out job for a channel audience,
# expanded into outbox rows by the push worker after the commit (notifications/jobs.py)
PushFanout = Callable[[AsyncSession, Sequence[int], dict[str, Any]], Awaitable[int]]

# Keys FCM refuses in a message's data payload; they are left out of the push (not the feed).
FCM_RESERVED_DATA_KEYS = frozenset({"from", "message_type", "collapse_key"})
FCM_RESERVED_DATA_PREFIXES = ("google.", "gcm.")


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and Z, like chat/schemas.iso."""
    if dt is None:
        return None
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def notification_wire(n: Notification) -> dict[str, Any]:
    return {
        "id": str(n.id),
        "type": n.type,
        "title": n.title,
        "body": n.body,
        "data": _load_data(n.data),
        "created_at": iso(n.created_at),
        "read_at": iso(n.read_at),
    }


def _load_data(raw: str | None) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def push_data_value(value: Any) -> str:
    """FCM data values are strings: strings as they are, anything else as its JSON text."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


@dataclass(frozen=True)
class NotifyArgs:
    """A validated `POST /api/v1/server/notifications` body (exactly one of user_ids/channel)."""

    type: str
    title: str
    body: str
    data: dict[str, Any]
    user_ids: list[str] | None = None
    channel: str | None = None
    push: bool = False
    collapse_key: str | None = None
    idempotency_key: str | None = None


class NotificationService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, audience: Audience,
                 deliver: DeliverToUser, push_enqueue: PushEnqueue | None = None,
                 push_wake: PushWake | None = None, push_fanout: PushFanout | None = None) -> None:
        self.sessions = sessions
        self._audience = audience
        self._deliver = deliver
        self._push_enqueue = push_enqueue
        self._push_wake = push_wake
        self._push_fanout = push_fanout

    # ============================================================ server API

    async def replay(self, idempotency_key: str) -> list[str] | None:
        """The notification ids of an earlier request with this key, or None."""
        async with self.sessions() as session:
            request = await storage.get_request(session, idempotency_key)
            if request is None:
                return None
            return [str(i) for i in orjson.loads(request.notification_ids)]

    async def notify(self, args: NotifyArgs) -> list[str]:
        """Store one notification per recipient (+ when args.push: push outbox rows for a list of
        user_ids, one fan-out job for a channel audience), then deliver it live. A known
        idempotency key returns the original ids and does nothing else."""
        key = args.idempotency_key
        if key is not None:
            earlier = await self.replay(key)
            if earlier is not None:
                return earlier
        if args.channel is not None:
            recipients = _unique(await self._audience(args.channel))
        else:
            recipients = _unique(args.user_ids or [])

        now = utcnow()
        data_json = orjson.dumps(args.data).decode()
        pushes = 0
        try:
            async with self.sessions.begin() as session:
                if key is not None:
                    # Claims the key first: a concurrent duplicate fails (or, on MySQL, waits
                    # and then fails) on the primary key instead of writing a second set.
                    await storage.insert_request(session, key, "[]", now)
                ids = await storage.insert_notifications(session, recipients, args.type, args.title,
                                                         args.body, data_json, now)
                id_strings = [str(i) for i in ids]
                if key is not None:
                    await storage.set_request_ids(session, key, orjson.dumps(id_strings).decode())
                if args.push and args.channel is not None and self._push_fanout is not None and recipients:
                    # a channel audience may be 100,000 patrons: one job, not one row per device
                    pushes = await self._push_fanout(session, ids, self._push_payload(args))
                elif args.push and self._push_enqueue is not None and recipients:
                    pushes = await self._enqueue_pushes(session, args, recipients, id_strings)
        except sqlalchemy.exc.IntegrityError:
            if key is None:
                raise
            earlier = await self.replay(key)
            if earlier is None:  # the other request rolled back after all; the caller may retry
                raise Unavailable("a concurrent request with this idempotency_key failed; retry") from None
            return earlier

        if pushes and self._push_wake is not None:
            try:
                await self._push_wake()
            except Exception:  # the worker polls anyway
                log.warning("push wake-up failed", exc_info=True)
        await self._deliver_live(args, recipients, id_strings, data_json, now)
        log.info("notification %s stored for %d recipients (%d pushes)", args.type, len(recipients), pushes,
                 extra={"notification_type": args.type, "recipients": len(recipients), "pushes": pushes})
        return id_strings

    async def _enqueue_pushes(self, session: AsyncSession, args: NotifyArgs, recipients: list[str],
                              ids: list[str]) -> int:
        """One outbox row per device; the payload differs per recipient (its notification_id), so
        only the recipients that have a device are enqueued, one call each."""
        assert self._push_enqueue is not None
        with_devices = await storage.users_with_devices(session, recipients)
        if not with_devices:
            return 0
        base = self._push_payload(args)
        written = 0
        for user_id, notification_id in zip(recipients, ids, strict=True):
            if user_id not in with_devices:
                continue
            payload = {**base, "data": {**base["data"], "notification_id": notification_id}}
            written += await self._push_enqueue(session, [user_id], payload)
        return written

    @staticmethod
    def _push_payload(args: NotifyArgs) -> dict[str, Any]:
        """The push of a notification, without its per-recipient notification_id."""
        data = {k: push_data_value(v) for k, v in args.data.items()
                if k not in FCM_RESERVED_DATA_KEYS and not k.startswith(FCM_RESERVED_DATA_PREFIXES)}
        return {"title": args.title, "body": args.body, "data": {**data, "type": args.type},
                "collapse_key": args.collapse_key, "high_priority": False}

    async def _deliver_live(self, args: NotifyArgs, recipients: list[str], ids: list[str], data_json: str,
                            now: datetime) -> None:
        data = orjson.loads(data_json)  # what the feed will return, key order included
        for user_id, notification_id in zip(recipients, ids, strict=True):
            wire = {"id": notification_id, "type": args.type, "title": args.title, "body": args.body,
                    "data": data, "created_at": iso(now), "read_at": None}
            try:
                await self._deliver(user_id, "notification", wire)
            except Exception:  # stored already: the feed has it even if the live event is lost
                log.warning("live notification delivery failed", exc_info=True,
                            extra={"user_id": user_id, "notification_id": notification_id})

    # ============================================================ client API: feed

    async def list_notifications(self, user_id: str, *, before_id: int | None, limit: int,
                                 unread_only: bool) -> dict[str, Any]:
        async with self.sessions() as session:
            rows, has_more = await storage.list_notifications(
                session, user_id, before_id=before_id, limit=limit, unread_only=unread_only)
            return {"notifications": [notification_wire(n) for n in rows], "has_more": has_more}

    async def mark_read(self, user_id: str, ids: Sequence[int] | None) -> dict[str, Any]:
        """Mark the caller's notifications read (all when `ids` is None). Ids that name nothing
        or someone else's notification are ignored."""
        async with self.sessions.begin() as session:
            await storage.mark_notifications_read(session, user_id, ids, utcnow())
            unread = await storage.count_unread_notifications(session, user_id)
        return {"unread_notifications": unread}

    @staticmethod
    async def unread_count(session: AsyncSession, user_id: str) -> int:
        """The `unread_notifications` of GET /api/v1/me (ChatService's hook; runs in its session)."""
        return await storage.count_unread_notifications(session, user_id)

    # ============================================================ client API: devices

    async def register_device(self, user_id: str, token: str, platform: str) -> dict[str, Any]:
        """Idempotent. A token registered by another user moves to this one (the device changed
        hands or the app signed in as someone else): pushes follow the token's current owner."""
        now = utcnow()
        async with self.sessions.begin() as session:
            existing = await storage.get_device(session, token, for_update=True)
            if existing is None:
                try:
                    async with session.begin_nested():
                        await storage.insert_device(session, token, user_id, platform, now)
                except sqlalchemy.exc.IntegrityError:  # registered concurrently
                    await storage.update_device(session, token, user_id, platform, now)
            elif existing.user_id != user_id or existing.platform != platform:
                await storage.update_device(session, token, user_id, platform, now)
        return {"device": {"token": token, "platform": platform}}

    async def delete_device(self, user_id: str, token: str) -> bool:
        """Remove the caller's own token; another user's token or an unknown one is left alone
        (the caller cannot tell them apart, so tokens of others are not revealed)."""
        async with self.sessions.begin() as session:
            return await storage.delete_device(session, token, user_id)


def _unique(user_ids: Sequence[str]) -> list[str]:
    """Deduplicated, first occurrence order."""
    return list(dict.fromkeys(user_ids))
