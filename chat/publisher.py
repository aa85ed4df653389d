"""A small client for the platform's Python backend: publish events, send notifications.

    from chat.publisher import Publisher, PublishError

    pub = Publisher("https://chat.example.com", api_key="...")
    pub.publish("creator:42", "post_published", {"post_id": "9001"})       # -> delivered_to
    pub.notify(channel="creator:42", type="post_published", title="New post",
               body="Episode 12 is out", data={"post_id": "9001"}, push=True)  # -> notification ids
    room = pub.create_room("42", "Lounge", min_tier_cents=500, external_id="tier-7")  # idempotent
    pub.delete_message("9"); pub.disconnect_user("alice"); pub.history(room["id"], limit=20)

`AsyncPublisher` has the same methods as coroutines. Both speak the server API over HTTP
(SPEC §3) and retry what is safe to retry, with capped exponential back-off:

- `notify`: connection errors, timeouts, 5xx and 429. Every call carries an idempotency key
  (generated when not given) that is reused across its retries, so a retry after a lost answer
  returns the original ids and creates nothing new.
- the room, message, user and presence calls: like `notify` when idempotent (every read,
  `delete_message`, `disconnect_user`, `create_room` with an `external_id`); a `create_room`
  without one like `publish`.
- `publish`: only when the event surely did not go out: connection refused/failed, 429 and 503
  (the server answers those before doing anything). An event is not idempotent, so a timeout
  after the request was sent is not retried.

Anything else raises `PublishError(code, message, status)` with the SPEC §5 code (`invalid`,
`unauthorized`, `not_found`, ...; `unavailable` when the server could not be reached).

`RedisPublisher` is the direct mode for trusted in-cluster publishers: it emits the `event`
through Redis with python-socketio's write-only manager, without HTTP. It needs REDIS_URL and
REDIS_PREFIX of the deployment; it cannot count subscribers, so `publish` returns None.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from chat.codec import OrjsonCompat

__all__ = ["AsyncPublisher", "PublishError", "Publisher", "RedisPublisher"]

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 5.0
USER_AGENT = "backstage-publisher/1"


class PublishError(Exception):
    """The server refused the call, or could not be reached after the retries.

    `code` is the SPEC §5 error code (`unavailable` for connection failures), `status` the HTTP
    status (None when no answer arrived)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status is not None else ""))
        self.code = code
        self.message = message
        self.status = status


# ---------------------------------------------------------------- shared request logic


def _notify_body(user_ids: Sequence[str] | None, channel: str | None, type: str, title: str, body: str,
                 data: dict[str, Any] | None, push: bool, collapse_key: str | None,
                 idempotency_key: str | None) -> dict[str, Any]:
    if (user_ids is None) == (channel is None):
        raise ValueError("give exactly one of user_ids or channel")
    payload: dict[str, Any] = {"type": type, "title": title, "body": body, "data": data or {}, "push": push,
                               "idempotency_key": idempotency_key or f"pub-{uuid.uuid4().hex}"}
    if user_ids is not None:
        payload["user_ids"] = list(user_ids)
    else:
        payload["channel"] = channel
    if collapse_key is not None:
        payload["collapse_key"] = collapse_key
    return payload


def _error(response: httpx.Response) -> PublishError:
    try:
        err = response.json()["error"]
        return PublishError(str(err["code"]), str(err["message"]), response.status_code)
    except Exception:
        return PublishError("unavailable" if response.status_code >= 500 else "invalid",
                            response.text[:200] or response.reason_phrase, response.status_code)


def _retryable(response: httpx.Response, idempotent: bool) -> bool:
    if response.status_code in (429, 503):
        return True
    return idempotent and response.status_code >= 500


def _retryable_exc(exc: httpx.HTTPError, idempotent: bool) -> bool:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True  # the request never reached the server
    return idempotent and isinstance(exc, httpx.TransportError)


