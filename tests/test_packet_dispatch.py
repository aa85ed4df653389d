"""The Socket.IO packets PacketGuard dispatches itself (chat/sockguard.py `_dispatch`: a connect's
CONNECT and every EVENT of the default namespace) get the same answers, byte for byte, and the
same strikes as through python-socketio; the others still go through python-socketio."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat.sockguard import PacketGuard
from tests.test_wsconnect import UPGRADE, WS_PATH, masked, request, server

PACKETS = [
    '42["echo",{"a":[1,"é",null]}]',
    '421["echo",2]',
    '42007["echo",7]',  # leading zeros: ack id 7
    '423["pair"]',  # a tuple answer: several ack arguments
    '424["none"]',  # None: an empty ack
    '425["blob"]',  # bytes: a binary ack
    '426["nothing_here",1]',  # no handler of its own: the catch-all
    '427["connect",{}]',  # a reserved event name sent as an event
    '428["disconnect"]',
    '42["echo"',  # not JSON
    '42{"echo":1}',  # not a list
    '42[]',  # no event name
    '429[1,2]',  # not a name
    '42/other,1["echo",1]',  # another namespace
    '4211-["echo"]',  # an attachment count where none belongs
    '40{"token":"good"}',  # CONNECT again, on a connected socket
    '4299999999999999999999["echo",1]',  # a long ack id
]


async def frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(reader.readexactly(2), 5)
    n = second & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    return first, await reader.readexactly(n)


async def answers(fast: bool) -> tuple[list[tuple[int, bytes]], int]:
    async with server(True) as s:
        guard = PacketGuard(s.sio, connect_timeout_s=30, max_bad=1000)
        if not fast:
            async def never(eio_sid: str, data: str) -> bool:
                return False
            guard._dispatch = never  # type: ignore[method-assign]

        @s.sio.on("pair")  # type: ignore[untyped-decorator]
        async def pair(sid: str) -> Any:
            return 1, "two"

        @s.sio.on("none")  # type: ignore[untyped-decorator]
        async def none(sid: str) -> Any:
            return None

        @s.sio.on("blob")  # type: ignore[untyped-decorator]
        async def blob(sid: str) -> Any:
            return {"b": b"\x01\x02"}

        @s.sio.on("*")  # type: ignore[untyped-decorator]
        async def other(event: str, sid: str, *args: Any) -> Any:
            return {"unknown": event}

        reader, writer, status, _, _ = await request(s.port, WS_PATH, UPGRADE, then=masked('40{"token":"good"}'))
        assert status == "HTTP/1.1 101 Switching Protocols"
        got = [await frame(reader), await frame(reader)]
        assert got[1][1].startswith(b'40{"sid":')
        got = []
        for pkt in PACKETS:
            writer.write(masked(pkt))
        writer.write(masked('4290["echo","end"]'))
        while True:
            got.append(await frame(reader))
            if got[-1][1] == b'4390[{"echo":"end"}]':
                break
        writer.close()
        return got, sum(guard._strikes.values())


async def test_dispatched_packets_are_answered_like_python_socketio() -> None:
    fast, slow = await answers(True), await answers(False)
    assert fast == slow
    texts = [payload.decode(errors="replace") for _, payload in fast[0]]
    assert '43[{"echo":{"a":[1,"é",null]}}]' not in texts  # no ack id, no ack
    assert '431[{"echo":2}]' in texts and '437[{"echo":7}]' in texts
    assert '433[1,"two"]' in texts and '434[]' in texts
    assert fast[1] > 0  # the malformed ones were strikes


@pytest.mark.parametrize("packet", ['421["echo",2]', '40{"token":"good"}'])
async def test_dispatch_takes_connects_and_events_itself(packet: str) -> None:
    async with server(True) as s:
        guard = PacketGuard(s.sio, connect_timeout_s=30, max_bad=5)
        seen: list[str] = []
        upstream = guard._eio_message

        async def counted(eio_sid: str, data: Any) -> None:
            seen.append(data)
            await upstream(eio_sid, data)

        guard._eio_message = counted  # type: ignore[method-assign]
        reader, writer, _, _, _ = await request(s.port, WS_PATH, UPGRADE, then=masked('40{"token":"good"}'))
        await frame(reader)
        assert (await frame(reader))[1].startswith(b"40")
        writer.write(masked(packet) + masked('42["unknown_one"]'))
        writer.write(masked('429["echo",0]'))
        while (await frame(reader))[1] != b'439[{"echo":0}]':
            pass
        writer.close()
        assert seen == ['2["unknown_one"]']
