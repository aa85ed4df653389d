"""The relay's publish bounds (chat/relay.py), with a stand-in for Redis whose answers the test
holds back: a sender waits `publish_timeout_s` at most; a publish answered late (a loop saturated
by a connect storm reads Redis's answer late) is not a failure, so it does not make every
process resync; one never answered within `publish_give_up_s` is (tests/test_relay_faults.py
freezes a real Redis for that).
"""

from __future__ import annotations

import asyncio
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
