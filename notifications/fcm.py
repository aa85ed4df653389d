"""firebase-admin transport: build FCM v1 messages, send them in batches, classify each response.

Classification (what the outbox worker does with a response):
- SENT: FCM accepted the message.
- DROP_TOKEN: the token is dead (UNREGISTERED, or INVALID_ARGUMENT saying the registration
  token is invalid): delete the device, never send to it again.
- RETRY: transient (UNAVAILABLE, INTERNAL, QUOTA_EXCEEDED honouring Retry-After, timeouts,
  transport errors, 5xx/HTML answers, a failed OAuth token fetch).
- FAILED: anything else, permanently (e.g. an INVALID_ARGUMENT about the payload).

firebase-admin pitfalls handled here: one App per event loop (its httpx client binds to the
loop of first use); the App is deleted outside the running loop; the OAuth token is refreshed
in a thread before a batch so google-auth's blocking fetch does not stall the loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import itertools
import logging
import os
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import firebase_admin
import httpx
from firebase_admin import credentials, exceptions, messaging

from notifications.outbox import PushPayload

log = logging.getLogger(__name__)

DEFAULT_FCM_ENDPOINT = "https://fcm.googleapis.com"
FCM_PATH = "/v1/projects/{0}/messages:send"
MAX_BATCH = 500  # send_each_async's limit
# per request; with MAX_INFLIGHT_REQUESTS it bounds how long a claimed batch can take, which must
# stay well under the worker's lease (300 s): 1,000 rows / 50 in flight x 10 s = 200 s.
DEFAULT_HTTP_TIMEOUT = 10.0
# send_each_async starts one request per message at once; httpx's pool (100 connections) then
# rescans its whole queue for every request, which costs O(queued x connections) CPU. Keeping
# the requests in flight near the pool size (chunks of CHUNK_SIZE, MAX_INFLIGHT_REQUESTS in
# total across all batches of this sender) cut worker CPU per push (see docs/push.md).
CHUNK_SIZE = int(os.environ.get("PUSH_FCM_CHUNK", "25"))
MAX_INFLIGHT_REQUESTS = int(os.environ.get("PUSH_FCM_INFLIGHT", "50"))


_INVALID_TOKEN_RE = re.compile(
    r"registration[ -]token.*(not a valid|invalid)|invalid.*registration[ -]token", re.IGNORECASE
)


class Outcome(enum.Enum):
    SENT = "sent"
    DROP_TOKEN = "drop_token"  # noqa: S105 (an outcome name, not a secret)
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    error: str | None = None  # short description; never contains the token
    retry_after: float | None = None  # seconds, from a Retry-After header


@dataclass(frozen=True)
class PushRequest:
    token: str
    payload: PushPayload


class Sender(Protocol):
    """What the worker needs from a transport (FcmSender, or a test double of our own port)."""

    async def send(self, pushes: Sequence[PushRequest]) -> list[SendResult]: ...

    async def aclose(self) -> None: ...


def redirect_fcm_endpoint(endpoint: str) -> None:
    """Point firebase-admin at another FCM endpoint (the only patch: the SDK has no option).

    Must run before an App's first messaging call; it is process-wide.
    """
    endpoint = endpoint.rstrip("/")
    cls = messaging._MessagingService  # noqa: SLF001 - no public hook exists
    current = cls.FCM_URL
    if not current.endswith(FCM_PATH):
        raise RuntimeError(f"firebase-admin changed _MessagingService.FCM_URL ({current!r}); update fcm.py")
    if endpoint != DEFAULT_FCM_ENDPOINT or current != DEFAULT_FCM_ENDPOINT + FCM_PATH:
        cls.FCM_URL = endpoint + FCM_PATH


def build_message(token: str, payload: PushPayload) -> messaging.Message:
    priority_high = payload.high_priority
    apns_headers = {"apns-priority": "10" if priority_high else "5"}
    if payload.collapse_key:
        apns_headers["apns-collapse-id"] = payload.collapse_key[:64]
    message = messaging.Message(
        notification=messaging.Notification(title=payload.title, body=payload.body),
        data=dict(payload.data),
        android=messaging.AndroidConfig(
            collapse_key=payload.collapse_key, priority="high" if priority_high else "normal"
        ),
        apns=messaging.APNSConfig(headers=apns_headers),
    )
    # Device tokens are FCM registration tokens, sent in the v1 `token` field. firebase-admin 7.7
    # deprecates Message(token=) (with a DeprecationWarning per message) in favour of `fid`, which
    # is another wire field (a Firebase installation id); setting the attribute sends `token`.
    message.token = token
    return message


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _retry_after(exc: exceptions.FirebaseError) -> float | None:
    response = getattr(exc, "http_response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    return _parse_retry_after(headers.get("Retry-After"))


def _status_code(exc: exceptions.FirebaseError) -> int | None:
    response = getattr(exc, "http_response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _is_transport_cause(exc: BaseException) -> bool:
    """An httpx / requests / google-auth transport or token-refresh failure in the cause chain."""
    import google.auth.exceptions as gexc
    import requests

    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 6:
        if isinstance(
            cur, (httpx.TransportError, requests.exceptions.RequestException, gexc.TransportError, gexc.RefreshError)
        ):
            return True
        nxt = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
        cur, seen = nxt, seen + 1
    return False


def describe(exc: BaseException, token: str | None = None) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if token:
        text = text.replace(token, "<token>")
    return text[:300]


def classify_exception(exc: BaseException, token: str | None = None) -> SendResult:
    error = describe(exc, token)
    if isinstance(exc, messaging.UnregisteredError):
        return SendResult(Outcome.DROP_TOKEN, error)
    if isinstance(exc, exceptions.InvalidArgumentError):
        if _INVALID_TOKEN_RE.search(str(exc)):
            return SendResult(Outcome.DROP_TOKEN, error)
        return SendResult(Outcome.FAILED, error)
    if isinstance(exc, messaging.QuotaExceededError):
        return SendResult(Outcome.RETRY, error, _retry_after(exc))
    if isinstance(
        exc,
        (exceptions.UnavailableError, exceptions.InternalError, exceptions.DeadlineExceededError,
         exceptions.ResourceExhaustedError),
    ):
        return SendResult(Outcome.RETRY, error, _retry_after(exc))
    if isinstance(exc, exceptions.UnknownError):
        status = _status_code(exc)
        if (status is not None and status >= 500) or _is_transport_cause(exc):
            return SendResult(Outcome.RETRY, error, _retry_after(exc))
        return SendResult(Outcome.FAILED, error)
    if isinstance(exc, exceptions.FirebaseError):
        return SendResult(Outcome.FAILED, error)
    if _is_transport_cause(exc):
        return SendResult(Outcome.RETRY, error)
    return SendResult(Outcome.FAILED, error)


def classify_response(response: messaging.SendResponse, token: str) -> SendResult:
    if response.success:
        return SendResult(Outcome.SENT)
    exc = response.exception
    if exc is None:
        return SendResult(Outcome.FAILED, "no message id and no exception")
    return classify_exception(exc, token)


_app_names = itertools.count(1)


class FcmSender:
    """Sends pushes through firebase-admin from a service-account JSON file.

    One firebase App per event loop, created on the first send on that loop; `aclose()` (on the
    loop) deletes the current loop's App.
    """

    def __init__(
        self,
        credentials_path: str,
        endpoint: str = DEFAULT_FCM_ENDPOINT,
        *,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
        chunk_size: int = CHUNK_SIZE,
        max_inflight_requests: int = MAX_INFLIGHT_REQUESTS,
    ) -> None:
        self._cert = credentials.Certificate(credentials_path)  # parses now: a bad file fails at startup
        self._cert_path = credentials_path
        self._endpoint = endpoint.rstrip("/")
        self._http_timeout = http_timeout
        self._chunk_size = max(1, min(MAX_BATCH, chunk_size))
        self._chunk_permits = max(1, max_inflight_requests // self._chunk_size)
        self._apps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, firebase_admin.App] = (
            weakref.WeakKeyDictionary()
        )
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        redirect_fcm_endpoint(self._endpoint)

    @property
    def project_id(self) -> str | None:
        project_id: str | None = self._cert.project_id
        return project_id

    def _app(self) -> firebase_admin.App:
        loop = asyncio.get_running_loop()
        app = self._apps.get(loop)
        if app is None:
            # a fresh Certificate per App: each App refreshes and caches its own OAuth token
            app = firebase_admin.initialize_app(
                credentials.Certificate(self._cert_path),
                options={"httpTimeout": self._http_timeout},
                name=f"backstage-push-{next(_app_names)}",
            )
            self._apps[loop] = app
            self._slots[loop] = asyncio.Semaphore(self._chunk_permits)
        return app

    async def _ensure_token(self, app: firebase_admin.App) -> None:
        """Refresh the OAuth token in a thread: google-auth would otherwise do a blocking
        `requests` call on this loop inside the SDK's httpx auth flow."""
        cred = app.credential.get_credential()
        if cred.valid:
            return
        from google.auth.transport.requests import Request

        await asyncio.to_thread(cred.refresh, Request())

    async def send(self, pushes: Sequence[PushRequest]) -> list[SendResult]:
        """Send any number of pushes; one SendResult per push, in order. Never raises for FCM
        or transport errors (they become RETRY / FAILED results)."""
        self._app()
        slots = self._slots[asyncio.get_running_loop()]

        async def chunk(start: int) -> list[SendResult]:
            async with slots:
                return await self._send_batch(pushes[start : start + self._chunk_size])

        parts = await asyncio.gather(*[chunk(s) for s in range(0, len(pushes), self._chunk_size)])
        return [r for part in parts for r in part]

    async def _send_batch(self, pushes: Sequence[PushRequest]) -> list[SendResult]:
        if not pushes:
            return []
        app = self._app()
        messages: list[messaging.Message | None] = []
        results: list[SendResult | None] = []
        for push in pushes:
            try:
                messages.append(build_message(push.token, push.payload))
                results.append(None)
            except (ValueError, TypeError) as exc:  # payload the SDK refuses to encode
                messages.append(None)
                results.append(SendResult(Outcome.FAILED, describe(exc, push.token)))
        to_send = [m for m in messages if m is not None]
        started = time.perf_counter()
        try:
            await self._ensure_token(app)
            batch = await messaging.send_each_async(to_send, app=app)
        except Exception as exc:  # whole batch: token endpoint down, transport failure...
            whole = classify_exception(exc)
            if whole.outcome is not Outcome.RETRY:
                log.warning("push batch of %d failed: %s", len(to_send), whole.error, exc_info=True)
            else:
                log.warning("push batch of %d will be retried: %s", len(to_send), whole.error)
            # a failure that is not about one message is retried as a whole
            whole = SendResult(Outcome.RETRY, whole.error, whole.retry_after)
            return [r if r is not None else whole for r in results]
        finally:
            from notifications.metrics import PUSH_BATCH_SECONDS

            PUSH_BATCH_SECONDS.observe(time.perf_counter() - started)
        responses = iter(batch.responses)
        out: list[SendResult] = []
        for push, result in zip(pushes, results, strict=True):
            out.append(result if result is not None else classify_response(next(responses), push.token))
        return out

    async def aclose(self) -> None:
        """Delete this loop's App: close its httpx client here (it belongs to this loop), then
        let firebase_admin.delete_app run in a thread (it calls asyncio.run itself)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.close()
            return
        app = self._apps.pop(loop, None)
        self._slots.pop(loop, None)
        if app is None:
            return
        service: Any = getattr(app, "_services", {}).get("_messaging")
        client = getattr(service, "_async_client", None)
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(firebase_admin.delete_app, app)

    def close(self) -> None:
        """Delete every App; call outside a running loop (firebase_admin.delete_app runs asyncio.run)."""
        for loop in list(self._apps):
            app = self._apps.pop(loop)
            firebase_admin.delete_app(app)


def build_sender(credentials_path: str | None, endpoint: str = DEFAULT_FCM_ENDPOINT) -> FcmSender | None:
    """The sender for Settings.firebase_credentials, or None (pushes are then marked skipped)."""
    if not credentials_path:
        return None
    return FcmSender(credentials_path, endpoint)
