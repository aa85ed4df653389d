"""Inbound payload validation (`check_*`) and outbound wire shapes (`*_wire`).

Validators take whatever JSON arrived (any type) and either return typed values or raise
Invalid with a message that names the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chat.errors import Invalid, NotFound
from chat.models import Conversation, Message

CLIENT_MSG_ID_RE = re.compile(r"^[\x21-\x7e]{1,64}\Z")  # printable ASCII, no spaces
MAX_PAGE = 100
CANONICAL_ID_RE = re.compile(r"^(?:0|[1-9][0-9]{0,17})\Z")
EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")  # the platform's id of a room
DEFAULT_PAGE = 50


def check_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise Invalid("payload must be a JSON object")
    return data


def check_str(data: dict[str, Any], field: str, *, max_len: int = 200, required: bool = True,
              strip: bool = True) -> str | None:
    value = data.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{field} must be a string")
    if strip:
        value = value.strip()
    if not value:
        raise Invalid(f"{field} must not be empty")
    if len(value) > max_len:
        raise Invalid(f"{field} is longer than {max_len} characters")
    return value


def check_int(data: dict[str, Any], field: str, *, minimum: int = 0, maximum: int = 2**53,
              required: bool = False) -> int | None:
    value = data.get(field)
    if value is None:
        if required:
            raise Invalid(f"{field} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{field} must be an integer")
    if not minimum <= value <= maximum:
        raise Invalid(f"{field} must be between {minimum} and {maximum}")
    return value


def check_bool(data: dict[str, Any], field: str) -> bool:
    value = data.get(field)
    if not isinstance(value, bool):
        raise Invalid(f"{field} must be true or false")
    return value


def check_body(data: dict[str, Any], max_chars: int, *, allow_empty: bool = False) -> str:
    """`allow_empty`: a message with photos may have no text (then `body` may also be absent)."""
    body = data.get("body", "" if allow_empty else None)
    if not isinstance(body, str):
        raise Invalid("body must be a string")
    body = body.strip()
    if not body and not allow_empty:
        raise Invalid("body must not be empty")
    if len(body) > max_chars:
        raise Invalid(f"body is longer than {max_chars} characters")
    return body


def check_client_msg_id(data: dict[str, Any]) -> str:
    value = data.get("client_msg_id")
    if not isinstance(value, str) or not CLIENT_MSG_ID_RE.match(value):
        raise Invalid("client_msg_id must be 1-64 printable characters without spaces")
    return value


def check_attachment_ids(data: dict[str, Any], max_count: int = 4) -> list[int]:
    """`attachments`: up to max_count distinct upload ids (POST /api/v1/uploads), or absent."""
    value = data.get("attachments")
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid("attachments must be a list of attachment ids")
    if len(value) > max_count:
        raise Invalid(f"at most {max_count} attachments per message")
    ids = [parse_int_id(v, "attachment") for v in value]
    if len(set(ids)) != len(ids):
        raise Invalid("attachments lists an id twice")
    return ids


def parse_int_id(value: Any, what: str = "conversation") -> int:
    """Our integer primary keys travel as strings. Anything that names nothing is not_found;
    a value of the wrong JSON type is invalid."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid(f"{what}_id must be a string")
    text = str(value)
    # Only the canonical form names an id: not "01", " 1", "1\n", "²" or "١" (str.isdigit() takes those).
    if not CANONICAL_ID_RE.match(text):
        raise NotFound(f"no such {what}")
    return int(text)


def check_conversation_id(data: dict[str, Any]) -> int:
    if "conversation_id" not in data:
        raise Invalid("conversation_id is required")
    return parse_int_id(data["conversation_id"], "conversation")


def check_message_id(data: dict[str, Any]) -> int:
    if "message_id" not in data:
        raise Invalid("message_id is required")
    return parse_int_id(data["message_id"], "message")


@dataclass(frozen=True)
class PageQuery:
    before_seq: int | None
    after_seq: int | None
    limit: int


def check_page(data: dict[str, Any]) -> PageQuery:
    before = check_int(data, "before_seq", minimum=0)
    after = check_int(data, "after_seq", minimum=0)
    limit = check_int(data, "limit", minimum=1, maximum=MAX_PAGE)
    return PageQuery(before, after, DEFAULT_PAGE if limit is None else limit)


# ---------------------------------------------------------------- wire shapes


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_wire_columns(mid: int, conversation_id: int, seq: int, sender_id: str, sender_name: str, body: str,
                 client_msg_id: str, created_at: datetime, edited_at: datetime | None,
                 deleted: bool, attachments: list[dict[str, Any]] | None = None, *,
                 thread_id: int | None = None, thread: dict[str, Any] | None = None,
                 mentions: Sequence[str] = ()) -> dict[str, Any]:
    """A message's wire form from column values (the send and join paths have no ORM object).
    `reactions` is empty here: reads fill it per reader (chat/reactions.py attach_reactions).
    `attachments`: photo wire forms (chat/attachments.py), filled in by the caller's read path.
    `thread_id` (a reply's root) and `thread` (a root's summary): chat/threads.py.
    `mentions`: the mentioned user ids (chat/mentions.py; `decode_mentions` of the stored column)."""
    return {
        "id": str(mid),
        "conversation_id": str(conversation_id),
        "seq": seq,
        "sender": {"id": sender_id, "name": sender_name},
        "body": "" if deleted else body,
        "client_msg_id": client_msg_id,
        "created_at": iso(created_at),
        "edited_at": iso(edited_at),
        "deleted": bool(deleted),
        "attachments": [] if deleted or attachments is None else attachments,
        "reactions": [],
        "thread_id": None if thread_id is None else str(thread_id),
        "thread": thread,
        "mentions": [] if deleted else list(mentions),
    }


def message_wire(m: Message, sender_name: str) -> dict[str, Any]:
    from chat.threads import fields_of

    return message_wire_columns(m.id, m.conversation_id, m.seq, m.sender_id, sender_name, m.body, m.client_msg_id,
                                m.created_at, m.edited_at, m.deleted, **fields_of(m),
                                mentions=decode_mentions(m.mentions))


def encode_mentions(mentions: Sequence[str]) -> str | None:
    """The `messages.mentions` column of a message mentioning these user ids: NULL when none."""
    return json.dumps(list(mentions), separators=(",", ":")) if mentions else None


def decode_mentions(stored: str | None) -> list[str]:
    """The `messages.mentions` column (a JSON list of user ids, NULL when none) as a list."""
    return [str(u) for u in json.loads(stored)] if stored else []


def conversation_wire(c: Conversation, members: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "id": str(c.id),
        "kind": c.kind,
        "creator_id": c.creator_id,
        "name": c.name,
        "min_tier_cents": c.min_tier_cents,
        "post_policy": c.post_policy,
        # chat spaces (chat/spaces.py, docs/api.md)
        "topic": c.topic or "",
        "emoji": c.emoji,
        "archived": c.archived_at is not None,
        "guidelines": c.guidelines or "",
        "guidelines_version": c.guidelines_version or 0,
    }
    if members is not None:
        wire["members"] = members
    return wire
