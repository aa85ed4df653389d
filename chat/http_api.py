"""HTTP API (SPEC §3): routes mapped onto the same services as the sockets.

`/api/v1/server/*` takes an API key; the client API takes a client JWT. Errors are
{"error": {"code", "message"}} with the status of SPEC §5, produced by `error_middleware`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from chat import moderation, reports, schemas, spaces, threads, unavailable
from chat.attachments import Attachments
from chat.auth import USER_ID_RE, Authenticator, Identity, bearer
from chat.config import Settings
from chat.errors import ChatError, Invalid, NotFound, RateLimited, TooLarge, Unauthorized
from chat.mentions import DEFAULT_MEMBER_MATCHES, MAX_MEMBER_MATCHES, MAX_QUERY_CHARS, check_mentions
from chat.metrics import HTTP_REQUESTS
from chat.reactions import DEFAULT_REACTORS, MAX_REACTORS, check_emoji
from chat.retry import once_more_if_dead
from chat.service import ChatService
from chat.transport_errors import as_chat_error

log = logging.getLogger(__name__)

AUTH_KEY = web.AppKey("authenticator", Authenticator)
SERVICE_KEY = web.AppKey("chat_service", ChatService)
LIMITS_KEY = web.AppKey("http_limits", Settings)
ATTACHMENTS_KEY = web.AppKey("attachments", Attachments)
UPLOAD_PATH = "/api/v1/uploads"
SOCKETIO_PREFIX = "/socket.io/"
SOCKETIO_MAX_BODY = 1024 * 1024  # python-engineio's max_http_buffer_size (chat/app.py create_sio)


class RequestTimeout(ChatError):
    """A request body that did not arrive in time (an extension of SPEC §5, see docs/api.md)."""
    code, status = "timeout", 408

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(err: ChatError) -> web.Response:
    response = json_response({"error": err.to_wire()}, status=err.status)
    if isinstance(err, RateLimited):  # every 429: Retry-After (and RateLimit-* where a limiter answered)
        response.headers.update(err.headers)
    return response


class MethodNotAllowed(ChatError):
    """A known path with another method (an extension of SPEC §5, see docs/api.md)."""
    code, status = "method_not_allowed", 405


@web.middleware
async def body_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A declared Content-Length over the limit is refused before a byte of the body is read,
    and the connection is closed rather than drained."""
    settings = request.app.get(LIMITS_KEY)
    limit = settings.max_payload_bytes if settings is not None else 64 * 1024
    if request.path.startswith(SOCKETIO_PREFIX):
        limit = SOCKETIO_MAX_BODY
    elif request.path == UPLOAD_PATH and settings is not None:
        limit = settings.max_upload_bytes + UPLOAD_OVERHEAD
    length = request.content_length
    if length is not None and length > limit:
        response = error_response(TooLarge(f"request body over {limit} bytes"))
        response.force_close()
        return response
    return await handler(request)


READ_ONLY_METHODS = frozenset({"GET", "HEAD"})  # run once more on a dead pooled connection (chat/retry.py)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        if request.method in READ_ONLY_METHODS:
            response = await once_more_if_dead(lambda: handler(request))
        else:
            response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(TooLarge("request body over the size limit"))
        response.force_close()
    except web.HTTPNotFound:
        response = error_response(NotFound("no such endpoint"))
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = error_response(MethodNotAllowed(f"{request.method} is not allowed here; use {allowed}"))
        response.headers["Allow"] = allowed
    except web.HTTPException:
        raise
    except Exception as exc:
        err = as_chat_error(exc)
        if err.code == "internal":
            log.exception("HTTP handler failed", extra={"route": route})
        elif err.code == "unavailable":
            unavailable.report(exc, "http", f"{request.method} {route}")
        response = error_response(err)
        if isinstance(err, RequestTimeout):
            response.force_close()
    HTTP_REQUESTS.labels(route, str(response.status)).inc()
    return response


