"""The push outbox worker: claim due rows, send them through FCM, record the outcomes.

It also expands push fan-out jobs (notifications/jobs.py) into outbox rows, in bounded
batches, when given an `Expander` (the chat audience and presence).

Runs inline in the chat server (PUSH_WORKER=inline, started by the app factory, by default on a
thread of its own with its own event loop: see notifications/wiring.py) or as its own
process: `python -m notifications.worker` (PUSH_WORKER=external; several may run at once, the
claim uses SKIP LOCKED). Producers wake it after committing outbox rows: in-process with
`PushWorker.wake()`, across processes with `publish_wakeup(redis, keys)`; without a wake-up it
polls every `poll_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat import tasks
from chat.db import utcnow
from chat.keys import RedisKeys
from chat.transport_errors import as_chat_error
from chat.unavailable import cause_of
from notifications import jobs, metrics
from notifications.fcm import Outcome, PushRequest, Sender, SendResult
from notifications.outbox import (
    ClaimedPush,
    Outcomes,
    claim_due,
    outbox_stats,
    purge_finished,
    record_outcomes_commit,
)

log = logging.getLogger(__name__)



def log_failure(message: str, exc: BaseException, *args: Any, extra: dict[str, Any] | None = None) -> None:
    """A failed step of the worker: a backing service that is down (the database or Redis
    unreachable, a dead connection) is a WARNING naming its cause — no traceback, which would
    carry the SQL statement and its parameters; anything else is an ERROR with its traceback."""
    if as_chat_error(exc).code == "unavailable":
        log.warning(message + " (%s)", *args, cause_of(exc)[1], extra=extra)
    else:
        log.error(message, *args, exc_info=exc, extra=extra)


@dataclass(frozen=True)
class WorkerOptions:
    batch_size: int = 500  # rows per claim = messages per send_each_async call (FCM max 500)
    concurrency: int = 2  # claimed batches in flight at once (DB work overlaps sending)
    lease_seconds: float = 300.0  # a claimed row is reclaimed after this (its worker died)
    poll_interval: float = 2.0
    retry_base: float = 8.0  # first retry after 4-8 s (SPEC: within 10 s)
    retry_cap: float = 300.0  # later retries at most 5 minutes apart
    max_attempts: int = 8
    max_age: float = 24 * 3600.0  # give up on pushes older than this
    error_backoff: float = 1.0  # pause after an unexpected error in the loop
    stats_interval: float = 5.0  # outbox depth / oldest-age gauges refresh
    retention: float = 7 * 24 * 3600.0  # sent/failed/skipped rows kept this long
    purge_interval: float = 3600.0
    expand_batch: int = 500  # audience users (or notifications) per expansion transaction
    jobs_per_claim: int = 16  # fan-out jobs leased per claim
    expand_concurrency: int = 2  # jobs expanded at once


@dataclass(frozen=True)
class Expander:
    """What expanding chat-message jobs needs from the chat side (wired by notifications/wiring.py)."""

    audience_page: jobs.ChatAudiencePage
    online_users: jobs.OnlineUsers


def retry_delay(attempts: int, options: WorkerOptions, retry_after: float | None = None,
                rng: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with jitter ("equal jitter": half fixed, half random).

    attempts = attempts made so far (1 after the first failure). Retry-After is honoured up to the cap.
    """
    ceiling = min(options.retry_cap, options.retry_base * (2 ** max(0, attempts - 1)))
    delay = ceiling / 2 + rng() * ceiling / 2
    if retry_after is not None:
        delay = max(delay, min(retry_after, options.retry_cap))
    return float(delay)


