"""The webhook delivery worker: claim due outbox rows, POST them signed, record the outcomes.

Runs inline in the chat server (WEBHOOK_WORKER=inline, the default: a task on the server's
loop, started and stopped with the app by webhooks/wiring.py) or in the external worker process
(`python -m notifications.worker` with WEBHOOK_WORKER=external). Several may run at once: a claim
leases rows to one worker (SKIP LOCKED on MariaDB) for WEBHOOK_LEASE_S, longer than a request
may take (WEBHOOK_TIMEOUT_S), so two workers never send the same event at the same time; a
worker that dies leaves its rows to be claimed again when the lease expires (at least once).

Outcomes, like Stripe: 2xx = delivered; anything else (any status, timeout, connection error)
is retried with capped exponential backoff and jitter (WEBHOOK_RETRY_BASE_S doubling up to
WEBHOOK_RETRY_CAP_S, Retry-After honoured up to the cap) until WEBHOOK_MAX_AGE_S (3 days) after
the event (or its replay), then the row is `failed`: listed by the server API and replayable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat import tasks
from chat.db import utcnow
from webhooks import outbox
from webhooks.outbox import DELIVERED, FAILED, PENDING, ClaimedEvent, Outcome
from webhooks.signing import EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, signature_header

log = logging.getLogger(__name__)

USER_AGENT = "Backstage-Webhooks/1"


@dataclass(frozen=True)
class WebhookOptions:
    url: str
    secrets: tuple[str, ...]
    timeout_s: float = 10.0
    lease_s: float = 60.0
    retry_base_s: float = 60.0
    retry_cap_s: float = 6 * 3600.0
    max_age_s: float = 3 * 24 * 3600.0
    poll_s: float = 1.0
    batch_size: int = 32  # rows per claim
    concurrency: int = 8  # requests in flight at once
    error_backoff: float = 1.0
    retention_s: float = 7 * 24 * 3600.0  # delivered rows kept this long
    purge_interval_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Any) -> WebhookOptions:
        return cls(url=settings.webhook_url, secrets=tuple(settings.webhook_secrets),
                   timeout_s=settings.webhook_timeout_s, lease_s=settings.webhook_lease_s,
                   retry_base_s=settings.webhook_retry_base_s, retry_cap_s=settings.webhook_retry_cap_s,
                   max_age_s=settings.webhook_max_age_s, poll_s=settings.webhook_poll_s)


def retry_delay(attempts: int, options: WebhookOptions, retry_after: float | None = None,
                rng: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with equal jitter; attempts = attempts made so far (>= 1)."""
    ceiling = min(options.retry_cap_s, options.retry_base_s * (2 ** max(0, attempts - 1)))
    delay = ceiling / 2 + rng() * ceiling / 2
    if retry_after is not None:
        delay = max(delay, min(retry_after, options.retry_cap_s))
    return float(delay)


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


