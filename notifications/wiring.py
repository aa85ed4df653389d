"""How the notifications package plugs into the chat app (called from chat/app.py chat_ctx).

`install()` runs before the ChatService exists, so the NotificationService reaches the chat
side lazily, at call time: the channel audience through `app[SERVICE_KEY].channel_audience`
and live delivery through `app[SERVICE_KEY].delivery.to_user`.

It also hands the chat service its push hooks (`hooks.service_kwargs`) and, with
PUSH_WORKER=inline, starts and stops the push worker with the app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.config import Settings
from chat.http_api import SERVICE_KEY
from chat.keys import RedisKeys
from notifications.http import NOTIFICATIONS_KEY
from notifications.service import NotificationService, PushEnqueue, PushWake

log = logging.getLogger(__name__)


def outbox_enqueue() -> PushEnqueue | None:
    """`notifications.outbox.enqueue_pushes` taking the payload as a dict (title, body, data,
    collapse_key, high_priority), or None while the outbox module is not there."""
    try:
        from notifications import outbox
    except ImportError:
        return None
    payload_class = getattr(outbox, "PushPayload", None)

    async def enqueue(session: AsyncSession, user_ids: Sequence[str], payload: dict[str, Any]) -> int:
        # outbox.enqueue_pushes takes its PushPayload dataclass; callers here speak dicts.
        value: Any = payload
        if payload_class is not None and isinstance(payload, dict):
            value = payload_class(
                title=payload.get("title", ""), body=payload.get("body", ""),
                data={str(k): str(v) for k, v in (payload.get("data") or {}).items()},
                collapse_key=payload.get("collapse_key"),
                high_priority=bool(payload.get("high_priority", True)))
        return int(await outbox.enqueue_pushes(session, user_ids, value))

    return enqueue


async def install(app: web.Application, hooks: Any, settings: Settings,
                  sessions: async_sessionmaker[AsyncSession], redis: Any, keys: RedisKeys) -> None:
    push_enqueue = outbox_enqueue()
    worker = _inline_worker(settings, sessions, redis, keys) if push_enqueue is not None else None
    push_wake = _wake(worker, redis, keys)

    async def audience(channel: str) -> list[str]:
        return await app[SERVICE_KEY].channel_audience(channel)

    async def deliver(user_id: str, event: str, data: Any) -> None:
        await app[SERVICE_KEY].delivery.to_user(user_id, event, data)

    service = NotificationService(sessions, audience=audience, deliver=deliver,
                                  push_enqueue=push_enqueue, push_wake=push_wake)
    app[NOTIFICATIONS_KEY] = service
    hooks.service_kwargs.update(push_enqueue=push_enqueue, push_wake=push_wake,
                                unread_notifications=NotificationService.unread_count)

    if worker is not None:
        started, sender = worker

        async def start() -> None:
            started.start()
            log.info("inline push worker started")

        async def stop() -> None:
            await started.stop()
            if sender is not None:
                await sender.aclose()

        hooks.add(start, stop)


def _inline_worker(settings: Settings, sessions: async_sessionmaker[AsyncSession], redis: Any,
                   keys: RedisKeys) -> tuple[Any, Any] | None:
    """(PushWorker, sender) when this process runs the worker (PUSH_WORKER=inline)."""
    if settings.push_worker != "inline":
        return None
    try:
        from notifications.fcm import build_sender
        from notifications.worker import PushWorker
    except ImportError:
        log.warning("notifications.worker is not available: pushes stay in the outbox")
        return None
    sender = build_sender(settings.firebase_credentials, settings.fcm_endpoint)
    if sender is None:
        log.info("FIREBASE_CREDENTIALS is not set: pushes will be marked skipped")
    return PushWorker(sessions, sender, redis=redis, keys=keys), sender


def _wake(worker: tuple[Any, Any] | None, redis: Any, keys: RedisKeys) -> PushWake | None:
    """After a commit that wrote outbox rows: wake the inline worker at once, and workers in
    other processes (PUSH_WORKER=external, other servers) through Redis."""
    if worker is None and redis is None:
        return None
    publish: Callable[[Any, RedisKeys], Awaitable[None]] | None = None
    if redis is not None:
        try:
            from notifications.worker import publish_wakeup
        except ImportError:
            pass
        else:
            publish = publish_wakeup

    async def wake() -> None:
        if worker is not None:
            worker[0].wake()
        if publish is not None:
            await publish(redis, keys)

    return wake
