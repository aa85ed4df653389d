"""Encode-once fan-out for python-socketio on aiohttp.

Stock python-socketio sends a room broadcast by creating one Task per recipient
(`AsyncServer._send_eio_packet`), awaiting all of them, and then waking each recipient's
engine.io writer task (`asyncio.wait_for(queue.get())`: another Task and a timer) which
re-encodes the packet and writes one WebSocket frame. Here a broadcast is encoded once —
Socket.IO packet, Engine.IO packet and WebSocket frame bytes — and the same bytes are handed,
synchronously, to every recipient of this process:

* websocket sockets own an `Outbox` (chat/outbox.py): every outgoing frame of the socket
  (broadcasts, acks, single emits, pings, close) goes to it in call order, and the frames of
  one event-loop turn leave in one `transport.write` (one `TurnFlush` per server writes every
  outbox with pending frames, scheduled once per turn). No writer task, no per-packet
  `wait_for`. A socket whose pending + unsent bytes exceed `FanoutLimits.max_buffer_bytes`,
  or whose buffer has not shrunk for `FanoutLimits.stall_s` (one sweeper task per server
  checks), is aborted (the client reconnects and recovers with `since_seq`).
* several broadcasts to one room produced together (`FanoutManager.deliver_each`: the
  `presence` events of a room filling up) are handed to each socket in one call.
* long-polling sockets (and sockets in the middle of an upgrade) get the shared engine.io
  packet put on engine.io's own queue, as upstream does; more than
  `FanoutLimits.max_queued_packets` waiting packets closes the socket.
* when a polling socket upgrades, whatever is still queued is written to the new outbox first,
  in order, before the outbox accepts anything else.
* once the websocket handshake is done, the connection is detached from aiohttp's request
  handler (`DetachedWebSocket` becomes the transport's protocol; aiohttp's own frame parser
  goes with it) and the handler returns: the upgrade request, its task and coroutine chain are
  freed, and a received packet runs in a task that exists only while packets wait. The
  engine.io environ of the socket keeps only `ENVIRON_KEEP`.

This is an extension of the libraries, not a fork. It relies on these upstream internals
(python-socketio 5.18.1, python-engineio 4.15.1, aiohttp 3.14.5, pinned in requirements.txt;
re-check each of them on an upgrade — tests/test_fanout.py exercises all of them):

python-engineio
  * `AsyncServer._handle_connect` — copied into `FanoutEngineIO._handle_connect` with two
    changes: it creates a `FanoutSocket` instead of `async_socket.AsyncSocket`, and trims the
    environ (which python-socketio keeps per socket) once the connecting request is over.
  * `BaseSocket.__init__` — copied into `FanoutSocket.__init__` without the queue, which is
    created on first use (`AsyncServer.create_queue`) and dropped once a websocket's outbox
    took over; everything that uses `socket.queue` still gets one.
  * `AsyncServer.sockets` (eio sid -> socket), `AsyncServer.reason`, `ping_interval`,
    `ping_timeout`, `max_http_buffer_size`, `start_background_task`, `logger`,
    `_upgrades`, `_trigger_event`, `_unauthorized`, `_bad_request`, `_ok`,
    `_generate_sid_cookie`, `start_service_task` / `service_task_handle` / `_service_task`
    (overridden: it serves the `PingWheel`, and drops closed sockets like upstream's),
    `service_task_event`, `create_event`.
  * `AsyncSocket.schedule_ping` (overridden: the next PING goes on the server's `PingWheel`
    instead of a Task per socket) and `last_ping` (None = a PING is scheduled, a time = the
    PING sent then is unanswered), as `check_ping_timeout` reads it.
  * `AsyncSocket`: `queue` (asyncio.Queue of `packet.Packet`, `None` = stop),
    `connected`, `upgrading`, `upgraded`, `closing`, `closed`, `last_ping`,
    `check_ping_timeout()`, `receive()`, `close()`; `send()`, `_upgrade_websocket()` and
    `_websocket_handler()` are overridden (the latter replaces upstream's writer task and
    receive loop with the outbox and `DetachedWebSocket`, whose `_receive` is the loop's body;
    the upgrade handshake — probe ping/pong, NOOP to end the pending poll, UPGRADE — is kept as
    is).
  * `async_drivers.aiohttp.WebSocket` (subclassed: no permessage-deflate, so that frames are
    the same bytes for every recipient; combined with `AsyncServer._async["websocket"]` when
    that was replaced by a subclass) and `packet.Packet`.
python-socketio
  * `AsyncServer._engineio_server_class()` (to plug in `FanoutEngineIO`), `packet_class`, `eio`.
  * `AsyncManager.emit()` signature; `BaseManager.rooms`, `get_participants()`,
    `basic_enter_room()` (copied: a `Room` dict instead of a `bidict` for rooms but None,
    which upstream reads only through `_fwdm`, `in`, `len`, set and delete),
    `basic_leave_room()` (both wrapped to report rooms that open and close, and to index each
    socket's rooms), `basic_disconnect()` (copied, with the socket's rooms
    from that index), `callbacks`, `pending_connect`, `pending_disconnect`.
aiohttp
  * `WebSocketResponse(compress=False)`, `request.transport` (frames are written to it
    directly; RFC 6455 server frames are unmasked, so a frame is the same for every socket).
  * `WebSocketResponse._post_start` — copied into `_WebSocketResponse._post_start` with one
    change: the parser's queue is a `_PushQueue`; `_reader`, `_parser`, `_max_msg_size`,
    `_compress`, `_decode_text`, `_heartbeat`, `_reset_heartbeat`, `_on_data_received`.
  * `_websocket.reader.WebSocketDataQueue` (subclassed; its `feed_data` is a cpdef method, so
    the compiled `WebSocketReader` calls the override), `_buffer`, `_protocol`, `exception()`,
    `set_exception`, `feed_eof`; `WebSocketReader(queue, max_msg_size, compress, decode_text)`,
    `feed_data(data)`; `WSMsgType`, `WSCloseCode`, `WebSocketError.code`.
  * `request.protocol` (the `RequestHandler`): `transport`, `_force_close`, `_manager`
    (`connection_lost(handler, exc)`), `_reading_paused`, `_buffer_paused`, `_message_tail`,
    `set_parser`, `keep_alive`; and
    that a handler's response whose `prepare`/`write_eof` write nothing leaves the
    connection alone when `transport` is None and `_force_close` is set. asyncio's
    `Transport.set_protocol` (uvloop and the default loop both have it).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import math
import os
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import engineio
import socketio
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.helpers import _EXC_SENTINEL
from aiohttp.http_websocket import WebSocketError, WSCloseCode, WSMsgType
from aiohttp.streams import DEFAULT_CHUNK_SIZE  # type: ignore[attr-defined]
from aiohttp.web import StreamResponse, WebSocketResponse
from bidict import bidict
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers.aiohttp import WebSocket as EngineIOWebSocket
from engineio.async_socket import AsyncSocket
from prometheus_client import Counter
from socketio import packet as sio_packet

from chat.outbox import FanoutLimits, Outbox, TurnFlush

log = logging.getLogger(__name__)

SLOW_SOCKETS = Counter("backstage_slow_socket_disconnects_total",
                       "Sockets disconnected because they did not read what was sent to them",
                       ["transport", "limit"])
FANOUT_DELIVERIES = Counter("backstage_fanout_deliveries_total",
                            "Pre-encoded broadcast packets handed to local sockets")

Payload = str | bytes


def ws_frame(payload: Payload) -> bytes:
    """One unmasked, unfragmented, uncompressed server WebSocket frame (RFC 6455 §5.2)."""
    if isinstance(payload, str):
        data, first = payload.encode(), 0x81  # FIN + text
    else:
        data, first = bytes(payload), 0x82  # FIN + binary
    n = len(data)
    if n < 126:
        return struct.pack("!BB", first, n) + data
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + data
    return struct.pack("!BBQ", first, 127, n) + data


class Broadcast:
    """One Socket.IO packet encoded once for every recipient: the Engine.IO packets (for the
    polling queue) and, built on first use, the WebSocket frames of all of them."""

    __slots__ = ("packets", "_frames")

    def __init__(self, encoded: Payload | list[Payload]) -> None:
        parts = encoded if isinstance(encoded, list) else [encoded]
        self.packets = [eio_packet.Packet(eio_packet.MESSAGE, p) for p in parts]
        self._frames: bytes | None = None

    @classmethod
    def joined(cls, broadcasts: list[Broadcast]) -> Broadcast:
        """Several broadcasts as one: their packets and frames one after the other."""
        self = cls.__new__(cls)
        self.packets = [p for b in broadcasts for p in b.packets]
        self._frames = b"".join(b.frames for b in broadcasts)
        return self

    @property
    def frames(self) -> bytes:
        if self._frames is None:
            self._frames = b"".join(ws_frame(p.encode()) for p in self.packets)
        return self._frames


def _control_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked server control frame (payload < 126 bytes, RFC 6455 §5.5)."""
    payload = payload[:125]
    return struct.pack("!BB", 0x80 | opcode, len(payload)) + payload