class WebhookWorker:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession], options: WebhookOptions, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._session_factory = session_factory
        self.options = options
        self._clock = clock
        self._owner = uuid.uuid4().hex
        self._client: httpx.AsyncClient | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._last_purge = float("-inf")
        self.attempts_made = 0  # for tests

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="webhook-worker")
        return self._task

    def wake(self) -> None:
        """Claim now (call after committing outbox rows), from the worker's loop."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop claiming; let the batch in flight finish (up to `timeout`, then cancel it: its rows
        are claimed again when the lease expires)."""
        self._stopping = True
        self.wake()
        await tasks.finish(self._task, timeout)

    async def run(self) -> None:
        """Claim and deliver until stop(). Never raises: errors are logged and the loop backs off."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._client = httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": USER_AGENT})
        try:
            while not self._stopping:
                self._wakeup.clear()
                try:
                    await self._housekeeping()
                    rows = await outbox.claim_due(self._session_factory, self._owner, self.options.batch_size,
                                                  self.options.lease_s, self._clock())
                    if rows:
                        await self.deliver_batch(rows)
                except Exception:
                    log.exception("webhook delivery loop failed; retrying in %.1f s", self.options.error_backoff)
                    await self._sleep_or_wake(self.options.error_backoff)
                    continue
                if len(rows) < self.options.batch_size:
                    await self._sleep_or_wake(self.options.poll_s)
        finally:
            await self._client.aclose()

    async def _sleep_or_wake(self, seconds: float) -> None:
        assert self._wakeup is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    async def deliver_batch(self, rows: Sequence[ClaimedEvent]) -> list[Outcome]:
        slots = asyncio.Semaphore(self.options.concurrency)

        async def one(row: ClaimedEvent) -> Outcome:
            async with slots:
                return await self._attempt(row)

        outcomes = list(await asyncio.gather(*(one(r) for r in rows)))
        # Losing this write means the events are sent again after the lease: try a few times.
        for attempt in range(5):
            try:
                await outbox.finish(self._session_factory, self._owner, outcomes, self._clock())
                break
            except Exception:
                if attempt == 4:
                    raise
                log.warning("recording webhook outcomes failed (attempt %d); retrying", attempt + 1, exc_info=True)
                await asyncio.sleep(self.options.error_backoff * (attempt + 1))
        retries = [o.retry_at for o in outcomes if o.retry_at is not None]
        if retries and self._loop is not None and not self._stopping:
            self._loop.call_later(max(0.0, (min(retries) - self._clock()).total_seconds()), self.wake)
        return outcomes

    async def _attempt(self, row: ClaimedEvent) -> Outcome:
        opts = self.options
        if row.reclaimed and (self._clock() - row.window_start).total_seconds() > opts.max_age_s:
            # reclaimed after its workers kept dying until the retry window ended (a due event,
            # even one nobody tried yet, e.g. while no worker ran, always gets its attempt)
            return Outcome(row.id, FAILED, None, f"gave up after {row.attempts - 1} attempts: retry window ended")
        body = row.body.encode()
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: row.event_id,
                   EVENT_TYPE_HEADER: row.event_type,
                   SIGNATURE_HEADER: signature_header(opts.secrets, int(time.time()), body)}
        status: int | None = None
        retry_after: float | None = None
        self.attempts_made += 1
        assert self._client is not None
        try:
            async with asyncio.timeout(opts.timeout_s):
                async with self._client.stream("POST", opts.url, content=body, headers=headers,
                                               timeout=opts.timeout_s) as response:
                    status = response.status_code
                    retry_after = _retry_after(response)
            if 200 <= status < 300:
                return Outcome(row.id, DELIVERED, status, None)
            error = f"HTTP {status}"
        except TimeoutError:
            error = f"timeout: no answer within {opts.timeout_s:g} s"
        except httpx.TimeoutException:
            error = f"timeout: no answer within {opts.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        now = self._clock()
        retry_at = now + timedelta(seconds=retry_delay(row.attempts, opts, retry_after))
        if (retry_at - row.window_start).total_seconds() > opts.max_age_s:
            log.warning("webhook %s (%s) failed after %d attempts: %s", row.event_id, row.event_type,
                        row.attempts, error)
            return Outcome(row.id, FAILED, status, f"gave up after {row.attempts} attempts: {error}")
        log.info("webhook %s attempt %d: %s; retrying in %.1f s", row.event_id, row.attempts, error,
                 (retry_at - now).total_seconds())
        return Outcome(row.id, PENDING, status, error, retry_at)

    async def _housekeeping(self) -> None:
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._last_purge < self.options.purge_interval_s:
            return
        self._last_purge = loop_now
        async with self._session_factory() as session, session.begin():
            purged = await outbox.purge_finished(session, self._clock() - timedelta(seconds=self.options.retention_s))
        if purged:
            log.info("purged %d delivered webhook outbox rows", purged)
