"""At most one event per item per window, cluster-wide: the coalescing of thread roots'
`message_updated` (chat/threads.py) and of messages' `reaction` events (chat/reactions.py).

`SlotCoalescer` is told of each committed change of an item (a root, a message). The first
change of a quiet item goes out at once with the state its commit produced (no added wait).
A change that comes while the item's slot is taken is held; when the slot frees, the process
that wins it reads the item again and sends it as committed then, so the last event of a burst
carries the final state, whichever process committed the last change.

The slots (`Slots`) say who may send, and which changes an event covered:

- `RedisSlots` (processes sharing Redis): per item a slot key set with NX, whose holder may send
  (PTTL: when to try again), and a hash of versions: `v` counts the changes (HINCRBY after each
  commit), `e` is the highest version a sent re-read covers (every change counted before the
  winner took the slot was committed before its re-read). A process holding changes tries
  again when the slot frees and sends nothing if `e` reached its newest change's version: a
  burst spread over any number of processes costs one event per window, plus the leading one.
  The holder keeps the slot while it reads and sends (a longer first TTL), then sets the TTL to
  the window: the next event of the item is published at least a window after this one (two
  processes' events cross on their way only if the relay lags by more than a window). One round trip per call (Lua scripts
  through chat/autopipe.py, shared with concurrent callers); each change costs one call, a
  process holding changes one per window. Should Redis fail (an error, or no answer within
  `REDIS_TIMEOUT_S`), the call is answered by the process's own `LocalSlots`: per-process
  limits for that while, but no change is left unsent.
- `LocalSlots` (no Redis: the in-process relay, one process): the same in this process's memory.

A leading event (the commit's own state, not a re-read) covers no version but its own change:
another process's change counted before it may have committed after it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from redis.exceptions import RedisError

from chat.autopipe import AutoPipeline, Script
from chat.keys import RedisKeys

log = logging.getLogger(__name__)

HOLD_S = 2.0  # the slot's first TTL beyond the window: the holder reads and sends within it
VERSIONS_TTL_MS = 600_000  # an item's version hash outlives any pending retry by far
REDIS_TIMEOUT_S = 0.5  # a slot call not answered by then is answered by the local slots
_LOCAL_ITEMS = 50_000

WON, WAIT, COVERED, COUNTED = 1, 2, 3, 0


@dataclass(frozen=True)
class Slot:
    version: int  # the change's version (for `retry`: the one asked about)
    state: int  # WON: send now; WAIT: try again in `wait_s`; COVERED: sent; COUNTED: not tried
    wait_s: float = 0.0
    cover: int = 0  # WON: the highest version counted when the slot was taken
    local: bool = False  # versions of LocalSlots, not comparable with Redis ones


class Slots(Protocol):
    async def change(self, key: str, window_s: float, take: bool) -> Slot:
        """Count a committed change of `key`; with `take`, try the slot too."""

    async def retry(self, key: str, window_s: float, version: int, local: bool) -> Slot:
        """COVERED if a sent re-read covered `version`, else try the slot."""

    async def done(self, key: str, window_s: float, cover: int, local: bool) -> None:
        """After a send (WON): the slot frees a window from now; `cover` (0: none) was sent;
        `local`: the slot was one of LocalSlots."""


class LocalSlots:
    """The slots of this process only."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, list[float]] = OrderedDict()  # key -> [v, e, slot frees at]

    def _item(self, key: str) -> list[float]:
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = [0, 0, 0.0]
            if len(self._items) > _LOCAL_ITEMS:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return item

    def _take(self, item: list[float], window_s: float, version: int) -> Slot:
        now = time.monotonic()
        if item[2] > now:
            return Slot(version, WAIT, item[2] - now, local=True)
        item[2] = now + window_s + HOLD_S
        return Slot(version, WON, cover=max(int(item[0]), version), local=True)

    async def change(self, key: str, window_s: float, take: bool) -> Slot:
        item = self._item(key)
        item[0] += 1
        version = int(item[0])
        return self._take(item, window_s, version) if take else Slot(version, COUNTED, local=True)

    async def retry(self, key: str, window_s: float, version: int, local: bool) -> Slot:
        if not local:  # a Redis version: unknown here, counted again
            return await self.change(key, window_s, True)
        item = self._item(key)
        if item[1] >= version:
            return Slot(version, COVERED, local=True)
        return self._take(item, window_s, version)

    async def done(self, key: str, window_s: float, cover: int, local: bool = True) -> None:
        item = self._item(key)
        item[1] = max(item[1], cover)
        item[2] = time.monotonic() + window_s


