"""Websocket-first Engine.IO connects (chat/wsconnect.py, chat/rawconnect.py): answered without
python-engineio's `handle_request` and aiohttp's WebSocketResponse, with the same bytes as the
usual way; every other request still goes the usual way and gets the usual answer.

Each check runs against in-process servers: "raw" (run_server.py's: `RawConnectRunner` and the
`websocket_connects` middleware), "middleware" (the middleware alone, as aiohttp's test servers
run the app) and "usual" (neither), over raw TCP (what a client sends and reads, byte for byte)."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from socket import IPPROTO_TCP, TCP_NODELAY
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from chat.app import websocket_connects
from chat.codec import OrjsonCompat
from chat.fanout import FanoutServer
from chat.rawconnect import RawConnectRunner, RawConnectServer
from chat.wsconnect import WebsocketConnect

KEY = base64.b64encode(os.urandom(16)).decode()
ACCEPT = base64.b64encode(hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode(),
                                       usedforsecurity=False).digest()).decode()


class Server:
    def __init__(self, port: int, sio: FanoutServer, usual: list[str], fast: Counted, runner: web.AppRunner,
                 entered: asyncio.Event) -> None:
        self.port, self.sio, self.usual, self.fast, self.runner = port, sio, usual, fast, runner
        self.entered = entered  # the Engine.IO connect event started (see `hold`)
        self.cleaned = False


class Counted(WebsocketConnect):
    """Counts the connects the middleware answered (`opened`: all those opened either way)."""

    middleware = opened = 0

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse | None:
        response = await super().__call__(request)
        self.middleware += response is not None
        return response

    async def open(self, *args: Any) -> web.StreamResponse | None:
        self.opened += 1
        return await super().open(*args)


MODES = ("raw", "middleware", "usual")
FAST = ("raw", "middleware")


@asynccontextmanager
async def server(mode: str, *, origins: Any = None, refuse: bool = False, hold: asyncio.Event | None = None,
                 **runner_args: Any) -> AsyncIterator[Server]:
    """`hold`: the Engine.IO connect event waits for it; `runner_args`: aiohttp's (timeouts)."""
    sio = FanoutServer(async_mode="aiohttp", json=OrjsonCompat, cors_allowed_origins=origins, async_handlers=False)
    usual: list[str] = []  # requests python-engineio's handle_request answered
    handle = sio.eio.handle_request

    async def counted(request: web.Request) -> Any:
        usual.append(request.path_qs)
        return await handle(request)

    sio.eio.handle_request = counted  # before attach(): the route takes the bound method
    fast = Counted(sio.eio)
    app = web.Application(middlewares=[websocket_connects(sio, fast)] if mode in FAST else [])
    sio.attach(app)

    @sio.on("connect")  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> bool:
        return bool(auth and auth.get("token") == "good")

    @sio.on("echo")  # type: ignore[untyped-decorator]
    async def echo(sid: str, data: Any) -> Any:
        return {"echo": data}

    if refuse:
        async def no(eio_sid: str, environ: Any) -> bool:
            return False
        sio.eio.on("connect", no)
    entered = asyncio.Event()
    if hold is not None:
        connect_handler = sio.eio.handlers["connect"]

        async def held(eio_sid: str, environ: Any) -> Any:
            entered.environ = environ  # type: ignore[attr-defined]
            entered.set()
            await hold.wait()
            return await connect_handler(eio_sid, environ)
        sio.eio.on("connect", held)

    runner = (RawConnectRunner(app, fast, **runner_args) if mode == "raw" else web.AppRunner(app, **runner_args))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    s = Server(port, sio, usual, fast, runner, entered)
    try:
        yield s
    finally:
        if not s.cleaned:
            await runner.cleanup()


def masked(payload: str) -> bytes:
    """One masked client text frame (RFC 6455 §5.3)."""
    data = payload.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert len(data) < 126
    return struct.pack("!BB", 0x81, 0x80 | len(data)) + mask + body


async def read_frame(reader: asyncio.StreamReader) -> str:
    first, second = await asyncio.wait_for(reader.readexactly(2), 5)
    assert first == 0x81 and second < 126, (first, second)  # FIN + text, unmasked, short
    return (await reader.readexactly(second)).decode()


