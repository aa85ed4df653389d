"""Cluster-wide presence and channel subscription counting (SPEC §4 `presence`).

Two implementations of one interface (`Presence`):

- `MemoryPresence`: a single process, no Redis (the embedded default).
- `RedisPresence`: every server process mirrors its own socket counts into
  Redis under its server id, refreshes them with a heartbeat, and decides
  "first socket in the cluster" / "last socket in the cluster" inside Lua
  scripts, so two processes racing on the same user agree. When a process
  dies without cleaning up, a live process notices its stale heartbeat,
  claims the cleanup once and reports who went offline through the
  offline callback.

docs/presence.md describes the key layout, the numbers and crash behaviour.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from chat.autopipe import AutoPipeline, Command, Script, round_trip
from chat.keys import RedisKeys

log = logging.getLogger(__name__)

OfflineCallback = Callable[[str, str], Awaitable[None]]
"""async fn(conversation_id, user_id), called when a dead server's user goes offline."""


class PresenceUnavailable(Exception):
    """Redis could not be reached or answered an error; map to the `unavailable` code."""


def new_server_id() -> str:
    """A server id unique to this process start (a restarted process must not reuse its old id)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- local state


@dataclass
class _Dropped:
    """What one socket held when it went away."""

    user_id: str | None
    connected: bool
    conversations: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)


class _LocalState:
    """The sockets of this process. Plain dicts: only touched from the event loop, never across an await."""

    def __init__(self) -> None:
        self.sid_user: dict[str, str] = {}
        self.user_sids: dict[str, set[str]] = {}  # connected sockets only
        self.sid_convs: dict[str, set[str]] = {}
        self.conv_user_sids: dict[tuple[str, str], set[str]] = {}
        self.sid_channels: dict[str, set[str]] = {}
        self.channel_sids: dict[str, set[str]] = {}

    def _bind(self, user_id: str, sid: str) -> None:
        bound = self.sid_user.setdefault(sid, user_id)
        if bound != user_id:
            raise ValueError(f"socket {sid!r} belongs to user {bound!r}, not {user_id!r}")

    def add_connection(self, user_id: str, sid: str) -> bool:
        self._bind(user_id, sid)
        sids = self.user_sids.setdefault(user_id, set())
        if sid in sids:
            return False
        sids.add(sid)
        return True

    def remove_connection(self, user_id: str, sid: str) -> bool:
        sids = self.user_sids.get(user_id)
        if sids is None or sid not in sids:
            return False
        sids.discard(sid)
        if not sids:
            del self.user_sids[user_id]
        return True

    def add_join(self, conversation_id: str, user_id: str, sid: str) -> int | None:
        """The user's local socket count in the conversation afterwards, or None if sid had joined already."""
        self._bind(user_id, sid)
        sids = self.conv_user_sids.setdefault((conversation_id, user_id), set())
        if sid in sids:
            return None
        sids.add(sid)
        self.sid_convs.setdefault(sid, set()).add(conversation_id)
        return len(sids)

    def remove_join(self, conversation_id: str, user_id: str, sid: str) -> int | None:
        """The user's local socket count in the conversation afterwards, or None if sid had not joined."""
        key = (conversation_id, user_id)
        sids = self.conv_user_sids.get(key)
        if sids is None or sid not in sids:
            return None
        sids.discard(sid)
        if not sids:
            del self.conv_user_sids[key]
        convs = self.sid_convs.get(sid)
        if convs is not None:
            convs.discard(conversation_id)
            if not convs:
                del self.sid_convs[sid]
        return len(sids)

    def add_subscription(self, channel: str, sid: str) -> bool:
        sids = self.channel_sids.setdefault(channel, set())
        if sid in sids:
            return False
        sids.add(sid)
        self.sid_channels.setdefault(sid, set()).add(channel)
        return True

    def remove_subscription(self, channel: str, sid: str) -> bool:
        sids = self.channel_sids.get(channel)
        if sids is None or sid not in sids:
            return False
        sids.discard(sid)
        if not sids:
            del self.channel_sids[channel]
        chans = self.sid_channels.get(sid)
        if chans is not None:
            chans.discard(channel)
            if not chans:
                del self.sid_channels[sid]
        return True

    def drop_sid(self, user_id: str, sid: str) -> _Dropped:
        """Forget everything about one socket; returns the conversations it leaves and channels it drops."""
        user = self.sid_user.pop(sid, user_id)
        dropped = _Dropped(user_id=user, connected=self.remove_connection(user, sid))
        for conv in sorted(self.sid_convs.get(sid, ())):
            if self.remove_join(conv, user, sid) is not None:
                dropped.conversations.append(conv)
        for channel in sorted(self.sid_channels.get(sid, ())):
            if self.remove_subscription(channel, sid):
                dropped.channels.append(channel)
        return dropped

    def clear(self) -> None:
        for d in (self.sid_user, self.user_sids, self.sid_convs, self.conv_user_sids,
                  self.sid_channels, self.channel_sids):
            d.clear()