def _delay(attempt: int, response: httpx.Response | None) -> float:
    """Equal-jitter exponential back-off; a Retry-After header is honoured up to the cap."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt)
    delay = ceiling / 2 + random.random() * ceiling / 2
    if response is not None:
        try:
            delay = max(delay, min(float(response.headers.get("Retry-After", "")), BACKOFF_CAP_S))
        except ValueError:
            pass
    return float(delay)


def _unreachable(exc: httpx.HTTPError, attempts: int) -> PublishError:
    return PublishError("unavailable", f"server unreachable after {attempts} attempt(s): {type(exc).__name__}")


def _room_body(creator_id: str, name: str, min_tier_cents: int, post_policy: str,
               external_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"creator_id": creator_id, "name": name, "min_tier_cents": min_tier_cents,
                            "post_policy": post_policy}
    if external_id is not None:
        body["external_id"] = external_id
    return body


def _params(**values: Any) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


def _segment(value: str) -> str:
    """One path segment: an id or channel, percent-encoded so it cannot change the path."""
    return quote(str(value), safe=":")


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


# ---------------------------------------------------------------- sync


class Publisher:
    """Blocking client (httpx.Client). `retries` is the number of retries after the first
    attempt; `timeout` is in seconds per attempt. Thread-safe; close() when done (or use `with`)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 5, retries: int = 3) -> None:
        self.retries = retries
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=_headers(api_key))

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def publish(self, channel: str, event: str, data: Any) -> int:
        """Deliver `event` live to every socket subscribed to `channel`; returns how many sockets
        were subscribed across the cluster (best effort)."""
        answer = self._post("/api/v1/server/publish", {"channel": channel, "event": event, "data": data},
                            idempotent=False)
        return int(answer["delivered_to"])

    def notify(self, user_ids: Sequence[str] | None = None, channel: str | None = None, *, type: str,
               title: str, body: str, data: dict[str, Any] | None = None, push: bool = False,
               collapse_key: str | None = None, idempotency_key: str | None = None) -> list[str]:
        """Store a notification for each recipient (and push it when `push`); returns the ids."""
        payload = _notify_body(user_ids, channel, type, title, body, data, push, collapse_key, idempotency_key)
        answer = self._post("/api/v1/server/notifications", payload, idempotent=True)
        return [str(i) for i in answer["notification_ids"]]

    # -- rooms, messages, users, presence (server API; see docs/api.md)

    def create_room(self, creator_id: str, name: str, *, min_tier_cents: int = 0, post_policy: str = "everyone",
                    external_id: str | None = None) -> dict[str, Any]:
        """Create a room; with `external_id` (your own id of it), the creator's existing room of
        that id is returned instead, so the call is safe to retry. Returns the room object."""
        answer = self._request("POST", "/api/v1/server/rooms", _room_body(
            creator_id, name, min_tier_cents, post_policy, external_id), idempotent=external_id is not None)
        return dict(answer["conversation"])

    def list_rooms(self, creator_id: str | None = None, *, cursor: str | None = None,
                   limit: int | None = None) -> dict[str, Any]:
        """One page `{rooms, next_cursor}`; pass `next_cursor` back as `cursor` until it is None."""
        return self._request("GET", "/api/v1/server/rooms", params=_params(
            creator_id=creator_id, cursor=cursor, limit=limit), idempotent=True)

    def delete_message(self, message_id: str) -> dict[str, Any]:
        """Delete any message (members get `message_updated`); returns the deleted message."""
        answer = self._request("DELETE", f"/api/v1/server/messages/{_segment(message_id)}", idempotent=True)
        return dict(answer["message"])

    def disconnect_user(self, user_id: str) -> bool:
        """Disconnect the user's sockets on every process; True if they had one connected."""
        answer = self._request("POST", f"/api/v1/server/users/{_segment(user_id)}/disconnect", idempotent=True)
        return bool(answer["was_online"])

    def history(self, conversation_id: str, *, before_seq: int | None = None, after_seq: int | None = None,
                limit: int | None = None) -> dict[str, Any]:
        """A page `{messages, has_more}` of any conversation, ascending by seq (as the client API)."""
        return self._request("GET", f"/api/v1/server/conversations/{_segment(conversation_id)}/messages",
                             params=_params(before_seq=before_seq, after_seq=after_seq, limit=limit), idempotent=True)

    def conversation_presence(self, conversation_id: str) -> list[str]:
        """Ids of the users with a socket joined to the conversation, cluster-wide."""
        answer = self._request("GET", f"/api/v1/server/conversations/{_segment(conversation_id)}/presence",
                               idempotent=True)
        return [str(u) for u in answer["online"]]

    def channel_presence(self, channel: str) -> dict[str, Any]:
        """`{channel, online, subscribers}`: who of the channel's audience is connected, and how
        many sockets are subscribed to it."""
        return self._request("GET", f"/api/v1/server/channels/{_segment(channel)}/presence", idempotent=True)

    def _post(self, path: str, payload: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        return self._request("POST", path, payload, idempotent=idempotent)

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None, *,
                 params: dict[str, str] | None = None, idempotent: bool) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, json=payload, params=params)
            except httpx.HTTPError as exc:
                if last or not _retryable_exc(exc, idempotent):
                    raise _unreachable(exc, attempt + 1) from exc
                time.sleep(_delay(attempt, None))
                continue
            if response.is_success:
                return dict(response.json())
            if last or not _retryable(response, idempotent):
                raise _error(response)
            time.sleep(_delay(attempt, response))
        raise AssertionError("unreachable")


# ---------------------------------------------------------------- async


