"""At most N sockets per user across the cluster (settings.max_sockets_per_user).

With Redis, a sorted set per user holds "server_id|sid" of each of the user's sockets. One Lua
script counts, drops what a dead server left (a server is dead once its presence heartbeat in
the `servers` ZSET is older than presence_dead_after_s) and what this server no longer holds,
and admits or refuses atomically, so racing connects on several processes cannot overshoot.
While Redis cannot be reached, a connect is admitted against this process's own sockets only
(the limit then holds per process, not per cluster; docs/reliability.md).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from redis.exceptions import RedisError

from chat.autopipe import AutoPipeline, Script
from chat.keys import RedisKeys

log = logging.getLogger(__name__)

_ADMIT = """
local key, servers = KEYS[1], KEYS[2]
local member, limit, live_min, ttl, me = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local mine = {}
for i = 6, #ARGV do mine[ARGV[i]] = true end
local live, alive = 0, {}
for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
  local s, sid = string.match(m, '^(.-)|(.*)$')
  local ok
  if s == me then
    ok = mine[sid] == true
  else
    if alive[s] == nil then
      local score = redis.call('ZSCORE', servers, s)
      alive[s] = (score and tonumber(score) >= live_min) and true or false
    end
    ok = alive[s]
  end
  if ok then live = live + 1 else redis.call('ZREM', key, m) end
end
if live >= limit then return 0 end
redis.call('ZADD', key, 0, member)
redis.call('PEXPIRE', key, ttl)
return 1
"""

KEY_TTL_MS = 24 * 3600 * 1000


class SocketLimiter(Protocol):
    async def admit(self, user_id: str, sid: str, local_sids: set[str]) -> bool: ...
    async def release(self, user_id: str, sid: str) -> None: ...


class LocalSocketLimiter:
    """One process, no Redis: the process's own sockets are the cluster's."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def admit(self, user_id: str, sid: str, local_sids: set[str]) -> bool:
        return len(local_sids - {sid}) < self.limit

    async def release(self, user_id: str, sid: str) -> None:
        return None


class RedisSocketLimiter:
    def __init__(self, redis: Any, keys: RedisKeys, server_id: str, limit: int, dead_after_s: float) -> None:
        self.redis, self.keys, self.server_id = redis, keys, server_id
        self.limit, self.dead_after_s = limit, dead_after_s
        self._script = redis.register_script(_ADMIT)
        # The admits and releases of concurrent sockets share round trips (a storm's thousands of
        # releases at once no longer take a pooled connection each).
        self._auto = AutoPipeline(redis)

    def _key(self, user_id: str) -> str:
        return f"{self.keys.prefix}:usersockets:{user_id}"

    async def admit(self, user_id: str, sid: str, local_sids: set[str]) -> bool:
        # A server id (host-pid-hex) holds no "|" and the script splits at the first one.
        try:
            [admitted] = await self._auto.execute([Script(
                self._script, [self._key(user_id), self.keys.servers],
                [f"{self.server_id}|{sid}", self.limit, time.time() - self.dead_after_s, KEY_TTL_MS,
                 self.server_id, *sorted(local_sids - {sid})])])
        except (RedisError, OSError) as exc:
            # Refusing every connect for want of a count is worse than a per-process limit.
            log.warning("socket limit checked locally only: Redis unavailable (%s)", type(exc).__name__)
            return len(local_sids | {sid}) <= self.limit
        return bool(admitted)

    async def release(self, user_id: str, sid: str) -> None:
        await self._auto.execute([("ZREM", self._key(user_id), f"{self.server_id}|{sid}")])


def socket_limiter(redis: Any, keys: RedisKeys, server_id: str, limit: int, dead_after_s: float) -> SocketLimiter:
    if redis is None:
        return LocalSocketLimiter(limit)
    return RedisSocketLimiter(redis, keys, server_id, limit, dead_after_s)
