"""Websocket-first Engine.IO connects, answered without aiohttp's websocket response.

A socket.io client with transports ['websocket'] (the mobile apps, the Node clients) opens each
connection with one `GET /socket.io/?EIO=4&transport=websocket` upgrade. The usual way answers
it through the app's middlewares, python-engineio's `handle_request` (a WSGI-like environ of
every header, the query parsed again, a dispatch), a `WebSocketResponse` (a response headers
object, a writer, a reader and a parser, then the protocol switch of `DetachedWebSocket`):
~20 % of the server's Python time in a connect storm (docs/performance.md).

`WebsocketConnect` answers the well-formed case itself: the checks python-engineio and aiohttp
make (Engine.IO version, transport, Upgrade/Connection headers, Sec-WebSocket-Version and -Key,
the Origin rule of `cors_allowed_origins`), the same Engine.IO `connect` event (the connect gate
and python-socketio's handler run there, and may refuse the session as before: 401), then one
write of the 101 response — the same bytes aiohttp writes — and the OPEN packet, and the
connection goes straight to a `DetachedWebSocket` with its own parser. Anything else (polling,
the upgrade of a polling session, a handshake aiohttp would refuse, a refused Origin, a request
body, HTTP/1.0) returns None and goes the usual way, which answers it exactly as before.

Upstream internals this relies on, besides those listed in chat/fanout.py: python-engineio
`AsyncServer.transports`, `cors_allowed_origins`, `_cors_allowed_origins(environ)`,
`_make_response`, `reason`, and the OPEN packet's fields (`_handle_connect`); aiohttp
`BaseRequest._message.upgrade`, `helpers.rfc822_formatted_time`, `http.SERVER_SOFTWARE`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp._websocket.reader import WebSocketReader
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.streams import DEFAULT_CHUNK_SIZE  # type: ignore[attr-defined]
from engineio import packet as eio_packet
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from chat.fanout import ENVIRON_KEEP, DetachedWebSocket, FanoutEngineIO, FanoutSocket, Outbox, _Detached, _PushQueue, trim_environ, ws_frame
from chat.metrics import HTTP_REQUESTS

if TYPE_CHECKING:
    from chat.rawconnect import FirstRequest

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
WS_VERSIONS = ("13", "8", "7")  # what aiohttp's handshake accepts
ROUTE = "/socket.io/"  # python-engineio's default path, as attached in chat/app.py
# The environ of a websocket-first socket: what `trim_environ` keeps, plus X-Forwarded-Host for
# the same-origin rule (`_cors_allowed_origins`); (environ key, header name).
_HEADERS = tuple((key, key[5:].replace("_", "-")) for key in (*ENVIRON_KEEP, "HTTP_X_FORWARDED_HOST")
                 if key.startswith("HTTP_"))
_SID = "@@sid@@"


class WebsocketConnect:
    """`await connect(request)`: the answer to a websocket-first Engine.IO connect, or None
    when the request is not one this handles (the caller passes it on)."""

    def __init__(self, eio: FanoutEngineIO) -> None:
        self.eio = eio
        # python-engineio's OPEN packet of a websocket-first connect (no upgrades), around the sid.
        opening = eio_packet.Packet(eio_packet.OPEN, {
            "sid": _SID,
            "upgrades": [],
            "pingTimeout": int(eio.ping_timeout * 1000),
            "pingInterval": int(eio.ping_interval + eio.ping_interval_grace_period) * 1000,
            "maxPayload": eio.max_http_buffer_size,
        }).encode()
        self._open_head, self._open_tail = opening.split(_SID)
        self._server_line = f"\r\nServer: {SERVER_SOFTWARE}\r\n\r\n".encode()
        self._upgraded = HTTP_REQUESTS.labels(ROUTE, "101")

    def environ(self, path_qs: str, query_string: str, headers: CIMultiDictProxy[str] | CIMultiDict[str],
                conn: Any) -> dict[str, Any]:
        """python-engineio's environ of this request (its aiohttp driver's `translate_request`),
        with only the entries a socket keeps once connected; `conn` (the aiohttp request, or
        chat/rawconnect.py's `FirstRequest`: its `transport` is what the connect gate reads)
        is kept until the connect is answered."""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": ROUTE,
            "QUERY_STRING": query_string,
            "RAW_URI": path_qs,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "aiohttp.request": conn,
        }
        for key, name in _HEADERS:
            values = headers.getall(name, None)
            if values is not None:
                environ[key] = values[0] if len(values) == 1 else ",".join(values)
        environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
        return environ

    def accepts(self, query: MultiMapping[str], headers: CIMultiDictProxy[str] | CIMultiDict[str],
                upgrade: bool) -> str | None:
        """The Sec-WebSocket-Key of a `GET /socket.io/` HTTP/1.1 request this answers, or None.
        `upgrade`: the HTTP parser saw an upgrade request (Connection: upgrade and Upgrade)."""
        if (query.get("transport") != "websocket" or "sid" in query or "j" in query
                or query.getall("EIO", None) != ["4"] or "websocket" not in self.eio.transports):
            return None
        if (headers.get(hdrs.UPGRADE, "").lower() != "websocket" or not upgrade
                or "upgrade" not in (t.strip() for t in headers.get(hdrs.CONNECTION, "").lower().split(","))
                or hdrs.CONTENT_LENGTH in headers or hdrs.TRANSFER_ENCODING in headers
                or headers.get(hdrs.SEC_WEBSOCKET_VERSION) not in WS_VERSIONS):
            return None
        key = headers.get(hdrs.SEC_WEBSOCKET_KEY)
        if not key:
            return None
        try:
            if len(base64.b64decode(key)) != 16:
                return None
        except binascii.Error:
            return None
        return key

    def allowed(self, environ: dict[str, Any]) -> bool:
        """The Origin rule of `cors_allowed_origins` (a refused one goes the usual way: 400,
        logged once)."""
        origin = environ.get("HTTP_ORIGIN")
        eio = self.eio
        if origin and eio.cors_allowed_origins != []:
            allowed = eio._cors_allowed_origins(environ)
            if allowed is not None and origin not in allowed:
                return False
        return True

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """The middleware's way (chat/app.py `websocket_connects`)."""
        if request.method != "GET" or request.version != (1, 1) or request.path != ROUTE:
            return None
        headers = request.headers
        key = self.accepts(request.query, headers, request._message.upgrade)
        if key is None:
            return None
        environ = self.environ(request.path_qs, request.query_string, headers, request)
        if not self.allowed(environ):
            return None
        refused = await self.open(key, environ, request)
        return _Detached() if refused is None else refused

    async def open(self, key: str, environ: dict[str, Any], request: web.BaseRequest | None,
                   first: FirstRequest | None = None) -> web.StreamResponse | None:
        """Open the Engine.IO session of an accepted request: None once the connection belongs
        to its socket, or the app's refusal (401) to be sent. From the middleware, `request` is
        aiohttp's; from chat/rawconnect.py, `first` is the connection's protocol."""
        eio = self.eio
        # python-engineio 4.15.1 AsyncServer._handle_connect, websocket transport.
        if eio.start_service_task:
            eio.start_service_task = False
            eio.service_task_handle = eio.start_background_task(eio._service_task)
        sid = eio.generate_id()
        socket = FanoutSocket(eio, sid)
        eio.sockets[sid] = socket
        try:
            ret = await eio._trigger_event("connect", sid, environ, run_async=False)
            if ret is not None and ret is not True:
                eio.sockets.pop(sid, None)
                eio.logger.warning("Application rejected connection")
                response: web.StreamResponse = await eio._make_response(eio._unauthorized(ret or None), environ)
                HTTP_REQUESTS.labels(ROUTE, str(response.status)).inc()
                return response
            socket.schedule_ping()
            if request is not None:
                transport, handler = request.transport, request.protocol
            else:
                assert first is not None
                transport, handler = first.transport, None
            if transport is None or transport.is_closing() or socket.closed or (handler is None and request is not None):
                await socket.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_CLOSE)
                raise ConnectionResetError("connection lost during the websocket handshake")
            socket.connected = True
            socket.upgraded = True
            accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID, usedforsecurity=False).digest())
            outbox = Outbox(transport, eio.fanout_limits, socket._on_overflow, eio.backlog, eio.turn_flush)
            # The 101 response and the OPEN packet in one write (at the end of this loop turn).
            outbox.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\nDate: " + rfc822_formatted_time().encode()
                         + self._server_line + ws_frame(self._open_head + sid + self._open_tail))
            queued = socket._queue
            if queued is not None:  # sent while the connect event ran
                while not queued.empty():
                    pkt = queued.get_nowait()
                    if pkt is not None:
                        outbox.write(ws_frame(pkt.encode()))
            socket.outbox = outbox
            socket._queue = None
            eio.start_sweeper()
            queue = _PushQueue(None, DEFAULT_CHUNK_SIZE, loop=asyncio.get_running_loop())
            parser = WebSocketReader(queue, eio.max_http_buffer_size, compress=False, decode_text=True)
            if first is None:
                DetachedWebSocket.adopt(socket, handler, transport, parser, queue, outbox)
            else:
                DetachedWebSocket.adopt(socket, None, transport, parser, queue, outbox, *first.detach())
        except BaseException as exc:
            if eio.sockets.get(sid) is socket:
                del eio.sockets[sid]
            if socket.outbox is not None:
                socket.outbox.closed = True
            if isinstance(exc, Exception) and not socket.closed:
                await socket.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_CLOSE)
            raise
        finally:
            trim_environ(environ)
        self._upgraded.inc()
        return None
