"""`RedisPublisher`: the direct mode for trusted code inside the cluster (needs the `redis` extra).

It writes one message on the servers' Socket.IO pub/sub channel (`{REDIS_PREFIX}:socketio`), in
python-socketio's pub/sub message format, the one every Backstage process reads (`emit` to the
channel's Socket.IO room `ch:{channel}`): each process emits `event {channel, event, data,
published_at}` to its sockets subscribed to the channel, as `POST /api/v1/server/publish` does.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from backstage_publisher._http import PublishError

CHANNEL_RE = re.compile(r"^(user|creator|room):([A-Za-z0-9_-]{1,64})\Z")


class RedisPublisher:
    """Emits `event` to a channel's sockets through the cluster's Redis, without HTTP.

    For trusted in-cluster code only: nothing checks an API key, and the channel is only
    checked for its form. `prefix` must be the servers' REDIS_PREFIX. `publish` returns None:
    subscriber counts live with the servers, so delivered_to is unknown. A Redis failure raises
    PublishError("unavailable") and is not retried. Async only; `await aclose()` when done.
    """

    def __init__(self, redis_url: str, prefix: str = "backstage", *, timeout: float = 5) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ImportError("RedisPublisher needs the redis extra: pip install 'backstage-publisher[redis]'") from exc
        self._redis: Any = aioredis.Redis.from_url(redis_url, socket_timeout=timeout,
                                                   socket_connect_timeout=timeout)
        self._channel = f"{prefix}:socketio"
        self._host_id = f"publisher-{uuid.uuid4().hex}"

    async def publish(self, channel: str, event: str, data: Any) -> None:
        if not isinstance(channel, str) or CHANNEL_RE.match(channel) is None:
            raise PublishError("invalid", "channel must be user:{id}, creator:{id} or room:{id}")
        if not isinstance(event, str) or not 1 <= len(event.strip()) <= 64:
            raise PublishError("invalid", "event must be a string of 1-64 characters")
        published_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        payload = {"channel": channel, "event": event.strip(), "data": data, "published_at": published_at}
        message = {"method": "emit", "event": "event", "data": [payload], "binary": False, "namespace": "/",
                   "room": f"ch:{channel}", "skip_sid": None, "callback": None, "host_id": self._host_id}
        try:
            encoded = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise PublishError("invalid", f"data is not JSON: {exc}") from exc
        try:
            await self._redis.publish(self._channel, encoded)
        except Exception as exc:
            raise PublishError("unavailable", f"Redis publish failed: {type(exc).__name__}") from exc

    async def __aenter__(self) -> RedisPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._redis.aclose()
