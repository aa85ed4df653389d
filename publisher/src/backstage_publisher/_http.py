"""The HTTP publishers: `Publisher` (blocking) and `AsyncPublisher` (asyncio), over httpx.

Both speak Backstage's server API (`/api/v1/server/*`, API key) and retry what is safe to
retry, with capped exponential back-off and jitter:

- idempotent calls (`notify`, which always carries an idempotency key reused across its
  retries; the reads, `delete_message`, `disconnect_user`, and `create_room` with an
  `external_id`): connection errors, timeouts, 5xx and 429;
- the others (`publish`: an event is not stored, so it cannot be de-duplicated; `create_room`
  without an `external_id`): only when the
  server surely did not act: the connection never opened, or the answer was 429 or 503 (both
  mean nothing happened).

A `Retry-After` header (seconds or an HTTP date) is honoured: the next attempt waits at least
that long. An answer that asks for longer than `max_wait` is raised at once instead of blocking
the caller; its `PublishError.retry_after` says when to come back.

Everything else raises `PublishError(code, message, status)` with the server's error code
(`invalid`, `unauthorized`, `not_found`, ...; `unavailable` when the server could not be reached).
The retry decisions live in `_Attempts`, shared by both clients, so adding a call is one method
on each client around `_request`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 5.0
MAX_WAIT_S = 30.0
USER_AGENT = "backstage-publisher/1"

PUBLISH_PATH = "/api/v1/server/publish"
NOTIFICATIONS_PATH = "/api/v1/server/notifications"
ROOMS_PATH = "/api/v1/server/rooms"
CONVERSATIONS_PATH = "/api/v1/server/conversations"


class PublishError(Exception):
    """The server refused the call, or could not be reached after the retries.

    `code` is the server's error code (`unavailable` for connection failures), `status` the HTTP
    status (None when no answer arrived), `retry_after` the seconds the server asked to wait
    (`Retry-After`), if it did."""

    def __init__(self, code: str, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status is not None else ""))
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


# ---------------------------------------------------------------- shared request logic


def _notify_body(user_ids: Sequence[str] | None, channel: str | None, type: str, title: str, body: str,
                 data: dict[str, Any] | None, push: bool, collapse_key: str | None,
                 idempotency_key: str | None) -> dict[str, Any]:
    if (user_ids is None) == (channel is None):
        raise ValueError("give exactly one of user_ids or channel")
    if isinstance(user_ids, str):
        raise ValueError("user_ids is a list of ids, not one string")
    payload: dict[str, Any] = {"type": type, "title": title, "body": body, "data": data or {}, "push": push,
                               "idempotency_key": idempotency_key or f"pub-{uuid.uuid4().hex}"}
    if user_ids is not None:
        payload["user_ids"] = list(user_ids)
    else:
        payload["channel"] = channel
    if collapse_key is not None:
        payload["collapse_key"] = collapse_key
    return payload


def _room_body(creator_id: str, name: str, min_tier_cents: int, post_policy: str,
               external_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"creator_id": creator_id, "name": name, "min_tier_cents": min_tier_cents,
                            "post_policy": post_policy}
    if external_id is not None:
        body["external_id"] = external_id
    return body


def _params(**values: Any) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


def _history_params(before_seq: int | None, after_seq: int | None, limit: int | None, thread_id: str | None,
                    include_replies: bool | None) -> dict[str, str]:
    params = _params(before_seq=before_seq, after_seq=after_seq, limit=limit, thread_id=thread_id)
    if include_replies is not None:
        params["include_replies"] = "true" if include_replies else "false"
    return params


def _segment(value: str) -> str:
    """One path segment (an id, a channel), percent-encoded so it cannot change the path."""
    return quote(str(value), safe=":")


def retry_after_s(response: httpx.Response) -> float | None:
    """The wait a `Retry-After` header asks for, in seconds (delta-seconds or an HTTP date);
    None when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _error(response: httpx.Response) -> PublishError:
    wait = retry_after_s(response)
    try:
        err = response.json()["error"]
        return PublishError(str(err["code"]), str(err["message"]), response.status_code, wait)
    except Exception:
        return PublishError("unavailable" if response.status_code >= 500 else "invalid",
                            response.text[:200] or response.reason_phrase, response.status_code, wait)


def _body(response: httpx.Response) -> Any:
    return response.json() if response.content else {}


