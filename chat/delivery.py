"""The only module that puts frames on sockets.

Everything the domain wants delivered goes through `Delivery`: to a conversation's sockets,
to a user's sockets, to a channel's subscribers, to one socket. With REDIS_URL the
python-socketio client manager relays each emit to every process through Redis pub/sub;
without it, emits stay in this process.

Cluster control messages (a membership revocation must reach the sockets of a user on
every process) go over a pub/sub channel of our own (`RedisKeys.control_channel`), or
straight to the local handler when there is no Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
import socketio

from chat import keys

log = logging.getLogger(__name__)

ControlHandler = Callable[[dict[str, Any]], Awaitable[None]]


class Delivery:
    def __init__(self, sio: socketio.AsyncServer, redis: aioredis.Redis | None = None,
                 control_channel: str | None = None) -> None:
        self.sio = sio
        self._redis = redis
        self._control_channel = control_channel
        self._control_handler: ControlHandler | None = None
        self._listener: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ emits
    async def to_conversation(self, conversation_id: int | str, event: str, data: Any,
                              skip_sid: str | None = None) -> None:
        await self.sio.emit(event, data, room=keys.conversation_room(str(conversation_id)), skip_sid=skip_sid)

    async def to_user(self, user_id: str, event: str, data: Any) -> None:
        await self.sio.emit(event, data, room=keys.channel_room(keys.user_channel(user_id)))

    async def to_channel(self, channel: str, event: str, data: Any) -> None:
        await self.sio.emit(event, data, room=keys.channel_room(channel))

    async def to_socket(self, sid: str, event: str, data: Any) -> None:
        await self.sio.emit(event, data, to=sid)

    # ------------------------------------------------------------ local room membership
    async def enter_conversation(self, sid: str, conversation_id: int) -> None:
        await self.sio.enter_room(sid, keys.conversation_room(str(conversation_id)))

    async def leave_conversation(self, sid: str, conversation_id: int) -> None:
        await self.sio.leave_room(sid, keys.conversation_room(str(conversation_id)))

    async def enter_channel(self, sid: str, channel: str) -> None:
        await self.sio.enter_room(sid, keys.channel_room(channel))

    async def leave_channel(self, sid: str, channel: str) -> None:
        await self.sio.leave_room(sid, keys.channel_room(channel))

    async def disconnect(self, sid: str) -> None:
        await self.sio.disconnect(sid)

    # ------------------------------------------------------------ cluster control
    def set_control_handler(self, handler: ControlHandler) -> None:
        self._control_handler = handler

    async def broadcast_control(self, message: dict[str, Any]) -> None:
        """Run `message` through the control handler of every process (this one included)."""
        if self._redis is None or self._control_channel is None:
            await self._handle_control(message)
            return
        await self._redis.publish(self._control_channel, orjson.dumps(message))

    async def _handle_control(self, message: dict[str, Any]) -> None:
        if self._control_handler is None:
            return
        try:
            await self._control_handler(message)
        except Exception:
            log.exception("control message failed", extra={"type": message.get("type")})

    async def start(self) -> None:
        if self._redis is not None and self._control_channel is not None:
            ready = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(ready))
            await asyncio.wait_for(ready.wait(), 10)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener

    async def _listen(self, ready: asyncio.Event) -> None:
        assert self._redis is not None and self._control_channel is not None
        delay = 0.5
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._control_channel)
                    ready.set()
                    delay = 0.5
                    async for item in pubsub.listen():
                        if item.get("type") != "message":
                            continue
                        try:
                            message = orjson.loads(item["data"])
                        except orjson.JSONDecodeError:
                            continue
                        await self._handle_control(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep trying, the DB stays the source of truth
                log.warning("control channel lost (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
