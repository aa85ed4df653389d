"""Websocket-first Engine.IO connects answered before aiohttp's request handler exists.

chat/wsconnect.py answers `GET /socket.io/?EIO=4&transport=websocket` in the first middleware,
but aiohttp has done its per-request work by then: a `RequestHandler` per connection (its
HTTP parser, a keep-alive timer, a task for `start()`), the parsed message and URL, a
`BaseRequest`, a `StreamWriter`, a second task per request, the middleware call and the
response bookkeeping (~11 % of the server's Python time in a connect storm, with
`WebsocketConnect` itself, in docs/performance.md).

Here each accepted connection's protocol is first a `FirstRequest`. If the first chunk it
receives is a complete request head of the form `GET /socket.io/?<plain query> HTTP/1.1`
(printable ASCII, token header names, no folded lines, no body headers, at most
`MAX_HEAD` bytes) that `WebsocketConnect` accepts (same checks: EIO=4, transport, Upgrade and
Connection, Sec-WebSocket-Version and -Key, the Origin rule), the connection is opened by
`WebsocketConnect.open` (connect gate, Engine.IO `connect` event, the same 101 bytes and OPEN
packet, `DetachedWebSocket`) in one task, and aiohttp never sees it. Anything else (any other
request, a head split across chunks, a query with escapes, a refused Origin) is handed to a
new aiohttp `RequestHandler` with the bytes received so far, before anything was answered:
aiohttp answers it exactly as without this module (the middleware still answers websocket
connects that arrive there). A session the app refuses gets the 401 the middleware returns,
written here, and the connection is closed (aiohttp would keep it open but could not read
another request on an upgrade connection).

Kept as aiohttp does: TCP keep-alive on the socket (TCP_NODELAY is the transport's own), a connection that sends nothing is closed
after `keepalive_timeout`, graceful shutdown (`pre_shutdown` closes idle connections,
`shutdown` waits for opening ones up to its timeout, then cancels them). The metrics are
`WebsocketConnect`'s. `run_app` is aiohttp's `web.run_app` for one TCP site, with this runner.

Upstream internals: aiohttp `Server.request_handler`, `request_factory`,
`handler_cancellation`, `_loop`, `_kwargs` (to build the same `RequestHandler`s),
`RequestHandler.connection_made` / `data_received`, `web_runner.GracefulExit`,
`tcp_helpers.tcp_keepalive`, `helpers.rfc822_formatted_time`, `http.SERVER_SOFTWARE`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from contextlib import suppress
from typing import Any, cast

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.web_runner import GracefulExit
from multidict import CIMultiDict, MultiDict

from chat.wsconnect import ROUTE, WebsocketConnect

log = logging.getLogger(__name__)

MAX_HEAD = 8190  # aiohttp's max_line_size / max_field_size: a longer head goes to aiohttp
MAX_HEADERS = 64
MAX_BUFFER = 1 << 16  # frames received while the connect event runs: reading pauses above this
_START = b"GET " + ROUTE.encode() + b"?"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUERY = re.compile(r"[A-Za-z0-9._~=&-]*")  # nothing to unescape: the same query for yarl
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # besides the CRLFs the head is split on


def parse_head(data: bytes) -> tuple[str, CIMultiDict[str], bytes] | None:
    """(query string, headers, bytes after the head) of a plain websocket-first request head at
    the start of `data`; None for anything else (aiohttp will parse it)."""
    if not data.startswith(_START):
        return None
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        return None
    head = data[:end]
    if not head.isascii():
        return None
    lines = head.decode("ascii").split("\r\n")
    if len(lines) > MAX_HEADERS + 1:
        return None
    target, space, version = lines[0][4:].partition(" ")
    if version != "HTTP/1.1" or not space:
        return None
    query = target[len(ROUTE) + 1:]
    if not _QUERY.fullmatch(query):
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or _CONTROL.search(value):
            return None
        headers.add(name, value.strip(" \t"))
    return query, headers, data[end + 4:]


def query_dict(query: str) -> MultiDict[str]:
    """yarl's `URL.query` of a query `_QUERY` allows (no escapes, no `+`)."""
    out: MultiDict[str] = MultiDict()
    for pair in query.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            out.add(name, value)
    return out


