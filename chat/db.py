"""Engine, session factory, the declarative Base and column types shared by every model."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A UTC-aware datetime stored naive (microseconds kept on MySQL with DATETIME(6))."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# BIGINT on MySQL, INTEGER on SQLite (so SQLite's rowid autoincrement applies).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def ExactString(length: int) -> sa.types.TypeEngine[str]:  # noqa: N802 - used like a type
    """A string compared byte for byte: user ids ("Ann" and "ann" are two users, SPEC §2),
    client_msg_ids, tokens and keys. MariaDB's default collation ignores case and accents,
    so there it gets utf8mb4_bin; SQLite compares bytes already."""
    return sa.String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def normalize_url(url: str) -> str:
    """MySQL connections always speak utf8mb4."""
    u = make_url(url)
    if u.get_backend_name() in ("mysql", "mariadb") and "charset" not in u.query:
        u = u.update_query_dict({"charset": "utf8mb4"})
    return u.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _unicode_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _sqlite_functions(dbapi_conn: Any) -> None:
    """SQL functions SQLite lacks: `unicode_lower(x)`, Python's str.lower (SQLite's LOWER() folds
    ASCII letters only; MariaDB's folds them all), for case-insensitive name matches (chat/mentions.py)."""
    dbapi_conn.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = normalize_url(url)
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            _sqlite_functions(dbapi_conn)

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # BEGIN IMMEDIATE: one writer at a time, so seq assignment cannot race (SQLite has no row locks).
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pre-ping: it costs a round trip per checkout, i.e. per send. Instead a connection that
    # sat idle in the pool for IDLE_PING_S is pinged when checked out (the server may have closed
    # it, or restarted meanwhile); pool_recycle stays below MySQL's wait_timeout (28800 s by
    # default); and `chat.retry.retry_transaction` runs a transaction again when its connection turned out dead.
    engine = create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800, pool_pre_ping=False
    )
    _ping_after_idle(engine)
    return engine


def create_read_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    """A second pool for the read-only hot paths (connect's user lookup, join): its connections
    are in autocommit mode, so each statement reads the latest committed data, no BEGIN is sent
    (SQLite: not the BEGIN IMMEDIATE of the main engine, which would queue these reads behind
    every writer) and no ROLLBACK either, neither when a `Connection` closes nor when the pool
    takes a connection back (`skip_autocommit_rollback`): an autocommit connection never holds
    a transaction. Only reads go through here (nothing written through it statement by
    statement would be atomic), and the writer's plain batches, each ONE query that carries its
    own `BEGIN ... COMMIT` (chat/writer.py, `storage.store_new_messages(commit=True)`).
    Each read holds a connection for one round trip, so a small pool (5 + 5 overflow, on top of
    the main engine's 10 + 10) serves a storm's joins."""
    url = normalize_url(url)
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30}, isolation_level="AUTOCOMMIT",
                                     skip_autocommit_rollback=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            _sqlite_functions(dbapi_conn)

        return engine
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
                                 pool_pre_ping=False, isolation_level="AUTOCOMMIT",
                                 skip_autocommit_rollback=True)
    _ping_after_idle(engine)
    return engine


IDLE_PING_S = 10.0


def _ping_after_idle(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkin")
    def _idle_since(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_S:
            return
        try:
            dbapi_conn.ping(False)
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another one.
            raise sa.exc.DisconnectionError(type(exc).__name__) from exc


MYSQL_RETRYABLE = (1213, 1205)  # deadlock, lock wait timeout: InnoDB rolled the transaction back


def is_retryable(exc: BaseException) -> bool:
    """A deadlock victim, or a transaction whose pooled connection was found dead (the server
    closed it or restarted): running it again on a fresh connection is safe."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    args: tuple[Any, ...] = getattr(exc.orig, "args", None) or ()
    return bool(args) and args[0] in MYSQL_RETRYABLE


async def toggle_row(session: AsyncSession, model: Any, key: Any, on: bool, **fields: Any) -> bool:
    """Insert (`on`) or delete the `model` row whose primary key is `key` (`fields`: the new
    row's columns); True when that changed something, False when it was so already."""
    row = await session.get(model, key)
    if on and row is None:
        session.add(model(**fields))
    elif not on and row is not None:
        await session.delete(row)
    else:
        return False
    await session.flush()
    return True


async def put_row(session: AsyncSession, model: Any, key: Any, **fields: Any) -> None:
    """Insert the `model` row whose primary key is `key` or, locked, set its `fields`."""
    row = await session.get(model, key, with_for_update=True)
    if row is None:
        session.add(model(**fields))
    else:
        for name, value in fields.items():
            setattr(row, name, value)
    await session.flush()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
