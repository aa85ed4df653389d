"""Slow mode's gate (docs/moderation.md): one message per N seconds per member and room.

With Redis the gate is shared by the cluster: one key per (room, member) set with NX and a TTL
of N s, so a send on any process takes the slot and the others see it (the key's PTTL is the
remaining wait). Without Redis (the embedded default, one process) the slots live here. While
Redis cannot be reached the slots are taken in this process only (a per-process gate rather than
refusing every send), with one WARNING per `_WARN_EVERY_S`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from typing import Any

from redis.exceptions import RedisError

from chat.keys import RedisKeys

log = logging.getLogger(__name__)

_LOCAL_KEYS = 100_000


class SlowModeGate:
    _WARN_EVERY_S = 10.0

    def __init__(self, redis: Any = None, keys: RedisKeys | None = None) -> None:
        self._redis = redis
        self._keys = keys or RedisKeys("backstage")
        self._local: OrderedDict[tuple[int, str], float] = OrderedDict()  # -> monotonic time the slot frees
        self._warned_at = -self._WARN_EVERY_S

    async def take(self, conversation_id: int, user_id: str, seconds: int) -> int:
        """Take the member's slot in the room for `seconds`: 0 when taken, else the whole
        seconds left until it frees (nothing taken)."""
        if self._redis is not None:
            try:
                return await self._take_shared(conversation_id, user_id, seconds)
            except (RedisError, OSError) as exc:
                now = time.monotonic()
                if now - self._warned_at >= self._WARN_EVERY_S:
                    self._warned_at = now
                    log.warning("slow mode enforced in this process only: Redis unavailable (%s)",
                                type(exc).__name__)
        return self._take_local(conversation_id, user_id, seconds)

    async def release(self, conversation_id: int, user_id: str) -> None:
        """Give back a slot `take` gave, when the send it was taken for stored nothing (a bad
        attachment, the database unavailable): a failed send must not cost the member the wait."""
        if self._redis is not None:
            try:
                await self._redis.delete(self._keys.slow_mode(conversation_id, user_id))
            except (RedisError, OSError):
                pass  # the slot expires by itself
        self._local.pop((conversation_id, user_id), None)

    async def _take_shared(self, conversation_id: int, user_id: str, seconds: int) -> int:
        key = self._keys.slow_mode(conversation_id, user_id)
        if await self._redis.set(key, b"1", nx=True, px=seconds * 1000):
            return 0
        left_ms = await self._redis.pttl(key)
        if left_ms is None or left_ms < 0:  # expired between the two commands: try once more
            return 0 if await self._redis.set(key, b"1", nx=True, px=seconds * 1000) else 1
        return max(1, math.ceil(int(left_ms) / 1000))

    def _take_local(self, conversation_id: int, user_id: str, seconds: int) -> int:
        now = time.monotonic()
        key = (conversation_id, user_id)
        frees = self._local.get(key)
        if frees is not None and frees > now:
            return max(1, math.ceil(frees - now))
        self._local[key] = now + seconds
        self._local.move_to_end(key)
        if len(self._local) > _LOCAL_KEYS:
            self._local.popitem(last=False)
        return 0