class _Attempts:
    """The retry decisions of one call: after each failed attempt, either the delay before the
    next one, or the PublishError to raise."""

    def __init__(self, retries: int, max_wait: float, idempotent: bool) -> None:
        self.retries, self.max_wait, self.idempotent = retries, max_wait, idempotent
        self.made = 0

    def _backoff(self) -> float:
        """Equal jitter: between half and all of base * 2^n, capped."""
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (self.made - 1))
        return ceiling / 2 + random.random() * ceiling / 2

    def after_answer(self, response: httpx.Response) -> float:
        self.made += 1
        err = _error(response)
        status = response.status_code
        retryable = status in (429, 503) or (self.idempotent and status >= 500)
        if not retryable or self.made > self.retries:
            raise err
        if err.retry_after is not None:
            if err.retry_after > self.max_wait:
                raise err  # the server asks for longer than the caller wants to block
            return max(self._backoff(), err.retry_after)
        return self._backoff()

    def after_exception(self, exc: httpx.HTTPError) -> float:
        self.made += 1
        never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
        retryable = never_sent or (self.idempotent and isinstance(exc, httpx.TransportError))
        if not retryable or self.made > self.retries:
            raise PublishError("unavailable", f"server unreachable after {self.made} attempt(s): "
                                              f"{type(exc).__name__}") from exc
        return self._backoff()


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


# ---------------------------------------------------------------- sync


class Publisher:
    """Blocking client (httpx.Client). `retries` is the number of retries after the first
    attempt; `timeout` is in seconds per attempt; `max_wait` the longest `Retry-After` it waits
    for. Thread-safe; close() when done (or use `with`)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 5, retries: int = 3,
                 *, max_wait: float = MAX_WAIT_S) -> None:
        self.retries, self.max_wait = retries, max_wait
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
        answer = self._request("POST", PUBLISH_PATH, {"channel": channel, "event": event, "data": data},
                               idempotent=False)
        return int(answer["delivered_to"])

    def notify(self, user_ids: Sequence[str] | None = None, channel: str | None = None, *, type: str,
               title: str, body: str, data: dict[str, Any] | None = None, push: bool = False,
               collapse_key: str | None = None, idempotency_key: str | None = None) -> list[str]:
        """Store a notification for each recipient (and push it when `push`); returns the ids."""
        payload = _notify_body(user_ids, channel, type, title, body, data, push, collapse_key, idempotency_key)
        answer = self._request("POST", NOTIFICATIONS_PATH, payload, idempotent=True)
        return [str(i) for i in answer["notification_ids"]]

    # -- rooms, messages, users, presence (the server API's extensions)

    def create_room(self, creator_id: str, name: str, *, min_tier_cents: int = 0, post_policy: str = "everyone",
                    external_id: str | None = None) -> dict[str, Any]:
        """Create a room; with `external_id` (your own id of it), the creator's existing room of
        that id is returned instead, so the call is safe to retry. Returns the room object."""
        answer = self._request("POST", ROOMS_PATH, _room_body(creator_id, name, min_tier_cents, post_policy, external_id),
                               idempotent=external_id is not None)
        return dict(answer["conversation"])

    def list_rooms(self, creator_id: str | None = None, *, cursor: str | None = None,
                   limit: int | None = None) -> dict[str, Any]:
        """One page `{rooms, next_cursor}`; pass `next_cursor` back as `cursor` until it is None."""
        return dict(self._request("GET", ROOMS_PATH, params=_params(creator_id=creator_id, cursor=cursor, limit=limit),
                                  idempotent=True))

    def update_room(self, conversation_id: str, **changes: Any) -> dict[str, Any]:
        """Change a room (chat spaces): any of name, topic, emoji, min_tier_cents, post_policy,
        archived, guidelines; members see it live. Returns the room object."""
        return dict(self._request("PATCH", f"{ROOMS_PATH}/{_segment(conversation_id)}", changes,
                                  idempotent=True)["conversation"])

    def delete_room(self, conversation_id: str) -> None:
        """Delete a room and its history (members get conversation_deleted and access_revoked)."""
        self._request("DELETE", f"{ROOMS_PATH}/{_segment(conversation_id)}", idempotent=False)

    def delete_message(self, message_id: str) -> dict[str, Any]:
        """Delete any message (members get `message_updated`); returns the deleted message."""
        return dict(self._request("DELETE", f"/api/v1/server/messages/{_segment(message_id)}",
                                  idempotent=True)["message"])

    def disconnect_user(self, user_id: str) -> bool:
        """Disconnect the user's sockets on every process; True if they had one connected."""
        return bool(self._request("POST", f"/api/v1/server/users/{_segment(user_id)}/disconnect",
                                  idempotent=True)["was_online"])

    def history(self, conversation_id: str, *, before_seq: int | None = None, after_seq: int | None = None,
                limit: int | None = None, thread_id: str | None = None,
                include_replies: bool | None = None) -> dict[str, Any]:
        """A page `{messages, has_more}` of any conversation, ascending by seq (as the client API);
        `thread_id`: a page of that thread (its root, then its replies); `include_replies=False`:
        without thread replies."""
        return dict(self._request("GET", f"{CONVERSATIONS_PATH}/{_segment(conversation_id)}/messages",
                                  params=_history_params(before_seq, after_seq, limit, thread_id, include_replies),
                                  idempotent=True))

    def conversation_presence(self, conversation_id: str) -> list[str]:
        """Ids of the users with a socket joined to the conversation, cluster-wide."""
        answer = self._request("GET", f"{CONVERSATIONS_PATH}/{_segment(conversation_id)}/presence", idempotent=True)
        return [str(u) for u in answer["online"]]

    def channel_presence(self, channel: str) -> dict[str, Any]:
        """`{channel, online, subscribers}`: who of the channel's audience is connected, and how
        many sockets are subscribed to it."""
        return dict(self._request("GET", f"/api/v1/server/channels/{_segment(channel)}/presence", idempotent=True))

    def _request(self, method: str, path: str, payload: Any = None, *, params: dict[str, Any] | None = None,
                 idempotent: bool) -> Any:
        attempts = _Attempts(self.retries, self.max_wait, idempotent)
        while True:
            try:
                response = self._http.request(method, path, json=payload, params=params)
            except httpx.HTTPError as exc:
                time.sleep(attempts.after_exception(exc))
                continue
            if response.is_success:
                return _body(response)
            time.sleep(attempts.after_answer(response))


