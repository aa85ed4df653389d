"""A one-socket presence server for tests/test_presence.py: joins a user, prints "ready", waits to be killed.

usage: python tests/presence_proc.py REDIS_URL PREFIX SERVER_ID CONVERSATION_ID USER_ID HEARTBEAT_S DEAD_AFTER_S
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

from chat.keys import RedisKeys  # run with PYTHONPATH=<repo root>
from chat.presence import RedisPresence


async def main(argv: list[str]) -> None:
    url, prefix, server_id, conversation_id, user_id, heartbeat_s, dead_after_s = argv
    client = aioredis.Redis.from_url(url)
    presence = RedisPresence(client, RedisKeys(prefix), server_id,
                             heartbeat_s=float(heartbeat_s), dead_after_s=float(dead_after_s))
    await presence.start()
    await presence.connect(user_id, "sid-proc")
    await presence.join(conversation_id, user_id, "sid-proc")
    print("ready", flush=True)
    await asyncio.Event().wait()  # until SIGKILL: no cleanup ever runs


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
