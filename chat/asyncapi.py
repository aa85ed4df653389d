"""The AsyncAPI 3.0 document of the Socket.IO protocol (SPEC §4 and the extensions of
docs/api.md), served at /api/v1/asyncapi.json beside the OpenAPI document.

The application described is the server: client → server events are operations it
`receive`s, each with a `reply` (the Socket.IO acknowledgement); server → client events are
operations it `send`s. Every message's `name` is the Socket.IO event name and its `payload`
the event's one argument. The objects (Message, Conversation, Notification, ...) are the
OpenAPI document's, so both documents say the same. The connection handshake (`auth` of the
CONNECT packet, the data of a CONNECT_ERROR) is described too.

tests/test_asyncapi.py keeps it true: it drives real Socket.IO clients through every event
against a real cluster, records every packet both ways and validates each payload against this
document, failing on any event the document does not list.
"""

from __future__ import annotations

from typing import Any

from chat.moderation import MAX_PINS, MAX_REASON_CHARS, MAX_SLOW_MODE_S, MAX_TIMEOUT_MINUTES
from chat.openapi import (
    EMOJI,
    EXAMPLE_LOG_ENTRY,
    EXAMPLE_MESSAGE,
    EXAMPLE_NOTIFICATION,
    EXAMPLE_REPORT,
    EXAMPLE_ROOM,
    MENTIONS_PARAM,
    SCHEMAS,
    THREAD_ID,
    document_route,
)
from chat.reactions import MAX_PER_MESSAGE
from chat.reports import MAX_NOTE_CHARS, REASONS
from chat.schemas import MAX_PAGE

ID = {"type": "string", "description": "an id (digits), e.g. \"12\""}
USER_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
SEQ = {"type": "integer", "minimum": 0}
BODY = {"type": "string", "minLength": 1, "maxLength": 4000, "pattern": "\\S",
        "description": "1-4,000 characters after trimming (not only whitespace)"}
CHANNEL = {"type": "string", "pattern": "^(user|creator|room):[A-Za-z0-9_-]{1,64}$",
           "description": "user:{id} (own id only), creator:{id} (the creator and their active patrons), "
                          "room:{id} (members of the room); anything else is answered `forbidden`"}
INCLUDE_REPLIES = {"type": "boolean", "default": True,
                   "description": "(extension) false: leave thread replies out (docs/api.md \"Threads\")"}
SOCKET_ERROR_CODES = ["invalid", "unauthorized", "forbidden", "not_found", "conflict", "too_large", "rate_limited",
                      "unavailable", "internal"]
CONNECT_ERROR_CODES = ["unauthorized", "too_many_connections", "unavailable", "internal"]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, *, closed: bool = False,
         description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": list(properties) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


SOCKET_SCHEMAS: dict[str, Any] = {
    "AckError": _obj({"ok": {"const": False},
                      "error": _obj({"code": {"type": "string", "enum": SOCKET_ERROR_CODES}, "message": {"type": "string"},
                                     "until": {"type": "string", "description": "(extension) a timed-out member's "
                                                                               "send: when the timeout ends"},
                                     "retry_after": {"type": "integer", "minimum": 1,
                                                     "description": "(extension) seconds to wait (a timeout's "
                                                                    "forbidden, slow mode's rate_limited)"},
                                     "reason": {"type": "string", "enum": ["archived", "guidelines"],
                                                "description": "(extension) a chat space's forbidden: the room is "
                                                               "archived, or its guidelines are to be accepted"},
                                     "guidelines_version": {"type": "integer", "minimum": 0,
                                                            "description": "(extension) the room's current guidelines "
                                                                           "version (reason guidelines; a stale "
                                                                           "accept_guidelines' conflict)"}},
                                    ["code", "message"], closed=True)},
                     closed=True, description="any event's acknowledgement when it failed"),
    "ReadPosition": _obj({"user_id": USER_ID, "name": {"type": "string"}, "seq": SEQ}),
}


# ---------------------------------------------------------------- client -> server events
#
# name: (summary, payload schema, example, ack fields (besides ok), ack example)

