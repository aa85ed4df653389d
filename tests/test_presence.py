"""Presence scenarios against MemoryPresence and against two RedisPresence "servers" on one real Redis.

The Redis servers use heartbeat_s=0.2 / dead_after_s=1.0 so that crash detection takes about a second.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from chat.keys import RedisKeys
from chat.presence import MemoryPresence, Presence, PresenceUnavailable, RedisPresence

HEARTBEAT_S = 0.2
DEAD_AFTER_S = 1.0
MARGIN_S = 2.0  # scheduling slack on a busy machine
REPO = Path(__file__).resolve().parent.parent

MakeServer = Callable[..., Awaitable[RedisPresence]]


class OfflineLog:
    """Collects offline callbacks from any number of servers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []  # (server_id, conversation, user)
        self.changed = asyncio.Event()

    def callback(self, server_id: str) -> Callable[[str, str], Awaitable[None]]:
        async def on_offline(conversation_id: str, user_id: str) -> None:
            self.calls.append((server_id, conversation_id, user_id))
            self.changed.set()
        return on_offline

    def pairs(self) -> list[tuple[str, str]]:
        return sorted((c, u) for _, c, u in self.calls)

    async def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} offline callbacks, got {self.calls}")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass


@pytest.fixture
async def make_server(redis_url: str, redis_prefix: str) -> AsyncIterator[MakeServer]:
    """Builds started RedisPresence instances, each with its own client; stops them all at the end."""
    made: list[tuple[RedisPresence, aioredis.Redis]] = []

    async def make(server_id: str, *, start: bool = True, decode: bool = False) -> RedisPresence:
        client = aioredis.Redis.from_url(redis_url, decode_responses=decode)
        presence = RedisPresence(client, RedisKeys(redis_prefix), server_id,
                                 heartbeat_s=HEARTBEAT_S, dead_after_s=DEAD_AFTER_S)
        made.append((presence, client))
        if start:
            await presence.start()
        return presence

    yield make
    for presence, client in made:
        try:
            await presence.stop()
        finally:
            await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def servers(request: pytest.FixtureRequest, make_server: MakeServer) -> AsyncIterator[tuple[Presence, Presence]]:
    """Two servers of one cluster: the same MemoryPresence twice, or two RedisPresence processes."""
    if request.param == "memory":
        memory = MemoryPresence()
        await memory.start()
        yield memory, memory
        await memory.stop()
    else:
        # One client decodes responses and the other does not: both must work.
        yield await make_server("srv-a"), await make_server("srv-b", decode=True)


# --------------------------------------------------------------------------- both implementations


async def test_first_join_announces_and_last_leave_ends(servers: tuple[Presence, Presence]) -> None:
    a, b = servers
    assert await a.join("c1", "u1", "s1") is True
    assert await a.join("c1", "u1", "s1") is False  # same sid again: no-op
    assert await a.join("c1", "u1", "s2") is False  # second socket, same server
    assert await b.join("c1", "u1", "s3") is False  # third socket, other server
    assert await b.online_in("c1") == ["u1"]

    assert await a.leave("c1", "u1", "s1") is False
    assert await a.leave("c1", "u1", "s1") is False  # not joined any more
    assert await b.leave("c1", "u1", "s3") is False
    assert await a.online_in("c1") == ["u1"]
    assert await a.leave("c1", "u1", "s2") is True
    assert await b.online_in("c1") == []
    assert await b.leave("c1", "u1", "s2") is False

    assert await b.join("c1", "u1", "s3") is True  # back again: announced again


async def test_leave_of_one_server_keeps_presence_from_the_other(servers: tuple[Presence, Presence]) -> None:
    a, b = servers
    assert await b.join("c1", "u1", "s-b") is True
    assert await a.join("c1", "u1", "s-a") is False
    assert await b.leave("c1", "u1", "s-b") is False
    assert await a.online_in("c1") == ["u1"]
    assert await a.leave("c1", "u1", "s-a") is True


