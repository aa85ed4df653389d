"""Engine.IO sessions that misbehave below the event handlers.

- A session that never connects to a namespace is closed after connect_timeout_s (what
  socket.io's `connectTimeout` does), so idle handshakes cannot pile up.
- A packet python-socketio cannot decode or dispatch is a strike against its session, not an
  ERROR with a traceback: one WARNING at most every LOG_EVERY_S for the whole process, and the
  session is closed at its max_bad-th strike. Engine.IO input python-engineio cannot decode
  counts the same on both transports: an undecodable websocket frame, or a polling POST body.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import engineio.exceptions
import socketio
from prometheus_client import Counter
from socketio import packet as sio_packet

from chat.connectgate import ConnectGate
from chat.fanout import has_binary

log = logging.getLogger(__name__)

BAD_PACKETS = Counter("backstage_bad_packets_total", "Socket.IO packets that could not be decoded or dispatched")
GUARD_CLOSES = Counter("backstage_guard_closed_sessions_total", "Engine.IO sessions closed by the guard", ["reason"])
LOG_EVERY_S = 10.0
MAX_ATTACHMENTS = 10  # binary attachments per Socket.IO packet (none of our events takes any)


class PacketGuard:
    def __init__(self, sio: socketio.AsyncServer, connect_timeout_s: float, max_bad: int,
                 gate: ConnectGate | None = None) -> None:
        self.sio, self.connect_timeout_s, self.max_bad = sio, connect_timeout_s, max_bad
        self.gate = gate  # admission of new sessions in a connect storm (chat/connectgate.py)
        self._strikes: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._logged_at = -LOG_EVERY_S
        self._unlogged = 0
        # python-socketio registers its own bound methods as the Engine.IO handlers; these wrap them.
        self._eio_connect = sio._handle_eio_connect
        self._eio_message = sio._handle_eio_message
        self._eio_disconnect = sio._handle_eio_disconnect
        sio.eio.on("connect", self.on_eio_connect)
        sio.eio.on("message", self.on_eio_message)
        sio.eio.on("disconnect", self.on_eio_disconnect)
        # Engine.IO frames python-engineio cannot decode raise out of its websocket loop (an
        # ERROR with a traceback, and a 500 written into the upgraded connection): this
        # server's websocket class turns them into strikes. A copy of the driver table, not
        # the module's own dict.
        drivers = dict(sio.eio._async)
        drivers["websocket"] = _guarded_websocket(drivers["websocket"], self)
        sio.eio._async = drivers
        # Once a websocket is detached from aiohttp (chat/fanout.py DetachedWebSocket), its
        # frames no longer go through the driver's wait(): the server asks this check instead.
        if hasattr(sio.eio, "frame_check"):
            sio.eio.frame_check = self.check_frame
            sio.eio.message_handler = self.on_eio_message
        for name in ("engineio.server", "socketio.server"):
            logging.getLogger(name).addFilter(self.log_filter)

    async def on_eio_connect(self, eio_sid: str, environ: Any) -> Any:
        gate = self.gate
        if gate is not None and gate.enabled:
            await gate.enter(eio_sid)  # nothing is done for this session before its turn
            request = environ.get("aiohttp.request") if isinstance(environ, dict) else None
            if request is not None and (request.transport is None or request.transport.is_closing()):
                gate.leave(eio_sid)
                return False  # the client gave up while it waited
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is not None:
            socket.handle_post_request = self._guarded_post(eio_sid, socket.handle_post_request)
        result = await self._eio_connect(eio_sid, environ)
        asyncio.get_running_loop().call_later(self.connect_timeout_s, self._check_connected, eio_sid)
        return result

    async def on_eio_disconnect(self, eio_sid: str, reason: Any = None) -> Any:
        self._strikes.pop(eio_sid, None)
        if self.gate is not None:
            self.gate.leave(eio_sid)
        return await self._eio_disconnect(eio_sid, reason)

    async def on_eio_message(self, eio_sid: str, data: Any) -> None:
        if isinstance(data, str) and data[:1] in ("5", "6"):
            # A binary packet makes python-socketio hold the frames that follow as its
            # attachments, as many as the packet claims (each up to 1 MiB): bounded here.
            count = data[1:data.find("-")] if "-" in data else ""
            if count.isdigit() and int(count) > MAX_ATTACHMENTS:
                self.strike(eio_sid, ValueError("too many binary attachments"))
                return
        elif isinstance(data, str) and data[:1] in ("0", "2"):
            try:
                if await self._dispatch(eio_sid, data):
                    return
            except Exception as exc:
                self.strike(eio_sid, exc)
                return
        try:
            await self._eio_message(eio_sid, data)
        except Exception as exc:
            self.strike(eio_sid, exc)

    async def _dispatch(self, eio_sid: str, data: str) -> bool:
        """python-socketio's handling (5.18.1 `_handle_eio_message`, `_handle_event`,
        `_handle_event_internal`, `_trigger_event`, `_send_packet`) of the packets of a connect
        and of every event: a CONNECT of the default namespace with auth (`0{...}`), and an
        EVENT of the default namespace (`2[...]`, `2<id>[...]`) of a connected socket for a
        handler of its own, decoded and acked without packet objects. False, before anything is
        done, for any other packet: python-socketio handles it (and its errors are strikes)."""
        sio = self.sio
        if sio.async_handlers or eio_sid in sio._binary_packet:
            return False
        loads = sio.packet_class.json.loads
        if data[0] == "0":
            if data[1:2] != "{":
                return False
            try:
                auth = loads(data[1:])
            except ValueError:
                return False
            await sio._handle_connect(eio_sid, None, auth)
            return True
        bracket = data.find("[", 1, 18)
        if bracket < 0:
            return False
        ack = data[1:bracket]
        if ack and not (ack.isascii() and ack.isdigit()):
            return False
        try:
            args = loads(data[bracket:])
        except ValueError:
            return False
        if not isinstance(args, list) or not args or not isinstance(args[0], str):
            return False
        event = args[0]
        handler = sio.handlers.get("/", {}).get(event)
        if handler is None or event in sio.reserved_events or not inspect.iscoroutinefunction(handler):
            return False
        manager = sio.manager
        sid = manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not manager.is_connected(sid, "/"):
            return False
        try:
            ret = await handler(sid, *args[1:])
        except asyncio.CancelledError:  # as python-socketio's _trigger_event
            ret = None
        if ack and ret is not sio.not_handled:
            answer = [] if ret is None else list(ret) if isinstance(ret, tuple) else [ret]
            # Encoded first: bytes do not encode (TypeError), and only then is the answer
            # searched for them (a join's answer is large; most hold none).
            try:
                text = sio.packet_class.json.dumps(answer, separators=(",", ":"))
            except TypeError:
                if not has_binary(answer):
                    raise
                await sio._send_packet(eio_sid, sio.packet_class(sio_packet.ACK, namespace="/", id=int(ack),
                                                                 data=answer))
            else:
                await sio.eio.send(eio_sid, "3" + str(int(ack)) + text)
        return True

    def _guarded_post(self, eio_sid: str, handle: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """A polling POST whose payload python-engineio cannot decode (it would log an ERROR and
        answer 200) is a strike against its session, like an undecodable websocket frame. Its
        own errors (a packet type it refuses, a body too long) still close the session at once."""

        async def post(environ: Any) -> None:
            try:
                await handle(environ)
            except engineio.exceptions.EngineIOError:
                raise
            except Exception as exc:
                self.strike(eio_sid, exc)

        return post

    def set_up(self, sid: str) -> None:
        """The Socket.IO socket `sid` is set up (answered its first join, or was refused): its
        setup slot goes to the next new session."""
        if self.gate is not None:
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
            if eio_sid is not None:
                self.gate.leave(eio_sid)

    def check_frame(self, eio_sid: str, frame: str | bytes) -> bool:
        """Whether to handle a websocket frame; an undecodable one is a strike instead."""
        if _decodable(frame):
            return True
        self.strike(eio_sid, ValueError("undecodable frame"))
        return False

    def _report(self, what: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            more = f"; {self._unlogged} more since the last report" if self._unlogged else ""
            log.warning("malformed Socket.IO/Engine.IO input (%s)%s", what, more)
            self._logged_at, self._unlogged = now, 0
        else:
            self._unlogged += 1

    def log_filter(self, record: logging.LogRecord) -> bool:
        """python-engineio/socketio log a client's bad input (e.g. an undecodable polling body)
        as ERROR with a traceback: it becomes a count in this guard's rate-limited WARNING."""
        if record.levelno < logging.ERROR:
            return True
        BAD_PACKETS.inc()
        exc = record.exc_info[1] if record.exc_info else None
        self._report(type(exc).__name__ if exc is not None else "library error")
        return False

    def strike(self, eio_sid: str, exc: BaseException) -> None:
        BAD_PACKETS.inc()
        strikes = self._strikes.get(eio_sid, 0) + 1
        self._strikes[eio_sid] = strikes
        self._report(type(exc).__name__)
        if strikes == self.max_bad:
            GUARD_CLOSES.labels("malformed").inc()
            self._close(eio_sid)

    def _check_connected(self, eio_sid: str) -> None:
        if eio_sid in self.sio.eio.sockets and self.sio.manager.sid_from_eio_sid(eio_sid, "/") is None:
            GUARD_CLOSES.labels("connect_timeout").inc()
            self._close(eio_sid)

    def _close(self, eio_sid: str) -> None:
        task = asyncio.get_running_loop().create_task(self._disconnect(eio_sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _disconnect(self, eio_sid: str) -> None:
        try:
            await self.close_session(eio_sid)
        except Exception as exc:
            log.info("closing a session failed: %s", type(exc).__name__)

    async def close_session(self, eio_sid: str) -> None:
        """Close an Engine.IO session for good. python-engineio's disconnect() only sends the
        CLOSE packet and leaves the websocket open until the client closes it, which a hostile
        client never does. A websocket's connection is closed by the socket's close
        (chat/fanout.py); ending the queue ends a long-polling session's pending poll."""
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is None:
            return
        await self.sio.eio.disconnect(eio_sid)
        await socket.queue.put(None)


def _decodable(frame: str | bytes) -> bool:
    """Whether python-engineio can decode this websocket frame as a packet type it handles
    (1 close, 2 ping, 3 pong, 4 message, 5 upgrade, 6 noop); binary frames always are."""
    if isinstance(frame, bytes):
        return True
    return bool(frame) and frame[0] in "123456"


def _guarded_websocket(base: Any, guard: PacketGuard) -> Any:
    class GuardedWebSocket(base):  # type: ignore[misc]
        async def wait(self) -> Any:
            while True:
                frame = await super().wait()
                if _decodable(frame):
                    return frame
                # self.handler is the Engine.IO socket's bound _websocket_handler.
                socket = getattr(self.handler, "__self__", None)
                guard.strike(str(getattr(socket, "sid", "")), ValueError("undecodable frame"))

    return GuardedWebSocket