async def read_json(request: web.Request) -> dict[str, Any]:
    limits = request.app.get(LIMITS_KEY)
    try:
        # A slow body holds a connection and a handler: it gets a deadline, like a slow client.
        raw = await asyncio.wait_for(request.read(), limits.http_body_timeout_s if limits else 10.0)
    except TimeoutError:
        raise RequestTimeout("request body not received in time") from None
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise Invalid("body must be JSON") from None
    return schemas.check_object(data)


def client(request: web.Request) -> Identity:
    token = bearer(request.headers.get("Authorization"))
    if token is None:
        raise Unauthorized("Authorization: Bearer <token> required")
    return request.app[AUTH_KEY].client(token)


def server_key(request: web.Request) -> None:
    if not request.app[AUTH_KEY].server(bearer(request.headers.get("Authorization"))):
        raise Unauthorized("a valid API key is required")


def path_user_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not USER_ID_RE.match(value):
        raise Invalid(f"{name} must be 1-64 characters of [A-Za-z0-9_-]")
    return value


def query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer") from None


# ---------------------------------------------------------------- server API


async def put_user(request: web.Request) -> web.Response:
    server_key(request)
    user_id = path_user_id(request, "user_id")
    data = await read_json(request)
    name = schemas.check_str(data, "name", max_len=200)
    avatar = schemas.check_str(data, "avatar_url", max_len=1000, required=False)
    assert name is not None
    user = await request.app[SERVICE_KEY].put_user(user_id, name, avatar)
    return json_response({"user": user})


async def put_membership(request: web.Request) -> web.Response:
    server_key(request)
    creator_id = path_user_id(request, "creator_id")
    patron_id = path_user_id(request, "patron_id")
    data = await read_json(request)
    tier = schemas.check_int(data, "tier_cents", minimum=0, maximum=10**9, required=True)
    status = data.get("status")
    if status not in ("active", "former"):
        raise Invalid('status must be "active" or "former"')
    assert tier is not None
    membership = await request.app[SERVICE_KEY].put_membership(creator_id, patron_id, tier, status)
    return json_response({"membership": membership})


async def create_room(request: web.Request) -> web.Response:
    server_key(request)
    data = await read_json(request)
    creator_id = schemas.check_str(data, "creator_id", max_len=64)
    assert creator_id is not None
    if not USER_ID_RE.match(creator_id):
        raise Invalid("creator_id must be 1-64 characters of [A-Za-z0-9_-]")
    name = schemas.check_str(data, "name", max_len=200)
    tier = schemas.check_int(data, "min_tier_cents", minimum=0, maximum=10**9, required=True)
    policy = data.get("post_policy", "everyone")
    if policy not in ("everyone", "creator"):
        raise Invalid('post_policy must be "everyone" or "creator"')
    external_id = data.get("external_id")
    if external_id is not None and (not isinstance(external_id, str) or not schemas.EXTERNAL_ID_RE.match(external_id)):
        raise Invalid("external_id must be 1-128 characters of [A-Za-z0-9_.:-]")
    assert name is not None and tier is not None
    space = spaces.check_space_fields(data)
    conv, created = await request.app[SERVICE_KEY].create_room(creator_id, name, tier, policy, external_id, space)
    return json_response({"conversation": conv}, status=201 if created else 200)


# ---------------------------------------------------------------- server API: chat spaces (chat/spaces.py)