class PushWorker:
    """Sends the push outbox. `sender=None` (no FIREBASE_CREDENTIALS) marks pushes skipped."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        sender: Sender | None,
        options: WorkerOptions | None = None,
        *,
        redis: Any | None = None,
        keys: RedisKeys | None = None,
        clock: Callable[[], datetime] = utcnow,
        expander: Expander | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._sender = sender
        self.options = options or WorkerOptions()
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._wakeup: asyncio.Event | None = None
        self._job_wakeup: asyncio.Event | None = None
        self._expander = expander
        self._owner = jobs.new_owner()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._last_stats = float("-inf")
        self._last_purge = float("-inf")
        self.batches_done = 0  # for tests and the benchmark
        self.jobs_done = 0

    # --- control -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask the worker to claim now (call after committing outbox rows). Safe from any thread."""
        loop = self._loop
        if loop is None:
            return
        for event in (self._wakeup, self._job_wakeup):
            if event is None:
                continue
            if threading.get_ident() == getattr(self, "_loop_thread", None):
                event.set()
            else:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(event.set)

    def start(self) -> asyncio.Task[None]:
        """Run in the background on the current loop (the inline worker); stop with `await stop()`."""
        self._task = asyncio.create_task(self.run(), name="push-worker")
        return self._task

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop claiming; let in-flight batches finish (up to `timeout`, then cancel them: their
        rows return to pending when the lease expires)."""
        self._stopping = True
        self.wake()
        await tasks.finish(self._task, timeout)

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and send until stop(). Never raises: errors are logged and the loop backs off."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        self._job_wakeup = asyncio.Event()
        slots = asyncio.Semaphore(self.options.concurrency)
        listener = asyncio.create_task(self._listen_redis(), name="push-wakeup-listener") if self._redis else None
        expansion = (asyncio.create_task(self._expand_loop(), name="push-job-expansion")
                     if self._expander is not None else None)
        try:
            while not self._stopping:
                await slots.acquire()
                if self._stopping:
                    slots.release()
                    break
                self._wakeup.clear()
                try:
                    await self._housekeeping()
                    rows = await claim_due(
                        self._session_factory, self.options.batch_size, self.options.lease_seconds, self._clock()
                    )
                except Exception as exc:
                    slots.release()
                    log_failure("push outbox claim failed; retrying in %.1f s", exc, self.options.error_backoff)
                    await self._sleep_or_wake(self.options.error_backoff)
                    continue
                if rows:
                    task = asyncio.create_task(self._process_guarded(rows, slots))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                    if len(rows) == self.options.batch_size:
                        continue  # more may be due: claim again as soon as a slot is free
                else:
                    slots.release()
                await self._sleep_or_wake(self.options.poll_interval)
        finally:
            if expansion is not None:
                await asyncio.gather(expansion, return_exceptions=True)
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await listener

    async def _sleep_or_wake(self, seconds: float, event: asyncio.Event | None = None) -> None:
        event = event or self._wakeup
        assert event is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    # --- fan-out jobs --------------------------------------------------------------------------

    async def _expand_loop(self) -> None:
        """Claim fan-out jobs and expand them into outbox rows until stop()."""
        assert self._job_wakeup is not None
        slots = asyncio.Semaphore(self.options.expand_concurrency)
        while not self._stopping:
            self._job_wakeup.clear()
            try:
                claimed = await jobs.claim_jobs(self._session_factory, self._owner, self.options.jobs_per_claim,
                                                self.options.lease_seconds, self._clock())
            except Exception as exc:
                log_failure("push job claim failed; retrying in %.1f s", exc, self.options.error_backoff)
                await self._sleep_or_wake(self.options.error_backoff, self._job_wakeup)
                continue
            if claimed:
                await asyncio.gather(*(self._expand_guarded(job, slots) for job in claimed))
                continue
            await self._sleep_or_wake(self.options.poll_interval, self._job_wakeup)

    async def _expand_guarded(self, job: jobs.ClaimedJob, slots: asyncio.Semaphore) -> None:
        async with slots:
            if self._stopping:  # hand it back at once rather than after the lease
                await self._release(job, "worker stopping", self._clock())
                return
            try:
                await self.expand_job(job)
            except jobs.LeaseLost:
                log.warning("push job %s was taken over by another worker", job.id)
            except Exception as exc:
                log_failure("push job %s expansion failed", exc, job.id)
                now = self._clock()
                retry_at = None
                if job.attempts < self.options.max_attempts:
                    retry_at = now + timedelta(seconds=retry_delay(job.attempts, self.options))
                await self._release(job, f"{type(exc).__name__}: expansion failed", retry_at)

    async def _release(self, job: jobs.ClaimedJob, error: str, retry_at: datetime | None) -> None:
        try:
            await jobs.release_job(self._session_factory, job, self._owner, error, retry_at, self._clock())
        except Exception:  # the lease expires anyway
            log.warning("releasing push job %s failed", job.id, exc_info=True)

    async def expand_job(self, job: jobs.ClaimedJob) -> None:
        """Write the job's outbox rows, one bounded batch per transaction, resuming at its cursor.
        Between batches it yields to the loop and wakes the senders (here and, through Redis,
        in other processes), so sending starts with the first batch."""
        opts = self.options
        while True:
            now = self._clock()
            async with self._session_factory() as session:
                if job.kind == jobs.MESSAGE:
                    assert self._expander is not None
                    page = await jobs.message_page(session, job, opts.expand_batch, self._expander.audience_page,
                                                   self._expander.online_users, now)
                elif job.kind == jobs.NOTIFICATION:
                    page = await jobs.notification_page(session, job, opts.expand_batch, now)
                else:
                    page = jobs.Page([], None)
            job = await jobs.commit_page(self._session_factory, job, self._owner, page, opts.lease_seconds, now)
            if page.rows:
                metrics.PUSH_EXPANDED.inc(len(page.rows))
                assert self._wakeup is not None
                self._wakeup.set()
                if self._redis is not None and self._keys is not None:
                    await publish_wakeup(self._redis, self._keys)
            if page.resume_after is None:
                self.jobs_done += 1
                return
            if self._stopping:
                await self._release(job, "worker stopping", self._clock())
                return
            await asyncio.sleep(0)

    async def _process_guarded(self, rows: list[ClaimedPush], slots: asyncio.Semaphore) -> None:
        try:
            await self.process_batch(rows)
        except Exception as exc:
            log_failure("push batch failed; its %d rows return after the lease", exc, len(rows),
                        extra={"outbox_ids": [r.id for r in rows[:20]]})
        finally:
            slots.release()
            self.batches_done += 1

    async def process_batch(self, rows: Sequence[ClaimedPush]) -> Outcomes:
        """Send one claimed batch and record every row's outcome."""
        opts = self.options
        now = self._clock()
        outcomes = Outcomes()
        to_send: list[ClaimedPush] = []
        for row in rows:
            if row.attempts > opts.max_attempts:  # reclaimed after its worker died too often
                outcomes.failed[row.id] = "gave up: too many attempts"
            elif self._sender is None:
                outcomes.skipped[row.id] = "FCM not configured"
            else:
                to_send.append(row)
        if to_send:
            assert self._sender is not None
            try:
                results = await self._sender.send([PushRequest(r.device_token, r.payload) for r in to_send])
            except Exception as exc:  # a Sender must not raise; treat it as a transient failure
                log.exception("push sender raised; retrying the batch")
                results = [SendResult(Outcome.RETRY, f"{type(exc).__name__}: sender error")] * len(to_send)
            now = self._clock()
            for row, result in zip(to_send, results, strict=True):
                self._decide(row, result, now, outcomes)
        await self._record(outcomes, now)
        if outcomes.retry:
            self._wake_at(min(when for when, _ in outcomes.retry.values()))
        return outcomes

    def _wake_at(self, when: datetime) -> None:
        """Claim again when the first retry falls due: waiting for the next poll would put up to
        `poll_interval` on top of its delay (SPEC §6: the first retry within 10 s)."""
        if self._loop is not None and not self._stopping:
            self._loop.call_later(max(0.0, (when - self._clock()).total_seconds()), self.wake)

    def _decide(self, row: ClaimedPush, result: SendResult, now: datetime, outcomes: Outcomes) -> None:
        opts = self.options
        if result.outcome is Outcome.SENT:
            outcomes.sent.append(row.id)
        elif result.outcome is Outcome.DROP_TOKEN:
            outcomes.failed[row.id] = result.error or "token rejected"
            outcomes.dead_tokens[row.device_token] = result.error or "token rejected"
            log.info("push %s: device token rejected by FCM, removing the device", row.id,
                     extra={"outbox_id": row.id, "user_id": row.user_id})
        elif result.outcome is Outcome.RETRY:
            delay = retry_delay(row.attempts, opts, result.retry_after)
            when = now + timedelta(seconds=delay)
            too_old = (when - row.created_at).total_seconds() > opts.max_age
            if row.attempts >= opts.max_attempts or too_old:
                outcomes.failed[row.id] = f"gave up after {row.attempts} attempts: {result.error}"
            else:
                outcomes.retry[row.id] = (when, result.error or "transient error")
        else:
            outcomes.failed[row.id] = result.error or "failed"
            log.warning("push %s failed permanently: %s", row.id, result.error, extra={"outbox_id": row.id})

    async def _record(self, outcomes: Outcomes, now: datetime) -> None:
        # Losing this write means the rows are sent again after the lease: try hard.
        for attempt in range(5):
            try:
                removed = await record_outcomes_commit(self._session_factory, outcomes, now)
                break
            except Exception:
                if attempt == 4:
                    raise
                log.warning("recording push outcomes failed (attempt %d); retrying", attempt + 1, exc_info=True)
                await asyncio.sleep(self.options.error_backoff * (attempt + 1))
        metrics.PUSH_SENT.inc(len(outcomes.sent))
        metrics.PUSH_RETRIED.inc(len(outcomes.retry))
        metrics.PUSH_FAILED.inc(len(outcomes.failed))
        metrics.PUSH_SKIPPED.inc(len(outcomes.skipped))
        metrics.PUSH_TOKENS_REMOVED.inc(removed)

    async def _housekeeping(self) -> None:
        """Refresh the outbox gauges and purge old finished rows, at their intervals."""
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._last_stats >= self.options.stats_interval:
            self._last_stats = loop_now
            async with self._session_factory() as session:
                stats = await outbox_stats(session)
            metrics.PUSH_OUTBOX_DEPTH.set(stats.depth)
            age = (self._clock() - stats.oldest_created_at).total_seconds() if stats.oldest_created_at else 0.0
            metrics.PUSH_OUTBOX_OLDEST_AGE.set(max(0.0, age))
        if loop_now - self._last_purge >= self.options.purge_interval:
            self._last_purge = loop_now
            async with self._session_factory() as session, session.begin():
                purged = await purge_finished(session, self._clock() - timedelta(seconds=self.options.retention))
                purged_jobs = await jobs.purge_finished_jobs(
                    session, self._clock() - timedelta(seconds=self.options.retention))
            if purged or purged_jobs:
                log.info("purged %d finished push outbox rows and %d jobs", purged, purged_jobs)

    async def _listen_redis(self) -> None:
        """Wake on every message of the push wake-up channel; resubscribe after Redis errors."""
        assert self._redis is not None and self._keys is not None
        channel = self._keys.push_wakeup_channel
        backoff = 1.0
        while not self._stopping:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                backoff = 1.0
                self.wake()  # anything published while we were not subscribed
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("push wake-up subscription failed; resubscribing in %.0f s", backoff, exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


async def publish_wakeup(redis: Any, keys: RedisKeys) -> None:
    """Tell push workers on every process that outbox rows were committed. Best effort: the
    workers poll anyway."""
    try:
        # Bounded: a frozen Redis must not hold the acks of the sends that wrote the rows.
        await asyncio.wait_for(redis.publish(keys.push_wakeup_channel, b"1"), 0.5)
    except Exception:
        log.warning("publishing the push wake-up failed (workers will poll)", exc_info=True)


# --- `python -m notifications.worker` ------------------------------------------------------------


async def serve(settings: Any, options: WorkerOptions | None = None) -> None:
    """Run a worker for `settings` until SIGTERM/SIGINT."""
    from chat.db import create_engine, session_factory
    from notifications.fcm import build_sender

    engine = create_engine(settings.database_url)
    sender = build_sender(settings.firebase_credentials, settings.fcm_endpoint)
    if sender is None:
        log.warning("FIREBASE_CREDENTIALS is not set: pushes will be marked skipped")
    redis = None
    if settings.redis_url:
        import redis.asyncio as aioredis

        redis = aioredis.Redis.from_url(settings.redis_url)
    from notifications.wiring import external_expander

    keys = RedisKeys(settings.redis_prefix)
    worker = PushWorker(session_factory(engine), sender, options, redis=redis, keys=keys,
                        expander=external_expander(settings, redis, keys))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
    # WEBHOOK_WORKER=external: this process also delivers the webhook outbox (webhooks/worker.py).
    webhook_worker = None
    if getattr(settings, "webhook_url", None) and getattr(settings, "webhook_worker", "inline") == "external":
        from webhooks.worker import WebhookOptions, WebhookWorker

        webhook_worker = WebhookWorker(session_factory(engine), WebhookOptions.from_settings(settings))
        webhook_worker.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: (asyncio.ensure_future(worker.stop()),
                                                  asyncio.ensure_future(webhook_worker.stop())))
        log.info("webhook worker started")
    log.info("push worker started")
    try:
        await worker.run()
    finally:
        if webhook_worker is not None:
            await webhook_worker.stop()
        if sender is not None:
            await sender.aclose()
        if redis is not None:
            await redis.aclose()
        await engine.dispose()
        log.info("push worker stopped")