# --------------------------------------------------------------------------- interface


class Presence(abc.ABC):
    """Who is online where. One instance per server process; call it from the event loop only."""

    def __init__(self) -> None:
        self._local = _LocalState()
        self._on_offline: OfflineCallback | None = None

    def set_offline_callback(self, fn: OfflineCallback | None) -> None:
        """fn(conversation_id, user_id) is awaited for each user that went offline because a server died."""
        self._on_offline = fn

    async def _notify_offline(self, pairs: Iterable[tuple[str, str]]) -> None:
        fn = self._on_offline
        for conversation_id, user_id in pairs:
            if fn is None:
                continue
            try:
                await fn(conversation_id, user_id)
            except Exception:
                log.exception("presence offline callback failed",
                              extra={"conversation_id": conversation_id, "user_id": user_id})

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> list[tuple[str, str]]:
        """Stop background tasks and drop this server's sockets; returns (conversation, user) now offline."""

    @abc.abstractmethod
    async def connect(self, user_id: str, sid: str, channels: Iterable[str] = ()) -> None:
        """Count the socket as connected and subscribed to `channels` (one Redis round trip)."""

    @abc.abstractmethod
    async def disconnect(self, user_id: str, sid: str) -> list[tuple[str, str]]:
        """Drop the socket, its joins and subscriptions; returns (conversation, user) now offline cluster-wide."""

    @abc.abstractmethod
    async def join(self, conversation_id: str, user_id: str, sid: str) -> bool:
        """True when this is the user's first socket in the conversation in the whole cluster."""

    @abc.abstractmethod
    async def join_listing(self, conversation_id: str, user_id: str, sid: str) -> tuple[bool, list[str]]:
        """join(), and online_in() afterwards (the joiner included), in one round trip."""

    @abc.abstractmethod
    async def leave(self, conversation_id: str, user_id: str, sid: str) -> bool:
        """True when this was the user's last socket in the conversation in the whole cluster."""

    @abc.abstractmethod
    async def online_in(self, conversation_id: str) -> list[str]:
        """Sorted ids of the users with a socket joined to the conversation on a live server."""

    @abc.abstractmethod
    async def online_users(self, user_ids: Iterable[str]) -> set[str]:
        """The subset of user_ids with a connected socket on a live server."""

    @abc.abstractmethod
    async def subscribe(self, channel: str, sid: str) -> None: ...

    @abc.abstractmethod
    async def unsubscribe(self, channel: str, sid: str) -> None: ...

    @abc.abstractmethod
    async def subscriber_count(self, channel: str) -> int:
        """Sockets subscribed to the channel on live servers (best effort)."""

    @abc.abstractmethod
    async def typing_allowed(self, conversation_id: str, user_id: str, interval_s: float) -> bool:
        """True at most once per interval_s per (conversation, user), cluster-wide."""


# --------------------------------------------------------------------------- announcements

PresenceEmit = Callable[[str, list[tuple[str, bool, "str | None"]]], Awaitable[None]]
"""async fn(conversation_id, [(user_id, online, skip_sid), ...]): send these SPEC `presence`
events of one conversation, in this order, handed to the fan-out together."""


