"""Blocks between members (docs/moderation.md "Blocks between members"): a user hides another
user's messages for themselves (history, join pages, live delivery), and no direct message goes
between the two while either blocks the other.

Storage is the `member_blocks` table. Live delivery encodes each broadcast once for every local
socket (chat/fanout.py); `BlockIndex` keeps, per process, which local sockets block which
senders (`blocker_sids`: sender -> sids), filled when a socket joins its first conversation
(the user's blocks read once per process, concurrent reads batched, and kept for up to
`IDLE_USERS` users after their last socket here left, so a reconnect reads nothing) and kept
current by the `member_block` control message. Delivery consults it only
when it is not empty (chat/delivery.py), so rooms where nobody blocks anyone cost nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from chat import driversql, schemas
from chat.batch import BatchedLookup
from chat.db import toggle_row
from chat.models import MemberBlock

_blocks = sa.inspect(MemberBlock).local_table

# Live events that show a message, which a blocker of its sender gets as a placeholder.
HIDDEN_EVENTS = ("message", "message_updated", "message_hidden")
# Events of a blocked member that their blockers do not get at all (there is nothing to hold a
# place for): someone typing.
SILENCED_EVENTS = ("typing",)
# Users whose blocks stay known after their last socket here left (a reconnect storm's rejoins
# read nothing); kept current by `apply` like the others, dropped by `reload`.
IDLE_USERS = 20_000


# ---------------------------------------------------------------- storage

def _blocked_statement(n: int) -> Any:
    c = _blocks.c
    return sa.select(c.blocker_id, c.blocked_id).where(c.blocker_id.in_([sa.bindparam(f"u{i}", type_=c.blocker_id.type)
                                                                          for i in range(n)]))


BLOCKED_BATCH = 64  # users per statement of blocked_ids_many


async def blocked_ids_many(conn: AsyncConnection, user_ids: list[str]) -> dict[str, set[str]]:
    """Whom each of `user_ids` blocks: one statement per BLOCKED_BATCH users, compiled once per
    dialect and (padded) size, on the driver's cursor (chat/driversql.py)."""
    out: dict[str, set[str]] = {u: set() for u in user_ids}
    for chunk in driversql.padded_chunks(user_ids, BLOCKED_BATCH):
        prepared = driversql.prepare(conn.dialect, _blocked_statement, len(chunk))
        for blocker, blocked in await driversql.fetch(conn, prepared, {f"u{i}": u for i, u in enumerate(chunk)}):
            out[str(blocker)].add(str(blocked))
    return out


async def blocked_ids(conn: AsyncConnection, user_id: str) -> set[str]:
    return (await blocked_ids_many(conn, [user_id]))[user_id]


async def blocked_between(conn: AsyncConnection, a: str, b: str) -> bool:
    """Either of the two blocks the other."""
    c = _blocks.c
    q = sa.select(sa.literal(1)).where(sa.or_(sa.and_(c.blocker_id == a, c.blocked_id == b),
                                              sa.and_(c.blocker_id == b, c.blocked_id == a)))
    return (await conn.execute(q.limit(1))).first() is not None


async def blockers_among(conn: AsyncConnection, blocked_id: str, user_ids: Iterable[str]) -> set[str]:
    """Those of `user_ids` who block `blocked_id` (left out of the pushes of their messages)."""
    wanted = sorted(set(user_ids))
    if not wanted:
        return set()
    c = _blocks.c
    rows = await conn.scalars(sa.select(c.blocker_id).where(c.blocked_id == blocked_id, c.blocker_id.in_(wanted)))
    return {str(u) for u in rows}


async def list_blocks(conn: AsyncConnection, user_id: str) -> list[tuple[str, datetime]]:
    c = _blocks.c
    rows = await conn.execute(sa.select(c.blocked_id, c.created_at).where(c.blocker_id == user_id)
                              .order_by(c.created_at, c.blocked_id))
    return [(str(r[0]), r[1]) for r in rows]


async def set_block(session: AsyncSession, blocker_id: str, blocked_id: str, on: bool) -> bool:
    """Block (`on`) or unblock; True when it changed something."""
    return await toggle_row(session, MemberBlock, (blocker_id, blocked_id), on, blocker_id=blocker_id,
                            blocked_id=blocked_id)


def blocks_wire(rows: list[tuple[str, datetime]]) -> list[dict[str, Any]]:
    return [{"user_id": u, "blocked_at": schemas.iso(at)} for u, at in rows]


# ---------------------------------------------------------------- what readers see

def hidden_wire(wire: dict[str, Any], reason: str) -> dict[str, Any]:
    """A message a reader does not see, in its place (same id, seq and sender, so seq stays
    gapless for the client's recovery cursors): no body, no photos, no reactions, `hidden: true`
    and why (`blocked`: the reader blocks the sender; `reported`: hidden by reports)."""
    out = {**wire, "body": "", "attachments": [], "hidden": True, "hidden_reason": reason}
    if "mentions" in out:  # who a hidden message mentions is part of what it hides (chat/mentions.py)
        out["mentions"] = []
    if "reactions" in out:
        out["reactions"] = []
    return out


