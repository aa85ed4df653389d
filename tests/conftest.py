"""Shared fixtures: a fresh MariaDB database and Redis prefix per test run, removed afterwards.

MYSQL_ADMIN_URL (default mysql+pymysql://root@127.0.0.1:3306/) and TEST_REDIS_URL
(default redis://127.0.0.1:6379/0) point the suite at the real services.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import redis as redis_sync
from sqlalchemy.engine import make_url

# The browser tests' shared fixtures and helpers (a plugin of those modules): asserts rewritten.
pytest.register_assert_rewrite("tests.browser_support")

MYSQL_ADMIN_URL = os.environ.get("MYSQL_ADMIN_URL", "mysql+pymysql://root@127.0.0.1:3306/")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = secrets.token_hex(4)


def _admin_connect(database: str | None = None) -> pymysql.connections.Connection:
    u = make_url(MYSQL_ADMIN_URL)
    return pymysql.connect(
        host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
        password=u.password or "", autocommit=True, database=database,
    )


def _mysql_url(database: str) -> str:
    u = make_url(MYSQL_ADMIN_URL)
    return u.set(drivername="mysql+aiomysql", database=database).render_as_string(hide_password=False)


class MySQLDatabases:
    """Creates databases named bstest_<run>_<n> and drops them all at the end of the run.

    new() gives a database at the latest migration: a copy of a template database that the
    migrations built once per worker (CREATE TABLE statements and rows, ~0.4 s instead of
    1.5-3.5 s of DDL per database). new(empty=True) gives an empty one, for tests of the
    migrations themselves and of a server migrating at start.
    """

    def __init__(self) -> None:
        self.created: list[str] = []
        self._schema: list[str] | None = None
        self._rows: dict[str, list[tuple[Any, ...]]] = {}

    def _create(self) -> str:
        name = f"bstest_{RUN_ID}_{len(self.created)}"
        conn = _admin_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        finally:
            conn.close()
        self.created.append(name)
        return name

    def _template(self) -> list[str]:
        if self._schema is None:
            name = self._create()
            migrate_in_thread(_mysql_url(name))
            conn = _admin_connect(name)
            try:
                with conn.cursor() as cur:
                    cur.execute("SHOW FULL TABLES WHERE Table_type = 'BASE TABLE'")
                    tables = [row[0] for row in cur.fetchall()]
                    schema = []
                    for table in tables:
                        cur.execute(f"SHOW CREATE TABLE `{table}`")
                        schema.append(cur.fetchone()[1])  # type: ignore[index]
                        cur.execute(f"SELECT * FROM `{table}`")  # noqa: S608 (names from SHOW TABLES)
                        rows = list(cur.fetchall())
                        if rows:
                            self._rows[table] = rows
            finally:
                conn.close()
            self._schema = schema
        return self._schema

    def new(self, empty: bool = False) -> str:
        schema = None if empty else self._template()
        name = self._create()
        if schema is not None:
            conn = _admin_connect(name)
            try:
                with conn.cursor() as cur:
                    cur.execute("SET foreign_key_checks = 0")  # tables in any order
                    for statement in schema:
                        cur.execute(statement)
                    for table, rows in self._rows.items():
                        marks = ", ".join(["%s"] * len(rows[0]))
                        cur.executemany(f"INSERT INTO `{table}` VALUES ({marks})", rows)  # noqa: S608
            finally:
                conn.close()
        return _mysql_url(name)

    def drop_all(self) -> None:
        conn = _admin_connect()
        try:
            with conn.cursor() as cur:
                for name in self.created:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


MIN_MYSQL_CONNECTIONS = 1000


def _ensure_connection_headroom() -> None:
    """The suite runs in parallel workers (make test), each with its own server processes and
    their pools: MariaDB's default max_connections (151) runs out ("Too many connections").
    Raised for the running server only (SET GLOBAL, not its configuration files)."""
    conn = _admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@global.max_connections")
            (current,) = cur.fetchone()  # type: ignore[misc]
            if int(current) < MIN_MYSQL_CONNECTIONS:
                cur.execute(f"SET GLOBAL max_connections = {MIN_MYSQL_CONNECTIONS}")
    finally:
        conn.close()


@pytest.fixture(scope="session")
def mysql_databases() -> Iterator[MySQLDatabases]:
    _ensure_connection_headroom()
    dbs = MySQLDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def mysql_url(mysql_databases: MySQLDatabases) -> str:
    """One MariaDB database (migrated) for the run (tests that need isolation call mysql_databases.new())."""
    return mysql_databases.new()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_prefix_root() -> Iterator[str]:
    prefix = f"bstest-{RUN_ID}"
    yield prefix
    r = redis_sync.Redis.from_url(REDIS_URL)
    try:
        for key in r.scan_iter(match=f"{prefix}*", count=1000):
            r.delete(key)
    finally:
        r.close()


@pytest.fixture
def redis_prefix(redis_prefix_root: str) -> str:
    """A Redis prefix of its own for one test, under the run's prefix (cleaned at the end)."""
    return f"{redis_prefix_root}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------- servers

