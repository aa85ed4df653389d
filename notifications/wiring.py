"""How the notifications package plugs into the chat app (called from chat/app.py chat_ctx).

`install()` runs before the ChatService exists, so the NotificationService reaches the chat
side lazily, at call time: the channel audience through `app[SERVICE_KEY].channel_audience`
and live delivery through `app[SERVICE_KEY].delivery.to_user`.

It also hands the chat service its push hooks (`hooks.service_kwargs`) and, with
PUSH_WORKER=inline, starts and stops the push worker with the app.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from chat import storage as chat_storage
from chat.config import Settings
from chat.http_api import SERVICE_KEY
from chat.keys import RedisKeys
from notifications import outbox
from notifications.fcm import build_sender
from notifications.http import NOTIFICATIONS_KEY
from notifications.service import NotificationService
from notifications.worker import PushWorker, publish_wakeup

log = logging.getLogger(__name__)


async def enqueue_pushes(session: AsyncSession, user_ids: Sequence[str], payload: dict[str, Any]) -> int:
    """outbox.enqueue_pushes for callers that describe the push as a dict (title, body, data,
    collapse_key, high_priority): the chat service stays free of notifications types."""
    return await outbox.enqueue_pushes(session, user_ids, outbox.PushPayload(
        title=payload.get("title", ""), body=payload.get("body", ""),
        data={str(k): str(v) for k, v in (payload.get("data") or {}).items()},
        collapse_key=payload.get("collapse_key"), high_priority=bool(payload.get("high_priority", True))))


async def push_recipients(session: AsyncSession, conversation_id: int, sender_id: str) -> list[str]:
    """Who a chat message pushes to if offline: the other side of a direct conversation, a room's
    members for the creator's posts (the writer only sends jobs for those); muted ones never."""
    conv = await chat_storage.get_conversation(session, conversation_id)
    if conv is None:
        return []
    if conv.kind == "direct":
        candidates = [u for u in (conv.creator_id, conv.patron_id) if u and u != sender_id]
    else:
        candidates = await chat_storage.list_active_patron_ids(session, conv.creator_id, conv.min_tier_cents)
    muted = await chat_storage.muted_user_ids(session, conv.id, candidates)
    return [u for u in candidates if u not in muted and u != sender_id]


def job_enqueuer(online_users: Any) -> Any:
    """`push_enqueue_jobs(conn, jobs)` of the chat writer (one call per batch, in its transaction)
    on top of today's per-device outbox rows: each job's recipients who have no socket anywhere
    (`online_users(user_ids) -> set`) get one row per device."""

    async def push_enqueue_jobs(conn: AsyncConnection, jobs: list[dict[str, Any]]) -> int:
        # A session joined to the writer's transaction: it neither commits nor rolls it back.
        session = AsyncSession(bind=conn)
        try:
            per_job = [await push_recipients(session, int(j["conversation_id"]), str(j["sender_id"])) for j in jobs]
            online = await online_users(sorted({u for users in per_job for u in users}))
            written = 0
            for job, users in zip(jobs, per_job, strict=True):
                offline = [u for u in users if u not in online]
                if offline:
                    written += await enqueue_pushes(session, offline, job["payload"])
            return written
        finally:
            await session.close()

    return push_enqueue_jobs


async def install(app: web.Application, hooks: Any, settings: Settings,
                  sessions: async_sessionmaker[AsyncSession], redis: Any, keys: RedisKeys) -> None:
    worker: PushWorker | None = None
    if settings.push_worker == "inline":
        sender = build_sender(settings.firebase_credentials, settings.fcm_endpoint)
        if sender is None:
            log.info("FIREBASE_CREDENTIALS is not set: pushes will be marked skipped")
        worker = PushWorker(sessions, sender, redis=redis, keys=keys)

        async def start() -> None:
            assert worker is not None
            worker.start()

        async def stop() -> None:
            assert worker is not None
            await worker.stop()
            if sender is not None:
                await sender.aclose()

        hooks.add(start, stop)

    async def wake() -> None:
        """After a commit that wrote outbox rows: wake the inline worker at once, and workers
        in other processes (other servers, PUSH_WORKER=external) through Redis."""
        if worker is not None:
            worker.wake()
        if redis is not None:
            await publish_wakeup(redis, keys)

    async def audience(channel: str) -> list[str]:
        return await app[SERVICE_KEY].channel_audience(channel)

    async def deliver(user_id: str, event: str, data: Any) -> None:
        await app[SERVICE_KEY].delivery.to_user(user_id, event, data)

    app[NOTIFICATIONS_KEY] = NotificationService(sessions, audience=audience, deliver=deliver,
                                                 push_enqueue=enqueue_pushes, push_wake=wake)
    async def online_users(user_ids: list[str]) -> set[str]:
        return set(await app[SERVICE_KEY].presence.online_users(user_ids)) if user_ids else set()

    hooks.service_kwargs.update(push_enqueue_jobs=job_enqueuer(online_users), push_wake=wake,
                                unread_notifications=NotificationService.unread_count)
