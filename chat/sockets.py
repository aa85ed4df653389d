"""Socket.IO transport: each handler validates its payload and calls one service method.

Every event answers through its ack with {"ok": true, ...} or {"ok": false, "error": ...};
`answer` maps errors to the wire in one place, so nothing raised ever reaches the socket.
Handlers run one at a time per socket (async_handlers=False), so a socket's events keep
their order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import socketio

from chat import moderation, reports, schemas, sendtrace, spaces, threads, unavailable
from chat.auth import Authenticator
from chat.connectgate import ConnectGate
from chat.errors import ChatError, Forbidden, Invalid, RateLimited, TooLarge, error_wire
from chat.mentions import check_mentions
from chat.metrics import CONNECTED_SOCKETS, EVENT_LATENCY, EVENTS
from chat.presence import PresenceUnavailable
from chat.ratelimit import KeyedBuckets
from chat.reactions import check_emoji
from chat.retry import once_more_if_dead
from chat.service import ChatService
from chat.socketlimit import LocalSocketLimiter, SocketLimiter
from chat.sockguard import PacketGuard
from chat.transport_errors import as_chat_error

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class TooManyConnections(ChatError):
    """Refused at connect: the user holds max_sockets_per_user sockets (docs/api.md)."""
    code, status = "too_many_connections", 429


# The client events, each handled by the ChatSockets method of the same name (documented in
# chat/asyncapi.py; tests/test_asyncapi.py checks both lists are the same).
CLIENT_EVENTS = ("join", "leave", "send", "edit", "delete", "history", "typing", "read", "subscribe", "unsubscribe",
                 "refresh_token", "react", "moderator", "timeout", "block", "moderation_log", "slow_mode", "pin",
                 "report", "reports", "review_report", "block_user", "blocks", "accept_guidelines")

# Events that only read: run once more when a pooled database connection turned out dead (chat/retry.py).
READ_ONLY_EVENTS = frozenset({"history", "moderation_log", "reports", "blocks"})


class ChatSockets:
    def __init__(self, sio: socketio.AsyncServer, service: ChatService, auth: Authenticator,
                 max_payload_bytes: int, *, limiter: SocketLimiter | None = None) -> None:
        self.sio, self.service, self.auth = sio, service, auth
        self.max_payload_bytes = max_payload_bytes
        settings = service.settings
        self.settings = settings
        self.limiter = limiter or LocalSocketLimiter(settings.max_sockets_per_user)
        self.joins = KeyedBuckets(settings.join_rate_per_s, settings.join_burst)
        self._user_sids: dict[str, set[str]] = {}  # this process's sockets (and connecting ones) per user
        self._sid_user: dict[str, str] = {}
        self._admitted: set[str] = set()  # sids the limiter counts
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.guard = PacketGuard(sio, settings.connect_timeout_s, settings.max_bad_packets,
                                 ConnectGate(settings.setup_concurrency, settings.setup_hold_s))
        sio.on("connect", self.on_connect)
        sio.on("disconnect", self.on_disconnect)
        for name in CLIENT_EVENTS:
            handler: Handler = getattr(self, name)
            sio.on(name, self._wrap(name, handler))
        sio.on("*", self.on_unknown)

    # ------------------------------------------------------------ lifecycle
    async def on_connect(self, sid: str, environ: Any = None, auth: Any = None) -> dict[str, Any] | None:
        if self.sio.manager.is_connected(sid, "/"):
            # A client that emits an event named "connect" (python-socketio dispatches it here).
            return await self.on_unknown("connect", sid)
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            user, expires_at = self.auth.client_with_expiry(token)
            local = self._user_sids.setdefault(user.user_id, set())
            local.add(sid)
            self._sid_user[sid] = user.user_id
            if not await self.limiter.admit(user.user_id, sid, local):
                raise TooManyConnections(
                    f"at most {self.settings.max_sockets_per_user} connections per user; close one first")
            self._admitted.add(sid)
            await self.service.connect_socket(sid, user)
        except Exception as exc:
            self.guard.set_up(sid)
            await self._forget(sid)
            error = as_chat_error(exc)
            if error.code == "internal":
                log.exception("connect failed")
            elif error.code == "unavailable":
                unavailable.report(exc, "socket", "connect")
            raise socketio.exceptions.ConnectionRefusedError(error.message, error.to_wire()) from None
        self._expire_at(sid, expires_at)
        CONNECTED_SOCKETS.inc()
        return None

    async def on_disconnect(self, sid: str, reason: Any = None) -> dict[str, Any] | None:
        if self.sio.manager.is_connected(sid, "/"):
            # A client that emits an event named "disconnect": a real disconnect is pending here.
            return await self.on_unknown("disconnect", sid)
        if sid in self.service.sockets:
            CONNECTED_SOCKETS.dec()
        await self._forget(sid)
        try:
            await self.service.disconnect_socket(sid)
        except PresenceUnavailable as exc:
            # The local state is gone; the presence heartbeat retries the Redis release (at
            # shutdown: the stopped release queue, once per socket; not worth a traceback each).
            log.debug("disconnect: presence release left to the heartbeat (%s)", exc)
        except Exception:
            log.exception("disconnect cleanup failed")
        return None

    async def _forget(self, sid: str) -> None:
        """Drop this layer's state of a socket: limiter slot, join bucket, expiry timer."""
        self.joins.forget(sid)
        timer = self._expiry.pop(sid, None)
        if timer is not None:
            timer.cancel()
        user_id = self._sid_user.pop(sid, None)
        if user_id is None:
            return
        sids = self._user_sids.get(user_id)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._user_sids[user_id]
        if sid in self._admitted:
            self._admitted.discard(sid)
            try:
                await self.limiter.release(user_id, sid)
            except Exception as exc:  # the next admit of this user drops the stale entry
                log.warning("socket limiter release failed: %s", type(exc).__name__)

    # ------------------------------------------------------------ token expiry
    def _expire_at(self, sid: str, expires_at: float) -> None:
        """Disconnect the socket when its token expires, unless refresh_token moves the time."""
        old = self._expiry.pop(sid, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires_at - time.time())
        self._expiry[sid] = loop.call_later(delay, self._spawn_expire, sid)

    def _spawn_expire(self, sid: str) -> None:
        self._expiry.pop(sid, None)
        task = asyncio.get_running_loop().create_task(self._expire(sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, sid: str) -> None:
        try:
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
            # Straight to the local socket (not through the Redis relay), so it is queued before the disconnect.
            await self.sio.emit("token_expired", {"message": "the token expired; reconnect with a new one"},
                                to=sid, ignore_queue=True)
            # A namespace DISCONNECT first: socket.io clients do not reconnect on their own after it.
            await self.sio.disconnect(sid)
            if eio_sid is not None:
                await self.guard.close_session(eio_sid)
        except Exception as exc:
            log.warning("expiring a socket failed: %s", type(exc).__name__)

    async def refresh_token(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        fresh, expires_at = self.auth.client_with_expiry(data.get("token"))
        if fresh.user_id != user.user_id:
            raise Forbidden("the new token is for another user")
        self._expire_at(sid, expires_at)
        return {"expires_at": schemas.iso(datetime.fromtimestamp(expires_at, UTC))}

    async def on_unknown(self, *args: Any) -> dict[str, Any]:
        # (event, sid, *data); an event literally named "*" arrives as (sid, *data)
        EVENTS.labels("unknown", "invalid").inc()
        return error_wire(Invalid("unknown event"))

    # ------------------------------------------------------------ the one error mapper
    def _wrap(self, name: str, handler: Handler) -> Callable[..., Awaitable[dict[str, Any]]]:
        # The metric children of this event, looked up once (labels() takes a lock and builds a key).
        latency, ok = EVENT_LATENCY.labels(name), EVENTS.labels(name, "ok")

        async def answer(sid: str, *args: Any) -> dict[str, Any]:
            started = time.perf_counter()
            outcome = "ok"
            try:
                data = args[0] if args else None
                try:
                    size = len(orjson.dumps(data, default=_binary_as_text, option=orjson.OPT_PASSTHROUGH_SUBCLASS))
                except orjson.JSONEncodeError:  # nested too deep to re-encode
                    raise Invalid("payload is not a JSON value we accept") from None
                if size > self.max_payload_bytes:
                    raise TooLarge(f"payload over {self.max_payload_bytes} bytes")
                payload = schemas.check_object(data)
                if name in READ_ONLY_EVENTS:
                    result = await once_more_if_dead(lambda: handler(sid, payload))
                else:
                    result = await handler(sid, payload)
                return {"ok": True, **result}
            except Exception as exc:
                err = as_chat_error(exc)
                outcome = err.code
                if err.code == "internal":
                    log.exception("socket event failed", extra={"event": name})
                elif err.code == "unavailable":
                    unavailable.report(exc, "socket", name)
                return error_wire(err)
            finally:
                (ok if outcome == "ok" else EVENTS.labels(name, outcome)).inc()
                latency.observe(time.perf_counter() - started)
        return answer

    # ------------------------------------------------------------ events
    async def join(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        cid = schemas.check_conversation_id(data)
        since = schemas.check_int(data, "since_seq", minimum=0)
        include_replies = threads.check_include_replies(data)
        if not self.joins.take(sid):
            raise RateLimited(f"at most {self.settings.join_rate_per_s:g} joins per second "
                              f"(bursts of {self.settings.join_burst})")
        try:
            return await self.service.join(sid, cid, since, include_replies)
        finally:
            self.guard.set_up(sid)  # a new socket's setup slot (chat/connectgate.py) is free

    async def leave(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self.service.leave(sid, schemas.check_conversation_id(data))

    async def send(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        trace = sendtrace.Trace() if sendtrace.ENABLED else None
        if trace is not None:
            trace.mark("handler")
        user = self.service.socket_user(sid)
        cid = schemas.check_conversation_id(data)
        photos = schemas.check_attachment_ids(data)
        body = schemas.check_body(data, self.service.settings.max_body_chars, allow_empty=bool(photos))
        client_msg_id = schemas.check_client_msg_id(data)
        thread_id = threads.check_thread_id(data)
        mentioned = check_mentions(data)
        self.service.check_socket_rate(sid)
        result = await self.service.send_message(user, cid, body, client_msg_id, sid=sid, attachment_ids=photos,
                                                 trace=trace, thread_id=thread_id, mentions=mentioned)
        await self.service.sent_from_socket(sid, cid)
        if trace is not None:
            trace.mark("acked")
            sendtrace.finish(trace)
        return result

    async def edit(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        mid = schemas.check_message_id(data)
        body = schemas.check_body(data, self.service.settings.max_body_chars)
        return await self.service.edit_message(user, mid, body)

    async def delete(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        return await self.service.delete_message(user, schemas.check_message_id(data))

    async def react(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        cid = schemas.check_conversation_id(data) if data.get("conversation_id") is not None else None
        mid = schemas.check_message_id(data)
        emoji = check_emoji(data.get("emoji"))
        on = schemas.check_bool(data, "on")
        self.service.check_socket_react_rate(sid)
        return await self.service.react(user, mid, emoji, on, conversation_id=cid)

    async def history(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        cid = schemas.check_conversation_id(data)
        # after_seq (extension, as over HTTP): page forward, e.g. past a since_seq join's has_more
        page = schemas.check_page({k: data.get(k) for k in ("before_seq", "after_seq", "limit")})
        return await self.service.history(user, cid, page, thread_id=threads.check_thread_id(data),
                                          include_replies=threads.check_include_replies(data))

    async def typing(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        cid = schemas.check_conversation_id(data)
        return await self.service.typing(sid, cid, schemas.check_bool(data, "typing"))

    async def read(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        cid = schemas.check_conversation_id(data)
        seq = schemas.check_int(data, "seq", minimum=0, required=True)
        assert seq is not None
        return await self.service.mark_read(user, cid, seq, skip_sid=sid)

    async def subscribe(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        channel = schemas.check_str(data, "channel", max_len=140)
        assert channel is not None
        return await self.service.subscribe(sid, channel)

    async def unsubscribe(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        channel = schemas.check_str(data, "channel", max_len=140)
        assert channel is not None
        return await self.service.unsubscribe(sid, channel)

    # ------------------------------------------------------------ moderation (docs/moderation.md)
    async def moderator(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        creator_id = moderation.check_user_id(data, "creator_id", required=False) or user.user_id
        return await self.service.set_moderator(user.user_id, creator_id, moderation.check_user_id(data, "user_id"),
                                                schemas.check_bool(data, "on"))

    async def timeout(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        return await self.service.timeout_member(user.user_id, moderation.check_user_id(data, "creator_id"),
                                                 moderation.check_user_id(data, "user_id"), moderation.check_minutes(data),
                                                 moderation.check_reason(data))

    async def block(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        return await self.service.block_member(user.user_id, moderation.check_user_id(data, "creator_id"),
                                               moderation.check_user_id(data, "user_id"), schemas.check_bool(data, "on"),
                                               moderation.check_reason(data))

    async def slow_mode(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        cid = schemas.check_conversation_id(data)
        seconds = moderation.check_slow_mode_seconds(data)
        return await self.service.set_slow_mode(user.user_id, cid, seconds, moderation.check_reason(data))

    async def pin(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        return await self.service.pin_message(user.user_id, schemas.check_message_id(data),
                                              schemas.check_bool(data, "on"))

    async def moderation_log(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        creator_id = moderation.check_user_id(data, "creator_id", required=False) or user.user_id
        before = data.get("before_id")
        if before is not None and (not isinstance(before, str) or not schemas.CANONICAL_ID_RE.match(before)):
            raise Invalid("before_id must be an entry id (digits) or the next_cursor of the previous page")
        before_id = None if before is None else int(before)
        limit = schemas.check_int(data, "limit", minimum=1, maximum=schemas.MAX_PAGE)
        return await self.service.moderation_log(user.user_id, creator_id, before_id,
                                                 schemas.DEFAULT_PAGE if limit is None else limit)

    # ------------------------------------------------------------ reports and member blocks (docs/moderation.md)
    async def report(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        mid = schemas.check_message_id(data)
        reason, note = reports.check_reason(data), reports.check_note(data)
        self.service.check_socket_react_rate(sid)
        return await self.service.reports.report(user, mid, reason, note)

    async def reports(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        creator_id = moderation.check_user_id(data, "creator_id", required=False) or user.user_id
        status = reports.check_status(data.get("status"))
        cid = schemas.check_conversation_id(data) if data.get("conversation_id") is not None else None
        before_id = _cursor(data.get("before_id"), "before_id")
        limit = schemas.check_int(data, "limit", minimum=1, maximum=schemas.MAX_PAGE)
        return await self.service.reports.list(user.user_id, creator_id, status, cid, before_id,
                                               schemas.DEFAULT_PAGE if limit is None else limit)

    async def review_report(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        mid = schemas.check_message_id(data)
        return await self.service.reports.review(user.user_id, mid, reports.check_review_action(data),
                                                 reports.check_note(data))

    async def block_user(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        return await self.service.block_user(user, moderation.check_user_id(data, "user_id"),
                                             schemas.check_bool(data, "on"))

    async def blocks(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self.service.list_blocks(self.service.socket_user(sid).user_id)

    # ------------------------------------------------------------ chat spaces (chat/spaces.py)
    async def accept_guidelines(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        user = self.service.socket_user(sid)
        cid = schemas.check_conversation_id(data)
        return await self.service.spaces.accept_guidelines(user, cid, spaces.check_version(data))


def _cursor(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or not schemas.CANONICAL_ID_RE.match(value):
        raise Invalid(f"{field} must be an id (digits) or the next_cursor of the previous page")
    return int(value)


def _binary_as_text(obj: Any) -> str:
    """Binary attachments count by their length (none of our fields is binary: they fail validation)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return "b" * len(obj)
    raise TypeError

