"""Reactions: which strings are an emoji, the `reactions` of messages for one reader, and the
coalescing of `reaction` events (docs/api.md, "Reactions").

The rows live in the `reactions` table (chat/models.py `Reaction`, SQL in chat/storage.py);
`ChatService.react` writes them. This module holds what is reactions-only machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import regex
from sqlalchemy.ext.asyncio import AsyncConnection

from chat import storage
from chat.emitslots import LocalSlots, SlotCoalescer, Slots
from chat.errors import Invalid

log = logging.getLogger(__name__)

MAX_PER_MESSAGE = 20  # distinct emoji on one message
MAX_PER_USER = 20  # emoji of one user on one message
MAX_EMOJI_CHARS = 32  # longer than any emoji sequence (10 code points) and any :name: below
DEFAULT_REACTORS, MAX_REACTORS = 25, 100  # users listed per emoji by GET .../reactions

# `:name:` reactions that are not Unicode emoji (the platform's own; the page draws them).
SHORTCODES = frozenset({
    ":plus1:", ":minus1:", ":heart:", ":laugh:", ":wow:", ":sad:", ":angry:", ":tada:",
    ":fire:", ":clap:", ":eyes:", ":pray:", ":100:", ":rocket:", ":star:", ":check:",
})

_ONE_GRAPHEME = regex.compile(r"\X")


def check_emoji(value: Any) -> str:
    """The reaction key of `value`: one of SHORTCODES as given, or one Unicode emoji (one
    extended grapheme cluster that the `emoji` package knows as an emoji, not a lone component
    such as a skin tone) in its fully-qualified form, so "❤" and "❤️" are one reaction."""
    if not isinstance(value, str):
        raise Invalid("emoji must be a string")
    if not value or len(value) > MAX_EMOJI_CHARS:
        raise Invalid(f"emoji must be 1-{MAX_EMOJI_CHARS} characters")
    if len(value) > 2 and value.startswith(":") and value.endswith(":"):
        if value in SHORTCODES:
            return value
        raise Invalid("emoji :name: must be one of " + " ".join(sorted(SHORTCODES)))
    import emoji as emoji_data  # its tables cost ~0.15 s of CPU: loaded by the first reaction, not at start

    if _ONE_GRAPHEME.fullmatch(value) is None or not emoji_data.is_emoji(value):
        raise Invalid("emoji must be one Unicode emoji or a :name: of the list in docs/api.md")
    normal = str(emoji_data.emojize(emoji_data.demojize(value)))
    data = emoji_data.EMOJI_DATA.get(normal)
    if data is None or data.get("status") != emoji_data.STATUS["fully_qualified"]:
        raise Invalid("emoji must be one Unicode emoji, not a component of one")
    return normal


async def attach_reactions(conn: AsyncConnection, messages: list[dict[str, Any]],
                           reader_id: str) -> list[dict[str, Any]]:
    """Copies of the message wire dicts with `reactions: [{emoji, count, me}]`, `me` for
    `reader_id` (one query for the whole list); the dicts given are left as they are, so they
    may be shared (a cache of recent messages). A deleted message shows no reactions: `[]`."""
    ids = [int(m["id"]) for m in messages if not m.get("deleted")]
    found = await storage.reaction_summaries(conn, ids, reader_id) if ids else {}
    return [{**m, "reactions": [] if m.get("deleted") else found.get(int(m["id"]), [])} for m in messages]


Emit = Callable[[dict[str, Any]], Awaitable[None]]
Recount = Callable[[int], Awaitable[list[dict[str, Any]]]]

INTERVAL_S = 0.2  # at most 5 `reaction` events per message per second (cluster-wide with Redis)


class ReactionCoalescer:
    """At most one `reaction` event per message per `interval_s`, cluster-wide when the
    processes share Redis (`RedisSlots`), else per process (chat/emitslots.py).

    The first change of a quiet message goes out at once (its counts are those of its commit).
    Changes while the message's slot is taken are held (the newest is kept); when it frees, the
    process that wins it sends its newest change with the message's counts read again from the
    database, so the last event of a burst carries the final counts, whichever process
    committed them.
    """

    def __init__(self, emit: Emit, recount: Recount, interval_s: float = INTERVAL_S,
                 slots: Slots | None = None) -> None:
        self._emit = emit
        self._recount = recount
        self._events: SlotCoalescer[dict[str, Any]] = SlotCoalescer(
            "reaction", slots or LocalSlots(), interval_s, emit, self._send_latest)

    @property
    def interval_s(self) -> float:
        return self._events.interval_s

    async def note(self, event: dict[str, Any]) -> None:
        """A committed change; sent before this returns when the message's slot was free."""
        await self._events.note(int(event["message_id"]), event)

    async def _send_latest(self, mid: int, event: dict[str, Any]) -> None:
        try:
            counts = await self._recount(mid)
            event = {**event, "reactions": counts,
                     "count": next((c["count"] for c in counts if c["emoji"] == event["emoji"]), 0)}
        except Exception as exc:  # nothing sent: the coalescer tries again a window later
            log.warning("reaction recount failed: %s", type(exc).__name__)
            raise
        await self._emit(event)

    async def close(self) -> None:
        """At shutdown: drop what is held (the sockets are closing), wait for sends in flight."""
        await self._events.close()
