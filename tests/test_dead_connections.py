"""Pooled database connections that died behind the pools' back (the server killed them, or
restarted) within IDLE_PING_S of their last use, so the checkout ping does not catch them: every
read and write path runs once more on a fresh connection instead of failing (chat/retry.py,
`retry_read` for the autocommit read pool, `retry_transaction` for transactions).

The connections are killed with MariaDB's own `KILL` — only this test's database's connections,
found in the process list: nothing else on the shared server is touched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from chat.retry import retry_transaction
from tests.conftest import Cluster, MySQLDatabases, _admin_connect
from tests.support import Api, Client, ok, send

UNKNOWN_THREAD = 1094  # ER_NO_SUCH_THREAD


@pytest.fixture
def own_database(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix: str) -> Iterator[Cluster]:
    """One server on a MariaDB database of its own (its connections are the only ones on it)."""
    cluster = Cluster(mysql_databases.new(), redis_url, redis_prefix, 1)
    yield cluster
    cluster.stop()


def kill_connections(database_url: str) -> int:
    """KILL every connection using `database_url`'s database; how many were killed.

    A connection may close by itself between the listing and its KILL (the pool hands back
    or recycles it): MariaDB answers 1094 'Unknown thread id' and it is not counted."""
    database = make_url(database_url).database
    conn = _admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                        (database,))
            killed = 0
            for (conn_id,) in cur.fetchall():
                try:
                    cur.execute(f"KILL CONNECTION {int(conn_id)}")
                except pymysql.err.OperationalError as exc:
                    if exc.args[0] != UNKNOWN_THREAD:
                        raise
                else:
                    killed += 1
        return killed
    finally:
        conn.close()


def community(api: Api) -> tuple[dict[str, str], str]:
    tokens = {u: api.user(u, u.title()) for u in ("cre", "amy", "ben", "cat", "dan")}
    for u in ("amy", "ben", "cat", "dan"):
        api.membership("cre", u, 500)
    return tokens, api.room("cre", "Lounge", 100)


async def test_connect_join_send_and_history_survive_killed_pool_connections(own_database: Cluster) -> None:
    url, api = own_database.servers[0].url, own_database.api
    tokens, room = community(api)
    amy = await Client(url, tokens["amy"]).connect()
    others: list[Client] = []
    try:
        ok(await amy.call("join", {"conversation_id": room}))
        ok(await send(amy, room, "before @Ben"))  # the pools now hold connections (reads and writes)

        assert kill_connections(own_database.database_url) > 0
        # A user this process never saw: connect reads their name and blocks, join its view.
        ben = await Client(url, tokens["ben"]).connect()
        others.append(ben)
        joined = ok(await ben.call("join", {"conversation_id": room}))
        assert [m["body"] for m in joined["messages"]] == ["before @Ben"]

        assert kill_connections(own_database.database_url) > 0
        sent = ok(await send(amy, room, "after @Cat"))  # the mention resolution reads, the writer writes
        assert sent["message"]["body"] == "after @Cat" and sent["message"]["mentions"] == ["cat"]

        assert kill_connections(own_database.database_url) > 0
        r = api.client(tokens["dan"], "GET", f"/conversations/{room}/messages")
        assert r.status_code == 200, r.text
        assert [m["body"] for m in r.json()["messages"]] == ["before @Ben", "after @Cat"]

        assert kill_connections(own_database.database_url) > 0
        page = ok(await ben.call("history", {"conversation_id": room}))  # a socket event that only reads
        assert [m["body"] for m in page["messages"]] == ["before @Ben", "after @Cat"]

        assert kill_connections(own_database.database_url) > 0
        cat = await Client(url, tokens["cat"]).connect()
        others.append(cat)
        joined = ok(await cat.call("join", {"conversation_id": room, "since_seq": 1}))
        assert [m["body"] for m in joined["messages"]] == ["after @Cat"]
    finally:
        for c in (amy, *others):
            await c.close()


async def test_retried_transaction_on_a_dead_connection_counts_as_dead_connection_not_lock_wait() -> None:
    """`backstage_transaction_retries_total{cause}` tells a dead connection (retried on a fresh
    one) from an InnoDB lock wait timeout (1205) and a deadlock (1213)."""

    def count(cause: str) -> float:
        return REGISTRY.get_sample_value("backstage_transaction_retries_total", {"cause": cause}) or 0.0

    def failing(*errors: sa.exc.DBAPIError) -> Any:
        left = list(errors)

        async def operation() -> str:
            if left:
                raise left.pop(0)
            return "done"
        return operation

    dead = sa.exc.OperationalError("SELECT 1", None, pymysql.err.OperationalError(2013, "Lost connection"),
                                   connection_invalidated=True)
    lock_wait = sa.exc.OperationalError("SELECT 1", None, pymysql.err.OperationalError(1205, "Lock wait timeout"))
    deadlock = sa.exc.OperationalError("SELECT 1", None, pymysql.err.OperationalError(1213, "Deadlock"))
    before = {c: count(c) for c in ("dead_connection", "lock_wait", "deadlock")}
    assert await retry_transaction(failing(dead, lock_wait, deadlock), base_s=0) == "done"
    assert {c: count(c) - before[c] for c in before} == {"dead_connection": 1, "lock_wait": 1, "deadlock": 1}
