"""RedisPublisher (the `redis` extra) against a real Backstage server that relays through Redis."""

from __future__ import annotations

from typing import Any

import pytest

from backstage_publisher import PublishError, RedisPublisher
from tests.support import Client, free_port


async def test_redis_publisher(backstage: Any, uid: Any) -> None:
    viewer, host = uid("viewer"), uid("host")
    sock = await Client(backstage.url, backstage.api.user(viewer)).connect()
    backstage.api.user(host)
    backstage.api.membership(host, viewer, 100)
    try:
        assert (await sock.call("subscribe", {"channel": f"creator:{host}"}))["ok"]
        async with RedisPublisher(backstage.redis_url, backstage.redis_prefix) as direct:
            assert await direct.publish(f"creator:{host}", "goal", {"amount": 5, "who": "Zoë"}) is None
            got = await sock.wait_for("event", lambda e: e["event"] == "goal")
            assert got == {"channel": f"creator:{host}", "event": "goal", "data": {"amount": 5, "who": "Zoë"},
                           "published_at": got["published_at"]}
            assert got["published_at"].endswith("Z")
            await direct.publish(f"user:{viewer}", " dm ", [1, 2])
            assert (await sock.wait_for("event", lambda e: e["event"] == "dm"))["data"] == [1, 2]

            for channel, event, data in (("bogus", "e", {}), (f"user:{viewer}", "", {}),
                                         (f"user:{viewer}", "e", {"x": float("nan")}),
                                         (f"user:{viewer}", "e", {"x": object()})):
                with pytest.raises(PublishError) as err:
                    await direct.publish(channel, event, data)
                assert err.value.code == "invalid"
        async with RedisPublisher(f"redis://127.0.0.1:{free_port()}/0", backstage.redis_prefix) as dead:
            with pytest.raises(PublishError) as err:
                await dead.publish(f"user:{viewer}", "e", {})
            assert err.value.code == "unavailable"
    finally:
        await sock.close()
