"""The only module that puts frames on sockets.

Everything the domain wants delivered goes through `Delivery`: to a conversation's sockets,
to a user's sockets, to a channel's subscribers, to one socket. Each emit is encoded once and
handed to this process's sockets by `FanoutManager.deliver` (chat/fanout.py). With REDIS_URL,
`RedisRelay` (chat/relay.py) carries it to the other processes: a conversation broadcast on the
conversation's own channel (only processes with members there read it), everything else on the
shared python-socketio channel. Without Redis, emits stay in this process.

Cluster control messages (a membership revocation must reach the sockets of a user on
every process) go over a pub/sub channel of our own (`RedisKeys.control_channel`), read by the
relay's subscriber, or straight to the local handler when there is no Redis.

When the relay recovers from trouble (chat/relay.py: subscriber back after a loss, publishing
back after failures, a deaf subscriber rebuilt), broadcasts may have been lost between
processes; the messages themselves are committed. Every conversation with local sockets then
gets a `resync {conversation_id, last_seq}` event on this process only, and clients behind
`last_seq` join again with `since_seq` (docs/api.md). Before that the recovery handler runs:
the service checks its sockets' access against the database, since a control message (a
revocation) may have been lost as well.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from chat import keys
from chat.fanout import Broadcast, FanoutServer, Payload
from chat.memberblocks import HIDDEN_EVENTS, SILENCED_EVENTS, placeholder_event, sender_of
from chat.recent import RecentMessages
from chat.relay import RedisRelay

log = logging.getLogger(__name__)

ControlHandler = Callable[[dict[str, Any]], Awaitable[None]]
LastSeqs = Callable[[list[int]], Awaitable[dict[int, int]]]
RecoveryHandler = Callable[[], Awaitable[None]]


# The conversation events `RecentMessages` keeps up with, and how their relayed packets start
# (Socket.IO EVENT packets of the default namespace: `2["event",data]`).
RECENT_EVENTS = ("message", "message_updated", "read", "reaction")
_RECENT_PREFIXES = tuple(f'2["{e}"' for e in RECENT_EVENTS)
_ROOM_PREFIX = keys.conversation_room("")


def is_conversation_room(room: str) -> bool:
    """Rooms relayed on channels of their own (see chat/relay.py)."""
    return room.startswith(keys.conversation_room(""))


class Delivery:
    def __init__(self, sio: FanoutServer, relay: RedisRelay | None = None, *, room_linger_s: float = 0.0) -> None:
        self.sio = sio
        self._fanout = sio.fanout
        self._relay = relay
        self._control_handler: ControlHandler | None = None
        self._recovery_handler: RecoveryHandler | None = None
        self._last_seqs: LastSeqs | None = None
        # Recent messages and read positions of the conversations with local sockets, for
        # `join` (chat/recent.py): fed here from every conversation event this process delivers.
        self.recent = RecentMessages()
        # sender -> local sids whose user blocks them (chat/memberblocks.py BlockIndex); empty
        # unless some local socket blocks someone, and only then looked at.
        self._blocker_sids: dict[str, set[str]] = {}
        if relay is not None:
            relay.hide_from_blockers = self._hide_relayed
            relay.set_control_handler(self._handle_control)
            relay.on_recovered = self._resync_local
            relay.on_room_packet = self._relayed_room_packet
            relay.on_trouble = self.recent.clear
        # The relay (when there is one) set the fan-out's room hooks first: chain after it.
        opened, closed = self._fanout.on_room_open, self._fanout.on_room_close

        def room_closed(room: str) -> None:
            if closed is not None:
                closed(room)
            self._room_closed(room)

        # A conversation room whose last local socket left lingers `room_linger_s` before it is
        # closed for the relay and the recent-message cache: still subscribed, its entry still
        # fed by every event of the conversation (this process's and the relayed ones), so the
        # sockets of a reconnect storm rejoin with neither a new subscription nor a fill read.
        # A room that gets a local socket again meanwhile was never closed for them.
        self._room_linger_s = room_linger_s
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._close_room = room_closed

        def room_opened(room: str) -> None:
            timer = self._lingering.pop(room, None)
            if timer is not None:
                timer.cancel()  # open all along for the relay and the cache
            elif opened is not None:
                opened(room)

        def room_closed_later(room: str) -> None:
            if self._room_linger_s > 0 and isinstance(room, str) and room.startswith(_ROOM_PREFIX):
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                if loop is not None:
                    self._lingering[room] = loop.call_later(self._room_linger_s, self._linger_over, room)
                    return
            room_closed(room)

        self._fanout.on_room_open = room_opened
        self._fanout.on_room_close = room_closed_later

    def set_last_seqs(self, last_seqs: LastSeqs) -> None:
        self._last_seqs = last_seqs

    def set_sender_blocks(self, blocker_sids: dict[str, set[str]]) -> None:
        self._blocker_sids = blocker_sids

    def _hide_from_blockers(self, room: str, event: str, data: Any) -> set[str] | None:
        """A `message`/`message_updated` whose sender some local socket in `room` blocks: those
        sockets get its placeholder (same seq, no body: memberblocks.hidden_wire) here, and are
        returned, to be skipped by the broadcast itself; a SILENCED_EVENTS event (`typing`) of a
        blocked user is only skipped for them. None (the common case) costs one dict lookup."""
        silenced = event in SILENCED_EVENTS
        if not silenced and event not in HIDDEN_EVENTS:
            return None
        sids = self._blocker_sids.get(sender_of(event, data) or "")
        if not sids:
            return None
        members = self._fanout.rooms.get("/", {}).get(room)
        targets = [sid for sid in sids if members is not None and sid in members]
        if not targets:
            return None
        if not silenced:
            self._fanout.deliver("/", targets, self._fanout.encode(event, placeholder_event(event, data)))
        return set(targets)

    def _hide_relayed(self, room: str, sender: str, packet: Payload | list[Payload]) -> set[str] | None:
        """`_hide_from_blockers` for a relayed room packet whose envelope names its sender."""
        if not self._blocker_sids.get(sender) or not isinstance(packet, str):
            return None
        try:
            event, data = orjson.loads(packet[1:])
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None
        return self._hide_from_blockers(room, str(event), data)

    @staticmethod
    def _sender_of(event: str, data: Any) -> str | None:
        """The sender a relayed room packet names in its envelope (for the receivers' blockers)."""
        return sender_of(event, data) if event in HIDDEN_EVENTS or event in SILENCED_EVENTS else None

    def relay_problem(self) -> str | None:
        """Why this process cannot rely on the relay, for /readyz (None: no known problem)."""
        return "deaf" if self._relay is not None and self._relay.deaf else None

    def _linger_over(self, room: str) -> None:
        if self._lingering.pop(room, None) is not None and not self._fanout.has_room(room):
            self._close_room(room)

    def lingering_rooms(self) -> set[str]:
        """Conversation rooms without local sockets that are still open for the relay and the cache."""
        return set(self._lingering)

    def _room_closed(self, room: str) -> None:
        """No local socket is left in the room: its events stop coming (the relay unsubscribes)."""
        if isinstance(room, str) and room.startswith(_ROOM_PREFIX) and room[len(_ROOM_PREFIX):].isdigit():
            self.recent.drop(int(room[len(_ROOM_PREFIX):]))

    def _relayed_room_packet(self, room: str, packet: Payload | list[Payload]) -> None:
        if not isinstance(packet, str) or not packet.startswith(_RECENT_PREFIXES):
            return
        cid = room[len(_ROOM_PREFIX):]
        if not room.startswith(_ROOM_PREFIX) or not cid.isdigit():
            return
        try:
            event, data = orjson.loads(packet[1:])
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return
        self.recent.on_event(int(cid), str(event), data)

    async def _resync_local(self, cause: str) -> None:
        self.recent.clear()  # events may have been missed: the next joins read the database
        if self._recovery_handler is not None:
            try:
                await self._recovery_handler()
            except Exception:
                log.exception("access check after relay recovery failed")
        prefix = keys.conversation_room("")
        rooms = [r for r in self._fanout.rooms.get("/", {}) if isinstance(r, str) and r.startswith(prefix)]
        ids = [int(r[len(prefix):]) for r in rooms if r[len(prefix):].isdigit()]
        last: dict[int, int] = {}
        if self._last_seqs is not None and ids:
            try:
                last = await self._last_seqs(ids)
            except Exception as exc:  # then without last_seq: clients join again regardless
                log.warning("resync without last_seq (%s)", type(exc).__name__)
        for cid in ids:
            data: dict[str, Any] = {"conversation_id": str(cid)}
            if cid in last:
                data["last_seq"] = last[cid]
            self._fanout.deliver("/", keys.conversation_room(str(cid)), self._fanout.encode("resync", data))
        log.info("resync sent for %d conversations (%s)", len(ids), cause)

    # ------------------------------------------------------------ emits
    async def to_conversation(self, conversation_id: int | str, event: str, data: Any,
                              skip_sid: str | None = None) -> None:
        room = keys.conversation_room(str(conversation_id))
        encoded = self._fanout.encode_packet(event, data)
        if event in RECENT_EVENTS:
            self.recent.on_event(int(conversation_id), event, data)
        # Local sockets first (the sender's socket sees its message before its ack, as before).
        skip: str | set[str] | None = skip_sid
        if self._blocker_sids:
            hidden = self._hide_from_blockers(room, event, data)
            if hidden:
                skip = hidden | {skip_sid} if skip_sid is not None else hidden
        self._fanout.deliver("/", room, Broadcast(encoded), skip)
        if self._relay is not None:
            await self._relay.publish_room(room, encoded, skip_sid, self._sender_of(event, data))

    def to_conversations(self, event: str, items: list[tuple[int | str, Any]]) -> Awaitable[None]:
        """`to_conversation(cid, event, data)` for each (cid, data), in this order, handed over
        at once: every local socket is written before this returns (no await), and the relay
        has them queued, behind anything queued before. The awaitable completes once they were
        published to Redis (one round trip for all of them)."""
        published: list[tuple[str, Payload | list[Payload], str | None, str | None]] = []
        recent = event in RECENT_EVENTS
        for conversation_id, data in items:
            room = keys.conversation_room(str(conversation_id))
            encoded = self._fanout.encode_packet(event, data)
            if recent:
                self.recent.on_event(int(conversation_id), event, data)
            skip = self._hide_from_blockers(room, event, data) if self._blocker_sids else None
            self._fanout.deliver("/", room, Broadcast(encoded), skip)
            published.append((room, encoded, None, self._sender_of(event, data)))
        if self._relay is not None and published:
            return self._relay.queue_rooms(published)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def to_conversation_each(self, conversation_id: int | str, event: str,
                             items: list[tuple[Any, str | None]]) -> Awaitable[None]:
        """`to_conversation(conversation_id, event, data, skip_sid)` for each (data, skip_sid), in
        this order, produced together (the `presence` events of a room filling up): the local
        sockets get them in one pass over the room (`FanoutManager.deliver_each`: each socket
        all of its events in one call, and so one write), before this returns; the relay has
        them queued as one hand-over. The awaitable completes once they were published. Not
        for the events blockers see differently (`message`, `message_updated`, `typing`)."""
        if event in HIDDEN_EVENTS or event in SILENCED_EVENTS:
            raise ValueError(f"{event!r} may differ per recipient (blocks): use to_conversation")
        room = keys.conversation_room(str(conversation_id))
        recent = event in RECENT_EVENTS
        published: list[tuple[str, Payload | list[Payload], str | None, str | None]] = []
        local: list[tuple[Broadcast, str | None]] = []
        for data, skip_sid in items:
            encoded = self._fanout.encode_packet(event, data)
            if recent:
                self.recent.on_event(int(conversation_id), event, data)
            local.append((Broadcast(encoded), skip_sid))
            published.append((room, encoded, skip_sid, None))
        self._fanout.deliver_each("/", room, local)
        if self._relay is not None and published:
            return self._relay.queue_rooms(published)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def to_local_conversation(self, conversation_id: int | str, event: str, data: Any) -> None:
        """`event` to this process's sockets in the conversation only, not relayed: a control
        message's handler emits it on every process after applying what the message changed
        (chat/spaces.py), so a client never hears of a change its process has not applied yet."""
        room = keys.conversation_room(str(conversation_id))
        self._fanout.deliver("/", room, Broadcast(self._fanout.encode_packet(event, data)))

    async def to_user(self, user_id: str, event: str, data: Any) -> None:
        await self._to_room(keys.channel_room(keys.user_channel(user_id)), event, data)

    async def to_channel(self, channel: str, event: str, data: Any) -> None:
        await self._to_room(keys.channel_room(channel), event, data)

    async def to_socket(self, sid: str, event: str, data: Any) -> None:
        if self._fanout.is_connected(sid, "/"):
            self._fanout.deliver("/", sid, self._fanout.encode(event, data))
        elif self._relay is not None:
            await self._relay.publish_emit(event, data, sid)

    async def _to_room(self, room: str, event: str, data: Any) -> None:
        self._fanout.deliver("/", room, self._fanout.encode(event, data))
        if self._relay is not None:
            await self._relay.publish_emit(event, data, room)

    # ------------------------------------------------------------ local room membership
    async def enter_conversation(self, sid: str, conversation_id: int) -> bool:
        """Put the socket in the conversation's room; True when this process now hears every
        event of the conversation (no relay, or the relay's subscription is confirmed): only
        then may `join` answer from `recent`."""
        room = keys.conversation_room(str(conversation_id))
        await self.sio.enter_room(sid, room)
        if self._relay is not None:
            # The caller reads recent messages next: be subscribed before that read.
            return await self._relay.wait_subscribed(room)
        return True

    async def leave_conversation(self, sid: str, conversation_id: int) -> None:
        await self.sio.leave_room(sid, keys.conversation_room(str(conversation_id)))

    async def enter_channel(self, sid: str, channel: str) -> None:
        await self.sio.enter_room(sid, keys.channel_room(channel))

    async def leave_channel(self, sid: str, channel: str) -> None:
        await self.sio.leave_room(sid, keys.channel_room(channel))

    async def disconnect(self, sid: str) -> None:
        if self._fanout.is_connected(sid, "/"):
            await self.sio.disconnect(sid)
        elif self._relay is not None:
            await self._relay.publish_disconnect(sid)

    # ------------------------------------------------------------ cluster control
    def set_control_handler(self, handler: ControlHandler) -> None:
        self._control_handler = handler

    def set_recovery_handler(self, handler: RecoveryHandler) -> None:
        """Runs on every relay recovery, before the sockets are told to resync."""
        self._recovery_handler = handler

    async def broadcast_control(self, message: dict[str, Any], *, access_change: bool = False) -> None:
        """Run `message` through the control handler of every process (this one included).
        Raises when Redis does not take it, unless it is an `access_change`: one that the
        recovery handler redoes from the database (access taken away). Such a message is then
        applied in this process at once, and the others check their sockets' access when the
        relay is back (every recovery runs the recovery handler; the failed publish makes this
        process announce one as soon as Redis takes a control message again)."""
        if self._relay is None:
            await self._handle_control(message)
            return
        try:
            await self._relay.publish_control(message)
        except Exception as exc:
            if not access_change:
                raise
            log.warning("control message %r not relayed (%s): applied in this process; every process "
                        "checks its sockets' access again when the relay is back",
                        message.get("type"), type(exc).__name__)
            await self._handle_control(message)

    async def _handle_control(self, message: dict[str, Any]) -> None:
        if self._control_handler is None:
            return
        try:
            await self._control_handler(message)
        except Exception:
            log.exception("control message failed", extra={"type": message.get("type")})

    async def start(self) -> None:
        if self._relay is not None:
            await self._relay.start()

    async def stop(self) -> None:
        if self._relay is not None:
            await self._relay.stop()
