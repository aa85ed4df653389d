"""The publisher distribution (publisher/, `backstage_publisher`) against the project's
two-process cluster on MariaDB + Redis: counts and deliveries are cluster-wide, and the Redis
direct mode reaches every process. Its own tests (publisher/tests) cover the rest on one server;
tests/test_publisher_dist.py installs it in a venv of its own."""

from __future__ import annotations

from typing import Any

import pytest

from backstage_publisher import AsyncPublisher, PublishError, RedisPublisher
from tests.conftest import Cluster
from tests.support import API_KEY, Client, free_port


def is_event(channel: str, event: str) -> Any:
    return lambda m: m["channel"] == channel and m["event"] == event


async def test_http_publisher_across_the_cluster(shared_mysql_cluster: Cluster, uid: Any) -> None:
    cluster = shared_mysql_cluster
    fan, star = uid("fan"), uid("star")
    token = cluster.api.user(fan)
    cluster.api.user(star)
    cluster.api.membership(star, fan, 100)
    s0 = await Client(cluster.servers[0].url, token).connect()
    s1 = await Client(cluster.servers[1].url, token).connect()
    try:
        assert (await s1.call("subscribe", {"channel": f"creator:{star}"}))["ok"]
        async with AsyncPublisher(cluster.servers[0].url, API_KEY) as pub:
            # the socket on the other process counts and receives
            assert await pub.publish(f"creator:{star}", "live", {"on": True}) == 1
            assert (await s1.wait_for("event", is_event(f"creator:{star}", "live")))["data"] == {"on": True}
            assert await pub.publish(f"user:{fan}", "dm", 1) == 2
            ids = await pub.notify(channel=f"creator:{star}", type="live", title="Live now", body="Join",
                                   idempotency_key=f"live-{star}")
            for sock in (s0, s1):
                await sock.wait_for("event", is_event(f"user:{fan}", "dm"))
                await sock.wait_for("notification", lambda n: n["id"] == ids[0])
        # the idempotency key holds across processes
        async with AsyncPublisher(cluster.servers[1].url, API_KEY) as other:
            assert await other.notify(channel=f"creator:{star}", type="x", title="x", body="x",
                                      idempotency_key=f"live-{star}") == ids
    finally:
        await s0.close()
        await s1.close()


async def test_redis_publisher_reaches_every_process(shared_mysql_cluster: Cluster, redis_url: str,
                                                    uid: Any) -> None:
    mysql_cluster = shared_mysql_cluster
    redis_prefix = mysql_cluster.redis_prefix
    api = mysql_cluster.api
    viewer, host = uid("viewer"), uid("host")
    token = api.user(viewer)
    api.user(host)
    api.membership(host, viewer, 100)
    s0 = await Client(mysql_cluster.servers[0].url, token).connect()
    s1 = await Client(mysql_cluster.servers[1].url, token).connect()
    try:
        assert (await s1.call("subscribe", {"channel": f"creator:{host}"}))["ok"]
        async with RedisPublisher(redis_url, redis_prefix) as direct:
            assert await direct.publish(f"creator:{host}", "goal", {"amount": 5}) is None
            got = await s1.wait_for("event", is_event(f"creator:{host}", "goal"))
            assert got["data"] == {"amount": 5} and got["published_at"].endswith("Z")
            # One relay stream, delivered in order: once s0 has this later event, the earlier
            # creator:host event was handled by s0's process too, and not sent to s0.
            await direct.publish(f"user:{viewer}", "dm", [1, 2])
            for sock in (s0, s1):
                assert (await sock.wait_for("event", is_event(f"user:{viewer}", "dm")))["data"] == [1, 2]
            assert not [e for e in s0.events["event"] if e["channel"] == f"creator:{host}"]  # not subscribed
            with pytest.raises(PublishError) as err:
                await direct.publish("bogus", "e", {})
            assert err.value.code == "invalid"
        async with RedisPublisher(f"redis://127.0.0.1:{free_port()}/0", redis_prefix) as dead:
            with pytest.raises(PublishError) as err:
                await dead.publish(f"user:{viewer}", "e", {})
            assert err.value.code == "unavailable"
    finally:
        await s0.close()
        await s1.close()
