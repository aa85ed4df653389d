"""The emit slots of coalesced events (chat/emitslots.py), without servers: two "processes" (two
coalescers with slots of their own) sharing Redis send at most one event per item per window
between them, the final state last; an isolated change goes out at once; without Redis (and
while Redis cannot be reached) each one limits its own events and still sends the final state."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import redis.asyncio as aioredis

from chat.emitslots import LocalSlots, RedisSlots, SlotCoalescer, Slots
from chat.keys import RedisKeys

WINDOW = 0.1


class Item:
    """One item's state (the database) and the events its coalescers sent, in order."""

    def __init__(self) -> None:
        self.value = 0
        self.sent: list[tuple[float, int, str]] = []  # (time, value, by)
        self.changed = asyncio.Event()

    def coalescer(self, slots: Slots, name: str) -> SlotCoalescer[int]:
        async def leading(value: int) -> None:
            self._record(value, name)

        async def latest(_item: int, _held: int) -> None:
            await asyncio.sleep(0)  # a read
            self._record(self.value, name)

        return SlotCoalescer("test", slots, WINDOW, leading, latest)

    def _record(self, value: int, name: str) -> None:
        self.sent.append((time.monotonic(), value, name))
        self.changed.set()

    async def wait_for(self, value: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not any(v == value for _, v, _ in self.sent):
                self.changed.clear()
                await self.changed.wait()


async def settle(*coalescers: SlotCoalescer[Any]) -> None:
    """Until no coalescer holds a change or sends one."""
    async with asyncio.timeout(10):
        while any(c.busy for c in coalescers):
            await asyncio.sleep(0.01)


async def burst(item: Item, coalescers: list[SlotCoalescer[int]], seconds: float) -> float:
    """Changes of item 1 on every coalescer in turn for `seconds`; returns when it started."""
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        item.value += 1
        await coalescers[n % len(coalescers)].note(1, item.value)
        n += 1
        await asyncio.sleep(0.005)  # paces the changes (nothing waits on it)
    return started


async def test_an_isolated_change_goes_out_at_once(redis_url: str, redis_prefix: str) -> None:
    async with aioredis.Redis.from_url(redis_url) as redis:
        for slots in (LocalSlots(), RedisSlots(redis, RedisKeys(redis_prefix))):
            item = Item()
            c = item.coalescer(slots, "a")
            item.value = 1
            await c.note(1, 1)
            assert [v for _, v, _ in item.sent] == [1]  # sent before note returned: no wait
            await settle(c)
            assert len(item.sent) == 1
            await c.close()


async def test_two_processes_share_one_window_and_end_with_the_final_state(redis_url: str,
                                                                         redis_prefix: str) -> None:
    item = Item()
    r1, r2 = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    a = item.coalescer(RedisSlots(r1, RedisKeys(redis_prefix)), "a")
    b = item.coalescer(RedisSlots(r2, RedisKeys(redis_prefix)), "b")
    try:
        started = await burst(item, [a, b], 1.0)
        await item.wait_for(item.value)
        elapsed = time.monotonic() - started
        await settle(a, b)
        values = [v for _, v, _ in item.sent]
        assert values[-1] == item.value  # the final state, last
        assert values == sorted(values)  # never an older state after a newer one
        # one window for both: every event went out within `elapsed`, a window apart
        assert len(values) <= math.ceil(elapsed / WINDOW) + 1, (len(values), elapsed)
        assert {by for _, _, by in item.sent} == {"a", "b"}  # either may win a window
        gaps = [t2 - t1 for (t1, _, _), (t2, _, _) in zip(item.sent, item.sent[1:], strict=False)]
        assert min(gaps) >= WINDOW * 0.9, gaps
    finally:
        await a.close()
        await b.close()
        await r1.aclose()
        await r2.aclose()


async def test_without_redis_each_process_limits_its_own_and_sends_the_final_state(redis_prefix: str) -> None:
    # a Redis nobody listens on: every call fails, the local slots answer
    nobody = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    for slots in (RedisSlots(nobody, RedisKeys(redis_prefix)), LocalSlots()):
        item = Item()
        c = item.coalescer(slots, "a")
        try:
            item.value = 1
            await c.note(1, 1)
            assert [v for _, v, _ in item.sent] == [1]  # the first change at once
            started = await burst(item, [c], 0.5)
            await item.wait_for(item.value)
            elapsed = time.monotonic() - started
            await settle(c)
            values = [v for _, v, _ in item.sent]
            assert values[-1] == item.value
            assert 2 <= len(values) <= math.ceil(elapsed / WINDOW) + 2, (len(values), elapsed)
        finally:
            await c.close()
    await nobody.aclose()


async def test_concurrent_changes_on_one_process_end_with_the_final_state(redis_url: str, redis_prefix: str) -> None:
    # changes whose Redis calls share one pipeline with the one that wins the slot
    async with aioredis.Redis.from_url(redis_url) as redis:
        item = Item()
        c = item.coalescer(RedisSlots(redis, RedisKeys(redis_prefix)), "a")
        try:
            item.value = 20
            await asyncio.gather(*[c.note(1, v) for v in range(1, 21)])
            await item.wait_for(20)
            await settle(c)
            assert [v for _, v, _ in item.sent] == [1, 20]  # the leading change, then a re-read
        finally:
            await c.close()
