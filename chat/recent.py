"""What `join` answers from memory: a per-process cache of each active conversation's recent
messages (wire form) and read positions (issue 10.1, docs/performance.md "Connect and join").

A conversation is *active* on a process while the process has sockets in it: it then hears
every `message`, `message_updated` and `read` of the conversation, from its own sockets
(`Delivery.to_conversation`) and from the other processes (the Redis relay). Those events keep
the entry current; nothing else does, so an entry is dropped whenever that stream may have a
hole: when the conversation's last local socket left `room_linger_s` ago (chat/delivery.py: the
relay unsubscribes then; a socket back within it finds the entry current), when the relay
recovers from trouble (`resync`), when a user is renamed (their name is in the messages), and
when the conversation falls out of the LRU bound.

An entry is filled by one Core query (the last `RECENT_MESSAGES` messages and the furthest
read positions) run after the joiner entered the room, so nothing committed after the query
is missed: it arrives as an event, to the entry and to the socket. Events that arrive while
the query runs are applied on top of its rows (a message's newer state wins: deleted, then the
later `edited_at`), so whichever of the two saw a change first, the entry ends with it.
Joins that find a fill in flight wait for it instead of querying too.

The answer is served from the entry only when the entry provably holds it:

* every seq from its lowest to its highest is present (a message relayed out of order leaves
  a hole until it arrives), and its highest seq is at least the conversation's `last_seq` as
  read by the join's access query (a message committed before the join and not yet relayed
  here means a database read);
* without `since_seq`: the last `JOIN_PAGE` messages, `has_more` when older ones exist;
* with `since_seq`: when every message after it is in the entry (else the database answers;
  the entry holds at most `RECENT_MESSAGES` ≤ 100, so `has_more` is false).

Anything new that changes what a message or a read position shows in the join answer must
reach this cache too: delivered as `message_updated` (the message's whole new wire form), or
by dropping the conversation's entry (`RecentMessages.drop`); else joins answer it stale.

Bare messages: the entry also knows which of its messages have no reactions and no photos
(`bare`), so that a join whose messages are all bare answers them without reading reactions
and photos (a reconnect storm's rejoins with `since_seq`: each read them for its few missed
messages). A message is bare from the fill's own read of its reactions and photos (`bare`
given to `finish_fill`), or from its `message` event (a new message has no reactions; its
photos are in the event). It stops being bare with any `reaction` event for it; the message
ids of `reaction` events heard while the entry exists are kept (`reacted`) so that a
reaction event heard before the fill's rows were installed, or before a `message` event
relayed late, still counts. A reaction committed after the fill read its reactions sends its
event afterwards, to this process (the entry exists, so the process hears the conversation)
and to the sockets already in the room, joins included: they see it as the event, as they
would after a read. Photos never change once a message is sent. Past `MAX_REACTED` reacted
ids the entry stops knowing bare messages (`bare` None: every join reads them).

Read positions (the others' furthest `last_read_seq`, `POSITIONS_LIMIT` of them) move with
`read` events (the reader) and `message` events (the writer moves the sender's position to
the message; a sender not held yet is added, with the name the message shows, when the entry
holds every reader); any other event for a user the entry does not hold (a `read` names no
one, or the reader may enter a top the entry holds only part of) drops the positions, and
the next join reads them again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

RECENT_MESSAGES = 50  # messages kept per conversation (the join page; SPEC: the last 50)
JOIN_PAGE = 50
SINCE_PAGE = 100  # SPEC: up to 100 after since_seq
POSITIONS_LIMIT = 100  # the join answer's read_positions: the 100 furthest readers but the joiner
MAX_CONVERSATIONS = 2_000  # entries kept per process (LRU)
MAX_REACTED = 1_000  # reacted message ids kept per entry before it stops knowing bare messages

Wire = dict[str, Any]

JOIN_PAGES = Counter("backstage_join_pages_total",
                     "Join answers' messages and read positions, by where they came from", ["source"])
JOIN_EXTRAS = Counter("backstage_join_extras_total",
                      "Join answers' reactions and photos of their messages, by where they came from "
                      "(cache: all known bare)", ["source"])


def _version(wire: Wire) -> tuple[bool, str]:
    """Later states of one message compare greater: a deletion is final, then edits by time."""
    return bool(wire.get("deleted")), str(wire.get("edited_at") or "")


def _replies(wire: Wire | None) -> int:
    thread = wire.get("thread") if wire is not None else None
    return int(thread.get("reply_count") or 0) if isinstance(thread, dict) else 0


def _merged(old: Wire | None, wire: Wire) -> Wire | None:
    """What to keep of a message seen as `old` and now as `wire` (None: keep `old`): the later
    state (_version), with the thread summary of the most replies (it only grows; thread roots'
    `message_updated` from different processes may arrive out of order, chat/threads.py)."""
    if old is None:
        return wire
    keep, other = (wire, old) if _version(wire) >= _version(old) else (old, wire)
    if _replies(other) > _replies(keep):
        return {**keep, "thread": other["thread"]}
    return None if keep is old else keep


@dataclass
class Page:
    messages: list[Wire]
    has_more: bool


class _Entry:
    __slots__ = ("messages", "lo", "hi", "older", "positions", "positions_complete", "filled", "pending_positions",
                 "bare", "reacted")

    def __init__(self) -> None:
        self.messages: dict[int, Wire] = {}
        self.lo = 1  # lowest seq held (lo > hi: none held)
        self.hi = 0  # highest seq heard of
        self.older = False  # messages exist below lo
        # user_id -> (name, last_read_seq); None: not known (read them again)
        self.positions: dict[str, tuple[str, int]] | None = None
        self.positions_complete = False  # every reader with a position > 0 is in `positions`
        # Set once the fill's rows are in; until then events only gather.
        self.filled: asyncio.Future[bool] | None = None
        self.pending_positions: list[tuple[str, int, str | None]] = []
        # Message ids without reactions and photos (None: not known any more, see the module
        # docstring), and those a `reaction` event was heard for.
        self.bare: set[int] | None = set()
        self.reacted: set[int] = set()

    # ------------------------------------------------------------ events
    def react(self, message_id: int) -> None:
        """A `reaction` event for the message: it is not bare (now or when it arrives)."""
        if self.bare is None:
            return
        self.bare.discard(message_id)
        self.reacted.add(message_id)
        if len(self.reacted) > MAX_REACTED:
            self.bare = None
            self.reacted = set()

    def _note_bare(self, wire: Wire) -> None:
        """A new message's event: bare unless it has photos (or a reaction event came first)."""
        if self.bare is None or wire.get("deleted") or wire.get("attachments") or wire.get("reactions"):
            return
        try:
            mid = int(wire["id"])
        except (KeyError, TypeError, ValueError):
            return
        if mid not in self.reacted:
            self.bare.add(mid)

    def put(self, wire: Wire, *, created: bool) -> None:
        seq = wire.get("seq")
        if not isinstance(seq, int):
            return
        if created:
            sender = wire.get("sender")
            if isinstance(sender, dict):
                name = sender.get("name")
                self.move_position(str(sender.get("id")), seq, name if isinstance(name, str) else None)
            self._note_bare(wire)
        merged = _merged(self.messages.get(seq), wire)
        if self.filled is not None:  # gathering: merged with the query's rows by `fill`
            if merged is not None:
                self.messages[seq] = merged
            return
        if seq < self.lo:
            return  # below what is kept
        if merged is not None:
            self.messages[seq] = merged
        if seq > self.hi:
            self.hi = seq
        self._trim()

    def move_position(self, user_id: str, seq: int, name: str | None = None) -> None:
        """`user_id` has read up to `seq`; `name` when the event says it (a message's sender)."""
        if self.filled is not None:
            self.pending_positions.append((user_id, seq, name))
            return
        if self.positions is None:
            return
        known = self.positions.get(user_id)
        if known is None:
            if name is not None and self.positions_complete:
                self.positions[user_id] = (name, seq)  # every other reader is held: one more
            else:
                self.positions = None  # a name it does not know, or maybe a new one in the top: read again
            return
        if seq > known[1]:
            self.positions[user_id] = (known[0], seq)

    def _trim(self) -> None:
        if len(self.messages) <= RECENT_MESSAGES or self.filled is not None:
            return
        for seq in sorted(self.messages)[:len(self.messages) - RECENT_MESSAGES]:
            wire = self.messages.pop(seq)
            if self.bare:
                self.bare.discard(_id_of(wire))
        self.older = True
        self.lo = min(self.messages)

    # ------------------------------------------------------------ the fill
    def fill(self, rows: list[Wire], older: bool, positions: list[tuple[str, str, int]],
             bare: Iterable[int] = ()) -> None:
        """Install the query's rows (ascending), then the events gathered meanwhile on top;
        `bare`: the ids of rows the query found without reactions and photos."""
        gathered = self.messages
        if self.bare is not None:
            self.bare.update(mid for mid in bare if mid not in self.reacted)
        self.messages = {int(w["seq"]): w for w in rows}
        self.older = older
        # Without older messages the entry holds the conversation from its first seq (1).
        self.lo = int(rows[0]["seq"]) if rows and older else 1
        self.hi = int(rows[-1]["seq"]) if rows else 0
        self.filled = None
        for seq in sorted(gathered):
            self.put(gathered[seq], created=False)
        self.positions = {uid: (name, seq) for uid, name, seq in positions}
        self.positions_complete = len(positions) <= POSITIONS_LIMIT
        for user_id, seq, name in self.pending_positions:
            self.move_position(user_id, seq, name)
        self.pending_positions = []
        self._trim()

    # ------------------------------------------------------------ answers
    def all_bare(self, message_ids: Iterable[int]) -> bool:
        """Whether every one of these messages is known to have no reactions and no photos."""
        bare = self.bare
        return self.filled is None and bare is not None and all(mid in bare for mid in message_ids)

    def complete_to(self, last_seq: int) -> bool:
        return self.filled is None and self.hi >= last_seq and len(self.messages) == max(0, self.hi - self.lo + 1)

    def page(self, since_seq: int | None) -> Page | None:
        seqs = sorted(self.messages)
        if since_seq is None:
            if len(seqs) < JOIN_PAGE and self.older:
                return None  # fewer kept than the page, and older ones exist
            take = seqs[-JOIN_PAGE:]
            return Page([self.messages[s] for s in take], self.older or len(seqs) > JOIN_PAGE)
        if since_seq < self.lo - 1 and self.older:
            return None  # some messages after since_seq are not held
        take = [s for s in seqs if s > since_seq][:SINCE_PAGE]
        return Page([self.messages[s] for s in take], False)

    def read_positions(self, exclude: str) -> list[Wire] | None:
        if self.positions is None:
            return None
        ranked = sorted(((seq, uid, name) for uid, (name, seq) in self.positions.items()
                         if uid != exclude and seq > 0), key=lambda t: (-t[0], t[1]))  # ties: as the query
        if len(ranked) < POSITIONS_LIMIT and not self.positions_complete:
            return None
        return [{"user_id": uid, "name": name, "seq": seq} for seq, uid, name in ranked[:POSITIONS_LIMIT]]


