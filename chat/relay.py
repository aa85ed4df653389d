"""Cross-process relay over Redis pub/sub, one channel per conversation.

python-socketio's AsyncRedisManager publishes every emit on one channel that every process
reads and decodes, members or not. Here a conversation broadcast is published once, already
encoded, on the conversation's own channel (`RedisKeys.room_relay_channel`), which a process
subscribes to while it has local sockets in the conversation: from its first local join to its
last local leave or disconnect (`FanoutManager.on_room_open/close`; chat/delivery.py holds the
close back `room_linger_s` for the sockets of a reconnect storm to come back). A receiving
process hands the packet to its sockets with `FanoutManager.deliver` (encode once, no Task per
recipient).

Two more channels are read by every process:

* `RedisKeys.socketio_channel`, in python-socketio's pub/sub message format (JSON: `method`,
  `event`, `data`, `room`, `skip_sid`, `namespace`, `host_id`), for emits to a user, a channel
  or one socket of another process, and for `RedisPublisher` (publisher/, backstage_publisher),
  which writes `emit` messages in that format. Only `emit` (without callback) and
  `disconnect` are acted on, the only methods the servers and the publisher use.
* `RedisKeys.control_channel`: cluster control messages (chat/delivery.py).

Every payload is JSON (orjson); nothing is ever unpickled. The subscriber reconnects and
resubscribes to everything it needs within `max_backoff_s` (2 s) of Redis coming back; an idle
subscriber PINGs every `keepalive_s` (1 s) and reconnects after 3 s without an answer, so a
connection that died silently (no reset: a network cut) is noticed too.
A join waits until its conversation's subscription is confirmed by Redis (bounded by
`subscribe_timeout_s`), because the service reads the conversation's recent messages right
after entering the room: anything committed after that read must arrive live.

Relay trouble never holds a committed message's ack hostage (docs/reliability.md): a sender
waits at most `publish_timeout_s` (0.5 s) for its publish, and while a publish is late the
next senders do not wait at all. A publish that is merely late (a loop saturated by a connect
storm reads Redis's answer late; a busy Redis) still completes and is not a failure: a publish
fails after an error or after `publish_give_up_s` (5 s) without an answer. After a failure
publishes are skipped (counted, one WARNING per `_WARN_EVERY_S`) for `_PUBLISH_BACKOFF_S`
rather than each one waiting on a frozen Redis. What was not relayed is recovered by the clients with `since_seq`: when the
subscriber is back after a loss (messages published meanwhile never reached this process),
or when publishing works again after failures (the other processes missed ours; a
`relay_resync` control message tells every process), `on_recovered` runs and the sockets are
told to resync (chat/delivery.py).

A subscription can also die without any error (a wedged listener, a connection that answers
PINGs but no longer delivers): every `canary_interval_s` each process publishes a canary on
the control channel and expects to hear it back. A canary published successfully and not
heard within `canary_timeout_s` marks the process deaf: ERROR log, `backstage_relay_deaf`,
`/readyz` 503, and the subscriber is rebuilt on a new connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge

from chat.autopipe import round_trip
from chat.fanout import Broadcast, FanoutManager, Payload
from chat.keys import RedisKeys

log = logging.getLogger(__name__)

RELAY_RECEIVED = Counter("backstage_relay_received_total",
                         "Relay messages read from Redis by this process", ["kind"])
_RECEIVED_ROOM = RELAY_RECEIVED.labels("room")  # per relayed broadcast: the child looked up once
RELAY_PUBLISH_FAILED = Counter("backstage_relay_publish_failures_total",
                               "Relay publishes that failed (Redis unavailable)")
RELAY_ROOMS = Gauge("backstage_relay_subscribed_rooms", "Conversation channels this process subscribes to")
RELAY_DEAF = Gauge("backstage_relay_deaf", "1 while this process does not hear its own relay canary")
RELAY_DEAF_DETECTED = Counter("backstage_relay_deaf_detections_total",
                                  "Times this process found its relay subscription deaf and rebuilt it")
RELAY_RECOVERIES = Counter("backstage_relay_recoveries_total",
                           "Relay recoveries after which sockets were told to resync", ["cause"])

_PUBLISH_BACKOFF_S = 1.0  # after a failed publish, skip publishing for this long
_WARN_EVERY_S = 5.0
CANARY = "relay_canary"
RESYNC = "relay_resync"
# Tests only: with this set, SIGUSR2 makes the current subscription silently deaf (it keeps
# its connection and answers PINGs, but drops every message), which the canary must catch.
FAILPOINT_ENV = "BACKSTAGE_RELAY_FAILPOINT"

ControlHandler = Callable[[dict[str, Any]], Awaitable[None]]


def _packet_to_json(encoded: Payload | list[Payload]) -> Any:
    parts = encoded if isinstance(encoded, list) else [encoded]
    out: list[Any] = [p if isinstance(p, str) else {"b64": base64.b64encode(p).decode()} for p in parts]
    return out[0] if len(out) == 1 and isinstance(out[0], str) else out


def _packet_from_json(value: Any) -> Payload | list[Payload]:
    if isinstance(value, str):
        return value
    return [p if isinstance(p, str) else base64.b64decode(p["b64"]) for p in value]


async def _has_unread(pubsub: Any) -> bool:
    """Whether the subscriber's connection has received bytes not read yet (or was closed: the
    next read raises then)."""
    connection = getattr(pubsub, "connection", None)
    if connection is None:
        return False
    try:
        return bool(await connection.can_read_destructive())
    except Exception:
        return False


class RedisRelay:
    def __init__(self, redis: aioredis.Redis, manager: FanoutManager, keys: RedisKeys, *,
                 relayed: Callable[[str], bool], subscribe_timeout_s: float = 5.0,
                 max_backoff_s: float = 2.0, keepalive_s: float = 1.0, publish_timeout_s: float = 0.5,
                 publish_give_up_s: float = 5.0, canary_interval_s: float = 2.0,
                 canary_timeout_s: float = 6.0) -> None:
        self._redis = redis
        self._manager = manager
        self._keys = keys
        self._relayed = relayed
        self._subscribe_timeout_s = subscribe_timeout_s
        self._max_backoff_s = max_backoff_s
        self._keepalive_s = keepalive_s
        self._publish_timeout_s = publish_timeout_s
        self._publish_give_up_s = max(publish_give_up_s, publish_timeout_s)
        self._canary_interval_s = canary_interval_s
        self._canary_timeout_s = canary_timeout_s
        self.host_id = uuid.uuid4().hex
        self._room_prefix = keys.room_relay_channel("")
        self._fixed = (keys.socketio_channel, keys.control_channel)
        self._control_handler: ControlHandler | None = None
        # Rooms with local members (wanted), channels SUBSCRIBEd on the current connection
        # (sent), channels Redis confirmed (confirmed), commands not yet confirmed (pending).
        self._wanted: set[str] = set()
        self._sent: set[str] = set()
        self._confirmed: set[str] = set()
        self._pending: dict[str, int] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.on_recovered: Callable[[str], Awaitable[None]] | None = None
        # Hooks for what is kept from the stream of room broadcasts (chat/recent.py): every
        # relayed room packet before it is delivered, and the moments the stream may have a
        # hole (subscriber lost, or found deaf).
        self.on_room_packet: Callable[[str, Payload | list[Payload]], None] | None = None
        self.on_trouble: Callable[[], None] | None = None
        # A relayed room packet whose envelope names its sender: the local sockets that block the
        # sender are handed a placeholder instead and returned, to be skipped (chat/delivery.py).
        self.hide_from_blockers: Callable[[str, str, Payload | list[Payload]], set[str] | None] | None = None
        self._lost = False  # the subscriber lost its connection since it last settled
        self._skip_publish_until = 0.0
        self._publish_failing = False
        self._warned_at = -_WARN_EVERY_S
        self._unwarned = 0
        self._canary: asyncio.Task[None] | None = None
        self._unheard_since: float | None = None  # first canary published and not heard back
        self.deaf = False
        self._deaf_pubsub: Any = None  # failpoint only
        self._background: set[asyncio.Task[None]] = set()
        self._outbound: list[tuple[list[tuple[str, bytes]], asyncio.Future[None]]] = []
        self._publisher: asyncio.Task[None] | None = None
        self._late = False  # the pipeline in flight is past publish_timeout_s: senders do not wait
        self._recovering = False  # on_recovered is running
        self._recover_again: str | None = None  # the cause of one more run asked for meanwhile
        manager.on_room_open = self._room_opened
        manager.on_room_close = self._room_closed

    def set_control_handler(self, handler: ControlHandler) -> None:
        self._control_handler = handler

    # ------------------------------------------------------------ publishing
    async def publish_room(self, room: str, encoded: Payload | list[Payload], skip_sid: str | None,
                           sender: str | None = None) -> None:
        await self.queue_rooms([(room, encoded, skip_sid, sender)])

    def queue_rooms(self, items: list[tuple[str, Payload | list[Payload], str | None, str | None]]
                    ) -> asyncio.Future[None]:
        """Queue room broadcasts for publishing; the future completes once they were published
        (or given up: see `_publish_many`). Every room broadcast of this process goes through
        this one queue, so they reach Redis in the order they were queued; what queued up while
        a pipeline was in flight goes in the next one (one round trip for all of it). The caller
        does not wait for Redis before its next hand-over, only for its own result. An item's
        `sender` (a message's) goes in the envelope, for the receivers' blockers
        (`hide_from_blockers`)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._late:  # queued behind a late publish: published in order, nobody waits for it
            done.set_result(None)
        self._outbound.append(([(self._keys.room_relay_channel(room), orjson.dumps(
            {"host_id": self.host_id, "skip_sid": skip_sid, "packet": _packet_to_json(encoded)}
            if sender is None else
            {"host_id": self.host_id, "skip_sid": skip_sid, "sender": sender, "packet": _packet_to_json(encoded)}))
            for room, encoded, skip_sid, sender in items], done))
        if self._publisher is None or self._publisher.done():
            self._publisher = loop.create_task(self._drain_outbound())
        return done

    async def _drain_outbound(self) -> None:
        loop = asyncio.get_running_loop()
        while self._outbound:
            queued, self._outbound = self._outbound, []
            # The senders wait publish_timeout_s at most; the publish itself goes on (in order:
            # the next pipeline waits for it) until it is answered or given up.
            release = loop.call_later(self._publish_timeout_s, self._release_late, queued)
            try:
                await self._publish_many([m for messages, _ in queued for m in messages])
            except Exception:  # never leave a sender waiting; the clients resync by seq
                log.exception("relay publish failed")
            finally:
                release.cancel()
                self._late = False
                self._release(queued)

    def _release_late(self, queued: list[tuple[list[tuple[str, bytes]], asyncio.Future[None]]]) -> None:
        self._late = True
        self._release(queued)
        for _, done in self._outbound:  # queued meanwhile, behind the late one
            if not done.done():
                done.set_result(None)

    @staticmethod
    def _release(queued: list[tuple[list[tuple[str, bytes]], asyncio.Future[None]]]) -> None:
        for _, done in queued:
            if not done.done():
                done.set_result(None)

    async def publish_emit(self, event: str, data: Any, room: str, skip_sid: str | None = None) -> None:
        """An emit to a room of any process, in python-socketio's pub/sub format."""
        await self._publish(self._keys.socketio_channel, orjson.dumps({
            "method": "emit", "event": event, "data": [data], "binary": False, "namespace": "/",
            "room": room, "skip_sid": skip_sid, "callback": None, "host_id": self.host_id}))

    async def publish_disconnect(self, sid: str) -> None:
        await self._publish(self._keys.socketio_channel, orjson.dumps(
            {"method": "disconnect", "sid": sid, "namespace": "/", "host_id": self.host_id}))

    async def publish_control(self, message: dict[str, Any], *, timeout_s: float | None = None) -> None:
        """Raises when Redis did not take it within `timeout_s` (default publish_timeout_s).
        A failure counts like a failed relay publish: once a control message (the canary's,
        every `canary_interval_s`, at the latest) gets through again, every process is told
        to resync, and so to check its sockets' access again (a revocation that was not
        relayed is never lost)."""
        payload = orjson.dumps(message)
        for attempt in (1, 2):  # like _publish: a pooled connection may have gone stale
            try:
                await asyncio.wait_for(self._redis.publish(self._keys.control_channel, payload),
                                       self._publish_timeout_s if timeout_s is None else timeout_s)
                break
            except (aioredis.RedisError, OSError, TimeoutError) as exc:
                if attempt == 2 or isinstance(exc, TimeoutError):
                    self._publish_failed(exc)
                    raise
        self._published_again()

    async def _publish(self, channel: str, payload: bytes) -> None:
        """The caller waits publish_timeout_s at most; the publish goes on until given up."""
        task = asyncio.get_running_loop().create_task(self._publish_many([(channel, payload)]))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.wait((task,), timeout=self._publish_timeout_s)
        if task.done():
            task.result()

    async def _publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        # The message is committed and its sender waits publish_timeout_s at most (the callers
        # above). Two attempts on a connection error (a pooled connection may have gone stale),
        # none more on a timeout (a frozen Redis: no answer within publish_give_up_s); then the
        # emit is given up, and while Redis keeps failing the next ones are not even tried for
        # a moment. The sockets resync once the relay is back.
        # Several messages go in one pipeline: one round trip, published in this order.
        loop = asyncio.get_running_loop()
        if loop.time() < self._skip_publish_until:
            self._publish_failed(None)
            return
        for attempt in (1, 2):
            try:
                await asyncio.wait_for(self._send(messages), self._publish_give_up_s)
                break
            except TimeoutError as exc:
                self._publish_failed(exc)
                return
            except (aioredis.RedisError, OSError) as exc:
                if attempt == 2:
                    self._publish_failed(exc)
                    return
        self._published_again()

    def _published_again(self) -> None:
        if self._publish_failing:
            self._publish_failing = False
            log.warning("relay publishing works again; telling every process to resync")
            self._spawn(self._announce_resync())

    async def _send(self, messages: list[tuple[str, bytes]]) -> None:
        if len(messages) == 1:
            await self._redis.publish(*messages[0])
            return
        for reply in await round_trip(self._redis, [("PUBLISH", channel, payload) for channel, payload in messages]):
            if isinstance(reply, Exception):
                raise reply

    def _publish_failed(self, exc: BaseException | None) -> None:
        RELAY_PUBLISH_FAILED.inc()
        self._publish_failing = True
        now = asyncio.get_running_loop().time()
        if exc is not None:
            self._skip_publish_until = now + _PUBLISH_BACKOFF_S
        if now - self._warned_at >= _WARN_EVERY_S:
            log.warning("relay publish failed (%s); %d more since the last warning; the messages are "
                        "stored and clients catch up by since_seq",
                        type(exc).__name__ if exc is not None else "skipped: Redis failing", self._unwarned)
            self._warned_at, self._unwarned = now, 0
        else:
            self._unwarned += 1

    async def _announce_resync(self) -> None:
        try:
            await self.publish_control({"type": RESYNC, "host_id": self.host_id})
        except Exception as exc:  # the subscribers' own reconnects still resync
            log.warning("relay resync announcement failed (%s)", type(exc).__name__)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _recovered(self, cause: str) -> None:
        """Runs `on_recovered`, one at a time: recoveries asked for while one runs (several
        processes' `relay_resync` messages, a subscriber back at the same moment) make one more
        run after it, not one each at once (each reads every local socket's access: together
        they ran the database pool dry)."""
        RELAY_RECOVERIES.labels(cause).inc()
        if self.on_recovered is None:
            return
        if self._recovering:
            self._recover_again = cause
            return
        self._recovering = True
        try:
            while True:
                try:
                    await self.on_recovered(cause)
                except Exception:
                    log.exception("relay resync failed")
                if self._recover_again is None:
                    break
                cause, self._recover_again = self._recover_again, None
        finally:
            self._recovering = False

    # ------------------------------------------------------------ subscriptions
    def _room_opened(self, room: str) -> None:
        if self._relayed(room):
            self._wanted.add(room)
            self._kick()

    def _room_closed(self, room: str) -> None:
        if room in self._wanted:
            self._wanted.discard(room)
            self._kick()

    def _kick(self) -> None:
        if self._pubsub is not None and (self._syncer is None or self._syncer.done()):
            self._syncer = asyncio.create_task(self._sync())

    async def _sync(self) -> None:
        """SUBSCRIBE/UNSUBSCRIBE until what was sent matches what is wanted; batched."""
        while (pubsub := self._pubsub) is not None:
            wanted = {self._keys.room_relay_channel(r) for r in self._wanted}
            add, drop = wanted - self._sent, self._sent - wanted
            if not add and not drop:
                return
            try:
                if add:
                    self._sent |= add
                    self._count_pending(add)
                    await pubsub.subscribe(*add)
                if drop:
                    self._sent -= drop
                    self._count_pending(drop)
                    await pubsub.unsubscribe(*drop)
            except Exception as exc:  # the listener sees the broken connection and resubscribes
                log.warning("relay subscription update failed (%s)", type(exc).__name__)
                return

    def _count_pending(self, channels: set[str]) -> None:
        for ch in channels:
            self._pending[ch] = self._pending.get(ch, 0) + 1

    def _settled(self, channel: str) -> bool:
        return channel in self._confirmed and not self._pending.get(channel)

    async def wait_subscribed(self, room: str) -> bool:
        """True once Redis confirmed this process's subscription to `room`'s channel."""
        channel = self._keys.room_relay_channel(room)
        if self._settled(channel):
            return True
        if self._pubsub is None and self._lost:
            return False  # Redis is down: no use waiting; the resync after recovery covers it
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self._subscribe_timeout_s)
            return True
        except TimeoutError:
            log.warning("relay subscription not confirmed within %.1fs", self._subscribe_timeout_s)
            return False
        finally:
            waiters = self._waiters.get(channel)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[channel]

    def subscribed_rooms(self) -> set[str]:
        n = len(self._room_prefix)
        return {ch[n:] for ch in self._confirmed if ch.startswith(self._room_prefix)}

    # ------------------------------------------------------------ listening
    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), 10)
        self._canary = asyncio.create_task(self._canary_loop())
        if os.environ.get(FAILPOINT_ENV) == "deaf":
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, self._make_deaf)

    async def stop(self) -> None:
        for task in (self._canary, self._syncer, self._listener, self._publisher, *self._background):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for _, done in self._outbound:  # not published: the clients resync by seq
            if not done.done():
                done.set_result(None)
        self._outbound = []

    def _make_deaf(self) -> None:
        log.warning("failpoint: the relay subscription is now deaf")
        self._deaf_pubsub = self._pubsub

    # ------------------------------------------------------------ canary
    async def _canary_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._canary_interval_s)
            try:
                # Nobody waits for the canary: only no answer within publish_give_up_s is a
                # failure (a loop saturated by a connect storm reads the answer late).
                await self.publish_control({"type": CANARY, "host_id": self.host_id},
                                           timeout_s=self._publish_give_up_s)
            except Exception as exc:  # Redis unreachable: /readyz says so; deafness is another matter
                log.debug("relay canary not published (%s)", type(exc).__name__)
                self._unheard_since = None  # what Redis never took cannot be missed
                continue
            now = loop.time()
            if self._unheard_since is None:
                self._unheard_since = now
            elif now - self._unheard_since > self._canary_timeout_s:
                self._deafened(now - self._unheard_since)

    def _deafened(self, silent_s: float) -> None:
        RELAY_DEAF_DETECTED.inc()
        RELAY_DEAF.set(1)
        self.deaf = True
        log.error("relay subscription is deaf: own canary not heard for %.1fs; rebuilding the subscriber",
                  silent_s)
        self._unheard_since = None
        if self._listener is not None:
            self._listener.cancel()
        self._lost = True
        self._troubled()
        self._listener = asyncio.create_task(self._listen())

    def _canary_heard(self) -> None:
        self._unheard_since = None
        if self.deaf:
            self.deaf = False
            RELAY_DEAF.set(0)
            log.warning("relay subscription hears its canary again")

    async def _listen(self) -> None:
        delay = 0.1
        loop = asyncio.get_running_loop()
        while True:
            pubsub = self._redis.pubsub()
            try:
                # Everything wanted in one SUBSCRIBE, so a reconnect restores the whole set at once.
                self._sent = {self._keys.room_relay_channel(r) for r in self._wanted}
                self._confirmed.clear()
                self._pending.clear()
                self._count_pending(self._sent)
                await pubsub.subscribe(*self._fixed, *self._sent)
                self._pubsub = pubsub
                self._kick()  # rooms opened while (re)connecting
                heard = loop.time()
                pinged = False
                while True:
                    item = await pubsub.get_message(timeout=self._keepalive_s)
                    now = loop.time()
                    if item is not None:
                        heard, pinged = now, False
                        if pubsub is self._deaf_pubsub and item.get("type") == "message":
                            continue  # failpoint
                        await self._on_item(item)
                        if not self._ready.is_set() and all(c in self._confirmed for c in self._fixed):
                            self._ready.set()
                        if self._lost and all(self._settled(c) for c in (*self._fixed, *self._sent)):
                            # Back, with every channel confirmed: whatever was published while
                            # this subscriber was away is only in the database now.
                            self._lost = False
                            log.warning("relay subscriber is back; telling local sockets to resync")
                            self._spawn(self._recovered("subscriber"))
                        delay = 0.1
                    elif now - heard > 3 * self._keepalive_s:
                        if await _has_unread(pubsub):
                            # Answers are waiting, read late: a loop saturated by a connect
                            # storm timed the read out before it ran. Not a dead connection
                            # (that would make every socket resync); the next read gets them.
                            # (A connection cut in the middle of a reply: the canary finds it.)
                            heard = now
                            continue
                        # A connection that died without a reset (network cut, Redis host gone)
                        # would otherwise keep this subscriber waiting forever.
                        raise ConnectionError("no answer from Redis")
                    elif not pinged and now - heard >= self._keepalive_s:
                        await pubsub.ping()
                        pinged = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: retry soon; the DB stays the source of truth
                log.warning("relay subscriber lost (%s: %s); retrying in %.1fs", type(exc).__name__,
                            str(exc)[:200], delay)
                self._pubsub = None
                self._troubled()
                self._lost = self._lost or self._ready.is_set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
            finally:
                self._pubsub = None
                RELAY_ROOMS.set(0)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _on_item(self, item: dict[str, Any]) -> None:
        kind = item.get("type")
        channel = item.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if not isinstance(channel, str):
            return
        if kind in ("subscribe", "unsubscribe"):
            self._confirm(channel, kind == "subscribe")
            return
        if kind != "message":
            return
        try:
            message = orjson.loads(item["data"])
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, dict):
            return
        try:
            if channel.startswith(self._room_prefix):
                self._on_room_message(channel[len(self._room_prefix):], message)
            elif channel == self._keys.socketio_channel:
                await self._on_socketio_message(message)
            elif channel == self._keys.control_channel:
                RELAY_RECEIVED.labels("control").inc()
                kind = message.get("type")
                if kind == CANARY:
                    if message.get("host_id") == self.host_id:
                        self._canary_heard()
                    return
                if kind == RESYNC:
                    self._spawn(self._recovered("publisher"))
                    return
                if self._control_handler is not None:
                    await self._control_handler(message)
        except Exception:
            log.exception("relay message failed")

    def _troubled(self) -> None:
        if self.on_trouble is not None:
            try:
                self.on_trouble()
            except Exception:
                log.exception("relay trouble hook failed")

    def _confirm(self, channel: str, subscribed: bool) -> None:
        left = self._pending.get(channel, 0) - 1
        if left > 0:
            self._pending[channel] = left
        else:
            self._pending.pop(channel, None)
        if subscribed:
            self._confirmed.add(channel)
        else:
            self._confirmed.discard(channel)
        RELAY_ROOMS.set(sum(1 for ch in self._confirmed if ch.startswith(self._room_prefix)))
        if self._settled(channel):
            for fut in self._waiters.pop(channel, ()):
                if not fut.done():
                    fut.set_result(None)

    def _on_room_message(self, room: str, message: dict[str, Any]) -> None:
        _RECEIVED_ROOM.inc()
        if message.get("host_id") == self.host_id:
            return  # delivered locally before it was published
        skip = message.get("skip_sid")
        packet = _packet_from_json(message["packet"])
        if self.on_room_packet is not None:
            self.on_room_packet(room, packet)  # synchronously with the delivery: nothing in between
        skips: str | set[str] | None = skip if isinstance(skip, str) else None
        sender = message.get("sender")
        if isinstance(sender, str) and self.hide_from_blockers is not None:
            hidden = self.hide_from_blockers(room, sender, packet)
            if hidden:
                skips = hidden | {skip} if isinstance(skip, str) else hidden
        self._manager.deliver("/", room, Broadcast(packet), skips)

    async def _on_socketio_message(self, message: dict[str, Any]) -> None:
        RELAY_RECEIVED.labels("socketio").inc()
        if message.get("host_id") == self.host_id:
            return
        method = message.get("method")
        namespace = message.get("namespace") or "/"
        if method == "emit" and message.get("callback") is None:
            data = message.get("data")
            if message.get("binary") or not isinstance(data, list):
                return  # nothing in Backstage emits binary through the relay
            payload: Any = data[0] if len(data) == 1 else tuple(data)
            self._manager.deliver(namespace, message.get("room"),
                                  self._manager.encode(str(message.get("event")), payload, namespace),
                                  message.get("skip_sid"))
        elif method == "disconnect":
            sid = message.get("sid")
            if isinstance(sid, str) and self._manager.is_connected(sid, namespace):
                await self._manager.server.disconnect(sid, namespace=namespace, ignore_queue=True)
