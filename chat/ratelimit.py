"""Rate limits. Token buckets (`rate` tokens per second, up to `burst` banked) for what lives
in one process (a socket's sends and joins); `UserRateLimiter` for a user's HTTP sends, shared by
the cluster through Redis with the `limits` library."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class KeyedBuckets:
    """One bucket per key (a socket id, or a user id for HTTP), least recently used dropped first."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take()

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)


# ---------------------------------------------------------------- per-user limits, cluster-wide


@dataclass(frozen=True)
class Quota:
    """One hit's verdict and what the IETF RateLimit headers say about it."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the oldest hit in the window leaves it (a slot frees)
    policy: str  # "20;w=2": `limit` hits per `w` seconds

    def headers(self) -> dict[str, str]:
        """RateLimit-* (draft-ietf-httpapi-ratelimit-headers-07), and Retry-After when refused."""
        out = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(self.reset_s), "RateLimit-Policy": self.policy}
        if not self.allowed:
            out["Retry-After"] = str(max(1, self.reset_s))
        return out


class UserRateLimiter:
    """At most `burst` hits per user in any window of burst/rate seconds (a moving window of the
    `limits` library: 10/s bursts of 20 is "at most 20 in any 2 s").

    With Redis the window is shared by every process of the cluster (one Redis list per user,
    checked and appended by one Lua script), so N processes allow what one does. Without Redis
    (the embedded default) it lives in this process. While Redis cannot be reached, hits are
    counted in this process only (a per-process limit rather than refusing every send), with one
    WARNING per `_WARN_EVERY_S`."""

    _WARN_EVERY_S = 10.0

    def __init__(self, rate_per_s: float, burst: int, *, redis: Any = None, key_prefix: str = "backstage",
                 name: str = "sends") -> None:
        window = max(1, round(burst / rate_per_s))
        self.item = RateLimitItemPerSecond(burst, window)
        self.name = name
        self.policy = f"{burst};w={window}"
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        if redis is not None:
            storage = RedisStorage("async+redis://", implementation="redispy", wrap_exceptions=True,
                                   connection_pool=redis.connection_pool, key_prefix=f"{key_prefix}:limits")
            self._shared = MovingWindowRateLimiter(storage)
        self._warned_at = -self._WARN_EVERY_S

    @property
    def shared(self) -> bool:
        return self._shared is not None

    async def hit(self, user_id: str) -> Quota:
        if self._shared is not None:
            try:
                return await self._hit(self._shared, user_id)
            except (StorageError, RedisError, OSError) as exc:
                now = time.monotonic()
                if now - self._warned_at >= self._WARN_EVERY_S:
                    self._warned_at = now
                    log.warning("per-user rate limit counted in this process only: Redis unavailable (%s)",
                                type(exc).__name__)
        return await self._hit(self._local, user_id)

    async def _hit(self, limiter: MovingWindowRateLimiter, user_id: str) -> Quota:
        allowed = await limiter.hit(self.item, self.name, user_id)
        stats = await limiter.get_window_stats(self.item, self.name, user_id)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return Quota(allowed, self.item.amount, max(0, stats.remaining), reset, self.policy)