def options_from_env(env: Any) -> WorkerOptions:
    """PUSH_CONCURRENCY, PUSH_LEASE_S, PUSH_EXPAND_BATCH (defaults: WorkerOptions)."""
    return WorkerOptions(
        concurrency=int(env.get("PUSH_CONCURRENCY", str(WorkerOptions.concurrency))),
        lease_seconds=float(env.get("PUSH_LEASE_S", str(WorkerOptions.lease_seconds))),
        expand_batch=int(env.get("PUSH_EXPAND_BATCH", str(WorkerOptions.expand_batch))),
    )


def main(argv: list[str] | None = None) -> int:
    from chat.config import ConfigError, Settings, report_config_errors

    try:
        settings = Settings.from_env()
    except ConfigError as error:  # one line per bad variable, like run_server.py
        report_config_errors(error.problems)
        return 2
    import os

    from chat.startup import configure_logging, describe_database, describe_relay, wait_for_dependencies

    configure_logging(settings)  # text or LOG_FORMAT=json, like the web server
    options = options_from_env(os.environ)
    # Unreachable MySQL/Redis at start: one ERROR line per attempt, retried with backoff,
    # rather than a crash (and a platform's restart loop).
    wait_for_dependencies(settings)
    log.info("push worker ready: database %s, relay %s", describe_database(settings.database_url),
             describe_relay(settings))
    asyncio.run(serve(settings, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
