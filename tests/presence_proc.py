"""A presence server in a process of its own for tests/test_presence.py: runs the given
presence calls, prints "ready", then waits to be SIGKILLed (a real crash: no cleanup runs).

usage: python tests/presence_proc.py REDIS_URL PREFIX SERVER_ID HEARTBEAT_S DEAD_AFTER_S ACTIONS_JSON
ACTIONS_JSON is a list of [method, *args], e.g. [["connect", "u1", "s1"], ["join", "c1", "u1", "s1"]].
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis.asyncio as aioredis

from chat.keys import RedisKeys  # run with PYTHONPATH=<repo root>
from chat.presence import RedisPresence

ALLOWED = {"connect", "join", "subscribe"}


async def main(argv: list[str]) -> None:
    url, prefix, server_id, heartbeat_s, dead_after_s, actions = argv
    client = aioredis.Redis.from_url(url)
    presence = RedisPresence(client, RedisKeys(prefix), server_id,
                             heartbeat_s=float(heartbeat_s), dead_after_s=float(dead_after_s))
    await presence.start()
    for method, *args in json.loads(actions):
        assert method in ALLOWED, method
        await getattr(presence, method)(*args)
    print("ready", flush=True)
    await asyncio.Event().wait()  # until SIGKILL: no cleanup ever runs


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