class FirstRequest(asyncio.Protocol):
    """A new connection until its first request is known (see the module docstring)."""

    __slots__ = ("_server", "transport", "_timer", "_task", "_tail", "_paused")

    def __init__(self, server: RawConnectServer) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._tail = b""
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = real = cast(asyncio.Transport, transport)
        server = self._server
        server.opening.add(self)
        # TCP_NODELAY (aiohttp's BaseProtocol sets it again): uvloop's and asyncio's TCP
        # transports have it set already.
        if server.tcp_keepalive:
            tcp_keepalive(real)
        if server.keepalive_timeout > 0:  # like aiohttp: nothing sent at all is not kept forever
            loop = server._loop
            self._timer = loop.call_at(loop.time() + server.keepalive_timeout, self.close)

    def data_received(self, data: bytes) -> None:
        if self._task is not None:  # frames behind the request, while the connect event runs
            self._tail += data
            if len(self._tail) > MAX_BUFFER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            return
        server = self._server
        connect = server.connect
        parsed = parse_head(data)
        if parsed is not None:
            query, headers, tail = parsed
            key = connect.accepts(query_dict(query), headers, True)
            if key is not None:
                environ = connect.environ(ROUTE + "?" + query, query, headers, self)
                if connect.allowed(environ):
                    self._cancel_timer()
                    self._tail = tail
                    self._task = server._loop.create_task(self._open(key, environ))
                    return
        self._pass_on(data)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._cancel_timer()
        if self._task is None:
            self._server.opening.discard(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Close an idle connection (the keep-alive timeout, or the server shutting down)."""
        self._cancel_timer()
        if self._task is None and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Cancel the connect in progress and drop the connection (shutdown). python-engineio
        takes a cancelled connect event for an accepted one: the closed transport then ends it."""
        self._cancel_timer()
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.abort()

    def detach(self) -> tuple[bytes, bool]:
        """For `DetachedWebSocket.adopt`: the bytes received after the request, and whether
        reading was paused; this object is done."""
        tail, self._tail = self._tail, b""
        self.transport = None
        return tail, self._paused

    def _pass_on(self, data: bytes) -> None:
        """aiohttp's handling, from the first byte on."""
        self._cancel_timer()
        server = self._server
        server.opening.discard(self)
        transport = self.transport
        self.transport = None
        if transport is None or transport.is_closing():
            return
        handler = server.request_handler_for()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(data)

    async def _open(self, key: str, environ: dict[str, Any]) -> None:
        try:
            response = await self._server.connect.open(key, environ, None, self)
            if response is not None and self.transport is not None:
                assert isinstance(response, web.Response)
                self.transport.write(serialize(response))
                self.transport.close()
        except ConnectionError:
            pass  # the client went away during the handshake (aiohttp ignores it as well)
        except BaseException as exc:  # a bug (aiohttp would answer 500), or cancelled at shutdown
            if isinstance(exc, Exception):
                log.exception("websocket connect failed")
            if self.transport is not None:
                self.transport.abort()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._server.opening.discard(self)
            self._task = None


def serialize(response: web.Response) -> bytes:
    """What aiohttp writes for a body response to an HTTP/1.1 upgrade request."""
    body = response.body
    assert isinstance(body, bytes)
    head = [f"HTTP/1.1 {response.status} {response.reason}"]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    head += [f"Content-Length: {len(body)}", f"Date: {rfc822_formatted_time()}", f"Server: {SERVER_SOFTWARE}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawConnectServer(web.Server):
    """aiohttp's `Server` (the protocol factory of the listening socket) whose connections
    start as `FirstRequest`s."""

    def __init__(self, made: web.Server, connect: WebsocketConnect) -> None:
        super().__init__(made.request_handler, request_factory=made.request_factory,
                         handler_cancellation=made.handler_cancellation, loop=made._loop, **made._kwargs)
        self.connect = connect
        self.opening: set[FirstRequest] = set()  # not yet handed to aiohttp or to their socket
        self.tcp_keepalive = bool(made._kwargs.get("tcp_keepalive", True))
        self.keepalive_timeout = float(made._kwargs.get("keepalive_timeout", 3630))  # RequestHandler's default

    def __call__(self) -> FirstRequest:  # type: ignore[override]
        return FirstRequest(self)

    def request_handler_for(self) -> web.RequestHandler:
        """A new aiohttp request handler, as `Server.__call__` makes them."""
        return super().__call__()

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for first in list(self.opening):
            first.close()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's signature)
        """Connects in progress get `timeout` to finish, then their connections are aborted (as
        aiohttp cancels its handlers and closes their connections)."""
        tasks = [first._task for first in self.opening if first._task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
            for first in list(self.opening):
                first.abort()
            await asyncio.wait(tasks, timeout=timeout)
        await super().shutdown(timeout)


class RawConnectRunner(web.AppRunner):
    """`web.AppRunner` serving through a `RawConnectServer`."""

    def __init__(self, app: web.Application, connect: WebsocketConnect, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._connect = connect

    async def _make_server(self) -> web.Server:
        return RawConnectServer(await super()._make_server(), self._connect)


def run_app(app: web.Application, connect: WebsocketConnect, *, host: str, port: int, backlog: int,
            shutdown_timeout: float, ready: Callable[[], None]) -> None:
    """`web.run_app(app, host=, port=, backlog=, shutdown_timeout=, access_log=None)` with a
    `RawConnectRunner` (aiohttp 3.14's run_app, one TCP site): SIGINT/SIGTERM shut down
    gracefully, `ready()` once listening."""
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        runner = RawConnectRunner(app, connect, handle_signals=True, access_log=None,
                                  shutdown_timeout=shutdown_timeout, keepalive_timeout=75.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=backlog).start()
            ready()
            await asyncio.Event().wait()  # until cancelled (a signal: GracefulExit)
        finally:
            await runner.cleanup()

    main = loop.create_task(serve())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            if rest:
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
