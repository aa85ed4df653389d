"""How webhooks plug into the chat app (called from chat/app.py chat_ctx, after the push side).

- the server API's session factory (webhooks/http.py);
- with `message.created` enabled, the group-commit writer's hook (`webhook_messages`: one
  multi-row INSERT of the batch's events in the batch's transaction); disabled, no hook at all;
- with WEBHOOK_URL set and WEBHOOK_WORKER=inline, the delivery worker as a task on the server's
  loop (its work is a few HTTP requests and short transactions), started and stopped with the app.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from chat.config import Settings
from webhooks import MESSAGE_CREATED, outbox
from webhooks.http import SESSIONS_KEY
from webhooks.worker import WebhookOptions, WebhookWorker


def message_hook(enabled: Collection[str]) -> Any:
    """(conn, new messages' wire forms) -> events written, for chat/writer.py."""
    events = frozenset(enabled)

    async def record_messages(conn: AsyncConnection, messages: Sequence[dict[str, Any]]) -> int:
        return await outbox.record_many(conn, MESSAGE_CREATED, [{"message": m} for m in messages], events)

    return record_messages


async def install(app: web.Application, hooks: Any, settings: Settings,
                  sessions: async_sessionmaker[AsyncSession]) -> None:
    app[SESSIONS_KEY] = sessions
    if MESSAGE_CREATED in settings.webhook_events:
        hooks.service_kwargs["webhook_messages"] = message_hook(settings.webhook_events)
    if settings.webhook_url and settings.webhook_worker == "inline":
        worker = WebhookWorker(sessions, WebhookOptions.from_settings(settings))

        async def start() -> None:
            worker.start()

        hooks.add(start, worker.stop)