async def test_disconnect_returns_the_conversations_left_offline(servers: tuple[Presence, Presence]) -> None:
    a, b = servers
    await a.connect("u1", "s1")
    await a.join("c1", "u1", "s1")
    await a.join("c2", "u1", "s1")
    await a.join("c3", "u1", "s1")
    await a.subscribe("room:1", "s1")
    await b.connect("u1", "s2")
    await b.join("c2", "u1", "s2")  # still present in c2 through the other server
    await a.connect("u1", "s3")
    await a.join("c3", "u1", "s3")  # and in c3 through another local socket
    await a.connect("u2", "s4")
    await a.join("c1", "u2", "s4")

    assert sorted(await a.disconnect("u1", "s1")) == [("c1", "u1")]
    assert await a.online_in("c1") == ["u2"]
    assert await b.online_in("c2") == ["u1"]
    assert await b.online_in("c3") == ["u1"]
    assert await b.subscriber_count("room:1") == 0
    assert await a.online_users(["u1", "u2"]) == {"u1", "u2"}
    assert await a.disconnect("u1", "s1") == []  # twice: nothing left

    assert await b.disconnect("u1", "s2") == [("c2", "u1")]
    assert sorted(await a.disconnect("u1", "s3")) == [("c3", "u1")]
    assert await b.online_users(["u1", "u2"]) == {"u2"}


async def test_online_in_and_online_users_span_servers(servers: tuple[Presence, Presence]) -> None:
    a, b = servers
    await a.connect("u2", "s1")
    await a.join("c1", "u2", "s1")
    await b.connect("u1", "s2")
    await b.join("c1", "u1", "s2")
    await b.connect("u3", "s3")  # connected, but in no conversation
    assert await a.online_in("c1") == ["u1", "u2"]
    assert await b.online_in("c1") == ["u1", "u2"]
    assert await a.online_in("nobody-here") == []
    assert await a.online_users(["u1", "u2", "u3", "u4"]) == {"u1", "u2", "u3"}
    assert await a.online_users(iter(["u4"])) == set()
    assert await a.online_users([]) == set()
    many = [f"x{i}" for i in range(1500)] + ["u3"]  # more than one HMGET chunk
    assert await a.online_users(many) == {"u3"}

    await b.disconnect("u3", "s3")
    assert await a.online_users(["u3"]) == set()


async def test_subscriber_count_spans_servers(servers: tuple[Presence, Presence]) -> None:
    a, b = servers
    await a.connect("u1", "s1")
    await a.subscribe("creator:7", "s1")
    await a.subscribe("creator:7", "s1")  # same sid twice counts once
    await a.subscribe("creator:7", "s2")
    await b.subscribe("creator:7", "s3")
    await b.subscribe("room:9", "s3")
    assert await a.subscriber_count("creator:7") == 3
    assert await b.subscriber_count("room:9") == 1
    assert await b.subscriber_count("user:none") == 0

    await a.unsubscribe("creator:7", "s2")
    await a.unsubscribe("creator:7", "s2")  # not subscribed any more: no-op
    assert await b.subscriber_count("creator:7") == 2
    await a.disconnect("u1", "s1")
    assert await b.subscriber_count("creator:7") == 1


async def test_concurrent_joins_announce_exactly_once(servers: tuple[Presence, Presence]) -> None:
    a, b = servers
    for i in range(50):
        conv = f"race{i}"
        joined = await asyncio.gather(*(
            (a if n % 2 else b).join(conv, "u1", f"s{n}") for n in range(6)))
        assert sum(joined) == 1, joined
        left = await asyncio.gather(*(
            (a if n % 2 else b).leave(conv, "u1", f"s{n}") for n in range(6)))
        assert sum(left) == 1, left
        assert await a.online_in(conv) == []


async def test_typing_throttle(servers: tuple[Presence, Presence]) -> None:
    a, b = servers
    assert await a.typing_allowed("c1", "u1", 0.3) is True
    assert await a.typing_allowed("c1", "u1", 0.3) is False
    assert await b.typing_allowed("c1", "u1", 0.3) is False  # cluster-wide
    assert await b.typing_allowed("c1", "u2", 0.3) is True  # per user
    assert await b.typing_allowed("c2", "u1", 0.3) is True  # per conversation
    await asyncio.sleep(0.35)
    assert await b.typing_allowed("c1", "u1", 0.3) is True


