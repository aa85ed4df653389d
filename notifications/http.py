"""HTTP routes of the notification feed, devices and server-API notifications (SPEC §3).

Registered by chat/app.py create_app (`add_routes(app)`: the router freezes at startup); the
NotificationService they call is put in the app under NOTIFICATIONS_KEY by
notifications/wiring.py when the app starts. Errors go through chat.http_api.error_middleware.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from chat.auth import USER_ID_RE
from chat.errors import Invalid, Unavailable
from chat.http_api import check_encodable, client, json_response, read_json, server_key
from chat.schemas import check_str
from notifications.service import NotificationService, NotifyArgs

NOTIFICATIONS_KEY = web.AppKey("notification_service", NotificationService)

MAX_RECIPIENTS = 1000  # user_ids per request
MAX_TYPE_CHARS = 64
MAX_TITLE_CHARS = 200
MAX_BODY_CHARS = 4000
MAX_DATA_BYTES = 2000  # data travels in the FCM data payload (4 KB for everything)
MAX_CHANNEL_CHARS = 140
MAX_COLLAPSE_KEY_CHARS = 64  # APNs apns-collapse-id limit
MAX_IDEMPOTENCY_KEY_CHARS = 200
MAX_READ_IDS = 1000
MAX_PAGE = 100
DEFAULT_PAGE = 50
MAX_TOKEN_CHARS = 512
PLATFORMS = ("android", "ios", "web")
ID_RE = re.compile(r"^[0-9]{1,18}$")


def notifications(request: web.Request) -> NotificationService:
    service = request.app.get(NOTIFICATIONS_KEY)
    if service is None:  # only between startup steps
        raise Unavailable("notifications are starting")
    return service


# ---------------------------------------------------------------- validation





def check_idempotency_key(data: dict[str, Any]) -> str | None:
    """Compared exactly as sent (not trimmed)."""
    return check_str(data, "idempotency_key", max_len=MAX_IDEMPOTENCY_KEY_CHARS, required=False, strip=False)


def check_notify(data: dict[str, Any]) -> NotifyArgs:
    user_ids = data.get("user_ids")
    channel = data.get("channel")
    if (user_ids is None) == (channel is None):
        raise Invalid("give exactly one of user_ids or channel")
    if user_ids is not None:
        if not isinstance(user_ids, list) or not user_ids:
            raise Invalid("user_ids must be a non-empty list of user ids")
        if len(user_ids) > MAX_RECIPIENTS:
            raise Invalid(f"at most {MAX_RECIPIENTS} user_ids per request")
        for uid in user_ids:
            if not isinstance(uid, str) or not USER_ID_RE.match(uid):
                raise Invalid("user_ids must be strings of 1-64 characters of [A-Za-z0-9_-]")
    else:
        channel = check_str(data, "channel", max_len=MAX_CHANNEL_CHARS)
    type_ = check_str(data, "type", max_len=MAX_TYPE_CHARS)
    title = check_str(data, "title", max_len=MAX_TITLE_CHARS)
    body = check_str(data, "body", max_len=MAX_BODY_CHARS)
    raw = data.get("data")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise Invalid("data must be an object")
    if len(check_encodable(raw, "data")) > MAX_DATA_BYTES:
        raise Invalid(f"data is larger than {MAX_DATA_BYTES} bytes as JSON")
    push = data.get("push", False)
    if push is None:
        push = False
    if not isinstance(push, bool):
        raise Invalid("push must be true or false")
    collapse_key = check_str(data, "collapse_key", max_len=MAX_COLLAPSE_KEY_CHARS, required=False)
    assert type_ is not None and title is not None and body is not None
    return NotifyArgs(type=type_, title=title, body=body, data=raw, user_ids=user_ids, channel=channel,
                      push=push, collapse_key=collapse_key, idempotency_key=check_idempotency_key(data))


def check_feed_query(request: web.Request) -> tuple[int | None, int, bool]:
    q = request.query
    before_raw = q.get("before", "")
    before = None
    if before_raw != "":
        if not ID_RE.match(before_raw):
            raise Invalid("before must be a notification id")
        before = int(before_raw)
    limit = DEFAULT_PAGE
    limit_raw = q.get("limit", "")
    if limit_raw != "":
        if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= MAX_PAGE:
            raise Invalid(f"limit must be an integer from 1 to {MAX_PAGE}")
        limit = int(limit_raw)
    unread_raw = q.get("unread", "").lower()
    if unread_raw not in ("", "true", "false", "1", "0"):
        raise Invalid("unread must be true or false")
    return before, limit, unread_raw in ("true", "1")


def check_read(data: dict[str, Any]) -> list[int] | None:
    """`{ids: [...]}` → those ids; `{all: true}` → None (all). Ids that are not ours are ignored
    later; ids that cannot name anything are simply left out."""
    has_ids = data.get("ids") is not None
    has_all = data.get("all") is not None
    if has_ids == has_all:
        raise Invalid("give exactly one of ids or all")
    if has_all:
        if data["all"] is not True:
            raise Invalid("all must be true")
        return None
    ids = data["ids"]
    if not isinstance(ids, list):
        raise Invalid("ids must be a list of notification ids")
    if len(ids) > MAX_READ_IDS:
        raise Invalid(f"at most {MAX_READ_IDS} ids per request")
    out: list[int] = []
    for value in ids:
        if not isinstance(value, str):
            raise Invalid("ids must be strings")
        if ID_RE.match(value):
            out.append(int(value))
    return out


def check_device(data: dict[str, Any]) -> tuple[str, str]:
    token = check_str(data, "token", max_len=MAX_TOKEN_CHARS, strip=False)
    platform = data.get("platform")
    if platform not in PLATFORMS:
        raise Invalid('platform must be "android", "ios" or "web"')
    assert token is not None
    return token, platform


# ---------------------------------------------------------------- handlers


async def post_notifications(request: web.Request) -> web.Response:
    server_key(request)
    data = await read_json(request)
    service = notifications(request)
    key = check_idempotency_key(data)
    if key is not None:
        # SPEC §3: a repeated key answers with the original ids, whatever the rest of the body.
        earlier = await service.replay(key)
        if earlier is not None:
            return json_response({"notification_ids": earlier}, status=202)
    ids = await service.notify(check_notify(data))
    return json_response({"notification_ids": ids}, status=202)


async def get_notifications(request: web.Request) -> web.Response:
    user = client(request)
    before, limit, unread = check_feed_query(request)
    return json_response(await notifications(request).list_notifications(
        user.user_id, before_id=before, limit=limit, unread_only=unread))


async def post_read(request: web.Request) -> web.Response:
    user = client(request)
    ids = check_read(await read_json(request))
    return json_response(await notifications(request).mark_read(user.user_id, ids))


async def post_device(request: web.Request) -> web.Response:
    user = client(request)
    token, platform = check_device(await read_json(request))
    return json_response(await notifications(request).register_device(user.user_id, token, platform), status=201)


async def delete_device(request: web.Request) -> web.Response:
    user = client(request)
    token = request.match_info["token"]
    if not 1 <= len(token) <= MAX_TOKEN_CHARS:
        return web.Response(status=204)  # names no device
    await notifications(request).delete_device(user.user_id, token)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/server/notifications", post_notifications)
    r.add_get("/api/v1/notifications", get_notifications)
    r.add_post("/api/v1/notifications/read", post_read)
    r.add_post("/api/v1/devices", post_device)
    r.add_delete("/api/v1/devices/{token:.+}", delete_device)
