"""Redis commands of concurrent callers sent together: one pipeline, one round trip.

A reconnect storm makes every socket run the same few Redis calls (the socket limit's admit
script, presence's connect counters, the join script and the online list, the limit's release
on disconnect). Sent one by one, each is a round trip, and on a small host each round trip
also costs a wake-up of Redis and a context switch back. `AutoPipeline.execute(commands)`
queues a caller's commands; one pipeline at a time goes out with everything queued, and what
is queued while it is out goes in the next one (like ioredis's auto-pipelining). A caller
alone costs one round trip, as before.

Commands are tuples of a command's arguments (as for `execute_command`), or `Script(script,
keys, args)` for a registered Lua script: sent as EVALSHA directly (redis-py would first send
SCRIPT EXISTS for a pipeline holding scripts, a second round trip); a script Redis does not
know (restarted, or flushed) is run again on its own through redis-py, which loads it. The
exchange itself is redis-py's pipeline without its per-command bookkeeping (`_round_trip`):
one packed write, the replies read under one timeout, redis-py's reply callbacks applied. The pipeline is not a
transaction: each caller's commands run in order, as a non-transactional pipeline of their
own would. A command's error is raised to its caller; a connection error to every caller of
the batch.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


@dataclass(frozen=True)
class Script:
    script: Any  # redis.commands.core.AsyncScript (Redis.register_script)
    keys: list[Any]
    args: list[Any]


Command = tuple[Any, ...] | Script


class AutoPipeline:
    def __init__(self, redis: Any, max_batch: int = 2_000) -> None:
        self._redis = redis
        self._max_batch = max_batch  # commands per pipeline
        self._queue: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._running: asyncio.Task[None] | None = None
        self.round_trips = 0  # exchanges with Redis (each one write, then every reply)

    async def execute(self, commands: list[Command]) -> list[Any]:
        """The commands' results, in order; raises the first command error, like a pipeline."""
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((commands, fut))
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._drain())
        results = await fut
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
                size = 0
                while self._queue and (not batch or size + len(self._queue[0][0]) <= self._max_batch):
                    item = self._queue.pop(0)
                    batch.append(item)
                    size += len(item[0])
                await self._send(batch)
        finally:
            self._running = None
            for _, fut in self._queue:  # cancelled with callers left: they must not wait forever
                if not fut.done():
                    fut.set_exception(ConnectionError("redis pipeline stopped"))
            self._queue.clear()

    async def _send(self, batch: list[tuple[list[Command], asyncio.Future[list[Any]]]]) -> None:
        live = [(cmds, fut) for cmds, fut in batch if not fut.done()]  # a caller may have given up
        if not live:
            return
        wire = [("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) if isinstance(c, Script) else c
                for cmds, _ in live for c in cmds]
        try:
            results = await self._round_trip(wire)
        except Exception as exc:
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        i = 0
        for cmds, fut in live:
            mine = results[i:i + len(cmds)]
            i += len(cmds)
            for k, (c, r) in enumerate(zip(cmds, mine, strict=True)):
                if isinstance(c, Script) and isinstance(r, NoScriptError):
                    try:
                        mine[k] = await c.script(keys=c.keys, args=c.args)
                    except Exception as exc:
                        mine[k] = exc
            if not fut.done():
                fut.set_result(mine)

    async def _round_trip(self, wire: list[tuple[Any, ...]]) -> list[Any]:
        self.round_trips += 1
        return await round_trip(self._redis, wire)


async def round_trip(redis: Any, wire: list[tuple[Any, ...]]) -> list[Any]:
    """What redis-py's non-transactional `pipeline().execute(raise_on_error=False)` does,
    without its per-command bookkeeping: every command packed into one write, every reply
    read under one timeout, error replies returned in place. Connection errors are retried
    like redis-py's (the connection's `Retry`, reconnecting first); a failed exchange leaves
    the connection disconnected, never half-read."""
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        return cast(list[Any], await conn.retry.call_with_retry(
            lambda: _exchange(redis, conn, wire), lambda _error: conn.disconnect()))
    finally:
        await pool.release(conn)


async def _exchange(redis: Any, conn: Any, wire: list[tuple[Any, ...]]) -> list[Any]:
    await conn.send_packed_command(conn.pack_commands(wire))
    parser = conn._parser  # redis-py 8.1 (pinned): Connection.read_response minus its per-reply timeout
    replies: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            for _ in wire:
                replies.append(await parser.read_response())
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise RedisTimeoutError("Timeout reading from Redis") from None
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise RedisConnectionError(f"Error while reading from Redis: {exc.args}") from None
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    callbacks = redis.response_callbacks
    out: list[Any] = []
    for command, reply in zip(wire, replies, strict=True):
        callback = callbacks.get(command[0]) if not isinstance(reply, ResponseError) else None
        if callback is not None:
            reply = callback(reply)
            if inspect.isawaitable(reply):
                reply = await reply
        out.append(reply)
    return out