async def test_join_with_another_users_sid_is_refused(servers: tuple[Presence, Presence]) -> None:
    a, _ = servers
    await a.connect("u1", "s1")
    with pytest.raises(ValueError):
        await a.join("c1", "u2", "s1")


async def test_memory_stop_reports_everyone_offline() -> None:
    memory = MemoryPresence()
    await memory.start()
    await memory.join("c1", "u1", "s1")
    await memory.join("c1", "u2", "s2")
    assert await memory.stop() == [("c1", "u1"), ("c1", "u2")]
    assert await memory.online_in("c1") == []


# --------------------------------------------------------------------------- Redis only


async def test_clean_stop_reports_users_offline_cluster_wide(make_server: MakeServer) -> None:
    a, b = await make_server("srv-a"), await make_server("srv-b")
    await a.connect("u1", "s1")
    await a.join("c1", "u1", "s1")
    await a.connect("u2", "s2")
    await a.join("c1", "u2", "s2")
    await b.join("c1", "u2", "s3")  # u2 stays through b
    await a.subscribe("room:1", "s1")

    assert await a.stop() == [("c1", "u1")]
    assert await b.online_in("c1") == ["u2"]
    assert await b.online_users(["u1", "u2"]) == set()  # u2's b socket never called connect()
    assert await b.subscriber_count("room:1") == 0


async def test_crashed_server_is_reaped_once(make_server: MakeServer, redis_prefix: str) -> None:
    offline = OfflineLog()
    crashed = await make_server("srv-crashed")
    b, c = await make_server("srv-b"), await make_server("srv-c")
    for server in (crashed, b, c):
        server.set_offline_callback(offline.callback(server.server_id))

    await crashed.connect("u1", "s1")
    await crashed.join("c1", "u1", "s1")
    await crashed.join("c2", "u1", "s1")
    await crashed.connect("u2", "s2")
    await crashed.join("c1", "u2", "s2")
    await crashed.subscribe("room:1", "s2")
    await b.connect("u2", "s3")
    assert await b.join("c1", "u2", "s3") is False  # u2 keeps a socket on a live server
    await c.subscribe("room:1", "s4")
    assert await b.online_in("c1") == ["u1", "u2"]
    assert await b.subscriber_count("room:1") == 2

    await crashed._cancel_tasks()  # no cleanup, no more heartbeats
    started = time.monotonic()
    await offline.wait_for(2, timeout=DEAD_AFTER_S + MARGIN_S + 1.0)
    assert time.monotonic() - started < DEAD_AFTER_S + MARGIN_S
    await asyncio.sleep(3 * HEARTBEAT_S)  # give a second reaper every chance to report again
    assert offline.pairs() == [("c1", "u1"), ("c2", "u1")]
    assert {server for server, _, _ in offline.calls} <= {"srv-b", "srv-c"}

    assert await c.online_in("c1") == ["u2"]
    assert await c.online_in("c2") == []
    assert await c.online_users(["u1", "u2"]) == {"u2"}
    assert await c.subscriber_count("room:1") == 1
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        leftovers = [k async for k in client.scan_iter(match=f"{redis_prefix}:srv:srv-crashed:*")]
        assert leftovers == []
        assert await client.zscore(RedisKeys(redis_prefix).servers, "srv-crashed") is None
    finally:
        await client.aclose()


async def test_dead_server_is_ignored_before_it_is_reaped(make_server: MakeServer) -> None:
    a, b = await make_server("srv-a"), await make_server("srv-b")
    await a.join("c1", "u1", "s1")
    await b._cancel_tasks()  # no reapers anywhere: a's keys stay in Redis
    await a._cancel_tasks()
    # a stops beating: once its heartbeat is dead_after_s old, nobody counts its sockets.
    await asyncio.sleep(DEAD_AFTER_S + 0.1)
    assert await b.online_in("c1") == []
    assert await b.join("c1", "u1", "s2") is True


