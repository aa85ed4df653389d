"""How the notifications package plugs into the chat app (called from chat/app.py chat_ctx).

`install()` runs before the ChatService exists, so the NotificationService reaches the chat
side lazily, at call time: the channel audience through `app[SERVICE_KEY].channel_audience`
and live delivery through `app[SERVICE_KEY].delivery.to_user`.

It also hands the chat service its push hooks (`hooks.service_kwargs`: `push_enqueue_jobs`,
one fan-out job per message in the send transaction) and, with PUSH_WORKER=inline, starts and
stops the push worker with the app: by default on a thread of its own (`WorkerThread`), with its
own event loop, database pool, Redis client and FCM sender, so expanding a 100,000-patron
fan-out and sending it never takes the sockets' loop. The worker expands chat jobs with the
chat side's audience rule (`ChatService.push_audience_page`, a static method that runs in the
worker's own session) and the server's presence (called on the server's loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.config import Settings
from chat.db import create_engine, is_sqlite, session_factory
from chat.http_api import SERVICE_KEY
from chat.keys import RedisKeys
from notifications import jobs, outbox
from notifications.fcm import build_sender
from notifications.http import NOTIFICATIONS_KEY
from notifications.service import NotificationService
from notifications.worker import Expander, PushWorker, WorkerOptions, options_from_env, publish_wakeup

log = logging.getLogger(__name__)


async def enqueue_pushes(session: AsyncSession, user_ids: Sequence[str], payload: dict[str, Any]) -> int:
    """outbox.enqueue_pushes for callers that describe the push as a dict (title, body, data,
    collapse_key, high_priority): the chat service stays free of notifications types."""
    return await outbox.enqueue_pushes(session, user_ids, outbox.PushPayload(
        title=payload.get("title", ""), body=payload.get("body", ""),
        data={str(k): str(v) for k, v in (payload.get("data") or {}).items()},
        collapse_key=payload.get("collapse_key"), high_priority=bool(payload.get("high_priority", True))))


push_enqueue_jobs = jobs.push_enqueue_jobs  # ChatService's hook: (conn, jobs) -> jobs written


def external_expander(settings: Settings, redis: Any, keys: RedisKeys) -> Expander:
    """The chat audience and cluster presence for `python -m notifications.worker`."""
    from chat.presence import RedisPresence
    from chat.service import ChatService

    if redis is None:
        log.warning("REDIS_URL is not set: the push worker cannot see presence; pushes go to every recipient")

        async def nobody_online(user_ids: Sequence[str]) -> set[str]:
            return set()

        return Expander(ChatService.push_audience_page, nobody_online)
    # A reader only: never started, so it publishes no server and holds no sockets.
    reader = RedisPresence(redis, keys, f"push-worker-{uuid.uuid4().hex[:12]}",
                           heartbeat_s=settings.presence_heartbeat_s, dead_after_s=settings.presence_dead_after_s)
    return Expander(ChatService.push_audience_page, reader.online_users)


def _in_memory(url: str) -> bool:
    from sqlalchemy.engine import make_url

    return is_sqlite(url) and make_url(url).database in (None, "", ":memory:")


class WorkerThread:
    """The inline push worker on a thread with its own event loop, database pool, Redis client and
    FCM sender: its SQL, JSON and HTTP work never queue behind (or ahead of) socket events."""

    def __init__(self, settings: Settings, options: WorkerOptions, keys: RedisKeys, expander: Expander) -> None:
        self._settings, self._options, self._keys, self._expander = settings, options, keys, expander
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.worker: PushWorker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="push-worker", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, 30)

    async def _serve(self) -> None:
        try:
            await self._run()
        finally:
            self._ready.set()  # also when setting up failed: start() must not wait for nothing

    async def _run(self) -> None:
        settings = self._settings
        engine = create_engine(settings.database_url, pool_size=4)
        sender = build_sender(settings.firebase_credentials, settings.fcm_endpoint)
        if sender is None:
            log.info("FIREBASE_CREDENTIALS is not set: pushes will be marked skipped")
        redis = None
        if settings.redis_url:
            import redis.asyncio as aioredis

            redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.worker = PushWorker(session_factory(engine), sender, self._options, redis=redis, keys=self._keys,
                                 expander=self._expander)
        self._loop = asyncio.get_running_loop()
        task = asyncio.create_task(self.worker.run())
        await asyncio.sleep(0)  # run() has set up its loop and events: wake() works from now on
        self._ready.set()
        try:
            await task
        finally:
            if sender is not None:
                await sender.aclose()
            if redis is not None:
                await redis.aclose()
            await engine.dispose()

    def wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    async def stop(self) -> None:
        if self.worker is not None and self._loop is not None:
            try:
                done = asyncio.run_coroutine_threadsafe(self.worker.stop(), self._loop)
                await asyncio.wrap_future(done)
            except RuntimeError:  # its loop has ended already
                pass
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)


async def install(app: web.Application, hooks: Any, settings: Settings,
                  sessions: async_sessionmaker[AsyncSession], redis: Any, keys: RedisKeys) -> None:
    main_loop = asyncio.get_running_loop()

    async def audience_page(session: AsyncSession, conversation_id: int, sender_id: str, after: str | None,
                            limit: int, thread_id: int | None = None,
                            mentions: Sequence[str] = (), message_id: int | None = None) -> tuple[list[str], str | None]:
        page: tuple[list[str], str | None] = await app[SERVICE_KEY].push_audience_page(
            session, conversation_id, sender_id, after, limit, thread_id, mentions, message_id)
        return page

    async def online_users(user_ids: Sequence[str]) -> set[str]:
        found: set[str] = await app[SERVICE_KEY].presence.online_users(user_ids)
        return found

    async def online_users_from_thread(user_ids: Sequence[str]) -> set[str]:
        """Presence lives on the server's loop (its Redis client, or its memory): ask it there."""
        ask = asyncio.run_coroutine_threadsafe(online_users(list(user_ids)), main_loop)
        return await asyncio.wrap_future(ask)

    worker: PushWorker | WorkerThread | None = None
    if settings.push_worker == "inline":
        options = options_from_env(os.environ)
        if settings.push_worker_thread and not _in_memory(settings.database_url):
            thread = WorkerThread(settings, options, keys, Expander(audience_page, online_users_from_thread))
            worker = thread
            hooks.add(thread.start, thread.stop)
        else:
            sender = build_sender(settings.firebase_credentials, settings.fcm_endpoint)
            if sender is None:
                log.info("FIREBASE_CREDENTIALS is not set: pushes will be marked skipped")
            on_loop = PushWorker(sessions, sender, options, redis=redis, keys=keys,
                                 expander=Expander(audience_page, online_users))
            worker = on_loop

            async def start() -> None:
                on_loop.start()

            async def stop() -> None:
                await on_loop.stop()
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
                                                 push_enqueue=enqueue_pushes, push_wake=wake,
                                                 push_fanout=jobs.enqueue_notification_job)
    hooks.service_kwargs.update(push_enqueue_jobs=push_enqueue_jobs, push_wake=wake,
                                unread_notifications=NotificationService.unread_count)