from tests.support import Api, ServerProcess, migrate_in_thread, migrated_sqlite  # noqa: E402


class Cluster:
    """Server processes sharing one database (and one Redis prefix when redis_url is set)."""

    def __init__(self, database_url: str, redis_url: str | None, redis_prefix: str, size: int,
                 env: dict[str, str] | None = None) -> None:
        self.database_url, self.redis_url, self.redis_prefix = database_url, redis_url, redis_prefix
        self.servers: list[ServerProcess] = []
        # Uploaded photos: one directory shared by the cluster's processes (like one S3 bucket).
        self.blob_dir = tempfile.mkdtemp(prefix="backstage-blobs-")
        env = {"BLOB_URL": f"file://{self.blob_dir}", **(env or {})}
        try:
            for _ in range(size):
                self.servers.append(ServerProcess(database_url, redis_url, redis_prefix, env=env))
        except Exception:
            self.stop()
            raise
        self.apis = [Api(s.url) for s in self.servers]

    @property
    def api(self) -> Api:
        return self.apis[0]

    def stop(self) -> None:
        for api in getattr(self, "apis", []):
            api.close()
        for server in self.servers:
            server.stop()
        if getattr(self, "blob_dir", None):
            shutil.rmtree(self.blob_dir, ignore_errors=True)


@pytest.fixture
def sqlite_server(tmp_path: Any) -> Iterator[Cluster]:
    """One server on the embedded default: SQLite file, in-process relay and presence."""
    cluster = Cluster(migrated_sqlite(tmp_path / "backstage.db"), None, "unused", 1)
    yield cluster
    cluster.stop()


@pytest.fixture
def mysql_cluster(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix: str) -> Iterator[Cluster]:
    """Two server processes on one fresh MariaDB database and one Redis prefix."""
    cluster = Cluster(mysql_databases.new(), redis_url, redis_prefix, 2)
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "mysql"])
def any_server(request: Any, tmp_path: Any, mysql_databases: MySQLDatabases, redis_url: str,
               redis_prefix: str) -> Iterator[Cluster]:
    """The same test on the embedded default and on MariaDB + Redis (one process each)."""
    if request.param == "sqlite":
        cluster = Cluster(migrated_sqlite(tmp_path / "backstage.db"), None, "unused", 1)
    else:
        cluster = Cluster(mysql_databases.new(), redis_url, redis_prefix, 1)
    yield cluster
    cluster.stop()


# ---------------------------------------------------------------- shared servers
#
# Starting a server process costs about a second; most tests only need *a* server, not a fresh
# one. These are started once per run and shared: a test using them must create users, rooms
# and channels of its own (see `uid`), so that tests stay independent of each other and of
# their order. Tests that change a server's configuration, kill it, cut its database or read
# its whole log keep servers of their own.


@pytest.fixture(scope="session")
def shared_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One server on the embedded default (SQLite, in-process relay), shared by the run."""
    db = tmp_path_factory.mktemp("shared-sqlite") / "backstage.db"
    cluster = Cluster(migrated_sqlite(db), None, "unused", 1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def shared_mysql_cluster(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix_root: str) -> Iterator[Cluster]:
    """Two server processes on one MariaDB database and one Redis prefix, shared by the run."""
    cluster = Cluster(mysql_databases.new(), redis_url, f"{redis_prefix_root}-shared", 2)
    yield cluster
    cluster.stop()


class _OneOf(Cluster):
    """A view of one process of a shared cluster, shaped like a one-server Cluster."""

    def __init__(self, cluster: Cluster, index: int) -> None:  # no processes of its own
        self.database_url, self.redis_url, self.redis_prefix = cluster.database_url, cluster.redis_url, cluster.redis_prefix
        self.servers = [cluster.servers[index]]
        self.apis = [cluster.apis[index]]
        self.blob_dir = cluster.blob_dir

    def stop(self) -> None:
        pass  # owned by the shared cluster


@pytest.fixture(params=["sqlite", "mysql"])
def shared_any_server(request: Any) -> Cluster:
    """Like any_server, on the shared servers: the embedded default, then MariaDB + Redis."""
    if request.param == "sqlite":
        return request.getfixturevalue("shared_sqlite")
    return _OneOf(request.getfixturevalue("shared_mysql_cluster"), 0)


@pytest.fixture
def uid() -> Any:
    """uid("pat") -> "pat_3f9a1c": ids of users, rooms' creators, channels... unique to this test."""
    suffix = secrets.token_hex(3)
    return lambda name: f"{name}_{suffix}"


# ---------------------------------------------------------------- fake FCM


@pytest.fixture(scope="session")
def fcm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The project's fake FCM (token + send endpoints) in its own thread, and a service-account
    JSON pointing at it. Tests reset it (`fcm_server.fake.reset()`) before use."""
    from tests.fakefcm import FakeFCMServer

    server = FakeFCMServer(tmp_path_factory.mktemp("fcm"))
    yield server
    server.stop()