def sender_of(event: str, data: Any) -> str | None:
    """The sender of the message a HIDDEN_EVENTS event shows (`message_hidden`: the message it
    carries when it shows one again), the user of a SILENCED_EVENTS event, else None."""
    if event in SILENCED_EVENTS:
        user_id = data.get("user_id") if isinstance(data, dict) else None
        return user_id if isinstance(user_id, str) else None
    wire = data.get("message") if event == "message_hidden" and isinstance(data, dict) else data
    if isinstance(wire, dict):
        sender = wire.get("sender")
        if isinstance(sender, dict) and isinstance(sender.get("id"), str):
            return str(sender["id"])
    return None


def placeholder_event(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """What a blocker of the sender gets instead of `data`."""
    if event == "message_hidden":
        return {**data, "message": hidden_wire(data["message"], "blocked")}
    return hidden_wire(data, "blocked")


# ---------------------------------------------------------------- the per-process index

class BlockIndex:
    """Who blocks whom among this process's sockets (see the module docstring)."""

    def __init__(self, load: Callable[[list[str]], Awaitable[dict[str, set[str]]]]) -> None:
        self._load = load
        self._lookup: BatchedLookup[str, set[str]] = BatchedLookup(load)
        self._of_user: dict[str, set[str]] = {}  # users with registered sockets (and idle ones) -> whom they block
        self._idle: OrderedDict[str, None] = OrderedDict()  # users in _of_user without sockets, oldest first
        self._user_sids: dict[str, set[str]] = {}
        self._sid_user: dict[str, str] = {}
        # sender -> the registered sockets whose user blocks them (read by chat/delivery.py)
        self.blocker_sids: dict[str, set[str]] = {}
        self._changes = 0

    def blocked_by(self, user_id: str) -> set[str] | None:
        """Whom `user_id` blocks, when this process knows (they have, or recently had, a registered socket)."""
        return self._of_user.get(user_id)

    @property
    def changes(self) -> int:
        """A counter of the changes applied: `register(..., read=(blocks, changes))` takes what a
        caller read itself only if nothing was applied since it took `changes` before its read."""
        return self._changes

    async def register(self, sid: str, user_id: str, read: tuple[frozenset[str], int] | None = None) -> set[str]:
        """The socket's user's blocks, read on the first registration of the user here (or
        `read`: the user's blocks as the caller read them, with `changes` as it was before that
        read began — chat/storage.py `join_views` carries them); from now on the socket is
        skipped by live deliveries of their blocked senders' messages."""
        if sid in self._sid_user:
            return self._of_user[user_id]
        blocked = self._of_user.get(user_id)
        if blocked is None:
            if read is not None and read[1] == self._changes:
                found: set[str] = set(read[0])
            else:
                while True:  # a change committed while reading may be missing from what was read
                    seen = self._changes
                    found = await self._lookup.get(user_id) or set()
                    if seen == self._changes:
                        break
            blocked = self._of_user.get(user_id)
            if blocked is None:
                blocked = self._of_user[user_id] = set(found)
            if sid in self._sid_user:  # registered meanwhile by a concurrent join of the socket
                return blocked
        self._sid_user[sid] = user_id
        self._user_sids.setdefault(user_id, set()).add(sid)
        self._idle.pop(user_id, None)
        for sender in blocked:
            self.blocker_sids.setdefault(sender, set()).add(sid)
        return blocked

    def unregister(self, sid: str) -> None:
        user_id = self._sid_user.pop(sid, None)
        if user_id is None:
            return
        for sender in self._of_user.get(user_id, ()):
            self._drop_skip(sender, sid)
        sids = self._user_sids.get(user_id)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._user_sids[user_id]
                if user_id in self._of_user:
                    self._idle[user_id] = None
                    if len(self._idle) > IDLE_USERS:
                        self._of_user.pop(self._idle.popitem(last=False)[0], None)

    def apply(self, blocker_id: str, blocked_id: str, on: bool) -> None:
        """A block or unblock committed anywhere in the cluster."""
        self._changes += 1
        blocked = self._of_user.get(blocker_id)
        if blocked is None:
            return
        if on:
            blocked.add(blocked_id)
            for sid in self._user_sids.get(blocker_id, ()):
                self.blocker_sids.setdefault(blocked_id, set()).add(sid)
        else:
            blocked.discard(blocked_id)
            for sid in self._user_sids.get(blocker_id, ()):
                self._drop_skip(blocked_id, sid)

    async def reload(self) -> None:
        """Read the blocks of every user with registered sockets again (after a relay recovery,
        a `member_block` control message may have been missed) and apply the differences."""
        for user_id in self._idle:  # not read again: their next registration reads them
            self._of_user.pop(user_id, None)
        self._idle.clear()
        users = list(self._of_user)
        if not users:
            return
        self._changes += 1
        fresh = await self._load(users)
        for user_id in users:
            known = self._of_user.get(user_id)
            if known is None:
                continue
            now = fresh.get(user_id, set())
            for sender in known - now:
                self.apply(user_id, sender, False)
            for sender in now - known:
                self.apply(user_id, sender, True)

    def _drop_skip(self, sender: str, sid: str) -> None:
        sids = self.blocker_sids.get(sender)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self.blocker_sids[sender]