# ---------------------------------------------------------------- async


class AsyncPublisher:
    """The same as Publisher, for asyncio code (httpx.AsyncClient). `await aclose()` when done
    (or use `async with`)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 5, retries: int = 3,
                 *, max_wait: float = MAX_WAIT_S) -> None:
        self.retries, self.max_wait = retries, max_wait
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, headers=_headers(api_key))

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def publish(self, channel: str, event: str, data: Any) -> int:
        answer = await self._request("POST", PUBLISH_PATH, {"channel": channel, "event": event, "data": data},
                                     idempotent=False)
        return int(answer["delivered_to"])

    async def notify(self, user_ids: Sequence[str] | None = None, channel: str | None = None, *, type: str,
                     title: str, body: str, data: dict[str, Any] | None = None, push: bool = False,
                     collapse_key: str | None = None, idempotency_key: str | None = None) -> list[str]:
        payload = _notify_body(user_ids, channel, type, title, body, data, push, collapse_key, idempotency_key)
        answer = await self._request("POST", NOTIFICATIONS_PATH, payload, idempotent=True)
        return [str(i) for i in answer["notification_ids"]]

    # -- rooms, messages, users, presence: as Publisher's

    async def create_room(self, creator_id: str, name: str, *, min_tier_cents: int = 0,
                          post_policy: str = "everyone", external_id: str | None = None) -> dict[str, Any]:
        answer = await self._request("POST", ROOMS_PATH, _room_body(
            creator_id, name, min_tier_cents, post_policy, external_id), idempotent=external_id is not None)
        return dict(answer["conversation"])

    async def list_rooms(self, creator_id: str | None = None, *, cursor: str | None = None,
                         limit: int | None = None) -> dict[str, Any]:
        return dict(await self._request("GET", ROOMS_PATH, params=_params(
            creator_id=creator_id, cursor=cursor, limit=limit), idempotent=True))

    async def update_room(self, conversation_id: str, **changes: Any) -> dict[str, Any]:
        answer = await self._request("PATCH", f"{ROOMS_PATH}/{_segment(conversation_id)}", changes, idempotent=True)
        return dict(answer["conversation"])

    async def delete_room(self, conversation_id: str) -> None:
        await self._request("DELETE", f"{ROOMS_PATH}/{_segment(conversation_id)}", idempotent=False)

    async def delete_message(self, message_id: str) -> dict[str, Any]:
        answer = await self._request("DELETE", f"/api/v1/server/messages/{_segment(message_id)}", idempotent=True)
        return dict(answer["message"])

    async def disconnect_user(self, user_id: str) -> bool:
        answer = await self._request("POST", f"/api/v1/server/users/{_segment(user_id)}/disconnect", idempotent=True)
        return bool(answer["was_online"])

    async def history(self, conversation_id: str, *, before_seq: int | None = None, after_seq: int | None = None,
                      limit: int | None = None, thread_id: str | None = None,
                      include_replies: bool | None = None) -> dict[str, Any]:
        return dict(await self._request("GET", f"{CONVERSATIONS_PATH}/{_segment(conversation_id)}/messages",
                                        params=_history_params(before_seq, after_seq, limit, thread_id,
                                                               include_replies),
                                        idempotent=True))

    async def conversation_presence(self, conversation_id: str) -> list[str]:
        answer = await self._request("GET", f"{CONVERSATIONS_PATH}/{_segment(conversation_id)}/presence",
                                     idempotent=True)
        return [str(u) for u in answer["online"]]

    async def channel_presence(self, channel: str) -> dict[str, Any]:
        return dict(await self._request("GET", f"/api/v1/server/channels/{_segment(channel)}/presence",
                                        idempotent=True))

    async def _request(self, method: str, path: str, payload: Any = None, *, params: dict[str, Any] | None = None,
                       idempotent: bool) -> Any:
        attempts = _Attempts(self.retries, self.max_wait, idempotent)
        while True:
            try:
                response = await self._http.request(method, path, json=payload, params=params)
            except httpx.HTTPError as exc:
                await asyncio.sleep(attempts.after_exception(exc))
                continue
            if response.is_success:
                return _body(response)
            await asyncio.sleep(attempts.after_answer(response))