async def get_room(request: web.Request) -> web.Response:
    server_key(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"], "room")
    return json_response(await request.app[SERVICE_KEY].spaces.get_room(cid))


async def patch_room(request: web.Request) -> web.Response:
    server_key(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"], "room")
    changes = spaces.check_room_patch(await read_json(request))
    return json_response(await request.app[SERVICE_KEY].spaces.update_room(cid, changes))


async def delete_room(request: web.Request) -> web.Response:
    server_key(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"], "room")
    return json_response(await request.app[SERVICE_KEY].spaces.delete_room(cid))


async def list_rooms(request: web.Request) -> web.Response:
    server_key(request)
    creator_id = request.query.get("creator_id")
    if creator_id is not None and not USER_ID_RE.match(creator_id):
        raise Invalid("creator_id must be 1-64 characters of [A-Za-z0-9_-]")
    cursor = request.query.get("cursor")
    if cursor is not None and not schemas.CANONICAL_ID_RE.match(cursor):
        raise Invalid("cursor must be a next_cursor this API returned")
    limit = schemas.check_int({"limit": query_int(request, "limit")}, "limit", minimum=1, maximum=schemas.MAX_PAGE)
    return json_response(await request.app[SERVICE_KEY].list_rooms(
        creator_id, None if cursor is None else int(cursor), schemas.DEFAULT_PAGE if limit is None else limit))


async def server_delete_message(request: web.Request) -> web.Response:
    server_key(request)
    message_id = schemas.parse_int_id(request.match_info["message_id"], "message")
    return json_response(await request.app[SERVICE_KEY].server_delete_message(message_id))


async def server_history(request: web.Request) -> web.Response:
    server_key(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"])
    page = _page_query(request)
    thread_id, include_replies = _thread_query(request)
    return json_response(await request.app[SERVICE_KEY].server_history(cid, page, thread_id=thread_id,
                                                                       include_replies=include_replies))


async def conversation_presence(request: web.Request) -> web.Response:
    server_key(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"])
    return json_response(await request.app[SERVICE_KEY].conversation_presence(cid))


async def channel_presence(request: web.Request) -> web.Response:
    server_key(request)
    return json_response(await request.app[SERVICE_KEY].channel_presence(request.match_info["channel"]))


async def disconnect_user(request: web.Request) -> web.Response:
    server_key(request)
    user_id = path_user_id(request, "user_id")
    return json_response(await request.app[SERVICE_KEY].disconnect_user(user_id))


# ---------------------------------------------------------------- server API: moderation (docs/moderation.md)


async def put_moderator(request: web.Request) -> web.Response:
    server_key(request)
    creator_id, user_id = path_user_id(request, "creator_id"), path_user_id(request, "user_id")
    return json_response(await request.app[SERVICE_KEY].set_moderator(None, creator_id, user_id, True))


async def delete_moderator(request: web.Request) -> web.Response:
    server_key(request)
    creator_id, user_id = path_user_id(request, "creator_id"), path_user_id(request, "user_id")
    return json_response(await request.app[SERVICE_KEY].set_moderator(None, creator_id, user_id, False))


async def list_moderators(request: web.Request) -> web.Response:
    server_key(request)
    return json_response(await request.app[SERVICE_KEY].list_moderators(path_user_id(request, "creator_id")))


async def put_timeout(request: web.Request) -> web.Response:
    server_key(request)
    creator_id, user_id = path_user_id(request, "creator_id"), path_user_id(request, "user_id")
    data = await read_json(request)
    minutes = schemas.check_int(data, "minutes", minimum=moderation.MIN_TIMEOUT_MINUTES,
                                maximum=moderation.MAX_TIMEOUT_MINUTES, required=True)
    assert minutes is not None
    return json_response(await request.app[SERVICE_KEY].timeout_member(None, creator_id, user_id, minutes,
                                                                       moderation.check_reason(data)))


async def delete_timeout(request: web.Request) -> web.Response:
    server_key(request)
    creator_id, user_id = path_user_id(request, "creator_id"), path_user_id(request, "user_id")
    return json_response(await request.app[SERVICE_KEY].timeout_member(None, creator_id, user_id, 0, ""))


async def put_block(request: web.Request) -> web.Response:
    server_key(request)
    creator_id, user_id = path_user_id(request, "creator_id"), path_user_id(request, "user_id")
    data = await read_json(request)
    return json_response(await request.app[SERVICE_KEY].block_member(None, creator_id, user_id, True,
                                                                     moderation.check_reason(data)))


async def delete_block(request: web.Request) -> web.Response:
    server_key(request)
    creator_id, user_id = path_user_id(request, "creator_id"), path_user_id(request, "user_id")
    return json_response(await request.app[SERVICE_KEY].block_member(None, creator_id, user_id, False, ""))


async def put_slow_mode(request: web.Request) -> web.Response:
    server_key(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"])
    data = await read_json(request)
    return json_response(await request.app[SERVICE_KEY].set_slow_mode(
        None, cid, moderation.check_slow_mode_seconds(data), moderation.check_reason(data)))


async def put_pin(request: web.Request) -> web.Response:
    server_key(request)
    message_id = schemas.parse_int_id(request.match_info["message_id"], "message")
    return json_response(await request.app[SERVICE_KEY].pin_message(None, message_id, True))


async def delete_pin(request: web.Request) -> web.Response:
    server_key(request)
    message_id = schemas.parse_int_id(request.match_info["message_id"], "message")
    return json_response(await request.app[SERVICE_KEY].pin_message(None, message_id, False))


async def server_moderation_log(request: web.Request) -> web.Response:
    server_key(request)
    creator_id = path_user_id(request, "creator_id")
    cursor = request.query.get("cursor")
    if cursor is not None and not schemas.CANONICAL_ID_RE.match(cursor):
        raise Invalid("cursor must be a next_cursor this API returned")
    limit = schemas.check_int({"limit": query_int(request, "limit")}, "limit", minimum=1, maximum=schemas.MAX_PAGE)
    return json_response(await request.app[SERVICE_KEY].moderation_log(
        None, creator_id, None if cursor is None else int(cursor), schemas.DEFAULT_PAGE if limit is None else limit))


# ---------------------------------------------------------------- server API: reports, member blocks (docs/moderation.md)


async def server_reports(request: web.Request) -> web.Response:
    server_key(request)
    creator_id = path_user_id(request, "creator_id")
    status = reports.check_status(request.query.get("status"))
    room = request.query.get("conversation_id")
    cid = None if room is None else schemas.parse_int_id(room)
    cursor = request.query.get("cursor")
    if cursor is not None and not schemas.CANONICAL_ID_RE.match(cursor):
        raise Invalid("cursor must be a next_cursor this API returned")
    limit = schemas.check_int({"limit": query_int(request, "limit")}, "limit", minimum=1, maximum=schemas.MAX_PAGE)
    return json_response(await request.app[SERVICE_KEY].reports.list(
        None, creator_id, status, cid, None if cursor is None else int(cursor),
        schemas.DEFAULT_PAGE if limit is None else limit))


async def server_review(request: web.Request) -> web.Response:
    server_key(request)
    message_id = schemas.parse_int_id(request.match_info["message_id"], "message")
    data = await read_json(request)
    return json_response(await request.app[SERVICE_KEY].reports.review(
        None, message_id, reports.check_review_action(data), reports.check_note(data)))


async def get_report_settings(request: web.Request) -> web.Response:
    server_key(request)
    return json_response(await request.app[SERVICE_KEY].reports.settings_of(path_user_id(request, "creator_id")))


async def put_report_settings(request: web.Request) -> web.Response:
    server_key(request)
    creator_id = path_user_id(request, "creator_id")
    data = await read_json(request)
    return json_response(await request.app[SERVICE_KEY].reports.set_settings(creator_id, reports.check_threshold(data)))


async def server_member_blocks(request: web.Request) -> web.Response:
    server_key(request)
    return json_response(await request.app[SERVICE_KEY].list_blocks(path_user_id(request, "user_id")))


def _page_query(request: web.Request) -> schemas.PageQuery:
    """before_seq / after_seq / limit of a history page; since_seq (the socket join's name) is
    accepted for after_seq."""
    values = {k: query_int(request, k) for k in ("before_seq", "after_seq", "since_seq", "limit")}
    since = values.pop("since_seq")
    if since is not None:
        if values["after_seq"] is not None and values["after_seq"] != since:
            raise Invalid("give after_seq or since_seq, not both")
        values["after_seq"] = since
    return schemas.check_page(values)


def _thread_query(request: web.Request) -> tuple[int | None, bool]:
    """`thread_id` (a thread's page) and `include_replies` (true|false) of a history page (chat/threads.py)."""
    raw = request.query.get("include_replies")
    if raw not in (None, "", "true", "false"):
        raise Invalid("include_replies must be true or false")
    thread = request.query.get("thread_id")
    return (threads.check_thread_id({"thread_id": thread or None}),
            threads.check_include_replies({"include_replies": raw != "false"}))


async def publish(request: web.Request) -> web.Response:
    server_key(request)
    data = await read_json(request)
    channel = schemas.check_str(data, "channel", max_len=140)
    event = schemas.check_str(data, "event", max_len=64)
    assert channel is not None and event is not None
    if "data" not in data:
        raise Invalid("data is required")
    check_encodable(data["data"], "data")
    return json_response(await request.app[SERVICE_KEY].publish(channel, event, data["data"]))


def check_encodable(value: Any, field: str) -> bytes:
    """`value` as the JSON it will travel as; Invalid for what cannot be re-encoded (orjson
    stops at 254 levels of nesting, the parser at 1024)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise Invalid(f"{field} is nested too deeply") from None


# ---------------------------------------------------------------- client API


async def get_me(request: web.Request) -> web.Response:
    user = client(request)
    service = request.app[SERVICE_KEY]
    me = await service.me(user)
    return json_response(me)


async def get_moderation(request: web.Request) -> web.Response:
    user = client(request)
    return json_response(await request.app[SERVICE_KEY].moderation_overview(user))


async def list_conversations(request: web.Request) -> web.Response:
    user = client(request)
    return json_response({"conversations": await request.app[SERVICE_KEY].list_conversations(user)})


async def open_direct(request: web.Request) -> web.Response:
    user = client(request)
    data = await read_json(request)
    other = schemas.check_str(data, "user_id", max_len=64)
    assert other is not None
    if not USER_ID_RE.match(other):
        raise NotFound("no such user")
    return json_response({"conversation": await request.app[SERVICE_KEY].open_direct(user, other)})


async def list_messages(request: web.Request) -> web.Response:
    user = client(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"])
    page = schemas.check_page({k: query_int(request, k) for k in ("before_seq", "after_seq", "limit")})
    thread_id, include_replies = _thread_query(request)
    return json_response(await request.app[SERVICE_KEY].history(user, cid, page, thread_id=thread_id,
                                                                include_replies=include_replies))


async def post_message(request: web.Request) -> web.Response:
    user = client(request)
    service = request.app[SERVICE_KEY]
    cid = schemas.parse_int_id(request.match_info["conversation_id"])
    data = await read_json(request)
    photos = schemas.check_attachment_ids(data)
    body = schemas.check_body(data, service.settings.max_body_chars, allow_empty=bool(photos))
    client_msg_id = schemas.check_client_msg_id(data)
    thread_id = threads.check_thread_id(data)
    mentioned = check_mentions(data)
    quota = await service.check_user_rate(user.user_id)
    response = json_response(await service.send_message(user, cid, body, client_msg_id, attachment_ids=photos,
                                                        thread_id=thread_id, mentions=mentioned), status=201)
    response.headers.update(quota.headers())
    return response


async def accept_guidelines(request: web.Request) -> web.Response:
    user = client(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"])
    version = spaces.check_version(await read_json(request))
    return json_response(await request.app[SERVICE_KEY].spaces.accept_guidelines(user, cid, version))


async def find_members(request: web.Request) -> web.Response:
    user = client(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"])
    query = request.query.get("q", "").strip()
    if len(query) > MAX_QUERY_CHARS:
        raise Invalid(f"q is longer than {MAX_QUERY_CHARS} characters")
    limit = schemas.check_int({"limit": query_int(request, "limit")}, "limit", minimum=1, maximum=MAX_MEMBER_MATCHES)
    return json_response(await request.app[SERVICE_KEY].find_members(
        user, cid, query, DEFAULT_MEMBER_MATCHES if limit is None else limit))


async def list_reactions(request: web.Request) -> web.Response:
    user = client(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"])
    mid = schemas.parse_int_id(request.match_info["message_id"], "message")
    raw_emoji = request.query.get("emoji")
    emoji = check_emoji(raw_emoji) if raw_emoji not in (None, "") else None
    limit = schemas.check_int({"limit": query_int(request, "limit")}, "limit", minimum=1, maximum=MAX_REACTORS)
    return json_response(await request.app[SERVICE_KEY].list_reactions(
        user, cid, mid, emoji, DEFAULT_REACTORS if limit is None else limit))


# ---------------------------------------------------------------- photos (chat/attachments.py)

UPLOAD_OVERHEAD = 16 * 1024  # multipart boundaries and part headers around the file


async def read_upload(request: web.Request, limit: int) -> bytes:
    """The `file` part of a multipart/form-data body, at most `limit` bytes (else too_large,
    without reading the rest). Any other shape of body is invalid."""
    if not request.content_type.startswith("multipart/form-data"):
        raise Invalid("the body must be multipart/form-data with a file part named \"file\"")
    limits = request.app.get(LIMITS_KEY)
    timeout = limits.http_body_timeout_s if limits else 10.0

    async def read() -> bytes:
        try:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    raise Invalid("no file part named \"file\" in the body")
                if not isinstance(part, BodyPartReader) or part.name != "file":
                    continue  # other fields are ignored
                data = bytearray()
                while chunk := await part.read_chunk(64 * 1024):
                    data += chunk
                    if len(data) > limit:
                        raise TooLarge(f"the file is over {limit} bytes")
                if not data:
                    raise Invalid("the file part is empty")
                return bytes(data)
        except ChatError:
            raise
        except Exception:  # whatever aiohttp's parser raises on a malformed body (InvalidHeader, ...)
            raise Invalid("the body is not well-formed multipart/form-data") from None

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise RequestTimeout("request body not received in time") from None


async def post_upload(request: web.Request) -> web.Response:
    user = client(request)
    attachments = request.app[ATTACHMENTS_KEY]
    data = await read_upload(request, attachments.settings.max_upload_bytes)
    return json_response(await attachments.upload(user.user_id, data), status=201)


async def get_attachment(request: web.Request) -> web.StreamResponse:
    """A photo or its thumbnail, for the holder of a signed URL from a message object."""
    aid = schemas.parse_int_id(request.match_info["attachment_id"], "attachment")
    variant = "thumb" if request.path.endswith("/thumb") else "file"
    answer = await request.app[ATTACHMENTS_KEY].open_file(aid, variant, request.query.get("exp"),
                                                          request.query.get("sig"))
    return web.Response(body=answer.data, headers={
        "Content-Type": answer.content_type,
        "Content-Disposition": f'inline; filename="{answer.filename}"',
        "X-Content-Type-Options": "nosniff",
        # The URL is what grants access: private (no shared cache), until it expires.
        "Cache-Control": f"private, max-age={answer.max_age}, immutable",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cross-Origin-Resource-Policy": "same-site",
    })


async def put_settings(request: web.Request) -> web.Response:
    user = client(request)
    cid = schemas.parse_int_id(request.match_info["conversation_id"])
    data = await read_json(request)
    muted = schemas.check_bool(data, "muted")
    return json_response(await request.app[SERVICE_KEY].set_muted(user, cid, muted))


# ---------------------------------------------------------------- operations


async def healthz(request: web.Request) -> web.Response:
    return json_response({"ok": True, "time": time.time()})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/api/v1/server/users/{user_id}", put_user)
    r.add_put("/api/v1/server/memberships/{creator_id}/{patron_id}", put_membership)
    r.add_post("/api/v1/server/rooms", create_room)
    r.add_get("/api/v1/server/rooms", list_rooms)
    r.add_get("/api/v1/server/rooms/{conversation_id}", get_room)
    r.add_patch("/api/v1/server/rooms/{conversation_id}", patch_room)
    r.add_delete("/api/v1/server/rooms/{conversation_id}", delete_room)
    r.add_delete("/api/v1/server/messages/{message_id}", server_delete_message)
    r.add_get("/api/v1/server/conversations/{conversation_id}/messages", server_history)
    r.add_get("/api/v1/server/conversations/{conversation_id}/presence", conversation_presence)
    r.add_get("/api/v1/server/channels/{channel}/presence", channel_presence)
    r.add_post("/api/v1/server/users/{user_id}/disconnect", disconnect_user)
    r.add_post("/api/v1/server/publish", publish)
    r.add_get("/api/v1/server/creators/{creator_id}/moderators", list_moderators)
    r.add_put("/api/v1/server/creators/{creator_id}/moderators/{user_id}", put_moderator)
    r.add_delete("/api/v1/server/creators/{creator_id}/moderators/{user_id}", delete_moderator)
    r.add_put("/api/v1/server/creators/{creator_id}/timeouts/{user_id}", put_timeout)
    r.add_delete("/api/v1/server/creators/{creator_id}/timeouts/{user_id}", delete_timeout)
    r.add_put("/api/v1/server/creators/{creator_id}/blocks/{user_id}", put_block)
    r.add_delete("/api/v1/server/creators/{creator_id}/blocks/{user_id}", delete_block)
    r.add_get("/api/v1/server/creators/{creator_id}/moderation-log", server_moderation_log)
    r.add_put("/api/v1/server/rooms/{conversation_id}/slow-mode", put_slow_mode)
    r.add_put("/api/v1/server/messages/{message_id}/pin", put_pin)
    r.add_delete("/api/v1/server/messages/{message_id}/pin", delete_pin)
    r.add_get("/api/v1/server/creators/{creator_id}/reports", server_reports)
    r.add_post("/api/v1/server/messages/{message_id}/review", server_review)
    r.add_get("/api/v1/server/creators/{creator_id}/report-settings", get_report_settings)
    r.add_put("/api/v1/server/creators/{creator_id}/report-settings", put_report_settings)
    r.add_get("/api/v1/server/users/{user_id}/blocks", server_member_blocks)
    r.add_get("/api/v1/me", get_me)
    r.add_get("/api/v1/moderation", get_moderation)
    r.add_get("/api/v1/conversations", list_conversations)
    r.add_post("/api/v1/conversations/direct", open_direct)
    r.add_get("/api/v1/conversations/{conversation_id}/messages", list_messages)
    r.add_post("/api/v1/conversations/{conversation_id}/messages", post_message)
    r.add_get("/api/v1/conversations/{conversation_id}/messages/{message_id}/reactions", list_reactions)
    r.add_get("/api/v1/conversations/{conversation_id}/members", find_members)
    r.add_put("/api/v1/conversations/{conversation_id}/settings", put_settings)
    r.add_post("/api/v1/conversations/{conversation_id}/guidelines/accept", accept_guidelines)
    r.add_get("/healthz", healthz)
    r.add_post("/api/v1/uploads", post_upload)
    r.add_get("/api/v1/attachments/{attachment_id}", get_attachment)
    r.add_get("/api/v1/attachments/{attachment_id}/thumb", get_attachment)
