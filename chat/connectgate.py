"""Admission of new sockets during a connect storm.

When thousands of clients reconnect at once (a deploy, a network blip), every one of them is
accepted at once and their handshakes, authentications and joins share the CPU step by step:
each waits behind all the others' steps, so all finish near the end, clients give up after
their timeout and retry, and the server does the same work again (measured: 5,000 at once
recovered at ~20/s where 200 at a time connect at ~200/s, docs/performance.md).

`ConnectGate` lets at most `limit` new sockets be "setting up" at once — from their Engine.IO
connect until their first `join` is answered, they disconnect, or `hold_s` passes (a client
that never joins) — and the others wait in arrival order before anything is done for them. So
sockets finish at the server's steady rate, first come first served, and the first ones are
back within seconds instead of everyone near the end. Sockets already set up are never held.
"""

from __future__ import annotations

import asyncio
from collections import deque

from prometheus_client import Gauge

WAITING = Gauge("backstage_connect_gate_waiting", "New sockets waiting for a setup slot (connect storms)")


class ConnectGate:
    def __init__(self, limit: int, hold_s: float) -> None:
        self.limit, self.hold_s = limit, hold_s
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._held: dict[str, asyncio.TimerHandle] = {}

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    async def enter(self, key: str) -> None:
        """Wait for a setup slot for the socket `key` (first come, first served)."""
        if not self.enabled or key in self._held:
            return
        if self._free > 0 and not self._waiters:
            self._free -= 1
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            WAITING.inc()
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()  # the slot was handed over just now: pass it on
                raise
            finally:
                WAITING.dec()
        self._held[key] = asyncio.get_running_loop().call_later(self.hold_s, self.leave, key)

    def leave(self, key: str) -> None:
        """The socket `key` is set up (or gone): its slot goes to the next waiter. Idempotent."""
        timer = self._held.pop(key, None)
        if timer is None:
            return
        timer.cancel()
        self._release()

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1

    @property
    def setting_up(self) -> int:
        return len(self._held)