def close_frame(code: int) -> bytes:
    return _control_frame(0x8, struct.pack("!H", code))


class _PushQueue(WebSocketDataQueue):
    """aiohttp's queue of parsed websocket messages: a plain queue for `receive()` during the
    handshake, then, once `push_to(sink)` was called, a pipe that hands every message (and
    a protocol error) the parser produces straight to the `DetachedWebSocket`."""

    __slots__ = ("_sink",)

    def __init__(self, protocol: Any, limit: int, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(protocol, limit, loop=loop)
        self._sink: DetachedWebSocket | None = None

    def feed_data(self, data: Any, size: int) -> None:
        sink = self._sink
        if sink is None:
            super().feed_data(data, size)
        else:
            sink.on_message(data)

    def set_exception(self, exc: BaseException, exc_cause: BaseException = _EXC_SENTINEL) -> None:
        sink = self._sink
        if sink is None:
            super().set_exception(exc, exc_cause)
        else:
            sink.on_error(exc)

    def feed_eof(self) -> None:
        if self._sink is None:
            super().feed_eof()

    def push_to(self, sink: DetachedWebSocket) -> None:
        """From now on messages go to `sink`; those already queued first, in order."""
        queued = [msg for msg, _size in self._buffer]
        self._buffer.clear()
        self._sink = sink
        self._protocol = None  # type: ignore[assignment]  # aiohttp's request handler: nothing here may keep it alive
        for msg in queued:
            sink.on_message(msg)
        exc = self.exception()
        if exc is not None:
            sink.on_error(exc)


class _WebSocketResponse(WebSocketResponse):
    """aiohttp's WebSocketResponse whose parser feeds a `_PushQueue` (aiohttp 3.14.5
    `_post_start`, with the queue class replaced)."""

    def _post_start(self, request: Any, protocol: str | None, writer: Any) -> None:
        self._ws_protocol = protocol
        self._writer = writer
        self._reset_heartbeat()
        loop = self._loop
        assert loop is not None
        self._reader = _PushQueue(request._protocol, DEFAULT_CHUNK_SIZE, loop=loop)
        self._parser = WebSocketReader(self._reader, self._max_msg_size, compress=bool(self._compress),
                                       decode_text=self._decode_text)
        cb = None if self._heartbeat is None else self._on_data_received
        request.protocol.set_parser(self._parser, data_received_cb=cb)
        request.protocol.keep_alive(False)


class _Detached(StreamResponse):
    """What the request handler returns for a websocket that was detached: aiohttp has nothing
    left to write (the 101 went out) and must not close the connection."""

    def __init__(self) -> None:
        super().__init__(status=101)
        # Not keep-alive: aiohttp would otherwise arm a keep-alive timer that holds its request
        # handler (and the parsed upgrade request) for keepalive_timeout after the handler returns.
        self.force_close()

    async def prepare(self, request: Any) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


MAX_PENDING = 64  # received packets waiting for the socket's handler before reading pauses


class DetachedWebSocket(asyncio.Protocol):
    """One websocket after the handshake, owned by its engine.io socket instead of aiohttp.

    aiohttp keeps a websocket inside the request handler that upgraded it: the HTTP request,
    the handler task, the middlewares' and engine.io's coroutine frames, the WebSocketResponse
    and a receive timeout stay alive for the connection's whole life (~15 KiB per socket). Once
    the handshake is done (websocket-first, or the polling upgrade), `take_over` makes this
    object the transport's protocol and lets the request handler return: frames are parsed by
    aiohttp's own parser (the same object, partial frames included), written by the socket's
    `Outbox`, and received packets are handed to the engine.io socket in order by a task that
    exists only while there are packets to handle. An idle socket is this object, the parser,
    the outbox and the engine.io socket. Dead clients are found by the ping deadline
    (`PingWheel`), which replaces the receive timeout."""

    __slots__ = ("_socket", "_transport", "_parser", "_outbox", "_pending", "_task", "_paused", "_done")

    def __init__(self, socket: FanoutSocket, transport: asyncio.Transport, parser: Any, outbox: Outbox) -> None:
        self._socket = socket
        self._transport = transport
        self._parser = parser
        self._outbox = outbox
        self._pending: collections.deque[str | bytes | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._done = False

    @classmethod
    def take_over(cls, ws: FanoutWebSocket, socket: FanoutSocket, outbox: Outbox) -> DetachedWebSocket:
        request = ws.request
        handler = request.protocol  # aiohttp's RequestHandler of the upgrade request
        transport = handler.transport
        response = ws._sock
        if transport is None or transport.is_closing():
            raise OSError("connection lost during the websocket handshake")
        return cls.adopt(socket, handler, transport, response._parser, cast(_PushQueue, response._reader), outbox)

    @classmethod
    def adopt(cls, socket: FanoutSocket, handler: Any, transport: asyncio.Transport, parser: Any,
              queue: _PushQueue, outbox: Outbox, tail: bytes = b"", paused: bool = False) -> DetachedWebSocket:
        """Make a new DetachedWebSocket the protocol of `transport`, taking it from aiohttp's
        request `handler` (None: from chat/rawconnect.py's `FirstRequest`, whose bytes after the
        upgrade request are `tail`, and which `paused` reading); `parser` feeds `queue`. Bytes received after the upgrade
        request and not parsed yet are parsed now."""
        self = cls(socket, transport, parser, outbox)
        transport.set_protocol(self)
        if handler is None:
            queue.push_to(self)
            if tail:
                parser.feed_data(tail)
            if paused and not self._done:
                transport.resume_reading()
            return self
        # The request handler finishes without touching the connection (`_Detached`), and its
        # server stops counting it as one of its connections.
        was_paused = handler._reading_paused or handler._buffer_paused
        handler.keep_alive(False)  # cancels the keep-alive timer armed at connection_made (it holds the handler)
        handler.transport = None
        handler._force_close = True
        manager = handler._manager
        if manager is not None:
            manager.connection_lost(handler, None)
        queue.push_to(self)
        tail = handler._message_tail
        if tail:  # frames sent right behind the upgrade request (a parser set by aiohttp had them already)
            handler._message_tail = b""
            parser.feed_data(tail)
        if was_paused and not self._done:
            transport.resume_reading()
        return self

    # ------------------------------------------------------------ asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self._outbox.closed = True
        self._push(None)

    def pause_writing(self) -> None:
        pass  # the outbox watches the transport's buffer itself

    def resume_writing(self) -> None:
        pass

    # ------------------------------------------------------------ from the parser
    def on_message(self, msg: Any) -> None:
        kind = msg.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            data = msg.data
            if data == "3" and self._task is None and not self._done:
                self._socket.schedule_ping()  # a PONG with nothing before it to handle: at once
            else:
                self._push(data)
        elif kind is WSMsgType.PING:
            self._outbox.write(_control_frame(0xA, msg.data))
        elif kind is WSMsgType.CLOSE:
            self._close(WSCloseCode.OK)
        # PONG frames: nothing to do (engine.io pings with its own packets)

    def on_error(self, exc: BaseException) -> None:
        """The parser found a protocol error, or a message over max_http_buffer_size."""
        self._close(exc.code if isinstance(exc, WebSocketError) else WSCloseCode.PROTOCOL_ERROR)

    def _close(self, code: int) -> None:
        """Answer with a close frame and end the connection once it is sent."""
        outbox = self._outbox
        if not outbox.closed and not self._transport.is_closing():
            outbox.write(close_frame(code))  # after the frames still pending
        outbox.finish()  # writes what is pending, then closes
        self._transport.close()

    # ------------------------------------------------------------ to the engine.io socket
    def _push(self, item: str | bytes | None) -> None:
        if self._done:
            return
        pending = self._pending
        if pending is None:
            pending = self._pending = collections.deque()
        pending.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(pending))
        elif len(pending) > MAX_PENDING and not self._paused and not self._transport.is_closing():
            self._paused = True
            self._transport.pause_reading()

    async def _run(self, pending: collections.deque[str | bytes | None]) -> None:
        try:
            while pending:
                item = pending.popleft()
                if self._paused and len(pending) <= MAX_PENDING // 2:
                    self._paused = False
                    if not self._transport.is_closing():
                        self._transport.resume_reading()
                if item is None or not await self._receive(item):
                    await self._finish()
                    return
        finally:
            self._task = None
            if not pending:
                self._pending = None

    async def _receive(self, data: str | bytes) -> bool:
        """Upstream's receive loop body; False ends the connection."""
        socket = self._socket
        server = socket.server
        check = server.frame_check
        if check is not None and not check(socket.sid, data):
            return True  # dropped (the check counted it)
        on_message = server.message_handler
        if on_message is not None and type(data) is str and data[0] == "4" and data[1:2].isnumeric():
            # A MESSAGE (every Socket.IO packet): python-engineio's decode gives the text after
            # "4" (a leading digit is never JSON to it), and `receive` hands it to the "message"
            # handler through `_trigger_event`, which logs what the handler raises.
            try:
                await on_message(socket.sid, data[1:])
            except Exception:
                server.logger.exception("message async handler error")
            return True
        try:
            pkt = eio_packet.Packet(encoded_packet=data)
        except Exception:
            server.logger.info("%s: undecodable packet, closing", socket.sid)
            return False
        try:
            await socket.receive(pkt)
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            return False
        except Exception:
            server.logger.exception("Unknown receive error")
        return True

    async def _finish(self) -> None:
        self._done = True
        self._pending = None
        if not self._transport.is_closing():
            self._close(WSCloseCode.OK)
        self._outbox.closed = True
        socket = self._socket
        server = socket.server
        await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
        if socket.closed and server.sockets.get(socket.sid) is socket:
            del server.sockets[socket.sid]


class FanoutWebSocket(EngineIOWebSocket):  # type: ignore[misc]
    """engine.io's aiohttp WebSocket without permessage-deflate (a compressed stream has
    per-connection state, so frames could not be shared), with its transport exposed, and
    detached from aiohttp once the handshake is done (`DetachedWebSocket`)."""

    request: Any = None
    detached: DetachedWebSocket | None = None

    async def __call__(self, environ: dict[str, Any]) -> StreamResponse:
        self.request = environ["aiohttp.request"]
        self._sock = _WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(self.request)
        self.environ = environ
        await self.handler(self)
        if self.detached is not None:
            return _Detached()
        return self._sock


_WEBSOCKET_CLASSES: dict[type, type] = {}


def _websocket_class(base: type) -> type:
    """`FanoutWebSocket` combined with the server's websocket driver class, which may have been
    customised (e.g. a subclass filtering frames in `wait`): ours only replaces `__call__`."""
    if issubclass(base, FanoutWebSocket):
        return base
    if base not in _WEBSOCKET_CLASSES:
        _WEBSOCKET_CLASSES[base] = (FanoutWebSocket if base is EngineIOWebSocket else
                                    type(f"Fanout{base.__name__}", (FanoutWebSocket, base), {}))
    return _WEBSOCKET_CLASSES[base]


PING_FRAME = ws_frame(eio_packet.Packet(eio_packet.PING).encode())


class PingWheel:
    """Every socket's next ping and ping deadline, in slots of `tick` seconds, served by the
    engine.io service task (`FanoutEngineIO._service_task`). Upstream runs one Task with a
    sleeping coroutine and a timer per socket for its pings (~1.2 KiB each); an entry here is
    two list slots."""

    __slots__ = ("tick", "_slots", "_next")

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self._slots: dict[int, list[Any]] = {}
        self._next: int | None = None  # the first slot not served yet

    def add(self, at: float, socket: FanoutSocket, stamp: float | None) -> None:
        """At monotonic time `at`: ping `socket` (stamp None), or close it unless the PING it
        was sent at `stamp` (its `last_ping`) has been answered."""
        slot = math.ceil(at / self.tick)
        if self._next is not None and slot < self._next:
            slot = self._next
        entries = self._slots.get(slot)
        if entries is None:
            self._slots[slot] = [socket, stamp]
        else:
            entries.append(socket)
            entries.append(stamp)

    def due(self, now: float) -> list[Any]:
        """The entries (socket, stamp, socket, stamp, ...) whose time has come."""
        last = math.floor(now / self.tick)
        first = self._next if self._next is not None else (min(self._slots) if self._slots else last)
        due: list[Any] = []
        for slot in range(min(first, last + 1), last + 1):
            entries = self._slots.pop(slot, None)
            if entries is not None:
                due.extend(entries)
        self._next = last + 1
        return due

    def __len__(self) -> int:
        return sum(len(e) for e in self._slots.values()) // 2


class FanoutSocket(AsyncSocket):  # type: ignore[misc]
    """An engine.io socket whose websocket side is an `Outbox` instead of a writer task, whose
    pings come from the server's `PingWheel`, and whose engine.io queue exists only while it
    is needed (polling, the upgrade, the OPEN packet before the websocket takes over)."""

    outbox: Outbox | None = None
    _closing_soon = False
    _queue: asyncio.Queue[Any] | None = None

    def __init__(self, server: FanoutEngineIO, sid: str) -> None:
        # python-engineio 4.15.1 BaseSocket.__init__ without the queue (see `queue`).
        self.server = server
        self.sid = sid
        self.last_ping = time.time()
        self.connected = False
        self.upgrading = False
        self.upgraded = False
        self.closing = False
        self.closed = False
        self.session: dict[str, Any] = {}

    @property
    def queue(self) -> asyncio.Queue[Any]:
        """engine.io's packet queue, created on first use: a websocket socket drops it once its
        outbox took over (~3 KiB per socket: four deques and an Event)."""
        q = self._queue
        if q is None:
            q = self._queue = self.server.create_queue()
        return q

    @queue.setter
    def queue(self, value: asyncio.Queue[Any] | None) -> None:
        self._queue = value

    # ------------------------------------------------------------ pings (PingWheel)
    def schedule_ping(self) -> None:
        # Upstream's contract (called at connect and on every PONG): the next PING after
        # ping_interval, unless one is already scheduled (last_ping None).
        if self.last_ping:
            self.last_ping = None  # type: ignore[assignment]
            self.server.ping_wheel.add(time.monotonic() + self.server.ping_interval, self, None)

    def ping_due(self, stamp: float | None) -> None:
        """Called by the wheel: send the PING (stamp None), or close the socket if the PING sent
        at `stamp` was not answered within ping_timeout."""
        if self.closing or self.closed:
            return
        if stamp is None:
            if self.last_ping is not None:
                return  # a PING is out already
            self.last_ping = stamp = time.time()
            outbox = self.outbox
            if outbox is not None:
                outbox.write(PING_FRAME)
            else:
                self.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
                self._check_queue()
            self.server.ping_wheel.add(time.monotonic() + self.server.ping_timeout, self, stamp)
        elif self.last_ping == stamp:
            self.server.logger.info("%s: Client is gone, closing socket", self.sid)
            self._close_soon(self.server.reason.PING_TIMEOUT, abort=False)

    # ------------------------------------------------------------ sending
    def deliver(self, broadcast: Broadcast) -> None:
        """Hand a pre-encoded broadcast to this socket; never awaits."""
        if self.closing or self.closed:
            return
        last_ping = self.last_ping
        if last_ping and time.time() - last_ping > self.server.ping_timeout:
            self._close_soon(self.server.reason.PING_TIMEOUT, abort=False)
            return
        outbox = self.outbox
        if outbox is not None:
            outbox.write(broadcast.frames, len(broadcast.packets))
        else:
            for pkt in broadcast.packets:
                self.queue.put_nowait(pkt)
            self._check_queue()

    async def send(self, pkt: eio_packet.Packet) -> None:
        # Same contract as upstream: closed sockets raise, a ping timeout closes instead.
        if not await self.check_ping_timeout():
            return
        outbox = self.outbox
        if outbox is not None:
            outbox.write(ws_frame(pkt.encode()))
        else:
            self.queue.put_nowait(pkt)
            self._check_queue()

    def _check_queue(self) -> None:
        if self.queue.qsize() > self.server.fanout_limits.max_queued_packets:
            SLOW_SOCKETS.labels("polling", "packets").inc()
            log.warning("socket %s not polling: %d packets waiting, disconnecting",
                        self.sid, self.queue.qsize())
            self._close_soon(self.server.reason.TRANSPORT_ERROR, abort=False)

    def _close_soon(self, reason: Any, *, abort: bool) -> None:
        if self._closing_soon:
            return
        self._closing_soon = True
        self.server.start_background_task(self.close, wait=False, abort=abort, reason=reason)

    def _on_overflow(self, limit: str) -> None:
        SLOW_SOCKETS.labels("websocket", limit).inc()
        log.warning("socket %s not reading (%s limit), disconnecting", self.sid, limit)

    # ------------------------------------------------------------ websocket transport
    async def _upgrade_websocket(self, environ: dict[str, Any]) -> Any:
        if self.upgraded:
            raise OSError("Socket has been upgraded already")
        return await _websocket_class(self.server._async["websocket"])(self._websocket_handler, self.server)(environ)

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        await super().close(wait=wait, abort=abort, reason=reason)
        outbox = self.outbox
        if outbox is not None and not abort:
            # Upstream's writer task closed the websocket once the socket was closed; there is
            # no writer here, so end the connection after the CLOSE packet (flushed first).
            outbox.finish()

    def _attach_outbox(self, ws: FanoutWebSocket) -> Outbox:
        """From here on the socket's frames go to the outbox. What polling left in the queue
        (the OPEN packet of a websocket-first connection, or packets sent during an upgrade)
        is written first; no await in between, so nothing can overtake it."""
        transport = ws.request.transport
        if transport is None:
            raise OSError("connection lost during the websocket handshake")
        outbox = Outbox(transport, self.server.fanout_limits, self._on_overflow, self.server.backlog,
                        self.server.turn_flush)
        while True:
            try:
                pkt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self.queue.task_done()
            if pkt is not None:
                outbox.write(ws_frame(pkt.encode()))
        self.outbox = outbox
        self._queue = None  # from here on every packet goes to the outbox
        self.server.start_sweeper()
        return outbox

    async def _websocket_handler(self, ws: FanoutWebSocket) -> None:
        server = self.server

        async def websocket_wait() -> Any:
            data = await ws.wait()
            if data and len(data) > server.max_http_buffer_size:
                raise ValueError("packet is too large")
            return data

        if self.connected:
            # An upgrade from polling: upstream's handshake, unchanged.
            self.upgrading = True  # hold packet sends during the upgrade (they queue)
            try:
                pkt = await websocket_wait()
            except OSError:
                return
            decoded = eio_packet.Packet(encoded_packet=pkt)
            if decoded.packet_type != eio_packet.PING or decoded.data != "probe":
                server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
                self.upgrading = False
                return
            await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            await self.queue.put(eio_packet.Packet(eio_packet.NOOP))  # end the pending poll
            try:
                pkt = await websocket_wait()
            except OSError:
                self.upgrading = False
                return
            decoded = eio_packet.Packet(encoded_packet=pkt)
            if decoded.packet_type != eio_packet.UPGRADE:
                self.upgraded = False
                server.logger.info("%s: Failed websocket upgrade, expected UPGRADE packet", self.sid)
                self.upgrading = False
                return
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True

        try:
            outbox = self._attach_outbox(ws)
            ws.detached = DetachedWebSocket.take_over(ws, self, outbox)
        except OSError:
            if self.outbox is not None:
                self.outbox.closed = True
            await self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
            return
        server.logger.info("%s: Upgrade to websocket successful", self.sid)


class FanoutEngineIO(engineio.AsyncServer):  # type: ignore[misc]
    """engine.io server whose sockets are `FanoutSocket`s."""

    def __init__(self, *args: Any, fanout_limits: FanoutLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fanout_limits = fanout_limits or FanoutLimits()
        self._sweeper: asyncio.Task[None] | None = None
        self.backlog: set[Outbox] = set()  # websocket outboxes with unsent bytes
        self.turn_flush = TurnFlush()  # writes the frames of each loop turn, one write per socket
        # Websocket frames the app refuses after the handshake (`DetachedWebSocket`): returns
        # whether to handle the frame (chat/sockguard.py counts undecodable ones).
        self.frame_check: Callable[[str, Payload], bool] | None = None
        # The "message" handler, called by `DetachedWebSocket` without engine.io's packet object
        # and `_trigger_event` (set by chat/sockguard.py, which registers the same handler).
        self.message_handler: Callable[[str, str], Awaitable[None]] | None = None
        self.ping_wheel = PingWheel(min(0.5, self.ping_interval / 4, self.ping_timeout / 4))
        self._id_pool, self._id_at = b"", 0  # random bytes of the next session ids (`generate_id`)

    def generate_id(self) -> str:
        """python-engineio's session id (base64 of 12 random bytes and a 3-byte sequence number,
        '/' and '+' replaced), with the random bytes taken from a pool of `os.urandom` refilled
        every 256 ids: one system call instead of one per connect."""
        pool, at = self._id_pool, self._id_at
        if at + 12 > len(pool):
            pool = self._id_pool = os.urandom(12 * 256)
            at = 0
        self._id_at = at + 12
        seq: int = self.sequence_number  # type: ignore[has-type]
        self.sequence_number = (seq + 1) & 0xFFFFFF
        return base64.b64encode(pool[at:at + 12] + seq.to_bytes(3, "big")).decode().replace("/", "_").replace("+", "-")

    def start_sweeper(self) -> None:
        """One task for all sockets (not one per socket) that aborts stalled websockets."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        interval = min(1.0, self.fanout_limits.stall_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for outbox in list(self.backlog):
                if not outbox.check_stall(now):
                    self.backlog.discard(outbox)

    async def _service_task(self) -> None:
        """Replaces upstream's service task (which checks one socket per ping_timeout/N seconds,
        each with its own `wait_for`): serves the `PingWheel` every tick, and drops closed
        sockets from `sockets` once per ping_timeout, as upstream does."""
        self.service_task_event = event = self.create_event()
        wheel = self.ping_wheel
        purge_at = time.monotonic() + self.ping_timeout
        while not event.is_set():
            await asyncio.sleep(wheel.tick)
            now = time.monotonic()
            due = wheel.due(now)
            for i in range(0, len(due), 2):
                try:
                    due[i].ping_due(due[i + 1])
                except Exception:
                    self.logger.exception("ping failed")
            if now >= purge_at:
                purge_at = now + self.ping_timeout
                for sid, s in list(self.sockets.items()):
                    if s.closed:
                        self.sockets.pop(sid, None)

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await super().shutdown()

    async def _handle_connect(self, environ: dict[str, Any], transport: str,
                              jsonp_index: int | None = None) -> Any:
        # Copy of python-engineio 4.15.1 AsyncServer._handle_connect; only the socket class differs.
        if self.start_service_task:  # type: ignore[has-type]
            self.start_service_task = False
            self.service_task_handle = self.start_background_task(self._service_task)

        sid = self.generate_id()
        s = FanoutSocket(self, sid)
        self.sockets[sid] = s

        pkt = eio_packet.Packet(eio_packet.OPEN, {
            "sid": sid,
            "upgrades": self._upgrades(sid, transport),
            "pingTimeout": int(self.ping_timeout * 1000),
            "pingInterval": int(self.ping_interval + self.ping_interval_grace_period) * 1000,
            "maxPayload": self.max_http_buffer_size,
        })
        await s.send(pkt)

        ret = await self._trigger_event("connect", sid, environ, run_async=False)
        if ret is not None and ret is not True:
            del self.sockets[sid]
            self.logger.warning("Application rejected connection")
            return self._unauthorized(ret or None)

        s.schedule_ping()

        try:
            if transport == "websocket":
                ret = await s.handle_get_request(environ)
                if s.closed and sid in self.sockets:
                    del self.sockets[sid]
                return ret
            s.connected = True
            headers = None
            if self.cookie:
                cookie = self.cookie if isinstance(self.cookie, dict) else {
                    "name": self.cookie, "path": "/", "SameSite": "Lax"}
                headers = [("Set-Cookie", self._generate_sid_cookie(sid, cookie))]
            try:
                return self._ok(await s.poll(), headers=headers, jsonp_index=jsonp_index)
            except eio_exceptions.QueueEmpty:
                return self._bad_request()
        finally:
            trim_environ(environ)


# What a socket's environ keeps once its first request is over (python-socketio keeps the
# environ of the connecting request for the socket's whole life; whole, it holds the aiohttp
# request, its payload stream and every header, ~2 KiB per socket).
ENVIRON_KEEP = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "SERVER_PROTOCOL", "REMOTE_ADDR",
                "wsgi.url_scheme", "HTTP_HOST", "HTTP_ORIGIN", "HTTP_USER_AGENT", "HTTP_X_FORWARDED_FOR",
                "HTTP_X_FORWARDED_PROTO", "HTTP_X_REAL_IP")


def trim_environ(environ: dict[str, Any]) -> None:
    """Keep only `ENVIRON_KEEP` of `environ`, in place (python-socketio holds this dict)."""
    kept = {k: environ[k] for k in ENVIRON_KEEP if k in environ}
    environ.clear()
    environ.update(kept)


def has_binary(data: Any) -> bool:
    """Whether `data` holds bytes anywhere in its lists and dict values: what python-socketio's
    `Packet.data_is_binary` answers (tuples and dict keys are not looked into there either)."""
    if isinstance(data, list):
        items: Iterable[Any] = data
    elif isinstance(data, dict):
        items = data.values()
    else:
        return isinstance(data, (bytes, bytearray))
    for item in items:
        if isinstance(item, _NESTED) and has_binary(item):
            return True
    return False


_NESTED = (list, dict, bytes, bytearray)


RoomListener = Callable[[str], None]


class _SidSet(dict[str, None]):
    """The list API upstream's BaseManager uses on its pending_connect / pending_disconnect
    entries (`append`, `remove`, `in`, `len`), on an insertion-ordered dict: `in` and `remove`
    in O(1) instead of a scan. In a reconnect storm 5,000 sockets are pending disconnect at
    once and every event of every socket (`is_connected`) scanned that list."""

    def append(self, sid: str) -> None:
        self[sid] = None

    def remove(self, sid: str) -> None:
        del self[sid]


class _PendingSids(dict[str, _SidSet]):
    """namespace -> _SidSet; upstream stores a new `[]` for a namespace: kept as a _SidSet."""

    def __setitem__(self, namespace: str, sids: Iterable[str]) -> None:
        super().__setitem__(namespace, sids if isinstance(sids, _SidSet) else _SidSet(dict.fromkeys(sids)))


class Room(dict[str, str]):
    """A room's local members, sid -> eio sid. Upstream keeps every room in a `bidict`, whose
    inverse only the room None (all sockets of a namespace: `sid_from_eio_sid`) uses; the other
    rooms are read as `room._fwdm` (`get_participants`), `in`, `len`, item set and delete."""

    __slots__ = ()

    @property
    def _fwdm(self) -> dict[str, str]:
        return self


class FanoutManager(socketio.AsyncManager):  # type: ignore[misc]
    """Local room bookkeeping (upstream's) + encode-once delivery to local sockets.

    `on_room_open(room)` / `on_room_close(room)` are called when a room of the default
    namespace gets its first local member and loses its last one (the Redis relay subscribes
    and unsubscribes there)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_room_open: RoomListener | None = None
        self.on_room_close: RoomListener | None = None
        # (namespace, sid) -> the rooms it is in (None, its own, the ones it entered): upstream's
        # basic_disconnect looked for the socket in every room of the namespace (one per socket,
        # one per user channel, the conversations), so 5,000 disconnects at once cost 5,000 ×
        # ~10,000 lookups: 65 % of the Python time of a reconnect storm (docs/performance.md).
        self._sid_rooms: dict[tuple[str, str], set[Any]] = {}
        self.pending_connect: dict[str, _SidSet] = _PendingSids()
        self.pending_disconnect: dict[str, _SidSet] = _PendingSids()

    def set_server(self, server: Any) -> None:
        if not isinstance(server.eio, FanoutEngineIO):
            raise TypeError("FanoutManager needs a FanoutServer (its sockets must be FanoutSockets)")
        super().set_server(server)

    # ------------------------------------------------------------ emits
    def encode(self, event: str, data: Any, namespace: str = "/") -> Broadcast:
        """The Socket.IO EVENT packet of `emit(event, data)`, encoded once."""
        return Broadcast(self.encode_packet(event, data, namespace))

    def encode_packet(self, event: str, data: Any, namespace: str = "/") -> Payload | list[Payload]:
        if isinstance(data, tuple):
            args = list(data)
        elif data is not None:
            args = [data]
        else:
            args = []
        packet_data = [event, *args]
        # binary= given: upstream's own check (Packet.data_is_binary) builds a list and folds it
        # with a lambda at every level of every broadcast; `has_binary` answers the same.
        pkt = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=packet_data,
                                       binary=has_binary(packet_data))
        encoded: Payload | list[Payload] = pkt.encode()
        return encoded

    def deliver(self, namespace: str, room: Any, broadcast: Broadcast,
                skip_sid: str | Iterable[str] | None = None) -> int:
        """Hand `broadcast` to every local socket in `room` (a room name, a sid, or a list of
        them; None = everyone) but `skip_sid`. Synchronous; returns the number of sockets."""
        if namespace not in self.rooms:
            return 0
        if skip_sid is None:
            skip: Iterable[str] = ()
        elif isinstance(skip_sid, str):
            skip = (skip_sid,)
        else:
            skip = set(skip_sid)
        sockets = self.server.eio.sockets
        n = 0
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if socket is not None:
                socket.deliver(broadcast)
                n += 1
        FANOUT_DELIVERIES.inc(n)
        return n

    def deliver_each(self, namespace: str, room: Any, items: list[tuple[Broadcast, str | None]]) -> int:
        """`deliver(namespace, room, broadcast, skip_sid)` for each (broadcast, skip_sid), in
        this order, with one pass over the room: each socket is handed all of its broadcasts
        in one call (joined once for the sockets skipped by none; a socket skipped by some
        gets the others, joined for it). Returns the number of deliveries."""
        if namespace not in self.rooms or not items:
            return 0
        if len(items) == 1:
            return self.deliver(namespace, room, items[0][0], items[0][1])
        every = Broadcast.joined([b for b, _ in items])
        skipping = {skip for _, skip in items if skip is not None}
        sockets = self.server.eio.sockets
        n = 0
        count = len(items)
        for sid, eio_sid in self.get_participants(namespace, room):
            socket = sockets.get(eio_sid)
            if socket is None:
                continue
            if sid in skipping:
                mine = [b for b, skip in items if skip != sid]
                if mine:
                    socket.deliver(Broadcast.joined(mine))
                    n += len(mine)
            else:
                socket.deliver(every)
                n += count
        FANOUT_DELIVERIES.inc(n)
        return n

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        if callback is not None:
            # Every recipient needs its own ack id: upstream's per-recipient path.
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback,
                               to=to, **kwargs)
            return
        self.deliver(namespace, to or room, self.encode(event, data, namespace), skip_sid)

    # ------------------------------------------------------------ rooms that open and close
    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        """Upstream's (python-socketio 5.18.1 BaseManager.basic_enter_room), with a `Room` instead
        of a `bidict` for every room but None (a connect entered two new bidicts)."""
        rooms = self.rooms.get(namespace)
        if eio_sid is None and rooms is None:
            raise ValueError("sid is not connected to requested namespace")
        if sid != room and self.is_sid_room(namespace, room):
            raise ValueError("cannot enter a sid room")
        if rooms is None:
            rooms = self.rooms[namespace] = {}
        members = rooms.get(room)
        opened = members is None and room is not None and room != sid
        if members is None:
            members = rooms[room] = bidict() if room is None else Room()
        if eio_sid is None:
            eio_sid = rooms[None][sid]
        members[sid] = eio_sid  # the room None's bidict raises ValueDuplicationError (pre_connect)
        self._sid_rooms.setdefault((namespace, sid), set()).add(room)
        if opened and namespace == "/" and self.on_room_open is not None:
            self.on_room_open(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        existed = room is not None and room in self.rooms.get(namespace, {})
        super().basic_leave_room(sid, namespace, room)
        key = (namespace, sid)
        held = self._sid_rooms.get(key)
        if held is not None:
            held.discard(room)
            if not held:
                del self._sid_rooms[key]
        if (existed and room != sid and namespace == "/" and self.on_room_close is not None
                and room not in self.rooms.get(namespace, {})):
            self.on_room_close(room)

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """Upstream's (python-socketio 5.18.1 BaseManager.basic_disconnect), with the socket's
        rooms taken from `_sid_rooms` instead of a search of every room of the namespace."""
        if namespace not in self.rooms:
            return
        rooms = self.rooms[namespace]
        for room in list(self._sid_rooms.get((namespace, sid), ())):
            if room in rooms and sid in rooms[room]:
                self.basic_leave_room(sid, namespace, room)
            else:  # not in it (any more): nothing to leave, only the index entry to drop
                held = self._sid_rooms.get((namespace, sid))
                if held is not None:
                    held.discard(room)
                    if not held:
                        del self._sid_rooms[(namespace, sid)]
            if namespace not in self.rooms:
                break
        self._sid_rooms.pop((namespace, sid), None)
        if sid in self.callbacks:
            del self.callbacks[sid]
        if namespace in self.pending_connect and sid in self.pending_connect[namespace]:
            self.pending_connect[namespace].remove(sid)
            if len(self.pending_connect[namespace]) == 0:
                del self.pending_connect[namespace]
        if namespace in self.pending_disconnect and sid in self.pending_disconnect[namespace]:
            self.pending_disconnect[namespace].remove(sid)
            if len(self.pending_disconnect[namespace]) == 0:
                del self.pending_disconnect[namespace]

    def has_room(self, room: str, namespace: str = "/") -> bool:
        return room in self.rooms.get(namespace, {})


class FanoutServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's AsyncServer on a `FanoutEngineIO` with a `FanoutManager`."""

    def __init__(self, *args: Any, fanout_limits: FanoutLimits | None = None, **kwargs: Any) -> None:
        self._fanout_limits = fanout_limits or FanoutLimits()
        kwargs.setdefault("client_manager", FanoutManager())
        super().__init__(*args, **kwargs)
        self.eio.fanout_limits = self._fanout_limits

    def _engineio_server_class(self) -> type[FanoutEngineIO]:
        return FanoutEngineIO

    @property
    def fanout(self) -> FanoutManager:
        manager: FanoutManager = self.manager
        return manager


__all__ = ["Broadcast", "FanoutEngineIO", "FanoutLimits", "FanoutManager", "FanoutServer", "FanoutSocket",
           "Outbox", "TurnFlush", "ws_frame"]
