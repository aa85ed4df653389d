"""Reactions: which strings are an emoji, the `reactions` of messages for one reader, and the
coalescing of `reaction` events (docs/api.md, "Reactions").

The rows live in the `reactions` table (chat/models.py `Reaction`, SQL in chat/storage.py);
`ChatService.react` writes them. This module holds what is reactions-only machinery.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import emoji as emoji_data
import regex
from sqlalchemy.ext.asyncio import AsyncConnection

from chat import storage
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

_FULLY_QUALIFIED = emoji_data.STATUS["fully_qualified"]
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
    if _ONE_GRAPHEME.fullmatch(value) is None or not emoji_data.is_emoji(value):
        raise Invalid("emoji must be one Unicode emoji or a :name: of the list in docs/api.md")
    normal = str(emoji_data.emojize(emoji_data.demojize(value)))
    data = emoji_data.EMOJI_DATA.get(normal)
    if data is None or data.get("status") != _FULLY_QUALIFIED:
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


class ReactionCoalescer:
    """At most one `reaction` event per message per `interval_s` from this process.

    The first change of a quiet message goes out at once (its counts are those of its
    commit). Changes within the interval after an event are held: only the newest is kept,
    and at the interval's end (trailing edge) it goes out with the message's counts read
    again from the database, so the last event of a burst always carries the final counts,
    whichever process committed them. Per process: N processes may each send up to one
    event per interval for the same message.
    """

    def __init__(self, emit: Emit, recount: Recount, interval_s: float = 0.2) -> None:
        self._emit = emit
        self._recount = recount
        self.interval_s = interval_s
        self._last: dict[int, float] = {}  # message id -> loop time of its last event
        self._pending: dict[int, dict[str, Any]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def note(self, event: dict[str, Any]) -> None:
        mid = int(event["message_id"])
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._last.get(mid, -math.inf)
        if mid not in self._timers and now - last >= self.interval_s:
            self._last[mid] = now
            self._forget_quiet(now)
            await self._emit(event)
            return
        self._pending[mid] = event
        if mid not in self._timers:
            self._timers[mid] = loop.call_later(max(0.0, last + self.interval_s - now), self._flush, mid)

    def _flush(self, mid: int) -> None:
        self._timers.pop(mid, None)
        event = self._pending.pop(mid, None)
        if event is None:
            return
        self._last[mid] = asyncio.get_running_loop().time()
        task = asyncio.get_running_loop().create_task(self._send_latest(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_latest(self, event: dict[str, Any]) -> None:
        try:
            counts = await self._recount(int(event["message_id"]))
            event = {**event, "reactions": counts,
                     "count": next((c["count"] for c in counts if c["emoji"] == event["emoji"]), 0)}
        except Exception as exc:  # then with the counts of its own commit
            log.warning("reaction recount failed: %s", type(exc).__name__)
        try:
            await self._emit(event)
        except Exception:
            log.warning("reaction event not delivered", exc_info=True)

    def _forget_quiet(self, now: float) -> None:
        if len(self._last) > 10_000:
            for mid in [m for m, t in self._last.items() if now - t >= self.interval_s and m not in self._timers]:
                del self._last[mid]

    async def close(self) -> None:
        """At shutdown: drop what is held (the sockets are closing), wait for sends in flight."""
        for mid in list(self._timers):
            self._timers.pop(mid).cancel()
            self._pending.pop(mid, None)
        if self._tasks:
            await asyncio.wait(set(self._tasks))
