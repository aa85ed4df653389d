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
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
    hooks.service_kwargs.update(push_enqueue=enqueue_pushes, push_wake=wake,
                                unread_notifications=NotificationService.unread_count)