CLIENT_EVENTS: dict[str, tuple[str, dict[str, Any], Any, dict[str, Any], Any]] = {
    "join": (
        "Enter a conversation: its recent messages (or those after `since_seq`), who is online, read positions",
        _obj({"conversation_id": ID, "since_seq": SEQ, "include_replies": INCLUDE_REPLIES}, ["conversation_id"]),
        {"conversation_id": "12", "since_seq": 6},
        {"conversation": _ref("Conversation"), "messages": {"type": "array", "items": _ref("Message")},
         "has_more": {"type": "boolean"}, "online": {"type": "array", "items": USER_ID},
         "unread_count": {"type": "integer", "minimum": 0}, "last_read_seq": SEQ,
         "read_positions": {"type": "array", "items": _ref("ReadPosition"), "maxItems": 100},
         "slow_mode_s": {"type": "integer", "minimum": 0,
                         "description": "(extension) the room's slow mode: one message per this many seconds; 0 off"},
         "pinned": {"type": "array", "items": _ref("Message"), "maxItems": MAX_PINS,
                    "description": "(extension) the room's pinned messages, oldest pin first"},
         "guidelines_accepted": {"type": "boolean",
                                 "description": "(extension) false until the joiner accepts the room's current "
                                                "guidelines (accept_guidelines); true when there are none, and "
                                                "for the creator and moderators"}},
        {"ok": True, "conversation": EXAMPLE_ROOM, "messages": [EXAMPLE_MESSAGE], "has_more": False,
         "online": ["alice", "cre"], "unread_count": 0, "last_read_seq": 7,
         "read_positions": [{"user_id": "cre", "name": "Cre", "seq": 7}], "slow_mode_s": 0, "pinned": [],
         "guidelines_accepted": False},
    ),
    "leave": ("Leave a conversation", _obj({"conversation_id": ID}), {"conversation_id": "12"}, {}, {"ok": True}),
    "send": (
        "Send a message (idempotent on the sender's client_msg_id; acked after commit)",
        {**_obj({"conversation_id": ID,
                 "body": {"type": "string", "maxLength": 4000,
                          "description": "1-4,000 characters after trimming; may be empty or absent when "
                                         "`attachments` are given"},
                 "client_msg_id": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,64}$"},
                 "attachments": {"type": "array", "maxItems": 4, "uniqueItems": True, "items": ID,
                                 "description": "ids of the sender's own unused uploads (POST /api/v1/uploads), "
                                                "each usable once"},
                 "thread_id": THREAD_ID,
                 "mentions": MENTIONS_PARAM},
                ["conversation_id", "client_msg_id"]),
         "anyOf": [{"required": ["body"], "properties": {"body": BODY}},
                   {"required": ["attachments"], "properties": {"attachments": {"minItems": 1}}}]},
        {"conversation_id": "12", "body": "hello @Cre", "client_msg_id": "c-1"},
        {"message": _ref("Message")}, {"ok": True, "message": {**EXAMPLE_MESSAGE, "body": "hello @Cre",
                                                             "mentions": ["cre"]}},
    ),
    "edit": (
        "Edit an own message",
        _obj({"message_id": ID, "body": BODY}),
        {"message_id": "99", "body": "hello again"},
        {"message": _ref("Message")}, {"ok": True, "message": {**EXAMPLE_MESSAGE, "body": "hello again",
                                                             "edited_at": "2026-01-02T03:05:00.000Z"}},
    ),
    "delete": (
        "Delete an own message (a room's creator: any in their room); it keeps its seq, body emptied",
        _obj({"message_id": ID}), {"message_id": "99"},
        {"message": _ref("Message")}, {"ok": True, "message": {**EXAMPLE_MESSAGE, "body": "", "deleted": True}},
    ),
    "history": (
        "A page of messages (of the conversation, or of one thread: `thread_id`), ascending by seq: "
        "the `limit` just after `after_seq`, else just before `before_seq`, else the last `limit`",
        _obj({"conversation_id": ID, "before_seq": SEQ,
              "after_seq": {**SEQ, "description": "(extension) the messages just after this seq, as over HTTP"},
              "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
              "thread_id": {**THREAD_ID, "description": "(extension) a page of this thread: its root, then its replies"},
              "include_replies": INCLUDE_REPLIES}, ["conversation_id"]),
        {"conversation_id": "12", "before_seq": 7, "limit": 50},
        {"messages": {"type": "array", "items": _ref("Message")}, "has_more": {"type": "boolean"}},
        {"ok": True, "messages": [EXAMPLE_MESSAGE], "has_more": True},
    ),
    "typing": ("Start or stop typing (after join)", _obj({"conversation_id": ID, "typing": {"type": "boolean"}}),
               {"conversation_id": "12", "typing": True}, {}, {"ok": True}),
    "read": (
        "Move the reader's position; a seq above the last is invalid, one below the position changes nothing",
        _obj({"conversation_id": ID, "seq": SEQ}), {"conversation_id": "12", "seq": 7},
        {"unread_count": {"type": "integer", "minimum": 0}}, {"ok": True, "unread_count": 0},
    ),
    "subscribe": ("Receive the channel's `event`s", _obj({"channel": CHANNEL}), {"channel": "creator:cre"},
                  {}, {"ok": True}),
    "unsubscribe": ("Stop receiving the channel's `event`s", _obj({"channel": CHANNEL}), {"channel": "creator:cre"},
                    {}, {"ok": True}),
    "refresh_token": (
        "(extension) Extend the socket's life with a newer token of the same user",
        _obj({"token": {"type": "string", "description": "a client JWT of the same user"}}),
        {"token": "eyJhbGciOi..."},
        {"expires_at": {"type": "string", "description": "ISO 8601 UTC: the new token's exp"}},
        {"ok": True, "expires_at": "2026-01-02T04:04:05.000Z"},
    ),
    "react": (
        "(extension) Add (on) or remove one reaction to a message, idempotently; members of the conversation only",
        _obj({"message_id": ID, "emoji": EMOJI, "on": {"type": "boolean"}, "conversation_id": ID},
             ["message_id", "emoji", "on"]),
        {"message_id": "99", "emoji": "\U0001f44d", "on": True},
        {"count": {"type": "integer", "minimum": 0, "description": "this emoji's count after the change"},
         "reactions": {"type": "array", "items": _ref("Reaction"), "maxItems": MAX_PER_MESSAGE}},
        {"ok": True, "count": 3, "reactions": [{"emoji": "\U0001f44d", "count": 3, "me": True}]},
    ),
    "moderator": (
        "(extension) The creator appoints (on) or removes a moderator of their rooms (docs/moderation.md)",
        _obj({"creator_id": USER_ID, "user_id": USER_ID, "on": {"type": "boolean"}}, ["user_id", "on"]),
        {"user_id": "mia", "on": True},
        {"creator_id": USER_ID, "user_id": USER_ID, "moderator": {"type": "boolean"}},
        {"ok": True, "creator_id": "cre", "user_id": "mia", "moderator": True},
    ),
    "timeout": (
        "(extension) The creator or a moderator times a member out of the creator's rooms (minutes 0: lift it)",
        _obj({"creator_id": USER_ID, "user_id": USER_ID,
              "minutes": {"type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_MINUTES},
              "reason": {"type": "string", "maxLength": MAX_REASON_CHARS}}, ["creator_id", "user_id", "minutes"]),
        {"creator_id": "cre", "user_id": "alice", "minutes": 10, "reason": "flooding"},
        {"creator_id": USER_ID, "user_id": USER_ID, "until": {"type": ["string", "null"]}},
        {"ok": True, "creator_id": "cre", "user_id": "alice", "until": "2026-01-02T03:14:05.678Z"},
    ),
    "block": (
        "(extension) The creator or a moderator blocks (on) or unblocks a member",
        _obj({"creator_id": USER_ID, "user_id": USER_ID, "on": {"type": "boolean"},
              "reason": {"type": "string", "maxLength": MAX_REASON_CHARS}}, ["creator_id", "user_id", "on"]),
        {"creator_id": "cre", "user_id": "alice", "on": True, "reason": "harassment"},
        {"creator_id": USER_ID, "user_id": USER_ID, "blocked": {"type": "boolean"}},
        {"ok": True, "creator_id": "cre", "user_id": "alice", "blocked": True},
    ),
    "slow_mode": (
        "(extension) The creator or a moderator sets a room's slow mode (seconds 0: off)",
        _obj({"conversation_id": ID, "seconds": {"type": "integer", "minimum": 0, "maximum": MAX_SLOW_MODE_S},
              "reason": {"type": "string", "maxLength": MAX_REASON_CHARS}}, ["conversation_id", "seconds"]),
        {"conversation_id": "12", "seconds": 30},
        {"conversation_id": ID, "seconds": {"type": "integer"}},
        {"ok": True, "conversation_id": "12", "seconds": 30},
    ),
    "pin": (
        "(extension) The creator or a moderator pins (on) or unpins a room message (at most 3 per room)",
        _obj({"message_id": ID, "on": {"type": "boolean"}}), {"message_id": "99", "on": True},
        {"conversation_id": ID, "message_ids": {"type": "array", "items": ID, "maxItems": MAX_PINS}},
        {"ok": True, "conversation_id": "12", "message_ids": ["99"]},
    ),
    "moderation_log": (
        "(extension) The creator's moderation log, newest first (the creator and moderators)",
        _obj({"creator_id": USER_ID, "before_id": ID,
              "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}}, []),
        {"creator_id": "cre", "limit": 20},
        {"entries": {"type": "array", "items": _ref("ModerationEntry")}, "next_cursor": {"type": ["string", "null"]}},
        {"ok": True, "entries": [EXAMPLE_LOG_ENTRY], "next_cursor": None},
    ),
    "report": (
        "(extension) Report a room message (not one's own); one report per member and message: a repeat answers "
        "the first (created false) and counts nothing (docs/moderation.md)",
        _obj({"message_id": ID, "reason": {"type": "string", "enum": list(REASONS)},
              "note": {"type": "string", "maxLength": MAX_NOTE_CHARS}}, ["message_id", "reason"]),
        {"message_id": "99", "reason": "spam", "note": "a bot"},
        {"report": _ref("Report"), "created": {"type": "boolean"}},
        {"ok": True, "report": EXAMPLE_REPORT, "created": True},
    ),
    "reports": (
        "(extension) The creator's reports, newest first, each with its message (the creator and moderators)",
        _obj({"creator_id": USER_ID, "status": {"type": "string", "enum": ["open", "resolved", "all"]},
              "conversation_id": ID, "before_id": ID,
              "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}}, []),
        {"creator_id": "cre", "status": "open"},
        {"reports": {"type": "array", "items": _ref("ReportListed")}, "next_cursor": {"type": ["string", "null"]}},
        {"ok": True, "reports": [{**EXAMPLE_REPORT, "message": EXAMPLE_MESSAGE, "open_reports": 1, "hidden": False}],
         "next_cursor": None},
    ),
    "review_report": (
        "(extension) The creator or a moderator reviews a reported message: dismiss (shown again if hidden) or "
        "remove (deleted); every open report of it is resolved",
        _obj({"message_id": ID, "action": {"type": "string", "enum": ["dismiss", "remove"]},
              "note": {"type": "string", "maxLength": MAX_NOTE_CHARS}}, ["message_id", "action"]),
        {"message_id": "99", "action": "dismiss"},
        {"message_id": ID, "conversation_id": ID, "action": {"type": "string"}, "by": {"type": ["string", "null"]},
         "resolved": {"type": "integer", "minimum": 0}, "message": _ref("Message")},
        {"ok": True, "message_id": "99", "conversation_id": "12", "action": "dismiss", "by": "mia", "resolved": 3,
         "message": EXAMPLE_MESSAGE},
    ),
    "block_user": (
        "(extension) Block (on) or unblock another user: their messages reach you as placeholders, and no "
        "direct message goes between you",
        _obj({"user_id": USER_ID, "on": {"type": "boolean"}}), {"user_id": "bob", "on": True},
        {"user_id": USER_ID, "blocked": {"type": "boolean"}}, {"ok": True, "user_id": "bob", "blocked": True},
    ),
    "blocks": (
        "(extension) The users you block, oldest block first",
        _obj({}, []), {},
        {"blocks": {"type": "array", "items": _ref("MemberBlock")}},
        {"ok": True, "blocks": [{"user_id": "bob", "blocked_at": "2026-01-02T03:04:05.678Z"}]},
    ),
    "accept_guidelines": (
        "(extension) Accept the room's current guidelines (version: its guidelines_version), before posting "
        "there; a stale version is a conflict carrying the current one",
        _obj({"conversation_id": ID, "version": {"type": "integer", "minimum": 0}}),
        {"conversation_id": "12", "version": 1},
        {"conversation_id": ID, "guidelines_version": {"type": "integer", "minimum": 0}},
        {"ok": True, "conversation_id": "12", "guidelines_version": 1},
    ),
}


# ---------------------------------------------------------------- server -> client events

CONVERSATION_USER = {"conversation_id": ID, "user_id": USER_ID}

SERVER_EVENTS: dict[str, tuple[str, dict[str, Any], Any]] = {
    "message": ("A new message, to every socket in the conversation (the sender's too)", _ref("Message"),
                EXAMPLE_MESSAGE),
    "message_updated": ("A message after edit or delete; a thread root whose `thread` summary changed (coalesced: "
                        "at most one per root per second, cluster-wide)", _ref("Message"),
                        {**EXAMPLE_MESSAGE, "body": "", "deleted": True}),
    "typing": ("Someone else started or stopped typing", _obj({**CONVERSATION_USER, "typing": {"type": "boolean"}},
                                                              closed=True),
               {"conversation_id": "12", "user_id": "cre", "typing": True}),
    "read": ("Someone else's read position moved", _obj({**CONVERSATION_USER, "seq": SEQ}, closed=True),
             {"conversation_id": "12", "user_id": "cre", "seq": 7}),
    "presence": ("A user's first socket in the cluster joined the conversation, or their last left it",
                 _obj({**CONVERSATION_USER, "online": {"type": "boolean"}}, closed=True),
                 {"conversation_id": "12", "user_id": "cre", "online": False}),
    "notification": ("A stored notification, to each of its user's sockets", _ref("Notification"),
                     EXAMPLE_NOTIFICATION),
    "event": ("An event from the server publish API, to the channel's subscribers",
              _obj({"channel": CHANNEL, "event": {"type": "string", "minLength": 1, "maxLength": 64},
                    "data": {"description": "any JSON value, as published"},
                    "published_at": {"type": "string", "description": "ISO 8601 UTC"}}, closed=True),
              {"channel": "creator:cre", "event": "live", "data": {"url": "https://example.com/live"},
               "published_at": "2026-01-02T03:04:05.678Z"}),
    "access_revoked": ("The user lost access to a conversation; the socket left it",
                       _obj({"conversation_id": ID}, closed=True), {"conversation_id": "12"}),
    "token_expired": ("(extension) The token's exp passed; the server disconnects the socket next",
                      _obj({"message": {"type": "string"}}, closed=True),
                      {"message": "the token expired; reconnect with a new one"}),
    "reaction": ("(extension) A message's reactions changed: the newest change and every emoji's count, "
                 "at most one per message per 200 ms, cluster-wide (the last one of a burst is final)",
                 _obj({"message_id": ID, "conversation_id": ID, "emoji": EMOJI, "user_id": USER_ID,
                       "on": {"type": "boolean"}, "count": {"type": "integer", "minimum": 0},
                       "reactions": {"type": "array", "maxItems": MAX_PER_MESSAGE, "items": _obj(
                           {"emoji": EMOJI, "count": {"type": "integer", "minimum": 1}}, closed=True)}}, closed=True),
                 {"message_id": "99", "conversation_id": "12", "emoji": "\U0001f44d", "user_id": "alice", "on": True,
                  "count": 3, "reactions": [{"emoji": "\U0001f44d", "count": 3}]}),
    "moderation": ("(extension) A moderation action about this user: moderator_added/removed, timeout (until "
                   "when), timeout_lifted, block (access_revoked follows for what was joined), unblock",
                   _obj({"action": {"type": "string", "enum": ["moderator_added", "moderator_removed", "timeout",
                                                               "timeout_lifted", "block", "unblock"]},
                         "creator_id": USER_ID, "until": {"type": ["string", "null"]}}, closed=True),
                   {"action": "timeout", "creator_id": "cre", "until": "2026-01-02T03:14:05.678Z"}),
    "pins": ("(extension) The room's pinned messages changed: their ids, oldest pin first",
             _obj({"conversation_id": ID, "message_ids": {"type": "array", "items": ID, "maxItems": MAX_PINS}},
                  closed=True),
             {"conversation_id": "12", "message_ids": ["99"]}),
    "slow_mode": ("(extension) The room's slow mode changed (to everyone in it)",
                  _obj({"conversation_id": ID, "seconds": {"type": "integer", "minimum": 0}}, closed=True),
                  {"conversation_id": "12", "seconds": 30}),
    "report_opened": ("(extension) A member reported a message of the creator's rooms (to the creator's and the "
                      "moderators' sockets)",
                      _obj({"report": _ref("Report"), "message": _ref("Message"),
                            "open_reports": {"type": "integer", "minimum": 1}, "hidden": {"type": "boolean"}},
                           closed=True),
                      {"report": EXAMPLE_REPORT, "message": EXAMPLE_MESSAGE, "open_reports": 1, "hidden": False}),
    "report_resolved": ("(extension) A reported message was reviewed (to the creator's and the moderators' sockets)",
                        _obj({"message_id": ID, "conversation_id": ID,
                              "action": {"type": "string", "enum": ["dismiss", "remove"]},
                              "by": {"type": ["string", "null"]}, "resolved": {"type": "integer", "minimum": 1}},
                             closed=True),
                        {"message_id": "99", "conversation_id": "12", "action": "dismiss", "by": "mia", "resolved": 3}),
    "message_hidden": ("(extension) Reports hid a message (hidden true: show its placeholder, unless you moderate "
                       "the room) or a review showed it again (hidden false, with the message)",
                       _obj({"conversation_id": ID, "message_id": ID, "seq": SEQ, "hidden": {"type": "boolean"},
                             "message": _ref("Message")}, ["conversation_id", "message_id", "seq", "hidden"],
                            closed=True),
                       {"conversation_id": "12", "message_id": "99", "seq": 7, "hidden": True}),
    "user_blocked": ("(extension) You blocked or unblocked a user (to each of your sockets)",
                     _obj({"user_id": USER_ID, "blocked": {"type": "boolean"}}, closed=True),
                     {"user_id": "bob", "blocked": True}),
    "conversation_updated": ("(extension) A room changed (name, topic, emoji, tier, post policy, archived, "
                             "guidelines): the conversation as it is now, to every socket in it",
                             _ref("Conversation"), EXAMPLE_ROOM),
    "conversation_deleted": ("(extension) The room was deleted with its history; access_revoked follows",
                             _obj({"conversation_id": ID}, closed=True), {"conversation_id": "12"}),
    "resync": ("(extension) The relay was interrupted: join again with since_seq if behind last_seq",
               _obj({"conversation_id": ID, "last_seq": SEQ}, ["conversation_id"], closed=True),
               {"conversation_id": "12", "last_seq": 42}),
}

# The CONNECT packet's `auth` (io(url, {auth: {token}})) and a CONNECT_ERROR's data.
CONNECT_AUTH = _obj({"token": {"type": "string", "description": "a client JWT: sub, exp, name?"}})
CONNECT_ERROR = _obj({"message": {"type": "string"},
                      "data": _obj({"code": {"type": "string", "enum": CONNECT_ERROR_CODES},
                                    "message": {"type": "string"}}, closed=True)}, closed=True)


def ack_schema(fields: dict[str, Any]) -> dict[str, Any]:
    ok = _obj({"ok": {"const": True}, **fields}, closed=True)
    return {"oneOf": [ok, _ref("AckError")]}


def _message(name: str, summary: str, payload: dict[str, Any], example: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "title": name, "summary": summary, "contentType": "application/json",
            "payload": payload, "examples": [{"name": "example", "payload": example}], **extra}


def build() -> dict[str, Any]:
    messages: dict[str, Any] = {}
    socket_messages: dict[str, Any] = {}
    ack_messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    messages["connect"] = _message("connect", "The CONNECT packet's auth (Socket.IO handshake to namespace /)",
                                   CONNECT_AUTH, {"token": "eyJhbGciOi..."}, **{"x-socketio-packet": "CONNECT"})
    messages["connect_error"] = _message(
        "connect_error", "A refused connection (CONNECT_ERROR): socket.io-client's err.message and err.data",
        CONNECT_ERROR, {"message": "invalid token", "data": {"code": "unauthorized", "message": "invalid token"}},
        **{"x-socketio-packet": "CONNECT_ERROR"})
    socket_messages["connect"] = {"$ref": "#/components/messages/connect"}
    socket_messages["connect_error"] = {"$ref": "#/components/messages/connect_error"}
    operations["connect"] = {
        "action": "receive", "channel": {"$ref": "#/channels/socket"},
        "summary": "Connect to namespace / with a client JWT",
        "messages": [{"$ref": "#/channels/socket/messages/connect"}],
        "reply": {"channel": {"$ref": "#/channels/socket"},
                  "messages": [{"$ref": "#/channels/socket/messages/connect_error"}]},
    }

    for name, (summary, payload, example, ack_fields, ack_example) in CLIENT_EVENTS.items():
        key = f"client.{name}"
        messages[key] = _message(name, summary, payload, example)
        ack = _message(name, f"The acknowledgement of `{name}`", ack_schema(ack_fields), ack_example,
                       **{"x-socketio-packet": "ACK"})
        ack.pop("name")  # an ACK packet carries no event name
        ack["title"] = f"{name} ack"
        messages[f"{key}.ack"] = ack
        socket_messages[key] = {"$ref": f"#/components/messages/{key}"}
        ack_messages[key] = {"$ref": f"#/components/messages/{key}.ack"}
        operations[key] = {
            "action": "receive", "channel": {"$ref": "#/channels/socket"}, "summary": summary,
            "messages": [{"$ref": f"#/channels/socket/messages/{key}"}],
            "reply": {"channel": {"$ref": "#/channels/acknowledgements"},
                      "messages": [{"$ref": f"#/channels/acknowledgements/messages/{key}"}]},
        }
    for name, (summary, payload, example) in SERVER_EVENTS.items():
        key = f"server.{name}"
        messages[key] = _message(name, summary, payload, example)
        socket_messages[key] = {"$ref": f"#/components/messages/{key}"}
        operations[key] = {
            "action": "send", "channel": {"$ref": "#/channels/socket"}, "summary": summary,
            "messages": [{"$ref": f"#/channels/socket/messages/{key}"}],
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Backstage Socket.IO protocol", "version": "1",
            "description": "Live chat, presence, typing, read receipts, notifications and channel events over "
                           "Socket.IO (SPEC §4; extensions marked in docs/api.md). Each message's `name` is the "
                           "Socket.IO event name and its payload the event's one argument. Every client event takes "
                           "an acknowledgement callback, answered `{ok: true, ...}` or `{ok: false, error: {code, "
                           "message}}`. The HTTP API is described by /api/v1/openapi.json.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "backstage": {
                "host": "localhost:8080", "protocol": "ws", "pathname": "/socket.io/",
                "description": "Socket.IO v5 over Engine.IO v4 (websocket, or long-polling with sticky sessions), "
                               "namespace `/`; the host is the server's HOST:PORT (wss behind TLS).",
                "security": [{"$ref": "#/components/securitySchemes/clientJwt"}],
            },
        },
        "channels": {
            "socket": {
                "address": "/", "title": "Namespace /",
                "description": "The one Socket.IO namespace: every event in both directions.",
                "messages": socket_messages,
            },
            "acknowledgements": {
                "address": None, "title": "Acknowledgements",
                "description": "The Socket.IO ACK packet answering the client event that carried an ack id.",
                "messages": ack_messages,
            },
        },
        "operations": operations,
        "components": {
            "schemas": {**SCHEMAS, **SOCKET_SCHEMAS},
            "messages": messages,
            "securitySchemes": {
                "clientJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "a client JWT (sub, exp, name?), sent as the CONNECT packet's auth "
                                             "`{token}` (io(url, {auth: {token}})), not as an HTTP header"},
            },
        },
    }


handler = document_route(build)

