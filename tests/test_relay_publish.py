"""The relay's publish bounds (chat/relay.py), with a stand-in for Redis whose answers the test
holds back: a sender waits `publish_timeout_s` at most; a publish answered late (a loop saturated
by a connect storm reads Redis's answer late) is not a failure, so it does not make every
process resync; one never answered within `publish_give_up_s` is (tests/test_relay_faults.py
freezes a real Redis for that).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from chat.fanout import FanoutManager
from chat.keys import RedisKeys
from chat.relay import RELAY_PUBLISH_FAILED, RedisRelay


class HeldRedis:
    """Publishes (single or pipelined) that complete when the test lets them."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.started = asyncio.Event()
        self.published: list[str] = []

    async def _held(self, channels: list[str]) -> None:
        self.started.set()
        await self.answer.wait()
        self.published += channels

    async def publish(self, channel: str, payload: bytes) -> int:
        await self._held([channel])
        return 0

    def pipeline(self, transaction: bool = False) -> Any:
        redis, channels = self, []

        class Pipe:
            def publish(self, channel: str, payload: bytes) -> None:
                channels.append(channel)

            async def execute(self) -> list[int]:
                await redis._held(channels)
                return [0] * len(channels)

        return Pipe()


def failures() -> float:
    return RELAY_PUBLISH_FAILED._value.get()


async def until(condition: Any) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), 10)


async def test_a_late_publish_releases_its_senders_and_is_no_failure() -> None:
    redis = HeldRedis()
    keys = RedisKeys("relay-publish-test")
    relay = RedisRelay(redis, FanoutManager(), keys, relayed=lambda room: True,  # type: ignore[arg-type]
                       publish_timeout_s=0.05, publish_give_up_s=60)
    before = failures()
    first = relay.queue_rooms([("conversation:1", "2[\"message\",{}]", None, None)])
    await redis.started.wait()
    # Redis has not answered: the sender is released after publish_timeout_s all the same.
    await asyncio.wait_for(first, 5)
    # Queued behind the late publish: nobody waits for it.
    second = relay.queue_rooms([("conversation:2", "2[\"message\",{}]", None, None)])
    assert second.done()
    redis.answer.set()  # the late answer comes
    await until(lambda: redis.published == [keys.room_relay_channel("conversation:1"),
                                            keys.room_relay_channel("conversation:2")])
    # Published, in order, and not counted as a failure: no resync follows.
    assert failures() == before
    assert not relay._publish_failing
    # Answered in time again: senders wait for their publish as before.
    third = relay.queue_rooms([("conversation:3", "2[\"message\",{}]", None, None)])
    assert not third.done()
    await asyncio.wait_for(third, 5)
    assert redis.published[-1] == keys.room_relay_channel("conversation:3")


async def test_a_publish_never_answered_is_given_up_and_counted() -> None:
    redis = HeldRedis()
    relay = RedisRelay(redis, FanoutManager(), RedisKeys("relay-publish-test"),  # type: ignore[arg-type]
                       relayed=lambda room: True, publish_timeout_s=0.05, publish_give_up_s=0.2)
    before = failures()
    first = relay.queue_rooms([("conversation:1", "2[\"message\",{}]", None, None)])
    await asyncio.wait_for(first, 5)
    await until(lambda: failures() > before)
    assert relay._publish_failing
    await relay.stop()


async def test_recoveries_run_one_at_a_time_and_coalesce() -> None:
    """Recoveries asked for while one runs make one more run after it, never several at once
    (each reads every local socket's access; at once they ran the database pool dry)."""
    relay = RedisRelay(HeldRedis(), FanoutManager(), RedisKeys("relay-publish-test"),  # type: ignore[arg-type]
                       relayed=lambda room: True)
    running, most, runs = 0, 0, []
    go = asyncio.Event()

    async def on_recovered(cause: str) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        runs.append(cause)
        await go.wait()
        running -= 1

    relay.on_recovered = on_recovered
    first = asyncio.create_task(relay._recovered("subscriber"))
    await until(lambda: runs == ["subscriber"])
    others = [asyncio.create_task(relay._recovered("publisher")) for _ in range(3)]
    await asyncio.wait_for(asyncio.gather(*others), 5)  # folded into one more run: they return at once
    go.set()
    await asyncio.wait_for(first, 10)
    assert runs == ["subscriber", "publisher"] and most == 1


class LateReadPubSub:
    """A subscription whose reads time out although answers have arrived (what a saturated loop
    does: the read's timeout runs before the read), then delivers them."""

    def __init__(self, owner: LateReadRedis) -> None:
        self.owner, self.connection = owner, self
        self.items: list[dict[str, Any]] = []

    async def subscribe(self, *channels: str) -> None:
        self.items = [{"type": "subscribe", "channel": c.encode(), "data": 1} for c in channels]

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        if self.owner.late_reads > 0:
            self.owner.late_reads -= 1
            await asyncio.sleep(timeout)
            return None
        if self.items:
            return self.items.pop(0)
        self.owner.drained.set()
        await asyncio.sleep(timeout)
        return None

    async def can_read_destructive(self) -> bool:
        return bool(self.items)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class LateReadRedis(HeldRedis):
    def __init__(self, late_reads: int) -> None:
        super().__init__()
        self.late_reads = late_reads
        self.subscriptions = 0
        self.drained = asyncio.Event()

    def pubsub(self) -> LateReadPubSub:
        self.subscriptions += 1
        return LateReadPubSub(self)


async def test_answers_read_late_do_not_count_as_a_dead_subscriber() -> None:
    """Reads that time out while Redis's answers wait unread (a loop saturated by a connect
    storm) are not 'no answer from Redis': the subscriber keeps its connection (a reconnect
    would make every socket resync) and reads them."""
    redis = LateReadRedis(late_reads=8)  # 8 × keepalive without a read: past the 3 × keepalive rule
    relay = RedisRelay(redis, FanoutManager(), RedisKeys("relay-publish-test"),  # type: ignore[arg-type]
                       relayed=lambda room: True, keepalive_s=0.02)
    listener = asyncio.create_task(relay._listen())
    try:
        await asyncio.wait_for(redis.drained.wait(), 10)
        assert relay._ready.is_set()  # the subscriptions were confirmed after all
        assert redis.subscriptions == 1
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