# KEYS: slot, versions. ARGV: take (0/1), token, hold ms, versions TTL ms.
_CHANGE = """
local v = redis.call('HINCRBY', KEYS[2], 'v', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if ARGV[1] == '0' then return {v, 0, 0, 0} end
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then return {v, 1, 0, v} end
return {v, 2, redis.call('PTTL', KEYS[1]), 0}
"""

# KEYS: slot, versions. ARGV: version, token, hold ms.
_RETRY = """
local mine = tonumber(ARGV[1])
local e = tonumber(redis.call('HGET', KEYS[2], 'e') or '0')
if e >= mine then return {mine, 3, 0, 0} end
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {mine, 1, 0, math.max(mine, tonumber(redis.call('HGET', KEYS[2], 'v') or '0'))}
end
return {mine, 2, redis.call('PTTL', KEYS[1]), 0}
"""

# KEYS: slot, versions. ARGV: cover, token, window ms.
_DONE = """
local cover = tonumber(ARGV[1])
if cover > 0 and cover > tonumber(redis.call('HGET', KEYS[2], 'e') or '0') then
  redis.call('HSET', KEYS[2], 'e', cover)
end
if redis.call('GET', KEYS[1]) == ARGV[2] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


class RedisSlots:
    """The slots of every process sharing Redis; `LocalSlots` while Redis fails."""

    _WARN_EVERY_S = 10.0

    def __init__(self, redis: Any, keys: RedisKeys) -> None:
        self._auto = AutoPipeline(redis)
        self._keys = keys
        self._change = redis.register_script(_CHANGE)
        self._retry = redis.register_script(_RETRY)
        self._done = redis.register_script(_DONE)
        self._token = os.urandom(8).hex()  # whose slot it is: `done` sets the TTL of its own only
        self.local = LocalSlots()
        self._warned_at = -self._WARN_EVERY_S

    def _names(self, key: str) -> list[str]:
        return [self._keys.emit_slot(key), self._keys.emit_versions(key)]

    async def _run(self, script: Any, key: str, args: list[Any]) -> Any:
        [result] = await asyncio.wait_for(self._auto.execute([Script(script, self._names(key), args)]),
                                          REDIS_TIMEOUT_S)
        return result

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= self._WARN_EVERY_S:
            self._warned_at = now
            log.warning("events coalesced in this process only: Redis unavailable (%s)", type(exc).__name__)

    @staticmethod
    def _slot(result: Any) -> Slot:
        version, state, wait_ms, cover = (int(x) for x in result)
        return Slot(version, state, max(0, wait_ms) / 1000, cover)

    async def change(self, key: str, window_s: float, take: bool) -> Slot:
        try:
            return self._slot(await self._run(self._change, key, [
                1 if take else 0, self._token, int((window_s + HOLD_S) * 1000), VERSIONS_TTL_MS]))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return await self.local.change(key, window_s, take)

    async def retry(self, key: str, window_s: float, version: int, local: bool) -> Slot:
        if local:  # counted while Redis failed: count it again
            return await self.change(key, window_s, True)
        try:
            return self._slot(await self._run(self._retry, key, [version, self._token,
                                                                 int((window_s + HOLD_S) * 1000)]))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return await self.local.retry(key, window_s, version, False)

    async def done(self, key: str, window_s: float, cover: int, local: bool) -> None:
        if local:
            return await self.local.done(key, window_s, cover)
        try:
            await self._run(self._done, key, [cover, self._token, max(1, int(window_s * 1000))])
        except (RedisError, OSError, TimeoutError) as exc:  # the slot frees by its TTL
            self._failed(exc)


P = TypeVar("P")


@dataclass
class _Held(Generic[P]):
    payload: P  # the newest change's
    version: int = 0  # the newest change's
    local: bool = False
    fresh: bool = False  # versions of both kinds: try as a new change
    counting: int = 0  # changes whose version is being counted (not known yet)
    timer: asyncio.TimerHandle | None = None

    def covered_by(self, cover: int) -> bool:
        """Every change held here is covered by a send of versions up to `cover`."""
        return self.version <= cover and not self.fresh and not self.counting

    def add(self, slot: Slot) -> None:
        if self.version and slot.local != self.local:
            self.fresh = True
        self.version = max(self.version, slot.version)
        self.local = slot.local


class SlotCoalescer(Generic[P]):
    """At most one event per item per `interval_s` (cluster-wide with `RedisSlots`).

    `leading(payload)` sends a change's own state (a quiet item's first change); `latest(item,
    payload)` reads the item again and sends it (`payload`: the newest change held here)."""

    def __init__(self, kind: str, slots: Slots, interval_s: float, leading: Callable[[P], Awaitable[None]],
                 latest: Callable[[int, P], Awaitable[None]]) -> None:
        self._kind = kind
        self._slots = slots
        self.interval_s = interval_s
        self._leading = leading
        self._latest = latest
        self._held: dict[int, _Held[P]] = {}  # items with changes not known to be sent
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def _key(self, item: int) -> str:
        return f"{self._kind}:{item}"

    @property
    def busy(self) -> bool:
        """Changes held or sends in flight."""
        return bool(self._held or self._tasks)

    async def note(self, item: int, payload: P) -> None:
        """A committed change of `item`; sends it at once if the slot is free (awaits the send)."""
        held = self._held.get(item)
        if held is not None:  # the item waits for its slot (or a call is out): count and hold
            held.payload = payload
            held.counting += 1
            try:
                held.add(await self._slots.change(self._key(item), self.interval_s, False))
            finally:
                held.counting -= 1
            return
        held = self._held[item] = _Held(payload)
        slot = await self._slots.change(self._key(item), self.interval_s, True)
        held.add(slot)
        if slot.state != WON:
            self._schedule(item, held, slot.wait_s)
            return
        if held.covered_by(slot.version):
            self._drop(item, held)
        else:  # changes came during the call: the next window
            self._schedule(item, held, self.interval_s)
        try:
            await self._leading(payload)
        except Exception:
            log.warning("%s event not delivered", self._kind, exc_info=True)
        await self._slots.done(self._key(item), self.interval_s, 0, slot.local)

    def _drop(self, item: int, held: _Held[P]) -> None:
        if self._held.get(item) is held:
            del self._held[item]

    def _schedule(self, item: int, held: _Held[P], wait_s: float) -> None:
        if self._closed or held.timer is not None:
            return
        # The slot's TTL is longer while its holder sends: poll at least once a window.
        delay = min(max(wait_s, 0.005), self.interval_s)
        held.timer = asyncio.get_running_loop().call_later(delay, self._fire, item, held)

    def _fire(self, item: int, held: _Held[P]) -> None:
        held.timer = None
        task = asyncio.get_running_loop().create_task(self._retry(item, held))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, item: int, held: _Held[P]) -> None:
        version, fresh = held.version, held.fresh
        try:
            if fresh:
                held.fresh = False
                slot = await self._slots.change(self._key(item), self.interval_s, True)
                held.add(slot)
            else:
                slot = await self._slots.retry(self._key(item), self.interval_s, version, held.local)
        except Exception:  # not expected (the slots fall back locally): try again later
            log.warning("%s slot not taken", self._kind, exc_info=True)
            self._schedule(item, held, self.interval_s)
            return
        if slot.local != held.local:  # counted again by the other kind of slots
            held.fresh = held.fresh or held.version != version
            held.version, held.local = slot.version, slot.local
        if slot.state == WAIT:
            self._schedule(item, held, slot.wait_s)
            return
        covered = slot.cover if slot.state == WON else version
        if held.covered_by(covered):
            self._drop(item, held)
        elif not self._closed:  # changes came during the call, not covered: the next window
            self._schedule(item, held, self.interval_s)
        if slot.state != WON:
            return
        sent = slot.cover
        try:
            await self._latest(item, held.payload)
        except Exception:
            log.warning("%s event not delivered", self._kind, exc_info=True)
            sent = 0
            if self._held.get(item) is None and not self._closed:  # the final state must go out
                self._held[item] = again = _Held(held.payload, fresh=True)
                self._schedule(item, again, self.interval_s)
        await self._slots.done(self._key(item), self.interval_s, sent, slot.local)

    async def close(self) -> None:
        """At shutdown: drop what is held (the sockets are closing), wait for sends in flight."""
        self._closed = True
        for held in self._held.values():
            if held.timer is not None:
                held.timer.cancel()
        self._held.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
