"""Engine.IO sessions that misbehave below the event handlers.

- A session that never connects to a namespace is closed after connect_timeout_s (what
  socket.io's `connectTimeout` does), so idle handshakes cannot pile up.
- A packet python-socketio cannot decode or dispatch is a strike against its session, not an
  ERROR with a traceback: one WARNING at most every LOG_EVERY_S for the whole process, and the
  session is closed at its max_bad-th strike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import socketio
from prometheus_client import Counter

log = logging.getLogger(__name__)

BAD_PACKETS = Counter("backstage_bad_packets_total", "Socket.IO packets that could not be decoded or dispatched")
GUARD_CLOSES = Counter("backstage_guard_closed_sessions_total", "Engine.IO sessions closed by the guard", ["reason"])
LOG_EVERY_S = 10.0


class PacketGuard:
    def __init__(self, sio: socketio.AsyncServer, connect_timeout_s: float, max_bad: int) -> None:
        self.sio, self.connect_timeout_s, self.max_bad = sio, connect_timeout_s, max_bad
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

    async def on_eio_connect(self, eio_sid: str, environ: Any) -> Any:
        result = await self._eio_connect(eio_sid, environ)
        asyncio.get_running_loop().call_later(self.connect_timeout_s, self._check_connected, eio_sid)
        return result

    async def on_eio_disconnect(self, eio_sid: str, reason: Any = None) -> Any:
        self._strikes.pop(eio_sid, None)
        return await self._eio_disconnect(eio_sid, reason)

    async def on_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await self._eio_message(eio_sid, data)
        except Exception as exc:
            self.strike(eio_sid, exc)

    def strike(self, eio_sid: str, exc: BaseException) -> None:
        BAD_PACKETS.inc()
        strikes = self._strikes.get(eio_sid, 0) + 1
        self._strikes[eio_sid] = strikes
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            more = f"; {self._unlogged} more since the last report" if self._unlogged else ""
            log.warning("malformed Socket.IO packet (%s)%s", type(exc).__name__, more)
            self._logged_at, self._unlogged = now, 0
        else:
            self._unlogged += 1
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
            if eio_sid in self.sio.eio.sockets:
                await self.sio.eio.disconnect(eio_sid)
        except Exception as exc:
            log.info("closing a session failed: %s", type(exc).__name__)
