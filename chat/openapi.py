"""The OpenAPI 3.1 document of the HTTP API (SPEC §3), served at /api/v1/openapi.json.

Built here rather than kept as a JSON file so the shared pieces (error answers, objects, limits)
are written once, from the same constants the validators use. tests/test_openapi.py keeps it
true: every route the app registers is in it and vice versa, its examples validate against its
schemas, and schemathesis checks the running server against it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

import orjson
from aiohttp import web

from chat.mentions import DEFAULT_MEMBER_MATCHES, MAX_MEMBER_MATCHES, MAX_MENTIONS, MAX_QUERY_CHARS
from chat.moderation import MAX_PINS, MAX_REASON_CHARS, MAX_SLOW_MODE_S, MAX_TIMEOUT_MINUTES, MIN_TIMEOUT_MINUTES
from chat.reactions import DEFAULT_REACTORS, MAX_EMOJI_CHARS, MAX_PER_MESSAGE, MAX_REACTORS
from chat.reports import MAX_HIDE_THRESHOLD, MAX_NOTE_CHARS
from chat.reports import REASONS as REPORT_REASONS
from chat.schemas import EXTERNAL_ID_RE, MAX_PAGE
from chat.spaces import MAX_ACTIVE_SPACES, MAX_GUIDELINES_CHARS, MAX_TOPIC_CHARS
from webhooks import EVENT_TYPES as WEBHOOK_EVENT_TYPES
from webhooks.outbox import STATUSES as WEBHOOK_STATUSES

ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
EXTERNAL_ID_PATTERN = EXTERNAL_ID_RE.pattern.replace("\\Z", "$")
ERROR_CODES = ["invalid", "unauthorized", "forbidden", "not_found", "conflict", "too_large", "rate_limited",
               "unavailable", "timeout", "method_not_allowed", "internal"]
CHANNEL_PATTERN = "^(user|creator|room):[A-Za-z0-9_-]{1,64}$"


IMAGE_REASONS = ["unsupported_format", "too_many_pixels", "truncated", "corrupt", "polyglot"]
SPACE_REASONS = ["archived", "guidelines"]  # a space's forbidden (chat/spaces.py)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, *, extra: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": list(properties) if required is None else required}
    if not extra:
        schema["additionalProperties"] = False
    return schema


STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
TIME = {"type": "string", "description": "ISO 8601 UTC, e.g. 2026-01-02T03:04:05.678Z"}
NULLABLE_TIME = {"type": ["string", "null"], "description": "ISO 8601 UTC, or null"}
USER_ID = {"type": "string", "pattern": ID_PATTERN}
MENTIONS_PARAM = {"type": "array", "maxItems": MAX_MENTIONS, "items": USER_ID,
                  "description": "(extension) ids of users the message mentions besides the body's @mentions; "
                                 "non-members are ignored (docs/api.md, Mentions)"}
EMOJI = {"type": "string", "minLength": 1, "maxLength": MAX_EMOJI_CHARS,
         "description": "one Unicode emoji (fully-qualified form) or a :name: of the list in docs/api.md"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({
        "code": {"type": "string", "enum": ERROR_CODES}, "message": STRING,
        "reason": {"type": "string", "enum": IMAGE_REASONS + SPACE_REASONS,
                   "description": "uploads: which image check refused it; (extension) a send in a chat space: "
                                  "archived, or guidelines (accept guidelines_version first)"},
        "guidelines_version": {"type": "integer", "minimum": 0,
                               "description": "(extension) reason guidelines, or accepting a stale version "
                                              "(409): the room's current guidelines version"},
        "until": {"type": "string", "description": "(extension) a timed-out member's send: when the timeout ends"},
        "retry_after": {"type": "integer", "minimum": 1,
                        "description": "(extension) a timed-out member's send (403) or a send in slow mode (429): "
                                       "seconds to wait"}},
        ["code", "message"])}),
    "User": _obj({"id": STRING, "name": STRING, "avatar_url": NULLABLE_STRING}),
    "Membership": _obj({"creator_id": STRING, "patron_id": STRING, "tier_cents": {"type": "integer"},
                        "status": {"type": "string", "enum": ["active", "former"]}, "updated_at": NULLABLE_TIME}),
    "Member": _obj({"id": STRING, "name": STRING}),
    "ConversationMember": _obj({"id": STRING, "name": STRING, "avatar_url": NULLABLE_STRING}, ["id", "name"]),
    "Conversation": _obj({
        "id": STRING, "kind": {"type": "string", "enum": ["room", "direct"]}, "creator_id": STRING, "name": STRING,
        "min_tier_cents": {"type": "integer"}, "post_policy": {"type": "string", "enum": ["everyone", "creator"]},
        "members": {"type": "array", "items": _ref("ConversationMember")},
        # chat spaces (extension, docs/moderation.md)
        "topic": {"type": "string", "maxLength": MAX_TOPIC_CHARS, "description": "\"\" when none"},
        "emoji": {"type": ["string", "null"], "description": "one Unicode emoji, or null"},
        "archived": {"type": "boolean", "description": "read-only: nobody posts"},
        "guidelines": {"type": "string", "maxLength": MAX_GUIDELINES_CHARS,
                       "description": "members accept them before posting; \"\" when none"},
        "guidelines_version": {"type": "integer", "minimum": 0,
                               "description": "grows by one with every change of the guidelines; 0: never set"},
    }, ["id", "kind", "creator_id", "name", "min_tier_cents", "post_policy", "topic", "emoji", "archived",
        "guidelines", "guidelines_version"]),
    "Message": _obj({
        "id": STRING, "conversation_id": STRING, "seq": {"type": "integer", "minimum": 1},
        "sender": _ref("Member"), "body": STRING, "client_msg_id": STRING, "created_at": TIME,
        "edited_at": NULLABLE_TIME, "deleted": {"type": "boolean"},
        "reactions": {"type": "array", "items": _ref("Reaction"), "maxItems": MAX_PER_MESSAGE,
                      "description": "as the reader sees them (`me`); [] on a new message; left out of message_updated"},
        "attachments": {"type": "array", "maxItems": 4, "items": _ref("Attachment")},
        "thread_id": {"type": ["string", "null"],
                      "description": "(extension) a reply's thread: its root message's id; null otherwise"},
        "thread": {"oneOf": [_ref("ThreadSummary"), {"type": "null"}],
                   "description": "(extension) a thread root's summary; null while it has no replies"},
        "hidden": {"const": True, "description": "(extension) present only on a message the reader does not see: "
                                                 "its placeholder (body empty, no photos or reactions); the creator "
                                                 "and moderators get a message hidden by reports whole, with this "
                                                 "flag (docs/moderation.md)"},
        "hidden_reason": {"type": "string", "enum": ["blocked", "reported"],
                          "description": "(extension) with hidden on a placeholder: the reader blocks the sender, "
                                         "or reports hid the message"},
        "mentions": {"type": "array", "maxItems": MAX_MENTIONS, "uniqueItems": True, "items": USER_ID,
                     "description": "(extension) ids of the members the message mentions, resolved on send; "
                                    "[] when none or deleted"},
    }, ["id", "conversation_id", "seq", "sender", "body", "client_msg_id", "created_at", "edited_at", "deleted",
        "mentions"]),
    "ThreadSummary": _obj({
        "reply_count": {"type": "integer", "minimum": 1, "description": "replies ever sent (deleted ones too): only grows"},
        "last_reply_at": TIME,
        "participants": {"type": "array", "items": STRING, "maxItems": 5,
                         "description": "the first 5 users who replied, first repliers first"}}),
    "Reaction": _obj({"emoji": EMOJI, "count": {"type": "integer", "minimum": 1},
                      "me": {"type": "boolean", "description": "whether the reader reacted with it"}}),
    "ReactionWithUsers": _obj({"emoji": EMOJI, "count": {"type": "integer", "minimum": 1}, "me": {"type": "boolean"},
                               "users": {"type": "array", "items": _ref("Member"), "maxItems": MAX_REACTORS,
                                         "description": "who reacted, oldest first (the first `limit`)"}}),
    "Room": {"allOf": [_ref("Conversation"), _obj({
        "external_id": {"type": ["string", "null"], "description": "the platform's id of the room, unique per creator"}},
        ["external_id"])]},
    "Upload": _obj({"id": STRING, "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1},
                    "content_type": {"type": "string", "enum": ["image/jpeg", "image/png", "image/webp", "image/gif"]},
                    "size": {"type": "integer", "minimum": 1}}),
    "Attachment": _obj({
        "id": STRING, "width": {"type": "integer"}, "height": {"type": "integer"},
        "content_type": {"type": "string", "enum": ["image/jpeg", "image/png", "image/webp", "image/gif"]},
        "size": {"type": "integer"},
        "url": {"type": "string", "description": "signed, relative to the server, expires (ATTACHMENT_URL_TTL_S)"},
        "thumb_url": {"type": "string", "description": "the thumbnail (at most 320 px), signed like url"},
    }),
    "ConversationListItem": _obj({
        "conversation": _ref("Conversation"), "last_message": {"anyOf": [_ref("Message"), {"type": "null"}]},
        "unread_count": {"type": "integer", "minimum": 0}, "muted": {"type": "boolean"},
        "mention_count": {"type": "integer", "minimum": 0,
                          "description": "(extension) unread messages that mention the user (after their read "
                                         "position, not deleted)"},
    }),
    "ModerationEntry": _obj({
        "id": STRING, "creator_id": STRING,
        "actor_id": {"type": ["string", "null"], "description": "who acted; null for the backend (server API)"},
        "action": {"type": "string", "enum": ["moderator_added", "moderator_removed", "timeout", "timeout_lifted",
                                              "block", "unblock", "message_deleted", "slow_mode", "message_pinned",
                                              "message_unpinned", "report_dismissed", "report_removed"]},
        "target_id": NULLABLE_STRING, "message_id": NULLABLE_STRING,
        "conversation_id": {"type": ["string", "null"], "description": "slow_mode: the room"},
        "seconds": {"type": ["integer", "null"], "description": "slow_mode: the interval (0: off)"},
        "until": {"type": ["string", "null"], "description": "a timeout's end (ISO 8601 UTC)"},
        "reason": STRING, "created_at": TIME}),
    "Report": _obj({
        "id": STRING, "message_id": STRING, "conversation_id": STRING, "creator_id": STRING, "sender_id": STRING,
        "reporter_id": STRING, "reason": {"type": "string", "enum": list(REPORT_REASONS)},
        "note": {"type": "string", "maxLength": MAX_NOTE_CHARS},
        "status": {"type": "string", "enum": ["open", "dismissed", "removed"]},
        "resolved_by": {"type": ["string", "null"], "description": "who reviewed it (null: open, or the backend)"},
        "resolved_at": NULLABLE_TIME, "created_at": TIME}),
    "ReportListed": {"allOf": [_ref("Report"), _obj({
        "message": {"anyOf": [_ref("Message"), {"type": "null"}],
                    "description": "the reported message as the moderators see it (its body even while hidden)"},
        "open_reports": {"type": "integer", "minimum": 0, "description": "the message's open reports"},
        "hidden": {"type": "boolean", "description": "hidden by reports (until reviewed)"}})]},
    "MemberBlock": _obj({"user_id": STRING, "blocked_at": TIME}),
    "WebhookDelivery": _obj({
        "id": STRING, "event_id": {"type": "string", "description": "the event's idempotency id (body `id`)"},
        "event_type": {"type": "string", "enum": list(WEBHOOK_EVENT_TYPES)},
        "status": {"type": "string", "enum": list(WEBHOOK_STATUSES)},
        "attempts": {"type": "integer", "minimum": 0},
        "last_status": {"type": ["integer", "null"], "description": "HTTP status of the last attempt"},
        "last_error": NULLABLE_STRING, "next_attempt_at": NULLABLE_TIME, "delivered_at": NULLABLE_TIME,
        "created_at": TIME, "updated_at": TIME}),
    "Notification": _obj({"id": STRING, "type": STRING, "title": STRING, "body": STRING, "data": {"type": "object"},
                          "created_at": TIME, "read_at": NULLABLE_TIME}),
}

ERROR_TEXT: dict[int, str] = {
    400: "invalid: the body, a parameter or the JSON fails validation",
    401: "unauthorized: no, bad or expired credentials",
    403: "forbidden: authenticated but not allowed",
    404: "not_found: unknown id (or no such endpoint)",
    408: "timeout: the request body did not arrive within HTTP_BODY_TIMEOUT_S",
    409: "conflict: a client_msg_id reused for a different body or conversation",
    413: "too_large: the body is over the size limit (refused from Content-Length alone)",
    429: "rate_limited: over the rate limit; nothing was stored",
    503: "unavailable: database or Redis down; nothing was stored, retry",
}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


INT_HEADER = {"schema": {"type": "string", "pattern": "^[0-9]+$"}}
RATE_HEADERS = {
    "RateLimit-Limit": {"description": "requests allowed per window (draft-ietf-httpapi-ratelimit-headers-07)",
                        **INT_HEADER},
    "RateLimit-Remaining": {"description": "requests left in the current window", **INT_HEADER},
    "RateLimit-Reset": {"description": "seconds until the oldest request leaves the window", **INT_HEADER},
    "RateLimit-Policy": {"description": "`limit;w=seconds`, e.g. `20;w=2`", "schema": STRING},
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying (on every 429)", **INT_HEADER}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        code = ERROR_TEXT[status].split(":")[0]
        out[str(status)] = {"description": ERROR_TEXT[status],
                            "content": _json(_ref("Error"), {"error": {"code": code, "message": "..."}})}
        if status == 429:
            out[str(status)]["headers"] = {**RETRY_AFTER, **RATE_HEADERS}
    return out


BODY_ERRORS = (400, 401, 404, 408, 413, 503)
READ_ERRORS = (400, 401, 404, 503)

EXAMPLE_USER = {"id": "alice", "name": "Alice", "avatar_url": None}
EXAMPLE_MEMBERSHIP = {"creator_id": "cre", "patron_id": "alice", "tier_cents": 500, "status": "active",
                      "updated_at": "2026-01-02T03:04:05.678Z"}
SPACE_DEFAULTS = {"topic": "", "emoji": None, "archived": False, "guidelines": "", "guidelines_version": 0}
EXAMPLE_ROOM = {"id": "12", "kind": "room", "creator_id": "cre", "name": "Lounge", "min_tier_cents": 0,
                "post_policy": "everyone", "topic": "Say hi", "emoji": "\U0001f3b8", "archived": False,
                "guidelines": "Be kind.", "guidelines_version": 1}
EXAMPLE_SERVER_ROOM = {**EXAMPLE_ROOM, "external_id": "tier-7"}
EXAMPLE_DIRECT = {"id": "13", "kind": "direct", "creator_id": "cre", "name": "", "min_tier_cents": 0,
                  "post_policy": "everyone", **SPACE_DEFAULTS,
                  "members": [{"id": "cre", "name": "Cre", "avatar_url": None},
                              {"id": "alice", "name": "Alice", "avatar_url": "https://example.com/a.png"}]}
EXAMPLE_MESSAGE = {"id": "99", "conversation_id": "12", "seq": 7, "sender": {"id": "alice", "name": "Alice"},
                   "body": "hello", "client_msg_id": "c-1", "created_at": "2026-01-02T03:04:05.678Z",
                   "edited_at": None, "deleted": False,
                   "reactions": [{"emoji": "\U0001f44d", "count": 3, "me": True}, {"emoji": ":fire:", "count": 1, "me": False}],
                   "attachments": [], "mentions": [], "thread_id": None,
                   "thread": {"reply_count": 2, "last_reply_at": "2026-01-02T03:06:00.000Z", "participants": ["bob", "cre"]}}
EXAMPLE_UPLOAD = {"id": "41", "width": 1280, "height": 960, "content_type": "image/jpeg", "size": 183204}
EXAMPLE_ATTACHMENT = {**EXAMPLE_UPLOAD, "url": "/api/v1/attachments/41?exp=1767326700&sig=3q2-7w...",
                      "thumb_url": "/api/v1/attachments/41/thumb?exp=1767326700&sig=Yk9v..."}
EXAMPLE_DELIVERY = {"id": "31", "event_id": "evt_5f0c6a1e9b7d4e2f8a3c1b0d9e8f7a6b", "event_type": "member.blocked",
                    "status": "failed", "attempts": 14, "last_status": 503,
                    "last_error": "gave up after 14 attempts: HTTP 503", "next_attempt_at": None,
                    "delivered_at": None, "created_at": "2026-01-02T03:04:05.678Z",
                    "updated_at": "2026-01-05T03:10:00.000Z"}
EXAMPLE_NOTIFICATION = {"id": "5", "type": "new_post", "title": "New post", "body": "Cre posted",
                        "data": {"post_id": "p1"}, "created_at": "2026-01-02T03:04:05.678Z", "read_at": None}


REASON = {"type": "string", "maxLength": MAX_REASON_CHARS, "description": "for the moderation log (optional)"}
EXAMPLE_REPORT = {"id": "5", "message_id": "99", "conversation_id": "12", "creator_id": "cre", "sender_id": "bob",
                  "reporter_id": "alice", "reason": "spam", "note": "", "status": "open", "resolved_by": None,
                  "resolved_at": None, "created_at": "2026-01-02T03:04:05.678Z"}
REPORTS_PAGE = _obj({"reports": {"type": "array", "items": _ref("ReportListed")}, "next_cursor": NULLABLE_STRING})
REPORT_SETTINGS = _obj({"creator_id": STRING, "hide_threshold": {"type": "integer", "minimum": 0,
                                                                 "maximum": MAX_HIDE_THRESHOLD}})
REVIEW_ANSWER = _obj({"message_id": STRING, "conversation_id": STRING,
                      "action": {"type": "string", "enum": ["dismiss", "remove"]},
                      "by": {"type": ["string", "null"]}, "resolved": {"type": "integer", "minimum": 0},
                      "message": _ref("Message")})
MODERATOR_ANSWER = _obj({"creator_id": STRING, "user_id": STRING, "moderator": {"type": "boolean"}})
TIMEOUT_ANSWER = _obj({"creator_id": STRING, "user_id": STRING, "until": NULLABLE_TIME})
BLOCK_ANSWER = _obj({"creator_id": STRING, "user_id": STRING, "blocked": {"type": "boolean"}})
MODERATION_LOG = _obj({"entries": {"type": "array", "items": _ref("ModerationEntry")}, "next_cursor": NULLABLE_STRING})
EXAMPLE_LOG_ENTRY = {"id": "31", "creator_id": "cre", "actor_id": "mia", "action": "timeout", "target_id": "alice",
                     "message_id": None, "conversation_id": None, "seconds": None,
                     "until": "2026-01-02T03:14:05.678Z", "reason": "flooding",
                     "created_at": "2026-01-02T03:04:05.678Z"}
EXAMPLE_LOG = {"entries": [EXAMPLE_LOG_ENTRY], "next_cursor": None}

_NAMED = _obj({"id": STRING, "name": STRING})
MODERATION_OVERVIEW = _obj({
    "moderator_of": {"type": "array", "items": STRING},
    "timeouts": {"type": "array", "items": _obj({"creator_id": STRING, "until": TIME})},
    "teams": {"type": "array", "items": _obj({
        "creator_id": STRING, "moderators": {"type": "array", "items": _NAMED},
        "blocked": {"type": "array", "items": _NAMED},
        "timed_out": {"type": "array", "items": _obj({"id": STRING, "name": STRING, "until": TIME})}})}})
EXAMPLE_OVERVIEW = {"moderator_of": ["cre"], "timeouts": [],
                    "teams": [{"creator_id": "mia", "moderators": [], "blocked": [], "timed_out": []},
                              {"creator_id": "cre", "moderators": [{"id": "mia", "name": "Mia"}],
                               "blocked": [{"id": "bob", "name": "Bob"}],
                               "timed_out": [{"id": "alice", "name": "Alice", "until": "2026-01-02T03:14:05.678Z"}]}]}

SPACE_FIELDS: dict[str, Any] = {
    "topic": {"type": "string", "maxLength": MAX_TOPIC_CHARS, "description": "trimmed; \"\" clears it"},
    "emoji": {"type": ["string", "null"], "description": "one Unicode emoji; null clears it"},
    "guidelines": {"type": "string", "maxLength": MAX_GUIDELINES_CHARS,
                   "description": "trimmed; a change bumps guidelines_version; \"\" clears them"},
}
SPACES_CONFLICT = {"409": {
    "description": f"conflict: the creator has {MAX_ACTIVE_SPACES} active (not archived) rooms already",
    "content": _json(_ref("Error"), {"error": {"code": "conflict", "message": "..."}})}}


def _op(summary: str, security: str | None, responses: dict[str, Any], *, body: dict[str, Any] | None = None,
        body_example: Any = None, params: list[dict[str, Any]] | None = None,
        tags: list[str] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if tags:
        op["tags"] = tags
    op["security"] = [{security: []}] if security else []
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body, body_example)}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


THREAD_ID = {"type": "string", "pattern": "^[0-9]{1,18}$",
             "description": "(extension) a reply: the id of a root message of this conversation (not a reply, not "
                            "deleted); docs/api.md \"Threads\""}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


THREAD_QUERY = [
    _query("thread_id", {"type": "string", "pattern": "^[0-9]{1,18}$"},
           "(extension) a page of this thread: its root, then its replies (docs/api.md \"Threads\")"),
    _query("include_replies", {"type": "string", "enum": ["true", "false"], "default": "true"},
           "(extension) false: leave thread replies out"),
]


def _ok(status: int, description: str, schema: dict[str, Any], example: Any,
        headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _json(schema, example)}
    if headers:
        answer["headers"] = headers
    return {str(status): answer}


def _attachment_op(summary: str, types: tuple[str, ...]) -> dict[str, Any]:
    signed = [_query("exp", {"type": "string", "pattern": "^[0-9]{1,12}$"}, "expiry (unix seconds), from the URL"),
              _query("sig", {"type": "string"}, "signature, from the URL")]
    return _op(f"{summary}, through the signed URL of a message's attachment (no other credentials)", None,
               {"200": {"description": "the file; Content-Disposition inline, nosniff, private cache until expiry",
                        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in types}},
                **_errors(403, 404, 503)},
               params=[_path_param("attachment_id", {"type": "string", "description": "an attachment id (digits)"}),
                       *signed], tags=["client"])


def build() -> dict[str, Any]:
    conv_id = _path_param("conversation_id", {"type": "string", "description": "a conversation id (digits)"})
    seq_query = {"type": "integer", "minimum": 0}
    paths: dict[str, Any] = {
        "/api/v1/server/users/{user_id}": {"put": _op(
            "Create or update a user", "apiKey",
            {**_ok(200, "the user", _obj({"user": _ref("User")}), {"user": EXAMPLE_USER}), **_errors(*BODY_ERRORS)},
            params=[_path_param("user_id", USER_ID)],
            body=_obj({"name": {"type": "string", "minLength": 1, "maxLength": 200},
                       "avatar_url": {"type": ["string", "null"], "maxLength": 1000}}, ["name"]),
            body_example={"name": "Alice", "avatar_url": "https://example.com/a.png"}, tags=["server"])},
        "/api/v1/server/memberships/{creator_id}/{patron_id}": {"put": _op(
            "Create or update a membership (takes effect at once; lost access is revoked live)", "apiKey",
            {**_ok(200, "the membership", _obj({"membership": _ref("Membership")}), {"membership": EXAMPLE_MEMBERSHIP}),
             **_errors(*BODY_ERRORS)},
            params=[_path_param("creator_id", USER_ID), _path_param("patron_id", USER_ID)],
            body=_obj({"tier_cents": {"type": "integer", "minimum": 0, "maximum": 10**9},
                       "status": {"type": "string", "enum": ["active", "former"]}}),
            body_example={"tier_cents": 500, "status": "active"}, tags=["server"])},
        "/api/v1/server/rooms": {
            "post": _op(
                "Create a room; with an external_id, the creator's room of that id if it exists", "apiKey",
                {**_ok(201, "the room, created", _obj({"conversation": _ref("Room")}),
                       {"conversation": EXAMPLE_SERVER_ROOM}),
                 **_ok(200, "the creator's existing room with this external_id, unchanged",
                       _obj({"conversation": _ref("Room")}), {"conversation": EXAMPLE_SERVER_ROOM}),
                 **_errors(*BODY_ERRORS), **SPACES_CONFLICT},
                body=_obj({"creator_id": USER_ID, "name": {"type": "string", "minLength": 1, "maxLength": 200},
                           "min_tier_cents": {"type": "integer", "minimum": 0, "maximum": 10**9},
                           "post_policy": {"type": "string", "enum": ["everyone", "creator"]},
                           "external_id": {"type": ["string", "null"], "pattern": EXTERNAL_ID_PATTERN},
                           **SPACE_FIELDS},
                          ["creator_id", "name", "min_tier_cents"]),
                body_example={"creator_id": "cre", "name": "Lounge", "min_tier_cents": 0, "post_policy": "everyone",
                              "external_id": "tier-7"},
                tags=["server"]),
            "get": _op(
                "A page of rooms in creation order (of one creator, or all)", "apiKey",
                {**_ok(200, "the page; next_cursor is null on the last one",
                       _obj({"rooms": {"type": "array", "items": _ref("Room")}, "next_cursor": NULLABLE_STRING}),
                       {"rooms": [EXAMPLE_SERVER_ROOM], "next_cursor": "12"}), **_errors(400, 401, 503)},
                params=[_query("creator_id", USER_ID, "only this creator's rooms"),
                        _query("cursor", {"type": "string", "pattern": "^(0|[1-9][0-9]{0,17})$"},
                               "the next_cursor of the previous page"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "default 50")],
                tags=["server"]),
        },
        "/api/v1/server/rooms/{conversation_id}": {
            "get": _op("A room (docs/moderation.md, chat spaces)", "apiKey",
                       {**_ok(200, "the room", _obj({"conversation": _ref("Room")}),
                              {"conversation": EXAMPLE_SERVER_ROOM}), **_errors(*READ_ERRORS)},
                       params=[conv_id], tags=["server"]),
            "patch": _op(
                "Change a room: rename, topic, emoji, re-gate (members below the new tier lose it at once), "
                "post policy, archive (read-only) or unarchive, guidelines (a new version members accept before "
                "posting). Members in the room get conversation_updated", "apiKey",
                {**_ok(200, "the room after the change", _obj({"conversation": _ref("Room")}),
                       {"conversation": {**EXAMPLE_SERVER_ROOM, "archived": True}}),
                 **_errors(*BODY_ERRORS), **SPACES_CONFLICT},
                params=[conv_id],
                body={**_obj({"name": {"type": "string", "minLength": 1, "maxLength": 200},
                              "min_tier_cents": {"type": "integer", "minimum": 0, "maximum": 10**9},
                              "post_policy": {"type": "string", "enum": ["everyone", "creator"]},
                              "archived": {"type": "boolean"}, **SPACE_FIELDS}, []), "minProperties": 1},
                body_example={"name": "Green room", "archived": True}, tags=["server"]),
            "delete": _op(
                "Delete a room and its history (messages, reactions, read positions, pins, photos); members get "
                "conversation_deleted and access_revoked", "apiKey",
                {**_ok(200, "deleted", _obj({"conversation_id": STRING, "deleted": {"const": True}}),
                       {"conversation_id": "12", "deleted": True}), **_errors(*READ_ERRORS)},
                params=[conv_id], tags=["server"]),
        },
        "/api/v1/server/messages/{message_id}": {"delete": _op(
            "Delete any message (members get message_updated, as for an author's delete)", "apiKey",
            {**_ok(200, "the deleted message (also when it was deleted already)", _obj({"message": _ref("Message")}),
                   {"message": {**EXAMPLE_MESSAGE, "body": "", "deleted": True,
                                "edited_at": "2026-01-02T03:04:06.000Z"}}), **_errors(*READ_ERRORS)},
            params=[_path_param("message_id", {"type": "string", "description": "a message id (digits)"})],
            tags=["server"])},
        "/api/v1/server/conversations/{conversation_id}/messages": {"get": _op(
            "A page of any conversation's messages, ascending by seq (as the client API, no membership needed)",
            "apiKey",
            {**_ok(200, "the page", _obj({"messages": {"type": "array", "items": _ref("Message")},
                                          "has_more": {"type": "boolean"}}),
                   {"messages": [EXAMPLE_MESSAGE], "has_more": False}), **_errors(*READ_ERRORS)},
            params=[conv_id, _query("before_seq", seq_query, "the messages just before this seq"),
                    _query("after_seq", seq_query, "the messages just after this seq"),
                    _query("since_seq", seq_query, "the same as after_seq (the socket join's name)"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "default 50"),
                    *THREAD_QUERY],
            tags=["server"])},
        "/api/v1/server/conversations/{conversation_id}/presence": {"get": _op(
            "Who has a socket joined to the conversation, cluster-wide", "apiKey",
            {**_ok(200, "user ids, sorted", _obj({"conversation_id": STRING, "online": {"type": "array", "items": STRING}}),
                   {"conversation_id": "12", "online": ["alice", "cre"]}), **_errors(*READ_ERRORS)},
            params=[conv_id], tags=["server"])},
        "/api/v1/server/channels/{channel}/presence": {"get": _op(
            "Who of a channel's audience is connected, and how many sockets subscribe to it", "apiKey",
            {**_ok(200, "online: user ids, sorted; subscribers: sockets, cluster-wide (best effort)",
                   _obj({"channel": STRING, "online": {"type": "array", "items": STRING},
                         "subscribers": {"type": "integer", "minimum": 0}}),
                   {"channel": "creator:cre", "online": ["alice"], "subscribers": 1}), **_errors(*READ_ERRORS)},
            params=[_path_param("channel", {"type": "string", "pattern": CHANNEL_PATTERN})], tags=["server"])},
        "/api/v1/server/users/{user_id}/disconnect": {"post": _op(
            "Disconnect every socket of a user on every process", "apiKey",
            {**_ok(200, "was_online: the user had a connected socket just before",
                   _obj({"user_id": STRING, "was_online": {"type": "boolean"}}),
                   {"user_id": "alice", "was_online": True}), **_errors(*READ_ERRORS)},
            params=[_path_param("user_id", USER_ID)], tags=["server"])},
        "/api/v1/server/publish": {"post": _op(
            "Publish an event live to a channel's subscribers", "apiKey",
            {**_ok(200, "how many sockets (cluster-wide, best effort) were subscribed",
                   _obj({"delivered_to": {"type": "integer", "minimum": 0}}), {"delivered_to": 3}),
             **_errors(*BODY_ERRORS)},
            body=_obj({"channel": {"type": "string", "pattern": CHANNEL_PATTERN},
                       "event": {"type": "string", "minLength": 1, "maxLength": 64},
                       "data": {"description": "any JSON value (nested at most 254 levels)"}}),
            body_example={"channel": "creator:cre", "event": "live", "data": {"url": "https://example.com/live"}},
            tags=["server"])},
        "/api/v1/server/creators/{creator_id}/moderators": {"get": _op(
            "The creator's moderators (docs/moderation.md)", "apiKey",
            {**_ok(200, "user ids, sorted", _obj({"creator_id": STRING, "moderators": {"type": "array", "items": STRING}}),
                   {"creator_id": "cre", "moderators": ["mia"]}), **_errors(*READ_ERRORS)},
            params=[_path_param("creator_id", USER_ID)], tags=["server"])},
        "/api/v1/server/creators/{creator_id}/moderators/{user_id}": {
            method: _op(
                f"{verb} a moderator of the creator (idempotent; logged when it changes something)", "apiKey",
                {**_ok(200, "the user's role now", MODERATOR_ANSWER,
                       {"creator_id": "cre", "user_id": "mia", "moderator": method == "put"}),
                 **_errors(*READ_ERRORS)},
                params=[_path_param("creator_id", USER_ID), _path_param("user_id", USER_ID)], tags=["server"])
            for method, verb in (("put", "Appoint"), ("delete", "Remove"))},
        "/api/v1/server/creators/{creator_id}/timeouts/{user_id}": {
            "put": _op(
                "Time a member out of the creator's rooms: no posting there until `until` (live, every process)",
                "apiKey",
                {**_ok(200, "the timeout's end", TIMEOUT_ANSWER,
                       {"creator_id": "cre", "user_id": "alice", "until": "2026-01-02T03:14:05.678Z"}),
                 **_errors(*BODY_ERRORS, 403)},
                params=[_path_param("creator_id", USER_ID), _path_param("user_id", USER_ID)],
                body=_obj({"minutes": {"type": "integer", "minimum": MIN_TIMEOUT_MINUTES,
                                       "maximum": MAX_TIMEOUT_MINUTES}, "reason": REASON}, ["minutes"]),
                body_example={"minutes": 10, "reason": "flooding"}, tags=["server"]),
            "delete": _op(
                "Lift a member's timeout", "apiKey",
                {**_ok(200, "until is null", TIMEOUT_ANSWER, {"creator_id": "cre", "user_id": "alice", "until": None}),
                 **_errors(*READ_ERRORS, 403)},
                params=[_path_param("creator_id", USER_ID), _path_param("user_id", USER_ID)], tags=["server"]),
        },
        "/api/v1/server/creators/{creator_id}/blocks/{user_id}": {
            "put": _op(
                "Block a member: out of all the creator's rooms, the direct conversation and the creator channel at "
                "once, whatever the membership says, until unblocked", "apiKey",
                {**_ok(200, "blocked", BLOCK_ANSWER, {"creator_id": "cre", "user_id": "alice", "blocked": True}),
                 **_errors(*BODY_ERRORS, 403)},
                params=[_path_param("creator_id", USER_ID), _path_param("user_id", USER_ID)],
                body=_obj({"reason": REASON}, []), body_example={"reason": "harassment"}, tags=["server"]),
            "delete": _op(
                "Unblock a member (access follows the membership again)", "apiKey",
                {**_ok(200, "unblocked", BLOCK_ANSWER, {"creator_id": "cre", "user_id": "alice", "blocked": False}),
                 **_errors(*READ_ERRORS, 403)},
                params=[_path_param("creator_id", USER_ID), _path_param("user_id", USER_ID)], tags=["server"]),
        },
        "/api/v1/server/creators/{creator_id}/moderation-log": {"get": _op(
            "The creator's moderation log, newest first", "apiKey",
            {**_ok(200, "a page; next_cursor is null on the last one", MODERATION_LOG, EXAMPLE_LOG),
             **_errors(*READ_ERRORS)},
            params=[_path_param("creator_id", USER_ID),
                    _query("cursor", {"type": "string", "pattern": "^(0|[1-9][0-9]{0,17})$"},
                           "the next_cursor of the previous page"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "default 50")],
            tags=["server"])},
        "/api/v1/server/creators/{creator_id}/reports": {"get": _op(
            "The creator's reports of messages, newest first, each with its message (docs/moderation.md)", "apiKey",
            {**_ok(200, "a page; next_cursor is null on the last one", REPORTS_PAGE,
                   {"reports": [{**EXAMPLE_REPORT, "message": None, "open_reports": 1, "hidden": False}],
                    "next_cursor": None}),
             **_errors(*READ_ERRORS)},
            params=[_path_param("creator_id", USER_ID),
                    _query("status", {"type": "string", "enum": ["open", "resolved", "all"]}, "default open"),
                    _query("conversation_id", {"type": "string", "pattern": "^(0|[1-9][0-9]{0,17})$"},
                           "only this room's"),
                    _query("cursor", {"type": "string", "pattern": "^(0|[1-9][0-9]{0,17})$"},
                           "the next_cursor of the previous page"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "default 50")],
            tags=["server"])},
        "/api/v1/server/creators/{creator_id}/report-settings": {
            "get": _op("The creator's reports threshold (3 unless set; 0: reports never hide)", "apiKey",
                       {**_ok(200, "the threshold", REPORT_SETTINGS, {"creator_id": "cre", "hide_threshold": 3}),
                        **_errors(*READ_ERRORS)},
                       params=[_path_param("creator_id", USER_ID)], tags=["server"]),
            "put": _op("Set how many members' open reports hide a message (0: never); applies to the next reports",
                       "apiKey",
                       {**_ok(200, "the threshold now", REPORT_SETTINGS, {"creator_id": "cre", "hide_threshold": 5}),
                        **_errors(*BODY_ERRORS)},
                       params=[_path_param("creator_id", USER_ID)],
                       body=_obj({"hide_threshold": {"type": "integer", "minimum": 0, "maximum": MAX_HIDE_THRESHOLD}}),
                       body_example={"hide_threshold": 5}, tags=["server"])},
        "/api/v1/server/messages/{message_id}/review": {"post": _op(
            "Review a reported room message: dismiss (it stays, shown again if hidden) or remove (deleted); "
            "every open report of it is resolved", "apiKey",
            {**_ok(200, "how many open reports were resolved, and the message now", REVIEW_ANSWER,
                   {"message_id": "99", "conversation_id": "12", "action": "dismiss", "by": None, "resolved": 3,
                    "message": EXAMPLE_MESSAGE}),
             **_errors(*BODY_ERRORS)},
            params=[_path_param("message_id", {"type": "string", "description": "a message id (digits)"})],
            body=_obj({"action": {"type": "string", "enum": ["dismiss", "remove"]},
                       "note": {"type": "string", "maxLength": MAX_NOTE_CHARS}}, ["action"]),
            body_example={"action": "dismiss", "note": "not spam"}, tags=["server"])},
        "/api/v1/server/users/{user_id}/blocks": {"get": _op(
            "The users this user blocks (blocks between members, docs/moderation.md)", "apiKey",
            {**_ok(200, "oldest block first", _obj({"blocks": {"type": "array", "items": _ref("MemberBlock")}}),
                   {"blocks": [{"user_id": "bob", "blocked_at": "2026-01-02T03:04:05.678Z"}]}),
             **_errors(*READ_ERRORS)},
            params=[_path_param("user_id", USER_ID)], tags=["server"])},
        "/api/v1/server/rooms/{conversation_id}/slow-mode": {"put": _op(
            "Slow mode of a room: each member posts at most once per `seconds` (0: off; creator and moderators "
            "exempt), cluster-wide", "apiKey",
            {**_ok(200, "the room's slow mode now", _obj({"conversation_id": STRING, "seconds": {"type": "integer"}}),
                   {"conversation_id": "12", "seconds": 30}), **_errors(*BODY_ERRORS)},
            params=[conv_id],
            body=_obj({"seconds": {"type": "integer", "minimum": 0, "maximum": MAX_SLOW_MODE_S}, "reason": REASON},
                      ["seconds"]),
            body_example={"seconds": 30}, tags=["server"])},
        "/api/v1/server/messages/{message_id}/pin": {
            method: _op(
                f"{verb} a room message (at most {MAX_PINS} per room; everyone in the room gets `pins`)", "apiKey",
                {**_ok(200, "the room's pinned message ids, oldest pin first",
                       _obj({"conversation_id": STRING, "message_ids": {"type": "array", "items": STRING,
                                                                        "maxItems": MAX_PINS}}),
                       {"conversation_id": "12", "message_ids": ["99"]}),
                 **_errors(*READ_ERRORS, 409)},
                params=[_path_param("message_id", {"type": "string", "description": "a message id (digits)"})],
                tags=["server"])
            for method, verb in (("put", "Pin"), ("delete", "Unpin"))},
        "/api/v1/server/notifications": {"post": _op(
            "Store notifications for users (or a channel's audience), deliver them live and push", "apiKey",
            {**_ok(202, "the stored notifications' ids (the original ones for a repeated idempotency_key)",
                   _obj({"notification_ids": {"type": "array", "items": STRING}}), {"notification_ids": ["5", "6"]}),
             **_errors(*BODY_ERRORS)},
            body=_obj({
                "user_ids": {"type": "array", "items": USER_ID, "minItems": 1, "maxItems": 1000},
                "channel": {"type": "string", "pattern": "^(user|creator|room):[A-Za-z0-9_-]{1,64}$"},
                "type": {"type": "string", "minLength": 1, "maxLength": 64},
                "title": {"type": "string", "minLength": 1, "maxLength": 200},
                "body": {"type": "string", "minLength": 1, "maxLength": 4000},
                "data": {"type": ["object", "null"], "description": "at most 2,000 bytes as JSON"},
                "push": {"type": ["boolean", "null"]},
                "collapse_key": {"type": ["string", "null"], "maxLength": 64},
                "idempotency_key": {"type": ["string", "null"], "maxLength": 200},
            }, ["type", "title", "body"]),
            body_example={"user_ids": ["alice"], "type": "new_post", "title": "New post", "body": "Cre posted",
                          "data": {"post_id": "p1"}, "push": True, "idempotency_key": "post-p1"},
            tags=["server"])},
        "/api/v1/server/webhooks/deliveries": {"get": _op(
            "Webhook deliveries, newest first (docs/webhooks.md): e.g. the failed ones, to replay", "apiKey",
            {**_ok(200, "a page of deliveries",
                   _obj({"deliveries": {"type": "array", "items": _ref("WebhookDelivery")},
                         "has_more": {"type": "boolean"}}),
                   {"deliveries": [EXAMPLE_DELIVERY], "has_more": False}), **_errors(400, 401, 503)},
            params=[_query("status", {"type": "string", "enum": list(WEBHOOK_STATUSES)}, "only deliveries in this state"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "page size (default 50)"),
                    _query("before", {"type": "integer", "minimum": 1, "maximum": 10**18},
                           "only ids below this (the last id of the previous page)")],
            tags=["server"])},
        "/api/v1/server/webhooks/deliveries/{delivery_id}/replay": {"post": _op(
            "Send a failed (or delivered) webhook event again: same event id and body, a new retry window", "apiKey",
            {**_ok(202, "the delivery, pending again", _obj({"delivery": _ref("WebhookDelivery")}),
                   {"delivery": {**EXAMPLE_DELIVERY, "status": "pending",
                                 "next_attempt_at": "2026-01-05T09:00:00.000Z"}}),
             **_errors(400, 401, 404, 503),
             "409": {"description": "conflict: the delivery is pending or being sent (nothing to replay)",
                     "content": _json(_ref("Error"), {"error": {"code": "conflict", "message": "..."}})}},
            params=[_path_param("delivery_id", {"type": "string", "pattern": "^[0-9]{1,18}$"})], tags=["server"])},
        "/api/v1/me": {"get": _op(
            "The signed-in user, their unread notification count and unread mentions", "clientJwt",
            {**_ok(200, "the user", _obj({"user": _ref("User"), "unread_notifications": {"type": "integer"},
                                          "mention_count": {"type": "integer", "minimum": 0,
                                                            "description": "(extension) the unread mentions of "
                                                                           "every conversation the user reads"}}),
                   {"user": EXAMPLE_USER, "unread_notifications": 2, "mention_count": 1}),
             **_errors(401, 404, 503)}, tags=["client"])},
        "/api/v1/moderation": {"get": _op(
            "(extension) Moderation as the signed-in user sees it: whose rooms they moderate, their running "
            "timeouts, and for themselves (as a creator) and each creator they moderate: moderators, blocked and "
            "timed-out members (at most 100 of these two)", "clientJwt",
            {**_ok(200, "the overview", MODERATION_OVERVIEW, EXAMPLE_OVERVIEW), **_errors(401, 503)},
            tags=["client"])},
        "/api/v1/conversations": {"get": _op(
            "The user's conversations, newest activity first", "clientJwt",
            {**_ok(200, "the conversations",
                   _obj({"conversations": {"type": "array", "items": _ref("ConversationListItem")}}),
                   {"conversations": [{"conversation": EXAMPLE_ROOM, "last_message": EXAMPLE_MESSAGE,
                                       "unread_count": 1, "mention_count": 0, "muted": False}]}),
             **_errors(401, 404, 503)}, tags=["client"])},
        "/api/v1/conversations/direct": {"post": _op(
            "Open (or find) the direct conversation between a creator and an active patron", "clientJwt",
            {**_ok(200, "the conversation", _obj({"conversation": _ref("Conversation")}),
                   {"conversation": EXAMPLE_DIRECT}), **_errors(*BODY_ERRORS, 403)},
            body=_obj({"user_id": USER_ID}), body_example={"user_id": "cre"}, tags=["client"])},
        "/api/v1/conversations/{conversation_id}/messages": {
            "get": _op(
                "A page of a conversation's messages, ascending by seq", "clientJwt",
                {**_ok(200, "the page", _obj({"messages": {"type": "array", "items": _ref("Message")},
                                              "has_more": {"type": "boolean"}}),
                       {"messages": [EXAMPLE_MESSAGE], "has_more": False}), **_errors(*READ_ERRORS, 403)},
                params=[conv_id, _query("before_seq", seq_query, "the messages just before this seq"),
                        _query("after_seq", seq_query, "the messages just after this seq"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "default 50"),
                        *THREAD_QUERY],
                tags=["client"]),
            "post": _op(
                "Send a message (idempotent on client_msg_id; rate-limited per user)", "clientJwt",
                {**_ok(201, "the stored message (the original one for a retry)", _obj({"message": _ref("Message")}),
                       {"message": EXAMPLE_MESSAGE}, RATE_HEADERS), **_errors(*BODY_ERRORS, 403, 409, 429)},
                params=[conv_id],
                body=_obj({"body": {"type": "string", "maxLength": 4000,
                                    "description": "1-4,000 characters after trimming; may be empty or absent "
                                                   "when attachments are given"},
                           "client_msg_id": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,64}$"},
                           "attachments": {"type": "array", "maxItems": 4, "uniqueItems": True,
                                           "items": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                                           "description": "ids of the sender's own unused uploads"},
                           "thread_id": THREAD_ID,
                           "mentions": MENTIONS_PARAM},
                          ["client_msg_id"]),
                body_example={"body": "hello", "client_msg_id": "c-1"}, tags=["client"]),
        },
        "/api/v1/conversations/{conversation_id}/messages/{message_id}/reactions": {"get": _op(
            "A message's reactions with who reacted (members only)", "clientJwt",
            {**_ok(200, "the reactions, in the order each emoji was first used (none for a deleted message)",
                   _obj({"reactions": {"type": "array", "items": _ref("ReactionWithUsers")}}),
                   {"reactions": [{"emoji": "\U0001f44d", "count": 2, "me": True,
                                   "users": [{"id": "alice", "name": "Alice"}, {"id": "cre", "name": "Cre"}]}]}),
             **_errors(*READ_ERRORS, 403)},
            params=[conv_id, _path_param("message_id", {"type": "string", "description": "a message id (digits)"}),
                    _query("emoji", EMOJI, "only this emoji (\"❤\" and \"❤️\" are one)"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_REACTORS},
                           f"users listed per emoji, default {DEFAULT_REACTORS}")],
            tags=["client"])},
        "/api/v1/conversations/{conversation_id}/members": {"get": _op(
            "(extension) Members one can @mention, for a composer's completion (members only)", "clientJwt",
            {**_ok(200, "current members whose display name, a word of it, or id starts with q (ignoring case), "
                        "by name", _obj({"members": {"type": "array", "items": _ref("ConversationMember"),
                                                     "maxItems": MAX_MEMBER_MATCHES}}),
                   {"members": [{"id": "ann", "name": "Ann Lee", "avatar_url": None}]}),
             **_errors(*READ_ERRORS, 403)},
            params=[conv_id, _query("q", {"type": "string", "maxLength": MAX_QUERY_CHARS},
                                    "what was typed after @ (empty: any member)"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_MEMBER_MATCHES},
                           f"default {DEFAULT_MEMBER_MATCHES}")],
            tags=["client"])},
        "/api/v1/uploads": {"post": {
            **_op("Upload a photo (JPEG, PNG, WebP or GIF, checked by decoding; EXIF/GPS stripped; thumbnail made)",
                  "clientJwt",
                  {**_ok(201, "the stored photo, unused until a send names it (removed if none does within UPLOAD_TTL_S, 24 h)",
                         _obj({"attachment": _ref("Upload")}), {"attachment": EXAMPLE_UPLOAD}),
                   **_errors(400, 401, 408, 413, 429, 503)}, tags=["client"]),
            "requestBody": {"required": True, "content": {"multipart/form-data": {
                "schema": _obj({"file": {"type": "string", "format": "binary",
                                         "description": "the image, at most MAX_UPLOAD_BYTES (10 MB)"}}),
                "encoding": {"file": {"contentType": "image/jpeg, image/png, image/webp, image/gif"}}}}},
        }},
        "/api/v1/attachments/{attachment_id}": {"get": _attachment_op("A photo", IMAGE_TYPES)},
        "/api/v1/attachments/{attachment_id}/thumb": {"get": _attachment_op(
            "A photo's thumbnail (at most 320 px; JPEG, or PNG when it has transparency)", ("image/jpeg", "image/png"))},
        "/api/v1/conversations/{conversation_id}/guidelines/accept": {"post": _op(
            "Accept the room's current guidelines (the socket's accept_guidelines over HTTP)", "clientJwt",
            {**_ok(200, "accepted", _obj({"conversation_id": STRING, "guidelines_version": {"type": "integer"}}),
                   {"conversation_id": "12", "guidelines_version": 1}),
             **_errors(*BODY_ERRORS, 403),
             "409": {"description": "conflict: not the current version (the error carries guidelines_version)",
                     "content": _json(_ref("Error"), {"error": {"code": "conflict", "message": "...",
                                                                "guidelines_version": 2}})}},
            params=[conv_id], body=_obj({"version": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}}),
            body_example={"version": 1}, tags=["client"])},
        "/api/v1/conversations/{conversation_id}/settings": {"put": _op(
            "Mute or unmute a conversation (muted: no pushes)", "clientJwt",
            {**_ok(200, "the setting", _obj({"conversation_id": STRING, "muted": {"type": "boolean"}}),
                   {"conversation_id": "12", "muted": True}), **_errors(*BODY_ERRORS, 403)},
            params=[conv_id], body=_obj({"muted": {"type": "boolean"}}), body_example={"muted": True},
            tags=["client"])},
        "/api/v1/notifications": {"get": _op(
            "The user's notification feed, newest first", "clientJwt",
            {**_ok(200, "a page of notifications",
                   _obj({"notifications": {"type": "array", "items": _ref("Notification")},
                         "has_more": {"type": "boolean"}}),
                   {"notifications": [EXAMPLE_NOTIFICATION], "has_more": False}), **_errors(*READ_ERRORS)},
            params=[_query("before", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "a notification id"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "default 50"),
                    _query("unread", {"type": "string", "enum": ["true", "false", "1", "0"]}, "only unread ones")],
            tags=["client"])},
        "/api/v1/notifications/read": {"post": _op(
            "Mark notifications read: some ids, or all", "clientJwt",
            {**_ok(200, "the unread count after", _obj({"unread_notifications": {"type": "integer"}}),
                   {"unread_notifications": 0}), **_errors(*BODY_ERRORS)},
            body={"oneOf": [_obj({"ids": {"type": "array", "items": STRING, "maxItems": 1000}}),
                            _obj({"all": {"const": True}})]},
            body_example={"ids": ["5", "6"]}, tags=["client"])},
        "/api/v1/devices": {"post": _op(
            "Register a push device token (idempotent)", "clientJwt",
            {**_ok(201, "the device", _obj({"device": _obj({"token": STRING, "platform": STRING})}),
                   {"device": {"token": "fcm-token", "platform": "android"}}), **_errors(*BODY_ERRORS)},
            body=_obj({"token": {"type": "string", "minLength": 1, "maxLength": 512},
                       "platform": {"type": "string", "enum": ["android", "ios", "web"]}}),
            body_example={"token": "fcm-token", "platform": "android"}, tags=["client"])},
        "/api/v1/devices/{token}": {"delete": _op(
            "Forget a push device token (204 whether or not it was known)", "clientJwt",
            {"204": {"description": "forgotten"}, **_errors(401, 404, 503)},
            params=[_path_param("token", {"type": "string", "minLength": 1, "maxLength": 512})], tags=["client"])},
        "/healthz": {"get": _op(
            "The process is alive", None,
            _ok(200, "alive", _obj({"ok": {"const": True}, "time": {"type": "number"}}), {"ok": True, "time": 1.5e9}),
            tags=["operations"])},
        "/readyz": {"get": _op(
            "The database and Redis answer (each checked with a 2.5 s bound, at once)", None,
            {**_ok(200, "ready", _obj({"ok": {"const": True}}), {"ok": True}),
             **_ok(503, "not ready: the dependencies that failed, with the error's class",
                   _obj({"ok": {"const": False}, "problems": _obj(
                       {"database": STRING, "redis": STRING}, [])}),
                   {"ok": False, "problems": {"database": "TimeoutError"}})},
            tags=["operations"])},
        "/metrics": {"get": _op(
            "Prometheus metrics", None,
            {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": STRING}}}},
            tags=["operations"])},
        "/api/v1/openapi.json": {"get": _op(
            "This document", None,
            _ok(200, "the OpenAPI 3.1 document", {"type": "object"}, None), tags=["operations"])},
        "/api/v1/asyncapi.json": {"get": _op(
            "The AsyncAPI 3.0 document of the Socket.IO events (SPEC §4)", None,
            _ok(200, "the AsyncAPI 3.0 document", {"type": "object"}, None), tags=["operations"])},
        "/": {"get": _op(
            "The browser client (`/?token=JWT` signs in)", None,
            {"200": {"description": "the page", "content": {"text/html": {"schema": STRING}}}},
            tags=["operations"])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Backstage HTTP API", "version": "1",
                 "description": "Chat and notifications (SPEC §3). Errors are {error: {code, message}} with the "
                                "status of SPEC §5; `timeout` (408) is an extension, see docs/api.md. The "
                                "Socket.IO protocol (SPEC §4) is described by /api/v1/asyncapi.json and docs/api.md."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "one of API_KEYS (server API)"},
                "clientJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "a client JWT: sub, exp, name?"},
            },
        },
    }


def document_route(build: Callable[[], dict[str, Any]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A GET handler serving `build()`'s document as JSON, encoded once on first use."""
    encoded = cache(lambda: orjson.dumps(build()))

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=encoded(), content_type="application/json", headers={"Cache-Control": "no-cache"})

    return handler


handler = document_route(build)
