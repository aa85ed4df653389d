"""Redis faults under the relay (docs/reliability.md, "Redis and the relay"): a redis-server that
this module starts itself on a free port, frozen with SIGSTOP / SIGCONT or stopped and started
again by its own pid (never the machine's shared Redis), under two real server processes on
MariaDB.

- Redis frozen: a `send` is acked without waiting for the relay; the failures are logged
  (rate-limited) and counted; when Redis is back every process tells its sockets to `resync`,
  and a client catches up with `since_seq`;
- a subscription that went deaf is found by the canary: /readyz 503, ERROR, metric, rebuilt;
- Redis stopped: connect, join and send (room, creator post, DM) still work, presence degraded
  to the process; reactions and thread replies still reach the process's members, their events
  limited by the process alone, with the final counts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import MySQLDatabases
from tests.faults import OwnRedis
from tests.support import Api, Client, ServerProcess, app_events, barrier, fetch, make_token

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


@dataclass
class Env:
    redis: OwnRedis
    a: ServerProcess  # its relay can be made deaf (failpoint, SIGUSR2)
    b: ServerProcess
    api: Api


@pytest.fixture(scope="module")
def env(mysql_databases: MySQLDatabases) -> Iterator[Env]:
    redis = OwnRedis()
    servers: list[ServerProcess] = []
    try:
        url = mysql_databases.new()
        servers.append(ServerProcess(url, redis.url, "relayfaults", env={"BACKSTAGE_RELAY_FAILPOINT": "deaf"}))
        servers.append(ServerProcess(url, redis.url, "relayfaults"))
        yield Env(redis, servers[0], servers[1], Api(servers[0].url))
    finally:
        for s in servers:
            s.stop()
        redis.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for c in opened:
        await c.close()


def metric(server: ServerProcess, prefix: str) -> float:
    text = fetch("GET", server.url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def wait_ready(server: ServerProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while fetch("GET", server.url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "not ready again"
        time.sleep(0.1)


async def connect(clients: list[Client], server: ServerProcess, token: str) -> Client:
    c = await Client(server.url, token).connect()
    clients.append(c)
    return c


# ---------------------------------------------------------------- Redis frozen


async def test_frozen_redis_never_holds_acks_and_sockets_resync(env: Env, clients: list[Client]) -> None:
    api = env.api
    creator, patron = "rf-cre", "rf-pat"
    ctoken, ptoken = api.user(creator), api.user(patron)
    api.membership(creator, patron, 100)
    room = api.room(creator, "Frozen", 0)
    ca = await connect(clients, env.a, ctoken)  # sends on A
    pb = await connect(clients, env.b, ptoken)  # reads on B
    assert (await ca.call("join", {"conversation_id": room}))["ok"]
    assert (await pb.call("join", {"conversation_id": room}))["ok"]
    first = await ca.call("send", {"conversation_id": room, "body": "before", "client_msg_id": "f0"})
    await pb.wait_for("message", lambda m: m["id"] == first["message"]["id"])
    failures_before = metric(env.a, "backstage_relay_publish_failures_total")
    log_start = len(env.a.log())

    env.redis.signal(signal.SIGSTOP)
    waits: list[float] = []
    try:
        # Creator posts: the relay publish and the push wake-up both need Redis. 10 s frozen,
        # a send every 2 s: the first meets the frozen publish, later ones the back-off.
        frozen_at = time.monotonic()
        for i in range(1, 6):
            started = time.monotonic()
            r = await ca.call("send", {"conversation_id": room, "body": f"frozen {i}", "client_msg_id": f"f{i}"})
            waits.append(time.monotonic() - started)
            assert r["ok"], r
            await ca.wait_for("message", lambda m, i=i: m["body"] == f"frozen {i}")  # local delivery
            await _sleep_until(frozen_at + 2 * i)
    finally:
        env.redis.signal(signal.SIGCONT)
    print(f"send acks with Redis frozen: {', '.join(f'{w:.2f}s' for w in waits)}")
    # Unbounded, the first ack waited for the thaw (10 s) or the socket timeout (5 s).
    assert max(waits) < 3, waits
    last_seq = r["message"]["seq"]

    # Every process was cut off from its subscription: each tells its own sockets to resync.
    got = await pb.wait_for("resync", lambda e: e["conversation_id"] == room, timeout=20)
    assert got["last_seq"] == last_seq, got
    await ca.wait_for("resync", lambda e: e["conversation_id"] == room, timeout=20)
    # What B's socket missed (the publishes Redis took before it froze may still have come
    # through after the thaw), `since_seq` brings: together, every message, without a gap.
    live = {m["seq"] for m in pb.events["message"] if m["conversation_id"] == room}
    seen = max(s for s in live if s == 1 or all(x in live for x in range(1, s + 1)))
    again = await pb.call("join", {"conversation_id": room, "since_seq": seen})
    assert again["ok"], again
    assert [m["seq"] for m in again["messages"]] == list(range(seen + 1, last_seq + 1))
    bodies = {m["seq"]: m["body"] for m in [*pb.events["message"], *again["messages"]]}
    assert [bodies[s] for s in range(1, last_seq + 1)] == ["before", *(f"frozen {i}" for i in range(1, 6))]

    assert metric(env.a, "backstage_relay_publish_failures_total") > failures_before
    warnings = [line for line in env.a.log()[log_start:].splitlines() if "relay publish failed" in line]
    assert warnings and all("WARNING" in line for line in warnings), warnings
    assert len(warnings) <= 4, warnings  # one per 5 s at most

    # And live again: a new message reaches B through the relay. B's subscription may come back
    # a moment after its resync (each process reconnects on its own): send until one arrives live.
    wait_ready(env.a)
    wait_ready(env.b)
    deadline = time.monotonic() + 20
    for n in range(6, 100):
        after = await ca.call("send", {"conversation_id": room, "body": f"after {n}", "client_msg_id": f"f{n}"})
        assert after["ok"], after
        try:
            mid = after["message"]["id"]
            await pb.wait_for("message", lambda m, mid=mid: m["id"] == mid, timeout=2)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "no live delivery to B after Redis returned"


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)  # the fault's own duration, not a wait for an event


# ---------------------------------------------------------------- a deaf subscription


async def test_deaf_subscription_found_by_canary_and_rebuilt(env: Env, clients: list[Client]) -> None:
    api = env.api
    creator, patron = "rd-cre", "rd-pat"
    ctoken, ptoken = api.user(creator), api.user(patron)
    api.membership(creator, patron, 100)
    room = api.room(creator, "Deaf", 0)
    pa = await connect(clients, env.a, ptoken)  # reads on A, the one that goes deaf
    cb = await connect(clients, env.b, ctoken)
    assert (await pa.call("join", {"conversation_id": room}))["ok"]
    assert (await cb.call("join", {"conversation_id": room}))["ok"]
    wait_ready(env.a)
    detected_before = metric(env.a, "backstage_relay_deaf_detections_total")
    log_start = len(env.a.log())

    os.kill(env.a.pid, signal.SIGUSR2)  # A's subscription keeps its connection, hears nothing
    started = time.monotonic()
    lost = await cb.call("send", {"conversation_id": room, "body": "unheard", "client_msg_id": "d1"})
    assert lost["ok"], lost
    while True:
        r = fetch("GET", env.a.url + "/readyz", timeout=10)
        if r.status_code == 503:
            break
        assert time.monotonic() - started < 20, "deafness not detected"
        time.sleep(0.1)
    detected = time.monotonic() - started
    print(f"deaf subscription detected after {detected:.1f}s")
    assert r.json()["problems"].get("relay") == "deaf", r.text
    assert metric(env.a, "backstage_relay_deaf_detections_total") == detected_before + 1
    assert any("ERROR" in line and "relay subscription is deaf" in line
               for line in env.a.log()[log_start:].splitlines())

    # Rebuilt: ready again, the socket told to resync (it missed "unheard"), and live again.
    wait_ready(env.a)
    got = await pa.wait_for("resync", lambda e: e["conversation_id"] == room, timeout=20)
    assert got["last_seq"] == lost["message"]["seq"]
    assert not any(m["id"] == lost["message"]["id"] for m in pa.events["message"])
    live = await cb.call("send", {"conversation_id": room, "body": "heard", "client_msg_id": "d2"})
    await pa.wait_for("message", lambda m: m["id"] == live["message"]["id"])


# ---------------------------------------------------------------- Redis stopped


async def test_redis_down_connect_join_send_degrade_to_the_process(env: Env, clients: list[Client]) -> None:
    api = env.api
    creator, patron = "rs-cre", "rs-pat"
    ctoken, ptoken = api.user(creator), api.user(patron)
    api.membership(creator, patron, 100)
    room = api.room(creator, "Down", 0)
    dm = api.direct(ptoken, creator)

    env.redis.stop()
    try:
        # New sockets, joins and sends: Redis only carried presence and the relay.
        ca = await connect(clients, env.a, ctoken)
        pa = await connect(clients, env.a, make_token(patron))
        joined = await pa.call("join", {"conversation_id": room})
        assert joined["ok"], joined
        assert patron in joined["online"]  # this process's view
        assert (await ca.call("join", {"conversation_id": room}))["ok"]
        post = await ca.call("send", {"conversation_id": room, "body": "creator post", "client_msg_id": "s1"})
        assert post["ok"], post
        await pa.wait_for("message", lambda m: m["id"] == post["message"]["id"])  # same process: live
        reply = await pa.call("send", {"conversation_id": room, "body": "reply", "client_msg_id": "s2"})
        assert reply["ok"], reply
        # Reactions and a thread's updates: limited by this process alone, the final state last.
        pid = post["message"]["id"]
        for emoji in ("\U0001f44d", ":fire:", ":tada:"):
            assert (await pa.call("react", {"message_id": pid, "emoji": emoji, "on": True}))["ok"]
        await ca.wait_for("reaction", lambda e: len(e["reactions"]) == 3)
        for k in range(3):
            threaded = await pa.call("send", {"conversation_id": room, "body": f"in thread {k}",
                                              "client_msg_id": f"s2-{k}", "thread_id": pid})
            assert threaded["ok"], threaded
        await ca.wait_for("message_updated", lambda m: m["id"] == pid and m["thread"]["reply_count"] == 3)
        assert (await pa.call("join", {"conversation_id": dm}))["ok"]
        direct = await pa.call("send", {"conversation_id": dm, "body": "dm", "client_msg_id": "s3"})
        assert direct["ok"], direct
        assert fetch("GET", env.a.url + "/readyz", timeout=10).status_code == 503  # not pretending
    finally:
        env.redis.start()
    wait_ready(env.a)
    wait_ready(env.b)
    # Back: A resubscribed (and told its sockets to resync), the relay carries messages
    # between processes again, and A's presence is republished by its heartbeat.
    await pa.wait_for("resync", lambda e: e["conversation_id"] == room, timeout=20)
    cb = await connect(clients, env.b, ctoken)
    assert (await cb.call("join", {"conversation_id": room}))["ok"]
    live = await cb.call("send", {"conversation_id": room, "body": "back", "client_msg_id": "s4"})
    await pa.wait_for("message", lambda m: m["id"] == live["message"]["id"], timeout=20)
    deadline = time.monotonic() + 20
    while patron not in (await cb.call("join", {"conversation_id": room}))["online"]:
        assert time.monotonic() < deadline, "presence not republished"
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------- a revocation while Redis is down


async def test_membership_revoked_while_redis_down_reaches_every_process(env: Env, clients: list[Client]) -> None:
    """The change is stored and answered 200; the process that took it applies it at once; the
    others check their sockets' access against the database when the relay is back."""
    api = env.api
    creator, patron = "rv-cre", "rv-pat"
    api.user(creator)
    ptoken = api.user(patron)
    api.membership(creator, patron, 100)
    room = api.room(creator, "Revoked", 50)
    pa = await connect(clients, env.a, ptoken)  # on the process that takes the change
    pb = await connect(clients, env.b, ptoken)  # on the one that cannot be told
    for c in (pa, pb):
        assert (await c.call("join", {"conversation_id": room}))["ok"]
        assert (await c.call("subscribe", {"channel": f"creator:{creator}"}))["ok"]

    env.redis.stop()
    try:
        r = api.server("PUT", f"/memberships/{creator}/{patron}", {"tier_cents": 100, "status": "former"})
        assert r.status_code == 200, r.text
        assert r.json()["membership"]["status"] == "former"
        await pa.wait_for("access_revoked", lambda e: e["conversation_id"] == room)  # at once, locally
        assert not pb.events["access_revoked"]  # B cannot know yet...
        # ...but anything it reads from the database already says no.
        assert (await pb.call("history", {"conversation_id": room}))["error"]["code"] == "forbidden"
    finally:
        env.redis.start()
        back = time.monotonic()
    # Back: B checks its sockets' access, takes the room and the creator channel away.
    await pb.wait_for("access_revoked", lambda e: e["conversation_id"] == room, timeout=30)
    print(f"revocation reached the other process {time.monotonic() - back:.1f}s after Redis returned")
    wait_ready(env.a)
    wait_ready(env.b)
    cb = await connect(clients, env.b, api.user(creator))
    assert (await cb.call("join", {"conversation_id": room}))["ok"]
    apis = [api, Api(env.b.url)]
    sockets = [(patron, pa), (patron, pb), (creator, cb)]
    # Right after the restart a process's publishing may still be in its 1 s back-off (events
    # skipped): first see the relay carry markers both ways, so that "nothing arrived" below
    # means no access, not a skipped publish.
    for attempt in range(10):
        try:
            await barrier(apis, sockets, f"rv-settle-{attempt}")
            break
        except (TimeoutError, AssertionError):
            assert attempt < 9, "the relay does not carry events again"
    sent = await cb.call("send", {"conversation_id": room, "body": "members only", "client_msg_id": "rv1"})
    assert sent["ok"], sent
    published = api.server("POST", "/publish", {"channel": f"creator:{creator}", "event": "post", "data": {"n": 1}})
    assert published.status_code == 200, published.text
    assert published.json()["delivered_to"] == 0  # neither socket is subscribed any more
    await barrier(apis, sockets, "rv")
    for c in (pa, pb):
        assert not any(m["id"] == sent["message"]["id"] for m in c.events["message"])
        assert not [e for e in app_events(c) if e["channel"] == f"creator:{creator}"]


