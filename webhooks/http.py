"""Server-API routes of the webhook deliveries (docs/api.md, docs/webhooks.md):

- GET  /api/v1/server/webhooks/deliveries?status=failed&limit=50&before=ID  (newest first)
- POST /api/v1/server/webhooks/deliveries/{delivery_id}/replay

Registered by chat/app.py create_app; the session factory is put in the app by
webhooks/wiring.py when it starts. Errors go through chat.http_api.error_middleware.
"""

from __future__ import annotations

import re

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.errors import Conflict, Invalid, NotFound, Unavailable
from chat.http_api import json_response, query_int, server_key
from webhooks import outbox

SESSIONS_KEY = web.AppKey("webhook_sessions", async_sessionmaker[AsyncSession])
ID_RE = re.compile(r"^[0-9]{1,18}$")
MAX_PAGE = 100
DEFAULT_PAGE = 50


def _sessions(request: web.Request) -> async_sessionmaker[AsyncSession]:
    sessions = request.app.get(SESSIONS_KEY)
    if sessions is None:  # only between startup steps
        raise Unavailable("webhooks are starting")
    return sessions


async def list_deliveries(request: web.Request) -> web.Response:
    server_key(request)
    status = request.query.get("status") or None
    if status is not None and status not in outbox.STATUSES:
        raise Invalid(f"status must be one of {', '.join(outbox.STATUSES)}")
    limit = query_int(request, "limit")
    if limit is None:
        limit = DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be 1-{MAX_PAGE}")
    before = query_int(request, "before")
    if before is not None and not 1 <= before <= 10**18:
        raise Invalid("before must be a delivery id")
    async with _sessions(request)() as session:
        deliveries, has_more = await outbox.list_deliveries(session, status, before, limit)
    return json_response({"deliveries": deliveries, "has_more": has_more})


async def replay_delivery(request: web.Request) -> web.Response:
    server_key(request)
    raw = request.match_info["delivery_id"]
    if not ID_RE.match(raw):
        raise Invalid("delivery_id must be a delivery id (digits)")
    try:
        async with _sessions(request)() as session, session.begin():
            delivery = await outbox.replay(session, int(raw))
    except outbox.ReplayConflict as exc:
        raise Conflict(f"{exc}: only failed or delivered events can be replayed") from None
    if delivery is None:
        raise NotFound("no such delivery")
    return json_response({"delivery": delivery}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/server/webhooks/deliveries", list_deliveries)
    app.router.add_post("/api/v1/server/webhooks/deliveries/{delivery_id}/replay", replay_delivery)
