"""Hot read statements run on the raw driver connection (aiomysql, aiosqlite).

A Core statement costs SQLAlchemy CPU on every execution even when its compiled form is cached:
a cache key generated from the whole statement tree, the execution context, a cursor wrapper,
the result object, and for an expanding IN its rendering at execution. For the reads of a
connect + join storm (chat/storage.py `join_views`, `stored_user_names`, chat/memberblocks.py
`blocked_ids_many`) that was more CPU than the driver needed to run them. Here such a statement
is compiled ONCE per dialect and shape (`prepare`: the SQL text in the driver's paramstyle, its
parameter names in order, the constants the statement binds itself, the result processors its
column types need, e.g. UTC datetimes), and `fetch` runs it with the driver's own cursor on
the connection's raw DBAPI connection: same SQL, same parameters escaped by the driver, rows
as the driver returns them with the same type processing SQLAlchemy would apply.

Errors are raised as SQLAlchemy raises them (`DBAPIError` subclasses), and a connection found
dead is invalidated, so `chat.retry.retry_read` runs the read again on a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

T = TypeVar("T")


def padded_chunks(values: Sequence[T], limit: int = 256) -> Iterator[list[T]]:
    """The values of an IN list in chunks of at most `limit` (a power of two), each padded to a
    power of two by repeating its last value (IN ignores the repeats): a statement compiled per
    chunk size then has at most log2(limit) + 1 shapes, whatever the batch sizes."""
    for start in range(0, len(values), limit):
        chunk = list(values[start:start + limit])
        size = 1
        while size < len(chunk):
            size *= 2
        yield chunk + [chunk[-1]] * (size - len(chunk))


@dataclass(frozen=True)
class Prepared:
    sql: str
    names: tuple[str, ...]  # the bind parameters, in the order of the placeholders
    constants: Mapping[str, Any]  # values the statement binds itself (literals turned into parameters)
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column index, result processor)

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        constants = self.constants
        return tuple(values[n] if n in values else constants[n] for n in self.names)


_PREPARED: dict[tuple[str, Callable[[int], Any], int], Prepared] = {}


def prepare(dialect: sa.Dialect, build: Callable[[int], Any], size: int) -> Prepared:
    """`build(size)`'s statement compiled for `dialect`, once per (dialect, build, size). Its
    parameters are passed to the driver as they are (ints and strings here: no bind processing)."""
    cache_key = (dialect.name, build, size)
    found = _PREPARED.get(cache_key)
    if found is not None:
        return found
    stmt = build(size)
    compiled = stmt.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    processors = []
    for i, column in enumerate(stmt.selected_columns):
        proc = column.type.dialect_impl(dialect).result_processor(dialect, None)
        if proc is not None:
            processors.append((i, proc))
    found = _PREPARED[cache_key] = Prepared(str(compiled), names, dict(compiled.params), tuple(processors))
    return found


async def fetch(conn: AsyncConnection, prepared: Prepared, values: Mapping[str, Any]) -> list[Any]:
    """The rows (tuples, or lists when a column needed processing) of `prepared` with `values`."""
    params = prepared.parameters(values)
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    dbapi: Any = conn.dialect.loaded_dbapi
    try:
        if conn.dialect.name == "sqlite":  # aiosqlite
            async with driver.execute(prepared.sql, params) as cursor:
                rows: list[Any] = list(await cursor.fetchall())
        else:  # aiomysql
            async with driver.cursor() as cursor:
                await cursor.execute(prepared.sql, params)
                rows = list(await cursor.fetchall())
    except dbapi.Error as exc:
        invalidated = bool(conn.dialect.is_disconnect(exc, raw.dbapi_connection, None))
        if invalidated:
            await conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(prepared.sql, params, exc, dbapi.Error,
                                         connection_invalidated=invalidated) from exc
    if prepared.processors and rows:
        processors = prepared.processors
        out = []
        for row in rows:
            values_ = list(row)
            for i, proc in processors:
                values_[i] = proc(values_[i])
            out.append(values_)
        return out
    return rows
