"""Presence scenarios against MemoryPresence and against several RedisPresence "servers" on one real Redis.

The Redis servers use heartbeat_s=0.2 / dead_after_s=1.0 so that crash detection takes about a second.
Faults are real: a crash is a SIGKILLed process (tests/presence_proc.py), a lost Redis is a TCP
proxy that resets its connections (tests/faults.py). Outcomes are observed through the public
interface and the offline callbacks, waiting on them with generous limits (never on a clock).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from chat.keys import RedisKeys
from chat.presence import MemoryPresence, Presence, PresenceUnavailable, RedisPresence
from tests.faults import TcpProxy, eventually

HEARTBEAT_S = 0.2
DEAD_AFTER_S = 1.0
NEVER_DEAD_S = 60.0  # for tests where no server may be declared dead meanwhile
WAIT_S = 30.0  # generous limit for anything awaited; a pass usually takes a second
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

    async def wait_for(self, count: int, timeout: float = WAIT_S) -> None:
        try:
            await asyncio.wait_for(self._wait(count), timeout)
        except TimeoutError:
            raise AssertionError(f"expected {count} offline callbacks, got {self.calls}") from None

    async def wait_for_pair(self, pair: tuple[str, str], timeout: float = WAIT_S) -> None:
        try:
            await asyncio.wait_for(self._wait_pair(pair), timeout)
        except TimeoutError:
            raise AssertionError(f"expected offline {pair}, got {self.calls}") from None

    async def _wait(self, count: int) -> None:
        while len(self.calls) < count:
            self.changed.clear()
            await self.changed.wait()

    async def _wait_pair(self, pair: tuple[str, str]) -> None:
        while pair not in [(c, u) for _, c, u in self.calls]:
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[TcpProxy]:
    """A cuttable TCP path to the test Redis (stop() = Redis gone for its clients, start() = back)."""
    from sqlalchemy.engine import make_url

    u = make_url(redis_url)
    proxy = TcpProxy(u.host or "127.0.0.1", u.port or 6379).start()
    yield proxy
    proxy.stop()


@pytest.fixture
async def make_server(redis_url: str, redis_prefix: str) -> AsyncIterator[MakeServer]:
    """Builds started RedisPresence instances, each with its own client; stops them all at the end.

    via=proxy connects the server through that proxy, without command retries so that a cut
    shows at once as PresenceUnavailable instead of after the client's back-off.
    """
    made: list[tuple[RedisPresence, aioredis.Redis]] = []

    async def make(server_id: str, *, start: bool = True, decode: bool = False, via: TcpProxy | None = None,
                   dead_after_s: float = DEAD_AFTER_S) -> RedisPresence:
        if via is None:
            client = aioredis.Redis.from_url(redis_url, decode_responses=decode)
        else:
            client = aioredis.Redis.from_url(via.redis_url(redis_url), decode_responses=decode,
                                             socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        presence = RedisPresence(client, RedisKeys(redis_prefix), server_id,
                                 heartbeat_s=HEARTBEAT_S, dead_after_s=dead_after_s)
        made.append((presence, client))
        if start:
            await presence.start()
        return presence

    yield make
    for presence, client in made:
        try:
            await presence.stop()
        except PresenceUnavailable:
            pass  # its Redis was cut by the test
        finally:
            await client.aclose()


class Processes:
    """Presence servers in processes of their own (tests/presence_proc.py), SIGKILLed to crash them."""

    def __init__(self, redis_url: str, redis_prefix: str) -> None:
        self.redis_url, self.redis_prefix = redis_url, redis_prefix
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, server_id: str, actions: list[list[str]]) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "tests" / "presence_proc.py"), self.redis_url, self.redis_prefix,
            server_id, str(HEARTBEAT_S), str(DEAD_AFTER_S), json.dumps(actions),
            cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=asyncio.subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
        assert line.strip() == b"ready", line
        return proc

    @staticmethod
    async def crash(proc: asyncio.subprocess.Process) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                await self.crash(proc)


@pytest.fixture
async def processes(redis_url: str, redis_prefix: str) -> AsyncIterator[Processes]:
    procs = Processes(redis_url, redis_prefix)
    yield procs
    await procs.close()


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


async def test_disconnects_at_once_are_released_in_one_exchange_without_a_pipeline(make_server: MakeServer) -> None:
    """A storm's disconnects: their release scripts go to Redis together as EVALSHA in one
    packed write (chat/autopipe.py `round_trip`), not through redis-py's Pipeline (which sends
    SCRIPT EXISTS first, a round trip of its own)."""
    a = await make_server("srv-a")
    b = await make_server("srv-b")
    for i in range(40):
        await a.connect(f"u{i}", f"s{i}")
        await a.join("c1", f"u{i}", f"s{i}")
    await b.connect("u0", "s-b")
    await b.join("c1", "u0", "s-b")  # still in c1 through the other server
    pipelines: list[object] = []
    client = a._redis
    real = client.pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        pipelines.append(args)
        return real(*args, **kwargs)

    client.pipeline = counted  # type: ignore[method-assign]
    left = await asyncio.gather(*(a.disconnect(f"u{i}", f"s{i}") for i in range(40)))
    assert pipelines == []
    assert left[0] == []
    assert left[1:] == [[("c1", f"u{i}")] for i in range(1, 40)]
    assert await b.online_in("c1") == ["u0"]
    assert await b.online_users([f"u{i}" for i in range(40)]) == {"u0"}


async def test_a_release_script_redis_does_not_know_is_loaded_and_run(make_server: MakeServer) -> None:
    """NOSCRIPT (Redis restarted or flushed its scripts) on a release: run through redis-py, which loads it."""
    a = await make_server("srv-a")
    await a.connect("u1", "s1")
    await a.join("c1", "u1", "s1")
    await a.connect("u2", "s2")
    await a.join("c1", "u2", "s2")
    a._release_script.sha = "0" * 40  # a script Redis has never seen
    assert sorted(await asyncio.gather(a.disconnect("u1", "s1"), a.disconnect("u2", "s2"))) == [
        [("c1", "u1")], [("c1", "u2")]]
    assert await a.online_in("c1") == []
    assert await a.online_users(["u1", "u2"]) == set()
    assert a._pending == []


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
    # A long interval: the refusals below cannot be turned into passes by a slow machine.
    assert await a.typing_allowed("c1", "u1", 60) is True
    assert await a.typing_allowed("c1", "u1", 60) is False
    assert await b.typing_allowed("c1", "u1", 60) is False  # cluster-wide
    assert await b.typing_allowed("c1", "u2", 60) is True  # per user
    assert await b.typing_allowed("c2", "u1", 60) is True  # per conversation
    # A short interval ends by itself: wait for that, whatever the machine's speed.
    assert await a.typing_allowed("c3", "u1", 0.2) is True
    await eventually(lambda: b.typing_allowed("c3", "u1", 60), True, timeout=WAIT_S)
    assert await a.typing_allowed("c3", "u1", 60) is False  # the allowed call started a new interval


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


async def test_crashed_server_is_reaped_once(make_server: MakeServer, processes: Processes, redis_url: str,
                                             redis_prefix: str) -> None:
    offline = OfflineLog()
    b, c = await make_server("srv-b"), await make_server("srv-c")
    for server in (b, c):
        server.set_offline_callback(offline.callback(server.server_id))
    crashed = await processes.start("srv-crashed", [
        ["connect", "u1", "s1"], ["join", "c1", "u1", "s1"], ["join", "c2", "u1", "s1"],
        ["connect", "u2", "s2"], ["join", "c1", "u2", "s2"], ["subscribe", "room:1", "s2"]])
    await b.connect("u2", "s3")
    assert await b.join("c1", "u2", "s3") is False  # u2 keeps a socket on a live server
    await c.subscribe("room:1", "s4")
    assert await b.online_in("c1") == ["u1", "u2"]
    assert await b.subscriber_count("room:1") == 2

    await processes.crash(crashed)  # no cleanup, no more heartbeats
    await offline.wait_for(2)
    # Prove that no second reaper reports the same crash: crash another server afterwards and
    # wait until its users are reported; any duplicate would have been reported by then.
    marker = await processes.start("srv-marker", [["join", "c-marker", "u-marker", "s9"]])
    await processes.crash(marker)
    await offline.wait_for_pair(("c-marker", "u-marker"))
    assert offline.pairs() == [("c-marker", "u-marker"), ("c1", "u1"), ("c2", "u1")]
    assert {server for server, _, _ in offline.calls} <= {"srv-b", "srv-c"}

    assert await c.online_in("c1") == ["u2"]
    assert await c.online_in("c2") == []
    assert await c.online_users(["u1", "u2"]) == {"u2"}
    assert await c.subscriber_count("room:1") == 1
    client = aioredis.Redis.from_url(redis_url)
    try:
        leftovers = [k async for k in client.scan_iter(match=f"{redis_prefix}:srv:srv-crashed:*")]
        assert leftovers == []
        assert await client.zscore(RedisKeys(redis_prefix).servers, "srv-crashed") is None
    finally:
        await client.aclose()


async def test_dead_server_is_ignored_before_it_is_reaped(make_server: MakeServer, redis_proxy: TcpProxy,
                                                          redis_url: str, redis_prefix: str) -> None:
    # a's keys live for 3 x its dead_after_s: long after the reader (dead_after_s=1) stops counting a.
    a = await make_server("srv-a", via=redis_proxy, dead_after_s=NEVER_DEAD_S)
    reader = await make_server("srv-reader", start=False)  # not started: no heartbeat, no reaper anywhere
    await a.join("c1", "u1", "s1")
    assert await reader.online_in("c1") == ["u1"]
    redis_proxy.stop()  # a loses Redis: it stops beating, and its keys stay behind
    # Once a's heartbeat is dead_after_s old, nobody counts its sockets.
    await eventually(lambda: reader.online_in("c1"), [], timeout=WAIT_S)
    client = aioredis.Redis.from_url(redis_url)
    try:
        # Not reaped and not expired: the keys are there, the reader just does not count them.
        assert await client.zscore(RedisKeys(redis_prefix).servers, "srv-a") is not None
        assert [k async for k in client.scan_iter(match=f"{redis_prefix}:srv:srv-a:*")] != []
    finally:
        await client.aclose()
    assert await reader.join("c1", "u1", "s2") is True


async def test_server_reaped_while_alive_republishes_its_state(make_server: MakeServer,
                                                               redis_proxy: TcpProxy) -> None:
    offline = OfflineLog()
    a, b = await make_server("srv-a", via=redis_proxy), await make_server("srv-b")
    b.set_offline_callback(offline.callback("srv-b"))
    await a.connect("u1", "s1")
    await a.join("c1", "u1", "s1")
    redis_proxy.stop()  # a loses Redis for longer than dead_after_s
    await offline.wait_for(1)
    assert offline.pairs() == [("c1", "u1")]
    assert await b.online_in("c1") == []

    redis_proxy.start()  # a's next heartbeat notices it was reaped and publishes its sockets again
    await eventually(lambda: b.online_in("c1"), ["u1"], timeout=WAIT_S)
    assert await b.online_users(["u1"]) == {"u1"}
    assert await a.leave("c1", "u1", "s1") is True


async def test_restart_with_the_same_id_cleans_the_leftovers(make_server: MakeServer, processes: Processes) -> None:
    old = await processes.start("srv-same", [["join", "c1", "u1", "s1"]])
    await processes.crash(old)
    offline = OfflineLog()
    new = await make_server("srv-same", start=False)
    new.set_offline_callback(offline.callback("srv-same"))
    await new.start()
    assert offline.pairs() == [("c1", "u1")]
    assert await new.online_in("c1") == []


async def test_redis_down_degrades_joins_to_the_process(redis_proxy: TcpProxy, redis_url: str,
                                                      redis_prefix: str) -> None:
    redis_proxy.stop()
    # No retries: the default policy retries each command with back-off for seconds.
    client = aioredis.Redis.from_url(redis_proxy.redis_url(redis_url), socket_connect_timeout=2,
                                     retry=Retry(NoBackoff(), 0))
    presence = RedisPresence(client, RedisKeys(redis_prefix), "srv-down",
                             heartbeat_s=HEARTBEAT_S, dead_after_s=DEAD_AFTER_S)
    try:
        with pytest.raises(PresenceUnavailable):
            await presence.start()
        # Connects, joins and subscribes degrade to this process (docs/reliability.md): counted
        # locally, published once Redis answers; a join cannot know it is the cluster's first.
        assert await presence.join("c1", "u1", "s1") is False
        await presence.connect("u1", "s1")
        await presence.subscribe("room:1", "s1")
        assert await presence.online_in("c1") == ["u1"]  # this process's view
        with pytest.raises(PresenceUnavailable):
            await presence.online_users(["u1"])
        with pytest.raises(PresenceUnavailable):
            await presence.typing_allowed("c1", "u1", 1.0)

        # Redis is back: starting publishes what was counted locally meanwhile.
        redis_proxy.start()
        await presence.start()
        assert await presence.online_in("c1") == ["u1"]
        assert await presence.online_users(["u1"]) == {"u1"}
        assert await presence.subscriber_count("room:1") == 1
        assert sorted(await presence.disconnect("u1", "s1")) == [("c1", "u1")]
    finally:
        try:
            await presence.stop()
        finally:
            await client.aclose()


async def test_degraded_join_is_published_by_the_heartbeat(make_server: MakeServer, redis_proxy: TcpProxy) -> None:
    a = await make_server("srv-a", via=redis_proxy, dead_after_s=NEVER_DEAD_S)
    b = await make_server("srv-b", dead_after_s=NEVER_DEAD_S)
    redis_proxy.stop()
    await a.connect("u1", "s1")  # degraded: counted by a alone
    assert await a.join("c1", "u1", "s1") is False
    assert await b.online_in("c1") == []
    redis_proxy.start()
    await eventually(lambda: b.online_in("c1"), ["u1"], timeout=WAIT_S)  # a's heartbeat published it
    assert await b.online_users(["u1"]) == {"u1"}


async def test_failed_disconnect_is_retried_by_the_heartbeat(make_server: MakeServer, redis_proxy: TcpProxy) -> None:
    offline = OfflineLog()
    # Nobody may be declared dead while a's Redis is cut: the retry, not a reaper, must clean up.
    a = await make_server("srv-a", via=redis_proxy, dead_after_s=NEVER_DEAD_S)
    b = await make_server("srv-b", dead_after_s=NEVER_DEAD_S)
    a.set_offline_callback(offline.callback("srv-a"))
    await a.connect("u1", "s1")
    await a.join("c1", "u1", "s1")

    redis_proxy.stop()
    with pytest.raises(PresenceUnavailable):
        await a.disconnect("u1", "s1")
    assert await b.online_in("c1") == ["u1"]  # Redis still counts the socket

    redis_proxy.start()
    await offline.wait_for(1)  # the heartbeat retried it
    assert offline.pairs() == [("c1", "u1")]
    assert await b.online_in("c1") == []
    assert await b.online_users(["u1"]) == set()


async def test_sigkilled_process_goes_offline(make_server: MakeServer, processes: Processes) -> None:
    offline = OfflineLog()
    watcher = await make_server("srv-watcher")
    watcher.set_offline_callback(offline.callback("srv-watcher"))
    proc = await processes.start("srv-proc", [["connect", "u-proc", "sid-proc"], ["join", "c1", "u-proc", "sid-proc"]])
    assert await watcher.online_in("c1") == ["u-proc"]
    assert await watcher.online_users(["u-proc"]) == {"u-proc"}

    await processes.crash(proc)
    await offline.wait_for(1)
    assert offline.pairs() == [("c1", "u-proc")]
    assert await watcher.online_in("c1") == []
    assert await watcher.online_users(["u-proc"]) == set()


def test_hiredis_packed_commands_are_redis_pys_bytes() -> None:
    """chat/redisconn.py packs commands with hiredis: the same bytes redis-py's asyncio
    Connection sends, the same DataError for what redis-py refuses."""
    import redis.exceptions
    from redis.asyncio.connection import Connection

    from chat.redisconn import PackedConnection, connection_class

    ours, theirs = PackedConnection(), Connection()
    commands: list[tuple[Any, ...]] = [
        ("PING",), ("SET", "k", "v"), ("HINCRBY", "presence:users:x", "bench-1", 1), ("PEXPIRE", b"k", 20000),
        ("EVALSHA", "0123abcd", 2, "k1", "k2", "é", -7, 1.5, 1e20, 0.1), ("SCRIPT LOAD", "return 1"),
        (b"CLIENT SETINFO", b"LIB-NAME", "redis-py"), ("PUBLISH", "ch", b"\x00\xff" * 40_000), ("SET", "big", "x" * 70_000),
        ("SET", "mv", memoryview(b"abc")),
    ]
    for command in commands:
        assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command)), command
    for bad in [("SET", "k", True), ("SET", "k", None), ("SET", "k", object())]:
        with pytest.raises(redis.exceptions.DataError):
            theirs.pack_command(*bad)
        with pytest.raises(redis.exceptions.DataError):
            ours.pack_command(*bad)
    assert connection_class("redis://127.0.0.1:6379/0") == {"connection_class": PackedConnection}
    assert connection_class("rediss://h:6380/0") == {} and connection_class("unix:///tmp/r.sock") == {}