class PresenceCoalescer:
    """Holds a conversation's presence changes for `window_s`, then sends them as the SPEC's
    `presence` events (one timer per conversation, not per socket).

    A user who comes and goes (or goes and comes back) within the window produces no event at
    all; the others' view did not change. Without this, a room filling with n members costs
    n²/2 deliveries for events that mostly say what the joiners' `online` lists already said,
    and a reconnecting client flaps offline/online for everyone."""

    def __init__(self, emit: PresenceEmit, window_s: float = 0.2) -> None:
        self._emit = emit
        self.window_s = window_s
        # conversation -> user -> (online, the socket that caused it: it is not told)
        self._pending: dict[str, dict[str, tuple[bool, str | None]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def announce(self, conversation_id: str, user_id: str, online: bool, skip_sid: str | None = None) -> None:
        events = self._pending.setdefault(conversation_id, {})
        held = events.get(user_id)
        if held is not None and held[0] != online:
            del events[user_id]  # a flap inside the window: the others never hear of it
            return
        events[user_id] = (online, skip_sid)
        if conversation_id not in self._timers:
            self._timers[conversation_id] = asyncio.get_running_loop().call_later(
                self.window_s, self._flush, conversation_id)

    def _flush(self, conversation_id: str) -> None:
        self._timers.pop(conversation_id, None)
        events = self._pending.pop(conversation_id, None)
        if events:
            task = asyncio.create_task(self._send(conversation_id, events))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, conversation_id: str, events: dict[str, tuple[bool, str | None]]) -> None:
        # All of the conversation's events at once: the fan-out hands each socket all of them
        # in one call (one write), not one delivery per event.
        try:
            await self._emit(conversation_id, [(user_id, online, skip_sid)
                                               for user_id, (online, skip_sid) in events.items()])
        except Exception:
            log.warning("presence events not delivered", exc_info=True,
                        extra={"conversation_id": conversation_id, "users": len(events)})


# --------------------------------------------------------------------------- memory


class MemoryPresence(Presence):
    """Single-process presence: the local dicts are the whole truth."""

    _PRUNE_AT = 10_000  # typing entries before expired ones are swept

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._monotonic = monotonic
        self._typing_until: dict[tuple[str, str], float] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> list[tuple[str, str]]:
        offline = sorted(self._local.conv_user_sids)
        self._local.clear()
        self._typing_until.clear()
        return offline

    async def connect(self, user_id: str, sid: str, channels: Iterable[str] = ()) -> None:
        self._local.add_connection(user_id, sid)
        for channel in channels:
            self._local.add_subscription(channel, sid)

    async def disconnect(self, user_id: str, sid: str) -> list[tuple[str, str]]:
        dropped = self._local.drop_sid(user_id, sid)
        user = dropped.user_id or user_id
        return [(conv, user) for conv in dropped.conversations
                if (conv, user) not in self._local.conv_user_sids]

    async def join(self, conversation_id: str, user_id: str, sid: str) -> bool:
        return self._local.add_join(conversation_id, user_id, sid) == 1

    async def join_listing(self, conversation_id: str, user_id: str, sid: str) -> tuple[bool, list[str]]:
        return await self.join(conversation_id, user_id, sid), await self.online_in(conversation_id)

    async def leave(self, conversation_id: str, user_id: str, sid: str) -> bool:
        return self._local.remove_join(conversation_id, user_id, sid) == 0

    async def online_in(self, conversation_id: str) -> list[str]:
        return sorted(u for (c, u) in self._local.conv_user_sids if c == conversation_id)

    async def online_users(self, user_ids: Iterable[str]) -> set[str]:
        return {u for u in user_ids if u in self._local.user_sids}

    async def subscribe(self, channel: str, sid: str) -> None:
        self._local.add_subscription(channel, sid)

    async def unsubscribe(self, channel: str, sid: str) -> None:
        self._local.remove_subscription(channel, sid)

    async def subscriber_count(self, channel: str) -> int:
        return len(self._local.channel_sids.get(channel, ()))

    async def typing_allowed(self, conversation_id: str, user_id: str, interval_s: float) -> bool:
        now = self._monotonic()
        key = (conversation_id, user_id)
        if self._typing_until.get(key, 0.0) > now:
            return False
        if len(self._typing_until) >= self._PRUNE_AT:
            self._typing_until = {k: t for k, t in self._typing_until.items() if t > now}
        self._typing_until[key] = now + interval_s
        return True


# --------------------------------------------------------------------------- redis

# Every script starts with this prelude. KEYS[1] is the `servers` ZSET. ARGV[1..12] is
# the header built by RedisPresence._argv(): the lowest heartbeat score that still
# counts as live, the TTL in ms, this server's id, then key templates split around the
# server id (and conversation id) so the scripts can name other servers' keys without
# duplicating chat/keys.py. Script-specific arguments start at ARGV[13].
# Other servers' keys are not declared in KEYS: fine on a single Redis, not on Redis Cluster.
_PRELUDE = """
local live_min = ARGV[1]
local ttl = tonumber(ARGV[2])
local me = ARGV[3]
local function users_key(s) return ARGV[4] .. s .. ARGV[5] end
local function convs_key(s) return ARGV[6] .. s .. ARGV[7] end
local function conv_key(s, c) return ARGV[8] .. s .. ARGV[9] .. c .. ARGV[10] end
local function chans_key(s) return ARGV[11] .. s .. ARGV[12] end
local function live_servers()
  return redis.call('ZRANGE', KEYS[1], live_min, '+inf', 'BYSCORE')
end
local function in_conv_elsewhere(live, conv, user, skip)
  for _, s in ipairs(live) do
    if s ~= skip and redis.call('HEXISTS', conv_key(s, conv), user) == 1 then return true end
  end
  return false
end
local function hincr(key, field)
  local n = redis.call('HINCRBY', key, field, 1)
  redis.call('PEXPIRE', key, ttl)
  return n
end
-- Returns the count left; a negative count means the field was already gone
-- (the server was reaped meanwhile), which is not a "last socket".
local function hdecr(key, field)
  local n = redis.call('HINCRBY', key, field, -1)
  if n <= 0 then redis.call('HDEL', key, field) end
  return n
end
"""

# ARGV[13] conversation, ARGV[14] user -> 1 if first socket of the user in the conversation cluster-wide.
_JOIN = _PRELUDE + """
local conv, user = ARGV[13], ARGV[14]
local n = hincr(conv_key(me, conv), user)
redis.call('SADD', convs_key(me), conv)
redis.call('PEXPIRE', convs_key(me), ttl)
if n > 1 then return 0 end
if in_conv_elsewhere(live_servers(), conv, user, me) then return 0 end
return 1
"""

# ARGV[13] user, ARGV[14] '1' if the socket was connected (users hash), ARGV[15] n,
# ARGV[16..15+n] conversations it leaves, the rest channels it drops.
# -> the conversations the user is now offline in, cluster-wide.
_RELEASE = _PRELUDE + """
local user = ARGV[13]
if ARGV[14] == '1' then hdecr(users_key(me), user) end
local nconvs = tonumber(ARGV[15])
local live = nil
local offline = {}
for i = 16, 15 + nconvs do
  local conv = ARGV[i]
  local key = conv_key(me, conv)
  if hdecr(key, user) == 0 then
    if redis.call('EXISTS', key) == 0 then redis.call('SREM', convs_key(me), conv) end
    live = live or live_servers()
    if not in_conv_elsewhere(live, conv, user, me) then offline[#offline + 1] = conv end
  end
end
for i = 16 + nconvs, #ARGV do hdecr(chans_key(me), ARGV[i]) end
return offline
"""

# ARGV[13] conversation -> user ids (unsorted, unique) joined on live servers.
_ONLINE_IN = _PRELUDE + """
local seen, out = {}, {}
for _, s in ipairs(live_servers()) do
  for _, u in ipairs(redis.call('HKEYS', conv_key(s, ARGV[13]))) do
    if not seen[u] then seen[u] = true; out[#out + 1] = u end
  end
end
return out
"""

# ARGV[13..] user ids -> those connected on a live server. HMGET in chunks: unpack()
# of thousands of values would overflow Lua's C stack.
_ONLINE_USERS = _PRELUDE + """
local live = live_servers()
local seen, out = {}, {}
for first = 13, #ARGV, 500 do
  local last = math.min(first + 499, #ARGV)
  for _, s in ipairs(live) do
    local vals = redis.call('HMGET', users_key(s), unpack(ARGV, first, last))
    for j = 1, last - first + 1 do
      local u = ARGV[first + j - 1]
      if vals[j] and not seen[u] then seen[u] = true; out[#out + 1] = u end
    end
  end
end
return out
"""

# ARGV[13] channel -> total subscribed sockets on live servers.
_SUBSCRIBERS = _PRELUDE + """
local total = 0
for _, s in ipairs(live_servers()) do
  total = total + (tonumber(redis.call('HGET', chans_key(s), ARGV[13])) or 0)
end
return total
"""

# ARGV[13] now, ARGV[14] '1' to refuse re-adding a server that was reaped meanwhile.
# -> 1, or 0 when this server is no longer in `servers` (the caller re-publishes its state).
_HEARTBEAT = _PRELUDE + """
if ARGV[14] == '1' and not redis.call('ZSCORE', KEYS[1], me) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[13], me)
redis.call('PEXPIRE', users_key(me), ttl)
redis.call('PEXPIRE', convs_key(me), ttl)
redis.call('PEXPIRE', chans_key(me), ttl)
for _, conv in ipairs(redis.call('SMEMBERS', convs_key(me))) do
  redis.call('PEXPIRE', conv_key(me, conv), ttl)
end
return 1
"""

# ARGV[13] server id, ARGV[14] '1' to act only if its heartbeat is stale.
# Removes the server and all its keys; -> flat list conv1, user1, conv2, user2... of
# the users of that server with no socket left in the conversation on a live server.
# Checking the score and removing it in one script means exactly one reaper wins.
_REAP = _PRELUDE + """
local dead = ARGV[13]
if ARGV[14] == '1' then
  local score = redis.call('ZSCORE', KEYS[1], dead)
  if not score or tonumber(score) >= tonumber(live_min) then return {} end
end
redis.call('ZREM', KEYS[1], dead)
local live = live_servers()
local out = {}
local convs = convs_key(dead)
for _, conv in ipairs(redis.call('SMEMBERS', convs)) do
  local key = conv_key(dead, conv)
  for _, user in ipairs(redis.call('HKEYS', key)) do
    if not in_conv_elsewhere(live, conv, user, dead) then
      out[#out + 1] = conv
      out[#out + 1] = user
    end
  end
  redis.call('DEL', key)
end
redis.call('DEL', convs, users_key(dead), chans_key(dead))
return out
"""

RELEASE_BATCH = 500  # release scripts per pipeline

_SERVER_MARK = "\x00S\x00"
_CONV_MARK = "\x00C\x00"


def _key_templates(keys: RedisKeys) -> list[str]:
    """The header's key templates: each key name split around the server (and conversation) id."""
    out: list[str] = []
    for name in (keys.server_users(_SERVER_MARK), keys.server_conversations(_SERVER_MARK)):
        out.extend(name.split(_SERVER_MARK))
    conv = keys.server_conversation_users(_SERVER_MARK, _CONV_MARK)
    head, rest = conv.split(_SERVER_MARK)
    middle, tail = rest.split(_CONV_MARK)  # ValueError if keys.py ever puts the conversation first
    out.extend((head, middle, tail))
    out.extend(keys.server_channels(_SERVER_MARK).split(_SERVER_MARK))
    if len(out) != 9:
        raise ValueError("unexpected presence key layout in chat/keys.py")
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextlib.contextmanager
def _redis_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise PresenceUnavailable(f"presence {operation}: Redis unavailable ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class _Release:
    """Decrements owed to Redis for one socket (leave, unsubscribe or disconnect)."""

    user_id: str
    connected: bool
    conversations: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()


class RedisPresence(Presence):
    """Presence shared by every server process through one Redis (see docs/presence.md).

    server_id must be unique per process start (see new_server_id()); clocks of the
    servers must agree to well under dead_after_s, since heartbeat times come from them.
    """

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        server_id: str,
        *,
        heartbeat_s: float = 5.0,
        dead_after_s: float = 20.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        if not 0 < heartbeat_s < dead_after_s:
            raise ValueError("need 0 < heartbeat_s < dead_after_s")
        self.server_id = server_id
        self._redis = redis
        self._keys = keys
        self._heartbeat_s = heartbeat_s
        self._dead_after_s = dead_after_s
        # Keys outlive a crash long enough for a reaper to read them; the heartbeat refreshes them.
        self._ttl_ms = int(dead_after_s * 3 * 1000)
        self._reap_every_s = min(heartbeat_s, dead_after_s / 6)
        self._clock = clock
        self._templates = _key_templates(keys)
        self._join_script = redis.register_script(_JOIN)
        self._release_script = redis.register_script(_RELEASE)
        self._online_in_script = redis.register_script(_ONLINE_IN)
        self._online_users_script = redis.register_script(_ONLINE_USERS)
        self._subscribers_script = redis.register_script(_SUBSCRIBERS)
        self._heartbeat_script = redis.register_script(_HEARTBEAT)
        self._reap_script = redis.register_script(_REAP)
        # connect and join_listing of concurrent sockets share round trips (chat/autopipe.py).
        self._auto = AutoPipeline(redis)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Decrements that failed on a Redis error, retried by the heartbeat so counts converge.
        self._pending: list[_Release] = []
        # Decrements waiting for the one task that sends them (see _drain_releases).
        self._releases: list[tuple[_Release, asyncio.Future[list[str]]]] = []
        self._release_task: asyncio.Task[None] | None = None
        # A connect, join or subscribe that Redis missed: the heartbeat republishes the whole
        # local state (which makes the pending decrements moot) once Redis answers again.
        self._stale = False
        self._degraded_warned_at = 0.0

    def _degrade(self, error: PresenceUnavailable) -> None:
        """Connects, joins and subscribes go on without Redis: this process's sockets stay
        counted locally and reach Redis with the next heartbeat (docs/reliability.md)."""
        self._stale = True
        now = time.monotonic()
        if now - self._degraded_warned_at >= 5.0:
            self._degraded_warned_at = now
            log.warning("presence degraded to this process: %s", error)

    # -- plumbing

    def _argv(self, *extra: str) -> list[str]:
        live_min = self._clock() - self._dead_after_s
        return [repr(live_min), str(self._ttl_ms), self.server_id, *self._templates, *extra]

    @property
    def _script_keys(self) -> list[str]:
        return [self._keys.servers]

    # -- lifecycle

    async def start(self) -> None:
        """Publish this server (dropping leftovers of an earlier process with the same id), start the loops."""
        if self._tasks:
            return
        with _redis_errors("start"):
            leftovers = await self._resync()
        await self._notify_offline(leftovers)
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name=f"presence-heartbeat-{self.server_id}"),
            asyncio.create_task(self._reap_loop(), name=f"presence-reaper-{self.server_id}"),
        ]

    async def stop(self) -> list[tuple[str, str]]:
        await self._cancel_tasks()
        if self._release_task is not None:
            self._release_task.cancel()
            with contextlib.suppress(BaseException):
                await self._release_task
        for _, future in self._releases:  # the reap below drops this server's counts anyway
            if not future.done():
                future.set_result([])
        self._releases.clear()
        self._local.clear()
        self._pending.clear()
        with _redis_errors("stop"):
            raw = await self._reap_script(keys=self._script_keys, args=self._argv(self.server_id, "0"))
        return _pairs(raw)

    async def _cancel_tasks(self) -> None:
        """Stop heartbeat and reaper without touching Redis."""
        tasks, self._tasks = self._tasks, []
        # The flag ends the loops even if a cancellation gets swallowed: seen with redis-py
        # when the cancel lands inside a command, leaving the task asleep in its next sleep.
        self._stopping = True
        pending = set(tasks)
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self._stopping = False

    async def _resync(self) -> list[tuple[str, str]]:
        """Replace this server's keys with the local state and (re)register it, in one transaction."""
        local = self._local
        pipe = self._redis.pipeline(transaction=True)
        await self._reap_script(keys=self._script_keys, args=self._argv(self.server_id, "0"), client=pipe)
        ttl = self._ttl_ms
        users_key = self._keys.server_users(self.server_id)
        if local.user_sids:
            pipe.hset(users_key, mapping={u: len(s) for u, s in local.user_sids.items()})
            pipe.pexpire(users_key, ttl)
        per_conv: dict[str, dict[str, int]] = {}
        for (conv, user), sids in local.conv_user_sids.items():
            per_conv.setdefault(conv, {})[user] = len(sids)
        if per_conv:
            convs_key = self._keys.server_conversations(self.server_id)
            pipe.sadd(convs_key, *per_conv)
            pipe.pexpire(convs_key, ttl)
            for conv, counts in per_conv.items():
                conv_key = self._keys.server_conversation_users(self.server_id, conv)
                pipe.hset(conv_key, mapping=counts)  # type: ignore[arg-type]
                pipe.pexpire(conv_key, ttl)
        if local.channel_sids:
            chans_key = self._keys.server_channels(self.server_id)
            pipe.hset(chans_key, mapping={c: len(s) for c, s in local.channel_sids.items()})
            pipe.pexpire(chans_key, ttl)
        pipe.zadd(self._keys.servers, {self.server_id: self._clock()})
        results = await pipe.execute()
        return _pairs(results[0])

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._beat()
            except Exception:
                log.warning("presence heartbeat failed", exc_info=True, extra={"server_id": self.server_id})

    async def _beat(self) -> None:
        if self._stale:
            log.warning("presence: Redis answers again; re-publishing this server's state",
                        extra={"server_id": self.server_id})
            await self._resync()
            self._pending.clear()
            self._stale = False
            return
        alive = await self._heartbeat_script(
            keys=self._script_keys, args=self._argv(repr(self._clock()), "1"))
        if not alive:
            # Our heartbeat was late by more than dead_after_s (event loop blocked, Redis
            # unreachable...) and another server reaped us: its users were announced offline.
            # Publish the local state again; they come back without an `online` event.
            log.warning("presence: this server was reaped as dead; re-publishing its state",
                        extra={"server_id": self.server_id})
            self._pending.clear()
            await self._resync()
            return
        while self._pending:
            release = self._pending[0]
            offline = await self._run_release(release)
            self._pending.pop(0)
            await self._notify_offline((conv, release.user_id) for conv in offline)

    async def _reap_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._reap_every_s)
            try:
                await self._reap_dead()
            except Exception:
                log.warning("presence reaper failed", exc_info=True, extra={"server_id": self.server_id})

    async def _reap_dead(self) -> list[tuple[str, str]]:
        """Clean up after every server whose heartbeat is stale; returns and reports who went offline."""
        live_min = self._clock() - self._dead_after_s
        dead = await self._redis.zrange(self._keys.servers, "-inf", f"({live_min!r}", byscore=True)
        offline: list[tuple[str, str]] = []
        for raw_id in dead:
            dead_id = _text(cast(bytes | str, raw_id))
            if dead_id == self.server_id:
                continue  # our own heartbeat is late: _beat() re-publishes, never reap ourselves
            pairs = _pairs(await self._reap_script(keys=self._script_keys, args=self._argv(dead_id, "1")))
            log.info("presence: cleaned up after dead server %s (%d offline)", dead_id, len(pairs),
                     extra={"dead_server_id": dead_id})
            offline.extend(pairs)
            await self._notify_offline(pairs)
        return offline

    # -- sockets

    async def connect(self, user_id: str, sid: str, channels: Iterable[str] = ()) -> None:
        connected = self._local.add_connection(user_id, sid)
        added = [c for c in channels if self._local.add_subscription(c, sid)]
        if not (connected or added):
            return
        try:
            with _redis_errors("connect"):
                commands: list[Command] = []
                if connected:
                    key = self._keys.server_users(self.server_id)
                    commands += [("HINCRBY", key, user_id, 1), ("PEXPIRE", key, self._ttl_ms)]
                if added:
                    chans = self._keys.server_channels(self.server_id)
                    commands += [("HINCRBY", chans, channel, 1) for channel in added]
                    commands.append(("PEXPIRE", chans, self._ttl_ms))
                await self._auto.execute(commands)
        except PresenceUnavailable as exc:
            self._degrade(exc)

    async def disconnect(self, user_id: str, sid: str) -> list[tuple[str, str]]:
        dropped = self._local.drop_sid(user_id, sid)
        user = dropped.user_id or user_id
        if not (dropped.connected or dropped.conversations or dropped.channels):
            return []
        release = _Release(user, dropped.connected, tuple(dropped.conversations), tuple(dropped.channels))
        return [(conv, user) for conv in await self._release(release)]

    async def join(self, conversation_id: str, user_id: str, sid: str) -> bool:
        if self._local.add_join(conversation_id, user_id, sid) is None:
            return False
        try:
            with _redis_errors("join"):
                first = await self._join_script(
                    keys=self._script_keys, args=self._argv(conversation_id, user_id))
        except PresenceUnavailable as exc:
            self._degrade(exc)
            return False  # unknown whether first in the cluster: no `online` announcement
        return bool(first)

    async def join_listing(self, conversation_id: str, user_id: str, sid: str) -> tuple[bool, list[str]]:
        if self._local.add_join(conversation_id, user_id, sid) is None:
            return False, await self.online_in(conversation_id)
        try:
            with _redis_errors("join"):
                first, online = await self._auto.execute([
                    Script(self._join_script, self._script_keys, self._argv(conversation_id, user_id)),
                    Script(self._online_in_script, self._script_keys, self._argv(conversation_id))])
        except PresenceUnavailable as exc:
            self._degrade(exc)  # as join(): counted here, published by the heartbeat
            return False, await self.online_in(conversation_id)
        return bool(first), sorted(_text(u) for u in online)

    async def leave(self, conversation_id: str, user_id: str, sid: str) -> bool:
        if self._local.remove_join(conversation_id, user_id, sid) is None:
            return False
        return bool(await self._release(_Release(user_id, False, (conversation_id,))))

    def _release_args(self, release: _Release) -> list[str]:
        return self._argv(release.user_id, "1" if release.connected else "0",
                          str(len(release.conversations)), *release.conversations, *release.channels)

    async def _run_release(self, release: _Release) -> list[str]:
        with _redis_errors("release"):
            raw = await self._release_script(keys=self._script_keys, args=self._release_args(release))
        return [_text(c) for c in raw]

    async def _release(self, release: _Release) -> list[str]:
        """Decrement in Redis through the release queue; on failure the local state is already
        gone, so the heartbeat retries it (and reports the resulting offline users)."""
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._releases.append((release, future))
        if self._release_task is None or self._release_task.done():
            self._release_task = asyncio.create_task(self._drain_releases(), name=f"presence-releases-{self.server_id}")
        return await future

    async def _drain_releases(self) -> None:
        """Run queued releases in pipelines of up to RELEASE_BATCH on one connection at a time:
        5,000 sockets dropping at once cost a few pipelines, not 5,000 pooled connections
        (which ran the pool dry and left users online)."""
        while self._releases:
            batch = self._releases[:RELEASE_BATCH]
            del self._releases[:RELEASE_BATCH]
            try:
                with _redis_errors("release"):
                    results = await self._release_round_trip([release for release, _ in batch])
            except PresenceUnavailable as exc:
                for release, future in batch:
                    self._pending.append(release)
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException as exc:  # cancelled (stop): nobody may wait forever
                for release, future in batch:
                    self._pending.append(release)
                    if not future.done():
                        future.set_exception(PresenceUnavailable(f"presence release: {type(exc).__name__}"))
                raise
            for (release, future), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    self._pending.append(release)
                    if not future.done():
                        future.set_exception(PresenceUnavailable(
                            f"presence release: Redis error ({type(result).__name__}: {result})"))
                elif not future.done():
                    future.set_result([_text(c) for c in result])

    async def _release_round_trip(self, releases: list[_Release]) -> list[Any]:
        """The release script of each, as EVALSHA in one packed write (chat/autopipe.py's
        `round_trip`: no redis-py `Pipeline`, which sends SCRIPT EXISTS first, a round trip of
        its own, and keeps per-command bookkeeping); error replies in place. A script Redis
        does not know (restarted, flushed) is run again through redis-py, which loads it."""
        keys = self._script_keys
        sha = self._release_script.sha
        results = await round_trip(self._redis, [("EVALSHA", sha, len(keys), *keys, *self._release_args(r))
                                                 for r in releases])
        for i, result in enumerate(results):
            if isinstance(result, NoScriptError):
                try:
                    results[i] = await self._release_script(keys=keys, args=self._release_args(releases[i]))
                except (RedisError, OSError) as exc:
                    results[i] = exc
        return results

    # -- queries

    async def online_in(self, conversation_id: str) -> list[str]:
        try:
            with _redis_errors("online_in"):
                raw = await self._online_in_script(keys=self._script_keys, args=self._argv(conversation_id))
        except PresenceUnavailable as exc:
            self._degrade(exc)  # a join's answer: this process's view rather than no join
            return sorted({u for (c, u) in self._local.conv_user_sids if c == conversation_id})
        return sorted(_text(u) for u in raw)

    async def online_users(self, user_ids: Iterable[str]) -> set[str]:
        wanted = sorted(set(user_ids))
        if not wanted:
            return set()
        with _redis_errors("online_users"):
            raw = await self._online_users_script(keys=self._script_keys, args=self._argv(*wanted))
        return {_text(u) for u in raw}

    # -- channels

    async def subscribe(self, channel: str, sid: str) -> None:
        if not self._local.add_subscription(channel, sid):
            return
        key = self._keys.server_channels(self.server_id)
        try:
            with _redis_errors("subscribe"):
                pipe = self._redis.pipeline(transaction=False)
                pipe.hincrby(key, channel, 1)
                pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()
        except PresenceUnavailable as exc:
            self._degrade(exc)

    async def unsubscribe(self, channel: str, sid: str) -> None:
        if not self._local.remove_subscription(channel, sid):
            return
        user = self._local.sid_user.get(sid, "")
        await self._release(_Release(user, False, (), (channel,)))

    async def subscriber_count(self, channel: str) -> int:
        with _redis_errors("subscriber_count"):
            total = await self._subscribers_script(keys=self._script_keys, args=self._argv(channel))
        return int(total)

    # -- typing

    async def typing_allowed(self, conversation_id: str, user_id: str, interval_s: float) -> bool:
        key = self._keys.typing_throttle(conversation_id, user_id)
        with _redis_errors("typing_allowed"):
            ok = await self._redis.set(key, b"1", nx=True, px=max(1, int(interval_s * 1000)))
        return bool(ok)


def _pairs(flat: list[bytes | str]) -> list[tuple[str, str]]:
    """[c1, u1, c2, u2, ...] -> [(c1, u1), (c2, u2), ...]"""
    items = [_text(v) for v in flat]
    return list(zip(items[0::2], items[1::2], strict=True))
