"""Run a whole transaction again when it lost a race: an InnoDB deadlock or lock wait timeout,
or a RetryTransaction from the storage layer. Attempts are spaced by jittered exponential
backoff, so the transactions that collided do not collide again in lockstep."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chat.db import is_retryable
from chat.errors import Unavailable
from chat.storage import RetryTransaction

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRIES = Counter("backstage_transaction_retries_total",
                  "Transactions and reads run again after losing a race or finding their connection dead", ["cause"])


async def retry_transaction(operation: Callable[[], Awaitable[T]], *, attempts: int = 8,
                            base_s: float = 0.01, cap_s: float = 0.5) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except RetryTransaction as exc:
            cause = "race"
            if attempt == attempts:
                raise Unavailable("too much contention on this object; nothing was stored, retry") from exc
        except sa.exc.DBAPIError as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            # a pooled connection found dead (cut, killed, server restarted) is not a lock wait
            if exc.connection_invalidated:
                cause = "dead_connection"
            else:
                cause = "deadlock" if (getattr(exc.orig, "args", None) or (0,))[0] == 1213 else "lock_wait"
        RETRIES.labels(cause).inc()
        # "Full jitter": a random wait up to the exponential bound.
        await asyncio.sleep(random.uniform(0, min(cap_s, base_s * 2 ** attempt)))
    raise AssertionError("unreachable")


async def retry_read(engine: AsyncEngine, read: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """`read(conn)` on a connection of `engine` (the autocommit read pool, chat/db.py
    `create_read_engine`), run once more on a fresh connection when the pooled one turned out
    dead — the server closed it or restarted within IDLE_PING_S of its last use, so the
    checkout ping did not catch it. SQLAlchemy invalidates the pool's older connections on the
    first such error, so one more attempt is enough. A read that fails for another reason (or
    twice) raises as before."""
    async def once() -> T:
        async with engine.connect() as conn:
            return await read(conn)

    return await retry_transaction(once, attempts=2)


async def once_more_if_dead(operation: Callable[[], Awaitable[T]]) -> T:
    """Run a read-only `operation` (an HTTP GET, a socket event that only reads) once more when a
    pooled connection it used turned out dead: nothing was written, and the pool has dropped its
    older connections, so the second run gets fresh ones."""
    try:
        return await operation()
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        RETRIES.labels("dead_connection").inc()
        return await operation()
