"""Websocket-first Engine.IO connects (chat/wsconnect.py): answered without python-engineio's
`handle_request` and aiohttp's WebSocketResponse, with the same bytes as the usual way; every
other request still goes the usual way and gets the usual answer.

Each check runs against two in-process servers, one with the `websocket_connects` middleware
and one without, over raw TCP (what a client sends and reads, byte for byte)."""

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
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from chat.app import websocket_connects
from chat.codec import OrjsonCompat
from chat.fanout import FanoutServer

KEY = base64.b64encode(os.urandom(16)).decode()
ACCEPT = base64.b64encode(hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode(),
                                       usedforsecurity=False).digest()).decode()


class Server:
    def __init__(self, port: int, sio: FanoutServer, usual: list[str]) -> None:
        self.port, self.sio, self.usual = port, sio, usual


@asynccontextmanager
async def server(fast: bool, *, origins: Any = None, refuse: bool = False) -> AsyncIterator[Server]:
    sio = FanoutServer(async_mode="aiohttp", json=OrjsonCompat, cors_allowed_origins=origins, async_handlers=False)
    usual: list[str] = []  # requests python-engineio's handle_request answered
    handle = sio.eio.handle_request

    async def counted(request: web.Request) -> Any:
        usual.append(request.path_qs)
        return await handle(request)

    sio.eio.handle_request = counted  # before attach(): the route takes the bound method
    app = web.Application(middlewares=[websocket_connects(sio)] if fast else [])
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

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Server(port, sio, usual)
    finally:
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
    for fast in (True, False):
        async with server(fast) as s:
            seen[fast] = await websocket_session(s.port)
            assert s.usual == ([] if fast else [WS_PATH])
            assert len(s.sio.eio.sockets) == 1
            socket = next(iter(s.sio.eio.sockets.values()))
            assert socket.outbox is not None and socket.upgraded and socket.connected
            environ = s.sio.environ[socket.sid]
            assert "aiohttp.request" not in environ and environ["HTTP_HOST"] == "127.0.0.1"
            # The upgrade's request handler is gone (no keep-alive timer or task holds it).
            gc.collect()
            assert not [o for o in gc.get_objects() if isinstance(o, RequestHandler)]
    assert seen[True] == seen[False]
    assert seen[True]["headers"]["Sec-WebSocket-Accept"] == ACCEPT
    assert seen[True]["status"] == "HTTP/1.1 101 Switching Protocols"
    assert seen[True]["connected"] == '40{'
    assert seen[True]["acked"] == '431[{"echo":{"a":[1,"é"]}}]'


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
    for fast in (True, False):
        async with server(fast, origins=["http://127.0.0.1"]) as s:
            _, writer, status, got, body = await request(s.port, path, headers)
            writer.close()
            assert s.usual == [path], case
            text = body.decode(errors="replace")
            if case == "polling":
                text = json.loads(text[1:]).keys()
            answers.append((status, got.get("Content-Type"), text))
    assert answers[0] == answers[1]
    assert not answers[0][0].startswith("HTTP/1.1 101"), answers[0]


@pytest.mark.parametrize("origin", ["http://127.0.0.1", None])
async def test_allowed_origin_or_none_is_answered_by_the_fast_way(origin: str | None) -> None:
    headers = {**UPGRADE, **({"Origin": origin} if origin else {})}
    async with server(True, origins=["http://127.0.0.1"]) as s:
        reader, writer, status, _, _ = await request(s.port, WS_PATH, headers)
        assert status == "HTTP/1.1 101 Switching Protocols"
        assert (await read_frame(reader)).startswith('0{"sid":')
        writer.close()
        assert s.usual == []


async def test_a_session_the_app_refuses_gets_the_same_401() -> None:
    answers: list[tuple[str, bytes]] = []
    for fast in (True, False):
        async with server(fast, refuse=True) as s:
            _, writer, status, _, body = await request(s.port, WS_PATH, UPGRADE)
            writer.close()
            answers.append((status, body))
            assert s.sio.eio.sockets == {}
    assert answers[0] == answers[1] and answers[0][0] == "HTTP/1.1 401 Unauthorized"


async def test_session_ids_are_unique_and_shaped_like_upstream() -> None:
    async with server(True) as s:
        eio = s.sio.eio
        ids = {eio.generate_id() for _ in range(1000)}
    assert len(ids) == 1000
    check: Callable[[str], bool] = lambda sid: len(sid) == 20 and "/" not in sid and "+" not in sid  # noqa: E731
    assert all(check(sid) for sid in ids)