# ---------------------------------------------------------------- the page resyncs by itself


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs /usr/bin/chromium")
def test_page_recovers_messages_relayed_while_redis_was_down(env: Env) -> None:
    from playwright.sync_api import sync_playwright

    from tests.browser_support import launch, open_chat

    api = env.api
    creator, patron = "rp-cre", "rp-pat"
    ctoken, ptoken = api.user(creator, "Cara Creator"), api.user(patron, "Pat Patron")
    api.membership(creator, patron, 100)
    room = api.room(creator, "Page", 0)

    def post(body: str) -> int:
        r = api.client(ctoken, "POST", f"/conversations/{room}/messages", {"body": body, "client_msg_id": body.replace(" ", "-")})
        assert r.status_code in (200, 201), r.text
        return int(r.json()["message"]["seq"])

    with sync_playwright() as p:
        browser = launch(p)
        try:
            chat = open_chat(browser, env.b.url, ptoken)  # B's socket, messages posted on A
            chat.open(room)
            post("before")
            chat.wait_seqs([1])
            env.redis.stop()  # publishes fail at once: nothing can arrive late by itself
            try:
                assert [post("while down 1"), post("while down 2")] == [2, 3]
            finally:
                env.redis.start()
            # No new message, no reconnect of the page's socket (B never went away): only the
            # `resync` event can bring them.
            chat.wait_seqs([1, 2, 3], timeout=20_000)
            assert chat.bodies() == ["before", "while down 1", "while down 2"]
            chat.context.close()
        finally:
            browser.close()
    wait_ready(env.a)
    wait_ready(env.b)