async def test_server_reaped_while_alive_republishes_its_state(make_server: MakeServer) -> None:
    offline = OfflineLog()
    a, b = await make_server("srv-a"), await make_server("srv-b")
    b.set_offline_callback(offline.callback("srv-b"))
    await a.connect("u1", "s1")
    await a.join("c1", "u1", "s1")
    await a._cancel_tasks()  # a stalls (blocked loop, lost Redis...) for longer than dead_after_s
    await offline.wait_for(1, timeout=DEAD_AFTER_S + MARGIN_S + 1.0)
    assert await b.online_in("c1") == []

    await a._beat()  # a wakes up, notices it was reaped, publishes its sockets again
    assert await b.online_in("c1") == ["u1"]
    assert await b.online_users(["u1"]) == {"u1"}
    assert await a.leave("c1", "u1", "s1") is True


async def test_restart_with_the_same_id_cleans_the_leftovers(make_server: MakeServer) -> None:
    old = await make_server("srv-same")
    await old.join("c1", "u1", "s1")
    await old._cancel_tasks()  # crash
    offline = OfflineLog()
    new = await make_server("srv-same", start=False)
    new.set_offline_callback(offline.callback("srv-same"))
    await new.start()
    assert offline.pairs() == [("c1", "u1")]
    assert await new.online_in("c1") == []


async def test_redis_down_raises_presence_unavailable() -> None:
    # No retries: the default policy retries each command with back-off for about 3 s.
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    presence = RedisPresence(client, RedisKeys("bstest-down"), "srv-down")
    try:
        with pytest.raises(PresenceUnavailable):
            await presence.start()
        with pytest.raises(PresenceUnavailable):
            await presence.join("c1", "u1", "s1")
        assert presence._local.conv_user_sids == {}  # rolled back: the client may retry
        with pytest.raises(PresenceUnavailable):
            await presence.connect("u1", "s1")
        with pytest.raises(PresenceUnavailable):
            await presence.online_in("c1")
        with pytest.raises(PresenceUnavailable):
            await presence.online_users(["u1"])
        with pytest.raises(PresenceUnavailable):
            await presence.typing_allowed("c1", "u1", 1.0)
    finally:
        await client.aclose()


async def test_failed_disconnect_is_retried_by_the_heartbeat(make_server: MakeServer) -> None:
    offline = OfflineLog()
    a, b = await make_server("srv-a"), await make_server("srv-b")
    a.set_offline_callback(offline.callback("srv-a"))
    await a.connect("u1", "s1")
    await a.join("c1", "u1", "s1")

    # Redis fails exactly once, on the disconnect's release script.
    real_script = a._release_script
    failures = [RedisConnectionError("Connection refused")]

    class FlakyScript:
        async def __call__(self, **kwargs: object) -> object:
            if failures:
                raise failures.pop()
            return await real_script(**kwargs)  # type: ignore[arg-type]

    a._release_script = FlakyScript()  # type: ignore[assignment]
    with pytest.raises(PresenceUnavailable):
        await a.disconnect("u1", "s1")
    assert await b.online_in("c1") == ["u1"]  # Redis still counts the socket

    await offline.wait_for(1, timeout=5 * HEARTBEAT_S)  # the heartbeat retried it
    assert offline.pairs() == [("c1", "u1")]
    assert await b.online_in("c1") == []
    assert await b.online_users(["u1"]) == set()


async def test_sigkilled_process_goes_offline(make_server: MakeServer, redis_url: str, redis_prefix: str) -> None:
    offline = OfflineLog()
    watcher = await make_server("srv-watcher")
    watcher.set_offline_callback(offline.callback("srv-watcher"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "tests" / "presence_proc.py"),
        redis_url, redis_prefix, "srv-proc", "c1", "u-proc", str(HEARTBEAT_S), str(DEAD_AFTER_S),
        cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready"
        assert await watcher.online_in("c1") == ["u-proc"]
        assert await watcher.online_users(["u-proc"]) == {"u-proc"}

        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        killed_at = time.monotonic()
        await offline.wait_for(1, timeout=DEAD_AFTER_S + MARGIN_S + 1.0)
        assert time.monotonic() - killed_at < DEAD_AFTER_S + MARGIN_S
        assert offline.pairs() == [("c1", "u-proc")]
        assert await watcher.online_in("c1") == []
        assert await watcher.online_users(["u-proc"]) == set()
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