def _id_of(wire: Wire) -> int:
    try:
        return int(wire["id"])
    except (KeyError, TypeError, ValueError):
        return -1


class RecentMessages:
    """The per-process cache; synchronous except for waiting on a fill in flight."""

    def __init__(self, max_conversations: int = MAX_CONVERSATIONS) -> None:
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._max = max_conversations

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------ kept current
    def on_event(self, conversation_id: int, event: str, data: Any) -> None:
        """A conversation event as it is delivered on this process (local or relayed)."""
        entry = self._entries.get(conversation_id)
        if entry is None or not isinstance(data, dict):
            return
        if event == "message":
            entry.put(data, created=True)
        elif event == "message_updated":
            entry.put(data, created=False)
        elif event == "read":
            seq = data.get("seq")
            if isinstance(seq, int):
                entry.move_position(str(data.get("user_id")), seq)
        elif event == "reaction":
            try:
                entry.react(int(data["message_id"]))
            except (KeyError, TypeError, ValueError):
                entry.bare = None  # a reaction for a message it cannot tell: none is known bare

    def all_bare(self, conversation_id: int, message_ids: Iterable[int]) -> bool:
        """Whether the conversation's entry knows every one of these messages to have no
        reactions and no photos (False without an entry, or while it is being filled)."""
        entry = self._entries.get(conversation_id)
        return entry is not None and entry.all_bare(message_ids)

    def drop(self, conversation_id: int) -> None:
        entry = self._entries.pop(conversation_id, None)
        if entry is not None and entry.filled is not None and not entry.filled.done():
            entry.filled.set_result(False)

    def clear(self) -> None:
        for cid in list(self._entries):
            self.drop(cid)

    def drop_user(self, user_id: str) -> None:
        """A user's name changed: drop every entry that shows it."""
        for cid, entry in list(self._entries.items()):
            if entry.filled is not None or (entry.positions is not None and user_id in entry.positions) or any(
                    (w.get("sender") or {}).get("id") == user_id for w in entry.messages.values()):
                self.drop(cid)

    # ------------------------------------------------------------ join
    def entry(self, conversation_id: int) -> _Entry | None:
        entry = self._entries.get(conversation_id)
        if entry is not None:
            self._entries.move_to_end(conversation_id)
        return entry

    async def ready(self, conversation_id: int) -> _Entry | None:
        """The entry, after waiting for its fill if one is in flight (None: none, or it failed)."""
        entry = self.entry(conversation_id)
        if entry is not None and entry.filled is not None:
            if not await asyncio.shield(entry.filled):
                return None
            entry = self._entries.get(conversation_id)
        return entry

    def begin_fill(self, conversation_id: int) -> _Entry:
        """A new entry gathering events until `finish_fill`; replaces an unusable one."""
        self.drop(conversation_id)
        entry = _Entry()
        entry.filled = asyncio.get_running_loop().create_future()
        self._entries[conversation_id] = entry
        while len(self._entries) > self._max:
            self.drop(next(iter(self._entries)))
        return entry

    def finish_fill(self, conversation_id: int, entry: _Entry, rows: list[Wire], older: bool,
                    positions: Iterable[tuple[str, str, int]], bare: Iterable[int] = ()) -> bool:
        """Install the query's rows (`bare`: the ids of those without reactions and photos);
        False when the entry was dropped meanwhile."""
        if self._entries.get(conversation_id) is not entry or entry.filled is None:
            return False
        done = entry.filled
        entry.fill(rows, older, list(positions), bare)
        done.set_result(True)
        return True

    def abandon_fill(self, conversation_id: int, entry: _Entry) -> None:
        if self._entries.get(conversation_id) is entry:
            self.drop(conversation_id)