async def request(port: int, path: str, headers: dict[str, str], then: bytes = b"") -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, str, dict[str, str], bytes]:
    """Send a GET (and `then` in the same write); returns the status line, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + then)
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    status, *rest = head.strip().split("\r\n")
    got = dict(line.split(": ", 1) for line in rest)
    body = b""
    if "Content-Length" in got:
        body = await reader.readexactly(int(got["Content-Length"]))
    return reader, writer, status, got, body


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}
WS_PATH = "/socket.io/?EIO=4&transport=websocket"


async def websocket_session(port: int) -> dict[str, Any]:
    """A websocket-first session, its Socket.IO CONNECT sent in the same write as the upgrade
    request; what the client reads."""
    reader, writer, status, headers, _ = await request(port, WS_PATH, UPGRADE,
                                                      then=masked('40{"token":"good"}'))
    opening = await read_frame(reader)
    connected = await read_frame(reader)
    writer.write(masked('421["echo",{"a":[1,"\\u00e9"]}]'))
    acked = await read_frame(reader)
    writer.close()
    headers.pop("Date")
    sid = json.loads(opening[1:]).pop("sid")
    return {"status": status, "headers": headers, "open": opening.replace(sid, "SID"),
            "connected": connected[:3], "sid_len": len(sid), "acked": acked}


async def test_websocket_first_connect_is_answered_like_the_usual_way() -> None:
    seen = {}
    for mode in MODES:
        async with server(mode) as s:
            seen[mode] = await websocket_session(s.port)
            assert s.usual == ([] if mode in FAST else [WS_PATH])
            assert (s.fast.opened, s.fast.middleware) == {"raw": (1, 0), "middleware": (1, 1), "usual": (0, 0)}[mode]
            assert len(s.sio.eio.sockets) == 1
            socket = next(iter(s.sio.eio.sockets.values()))
            assert socket.outbox is not None and socket.upgraded and socket.connected
            sock = socket.outbox._transport.get_extra_info("socket")  # small frames leave at once
            assert sock.getsockopt(IPPROTO_TCP, TCP_NODELAY)
            environ = s.sio.environ[socket.sid]
            assert "aiohttp.request" not in environ and environ["HTTP_HOST"] == "127.0.0.1"
            # The upgrade's request handler is gone (no keep-alive timer or task holds it).
            gc.collect()
            assert not [o for o in gc.get_objects() if isinstance(o, RequestHandler)]
    assert seen["raw"] == seen["usual"] and seen["middleware"] == seen["usual"]
    assert seen["raw"]["headers"]["Sec-WebSocket-Accept"] == ACCEPT
    assert seen["raw"]["status"] == "HTTP/1.1 101 Switching Protocols"
    assert seen["raw"]["connected"] == '40{'
    assert seen["raw"]["acked"] == '431[{"echo":{"a":[1,"é"]}}]'


CASES: list[tuple[str, dict[str, str], str]] = [
    ("polling", {}, "/socket.io/?EIO=4&transport=polling"),
    ("old protocol", UPGRADE, "/socket.io/?EIO=3&transport=websocket"),
    ("bad version", {**UPGRADE, "Sec-WebSocket-Version": "12"}, WS_PATH),
    ("bad key", {**UPGRADE, "Sec-WebSocket-Key": "c2hvcnQ="}, WS_PATH),
    ("no upgrade header", {k: v for k, v in UPGRADE.items() if k != "Upgrade"}, WS_PATH),
    ("unknown session", UPGRADE, WS_PATH + "&sid=nope"),
    ("refused origin", {**UPGRADE, "Origin": "http://evil.example"}, WS_PATH),
]


@pytest.mark.parametrize(("case", "headers", "path"), CASES, ids=[c[0] for c in CASES])
async def test_other_requests_go_the_usual_way(case: str, headers: dict[str, str], path: str) -> None:
    answers = []
    for mode in MODES:
        async with server(mode, origins=["http://127.0.0.1"]) as s:
            _, writer, status, got, body = await request(s.port, path, headers)
            writer.close()
            assert s.usual == [path], case
            assert s.fast.opened == 0
            text = body.decode(errors="replace")
            if case == "polling":
                text = json.loads(text[1:]).keys()
            answers.append((status, got.get("Content-Type"), text))
    assert answers[0] == answers[2] and answers[1] == answers[2]
    assert not answers[0][0].startswith("HTTP/1.1 101"), answers[0]


@pytest.mark.parametrize("mode", FAST)
@pytest.mark.parametrize("origin", ["http://127.0.0.1", None])
async def test_allowed_origin_or_none_is_answered_by_the_fast_way(origin: str | None, mode: str) -> None:
    headers = {**UPGRADE, **({"Origin": origin} if origin else {})}
    async with server(mode, origins=["http://127.0.0.1"]) as s:
        reader, writer, status, _, _ = await request(s.port, WS_PATH, headers)
        assert status == "HTTP/1.1 101 Switching Protocols"
        assert (await read_frame(reader)).startswith('0{"sid":')
        writer.close()
        assert s.usual == []


async def test_a_session_the_app_refuses_gets_the_same_401() -> None:
    answers: list[tuple[str, dict[str, str], bytes]] = []
    for mode in MODES:
        async with server(mode, refuse=True) as s:
            reader, writer, status, got, body = await request(s.port, WS_PATH, UPGRADE)
            got.pop("Date")
            answers.append((status, got, body))
            assert s.sio.eio.sockets == {}
            if mode == "raw":  # and the connection is closed: nothing more can be read on it
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
    assert answers[0] == answers[2] and answers[1] == answers[2] and answers[0][0] == "HTTP/1.1 401 Unauthorized"


async def test_session_ids_are_unique_and_shaped_like_upstream() -> None:
    async with server("raw") as s:
        eio = s.sio.eio
        ids = {eio.generate_id() for _ in range(1000)}
    assert len(ids) == 1000
    check: Callable[[str], bool] = lambda sid: len(sid) == 20 and "/" not in sid and "+" not in sid  # noqa: E731
    assert all(check(sid) for sid in ids)


async def raw_head(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for a condition of the server's state."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


def head(path: str = WS_PATH, headers: dict[str, str] = UPGRADE) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(("case", "path", "headers"), [
    ("escaped query", WS_PATH + "&x=%41", UPGRADE),
    ("non-ASCII header", WS_PATH, {**UPGRADE, "User-Agent": "caf\u00e9"}),
    ("folded header", WS_PATH, {**UPGRADE, "User-Agent": "a\r\n b"}),
])
async def test_requests_the_raw_way_does_not_parse_go_to_the_middleware(case: str, path: str,
                                                                        headers: dict[str, str]) -> None:
    answers = []
    for mode in ("raw", "middleware"):
        async with server(mode) as s:
            reader, writer = await raw_head(s.port, head(path, headers).replace("é".encode(), "é".encode("latin-1")))
            answers.append((await asyncio.wait_for(reader.readuntil(b"\r\n"), 5), s.fast.opened, s.fast.middleware))
            writer.close()
    assert answers[0] == answers[1], case  # the raw way answered none of them itself
    if case != "folded header":  # aiohttp refuses that one (400)
        assert answers[0] == (b"HTTP/1.1 101 Switching Protocols\r\n", 1, 1)


async def test_a_head_split_across_reads_goes_to_the_middleware() -> None:
    data = head()
    async with server("raw") as s:
        raw_server = s.runner.server
        assert isinstance(raw_server, RawConnectServer)
        reader, writer = await raw_head(s.port, data[:40])
        await until(lambda: not raw_server.opening)  # handed to aiohttp
        writer.write(data[40:] + masked('40{"token":"good"}'))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101 ")
        assert (await read_frame(reader)).startswith('0{"sid":')
        assert (await read_frame(reader)).startswith('40{')
        writer.close()
        assert (s.fast.opened, s.fast.middleware) == (1, 1)


async def test_frames_received_while_the_connect_event_runs_are_handled_after_it() -> None:
    hold = asyncio.Event()
    async with server("raw", hold=hold) as s:
        reader, writer = await raw_head(s.port, head())
        await asyncio.wait_for(s.entered.wait(), 5)
        writer.write(masked('40{"token":"good"}') + masked('421["echo",1]'))
        raw_server = s.runner.server
        assert isinstance(raw_server, RawConnectServer)
        await until(lambda: any(first._tail for first in raw_server.opening))  # received while held
        hold.set()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101 ")
        assert (await read_frame(reader)).startswith('0{"sid":')
        assert (await read_frame(reader)).startswith('40{')
        assert await read_frame(reader) == '431[{"echo":1}]'
        writer.close()
        assert (s.fast.opened, s.fast.middleware) == (1, 0)


async def test_a_connection_that_sends_nothing_is_closed_after_the_keepalive_timeout() -> None:
    async with server("raw", keepalive_timeout=0.2) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        server_side = s.runner.server
        assert isinstance(server_side, RawConnectServer) and not server_side.opening


async def test_shutdown_closes_idle_connections_and_ends_connects_in_progress() -> None:
    hold = asyncio.Event()
    async with server("raw", hold=hold, shutdown_timeout=0.2) as s:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", s.port)
        reader, writer = await raw_head(s.port, head())
        await asyncio.wait_for(s.entered.wait(), 5)
        await asyncio.wait_for(s.runner.cleanup(), 5)  # the connect event never returns by itself
        s.cleaned = True
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert s.sio.eio.sockets == {}
        idle_writer.close()
        writer.close()


@pytest.mark.parametrize("mode", FAST)
async def test_a_client_gone_while_the_connect_event_waits_is_seen_and_leaves_nothing(mode: str) -> None:
    """The connect gate (chat/sockguard.py) looks at environ["aiohttp.request"].transport to
    drop a session whose client gave up while it waited: that holds the raw way as well."""
    hold = asyncio.Event()
    async with server(mode, hold=hold) as s:
        reader, writer = await raw_head(s.port, head())
        await asyncio.wait_for(s.entered.wait(), 5)
        conn = s.entered.environ["aiohttp.request"]  # type: ignore[attr-defined]
        assert conn.transport is not None and not conn.transport.is_closing()
        writer.close()
        await until(lambda: conn.transport is None or conn.transport.is_closing())
        hold.set()
        await until(lambda: not s.sio.eio.sockets)
        raw_server = s.runner.server
        assert not isinstance(raw_server, RawConnectServer) or not raw_server.opening