class AsyncPublisher:
    """The same as Publisher, for asyncio code (httpx.AsyncClient). `await aclose()` when done
    (or use `async with`)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 5, retries: int = 3) -> None:
        self.retries = retries
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, headers=_headers(api_key))

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def publish(self, channel: str, event: str, data: Any) -> int:
        answer = await self._post("/api/v1/server/publish", {"channel": channel, "event": event, "data": data},
                                  idempotent=False)
        return int(answer["delivered_to"])

    async def notify(self, user_ids: Sequence[str] | None = None, channel: str | None = None, *, type: str,
                     title: str, body: str, data: dict[str, Any] | None = None, push: bool = False,
                     collapse_key: str | None = None, idempotency_key: str | None = None) -> list[str]:
        payload = _notify_body(user_ids, channel, type, title, body, data, push, collapse_key, idempotency_key)
        answer = await self._post("/api/v1/server/notifications", payload, idempotent=True)
        return [str(i) for i in answer["notification_ids"]]

    # -- rooms, messages, users, presence: as Publisher's

    async def create_room(self, creator_id: str, name: str, *, min_tier_cents: int = 0,
                          post_policy: str = "everyone", external_id: str | None = None) -> dict[str, Any]:
        answer = await self._request("POST", "/api/v1/server/rooms", _room_body(
            creator_id, name, min_tier_cents, post_policy, external_id), idempotent=external_id is not None)
        return dict(answer["conversation"])

    async def list_rooms(self, creator_id: str | None = None, *, cursor: str | None = None,
                         limit: int | None = None) -> dict[str, Any]:
        return await self._request("GET", "/api/v1/server/rooms", params=_params(
            creator_id=creator_id, cursor=cursor, limit=limit), idempotent=True)

    async def delete_message(self, message_id: str) -> dict[str, Any]:
        answer = await self._request("DELETE", f"/api/v1/server/messages/{_segment(message_id)}", idempotent=True)
        return dict(answer["message"])

    async def disconnect_user(self, user_id: str) -> bool:
        answer = await self._request("POST", f"/api/v1/server/users/{_segment(user_id)}/disconnect",
                                     idempotent=True)
        return bool(answer["was_online"])

    async def history(self, conversation_id: str, *, before_seq: int | None = None, after_seq: int | None = None,
                      limit: int | None = None) -> dict[str, Any]:
        return await self._request("GET", f"/api/v1/server/conversations/{_segment(conversation_id)}/messages",
                                   params=_params(before_seq=before_seq, after_seq=after_seq, limit=limit),
                                   idempotent=True)

    async def conversation_presence(self, conversation_id: str) -> list[str]:
        answer = await self._request("GET", f"/api/v1/server/conversations/{_segment(conversation_id)}/presence",
                                     idempotent=True)
        return [str(u) for u in answer["online"]]

    async def channel_presence(self, channel: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/v1/server/channels/{_segment(channel)}/presence", idempotent=True)

    async def _post(self, path: str, payload: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        return await self._request("POST", path, payload, idempotent=idempotent)

    async def _request(self, method: str, path: str, payload: dict[str, Any] | None = None, *,
                       params: dict[str, str] | None = None, idempotent: bool) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self._http.request(method, path, json=payload, params=params)
            except httpx.HTTPError as exc:
                if last or not _retryable_exc(exc, idempotent):
                    raise _unreachable(exc, attempt + 1) from exc
                await asyncio.sleep(_delay(attempt, None))
                continue
            if response.is_success:
                return dict(response.json())
            if last or not _retryable(response, idempotent):
                raise _error(response)
            await asyncio.sleep(_delay(attempt, response))
        raise AssertionError("unreachable")


# ---------------------------------------------------------------- direct mode (Redis)


class RedisPublisher:
    """Emits `event` to a channel's sockets through the cluster's Redis, without HTTP.

    For trusted in-cluster code only: nothing checks an API key, and the channel is only
    checked for its form. Uses python-socketio's AsyncRedisManager in write-only mode on the
    servers' pub/sub channel (`{prefix}:socketio`), the same one the servers relay through.
    `publish` returns None: subscriber counts live with the servers, so delivered_to is unknown.
    Async only; `await aclose()` when done.
    """

    def __init__(self, redis_url: str, prefix: str = "backstage") -> None:
        import socketio

        from chat.keys import RedisKeys

        class _Manager(socketio.AsyncRedisManager):  # type: ignore[misc]
            # python-socketio logs and drops a publish that fails twice; raise instead so the
            # caller knows the event did not go out.
            async def _publish(self, data: Any) -> Any:
                try:
                    if not self.connected:  # type: ignore[has-type]
                        self._redis_connect()
                    return await self.redis.publish(self.channel, self.json.dumps(data))
                except Exception:
                    self.connected = False
                    raise

        self._manager = _Manager(redis_url, channel=RedisKeys(prefix).socketio_channel, write_only=True,
                                 json=OrjsonCompat)

    async def publish(self, channel: str, event: str, data: Any) -> None:
        from chat.keys import CHANNEL_RE, channel_room

        if not isinstance(channel, str) or CHANNEL_RE.match(channel) is None:
            raise PublishError("invalid", "channel must be user:{id}, creator:{id} or room:{id}")
        if not isinstance(event, str) or not 1 <= len(event.strip()) <= 64:
            raise PublishError("invalid", "event must be a string of 1-64 characters")
        published_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message = {"channel": channel, "event": event.strip(), "data": data, "published_at": published_at}
        try:
            await self._manager.emit("event", message, room=channel_room(channel), namespace="/")
        except Exception as exc:
            raise PublishError("unavailable", f"Redis publish failed: {type(exc).__name__}") from exc

    async def __aenter__(self) -> RedisPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        redis = getattr(self._manager, "redis", None)
        if redis is not None:
            await redis.aclose()
