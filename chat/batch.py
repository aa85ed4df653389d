"""Concurrent single-key reads coalesced into one query.

A reconnect storm brings hundreds of connects at once, each of a user this process may not
know yet (chat/service.py `connect_socket`). `BatchedLookup.get(key)` queues the key; one
query at a time runs for everything queued, and what is asked while it runs goes into the next
one. Under no load that is one query per key, as before; under a storm, one per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BatchedLookup(Generic[K, V]):
    def __init__(self, load: Callable[[list[K]], Awaitable[dict[K, V]]], max_batch: int = 500) -> None:
        self._load = load
        self._max_batch = max_batch
        self._pending: dict[K, list[asyncio.Future[V | None]]] = {}
        self._running: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        """The value of `key` (None when the query found none); raises what the query raised."""
        fut: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(fut)
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                keys = list(self._pending)[:self._max_batch]
                waiters = {k: self._pending.pop(k) for k in keys}
                try:
                    found = await self._load(keys)
                except BaseException as exc:
                    for futs in waiters.values():
                        for fut in futs:
                            if not fut.done():
                                fut.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for k, futs in waiters.items():
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(found.get(k))
        finally:
            self._running = None
            if self._pending:  # cancelled with keys left: their callers must not wait forever
                for futs in self._pending.values():
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(asyncio.CancelledError())
                self._pending.clear()
