"""Group commit of chat messages: the sends that arrive while one transaction is in flight go
into the next one, together.

`MessageWriter.store(Outgoing)` returns the stored message (or the original, for a retry of
the same client_msg_id) once it is committed. Per batch, whatever its size and however many
conversations it spans, the transaction is a fixed handful of statements:

1. one SELECT of the batch's (sender_id, client_msg_id) pairs already stored (retries);
2. one UPDATE of the conversations' last_seq by the number of new messages each gets (it
   write-locks those rows in primary-key order until commit: seq stays gapless across
   processes) and, on MariaDB, one SELECT of the new last_seq;
3. one multi-row INSERT ... RETURNING of the messages (and, only when a message of the batch
   mentions someone, one multi-row INSERT of their `message_mentions` rows: chat/mentions.py);
4. one upsert of the senders' read positions;
5. the push hook, once, with every push job of the batch;
6. COMMIT.

On MariaDB, steps 2-4 first go to the server as ONE multi-statement query
(`storage.store_new_messages`: the seqs are computed by the server from the updated last_seq)
and step 1 is skipped, so a batch costs two round trips (that query, COMMIT) instead of six. A
batch with a retry of a stored message in it (or a send to a missing conversation) then fails
its INSERT with IntegrityError and is written again the careful way, statement by statement.

A plain batch on MariaDB (no photos, pushes, thread replies, webhooks: nothing but steps 2-4)
goes further when the writer has an autocommit engine (`commit_engine`, the read pool of
chat/db.py): `BEGIN`, `SELECT ... FOR UPDATE NOWAIT` of its conversation rows, steps 2-4 and
`COMMIT`, all in that ONE query (`store_new_messages(commit=True)`): one round trip, and the
rows are locked only while MariaDB runs it, never while this process waits for a CPU or for its
event loop between a result and its COMMIT, which is what made two processes wait on each
other's conversation rows (docs/performance.md, "Two processes on this 2-core host: what
stands in the way"). If a row is locked by another transaction (or anything else fails), that
query rolled back and the batch takes the path above (`fast_batches` counts the plain batches
committed in one query, `locked_fallbacks` those that met a locked row).

There is no timer: the first send at rest is written at once, and the ones that arrive while
transactions are in flight form the next batch (natural batching), at most `max_batch` at a
time. Up to `max_in_flight` (2) transactions run at once, so one batch's round trips and
fsync overlap the next one's preparation; they take their seq ranges (the conversation row
locks) one after the other, in the order their deliveries are queued. After each commit the
batch's new messages are handed to `deliver` in seq order (per process, batches are handed over
one after the other, in that order: local sockets written, relay publish queued), and once they
were relayed the senders get their results; the next batch's hand-over does not wait for that.

A duplicate client_msg_id inside a batch or against the database does not fail the others:
the first one in the batch is stored, the others answer as retries of it. A racing insert of
the same pair by another process (the SELECT cannot see uncommitted rows) makes the INSERT
fail with IntegrityError: the batch is then stored again, and if that fails too, message by
message. Deadlocks and dead pooled connections are retried (`chat.retry.retry_transaction`). Any other
database failure fails every send of the batch with that exception; nothing was stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chat import sendtrace, storage, threads
from chat.attachments import claim as claim_attachments
from chat.attachments import photo_text
from chat.db import utcnow
from chat.errors import ChatError, Conflict, Invalid, NotFound
from chat.metrics import MESSAGES_STORED
from chat.retry import retry_transaction
from chat.schemas import decode_mentions, encode_mentions, message_wire_columns

log = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_IN_FLIGHT = 2

BATCHES = PromCounter("backstage_message_batches", "Transactions of the message writer that committed")
IN_WRITER = Gauge("backstage_sends_in_writer", "Sends handed to the message writer and not answered yet")

# push_enqueue_jobs(conn, jobs) -> how many pushes it queued, in the batch's transaction. A job:
# {"conversation_id": int, "message_id": int, "sender_id": str,
#  "payload": {"title", "body", "data", "collapse_key", "high_priority"}, "mentions"?: [user_id]}
PushEnqueueJobs = Callable[[AsyncConnection, list[dict[str, Any]]], Awaitable[int]]
# webhook_messages(conn, messages) -> events written: the `message.created` webhooks of the
# batch's new messages (wire forms), one multi-row INSERT in the batch's transaction. None when
# message.created is not enabled: then the send path does nothing for webhooks.
WebhookMessages = Callable[[AsyncConnection, list[dict[str, Any]]], Awaitable[int]]
# deliver(messages): the wire forms of newly stored messages, in seq order per conversation. Called
# as a plain function, it hands them over at once (this process's sockets written, the relay's
# publish queued) and returns an awaitable that completes once they were relayed.
Deliver = Callable[[list[dict[str, Any]]], Awaitable[None]]
# thread_updates(roots): the wire forms of the thread roots a committed batch's replies changed
# (chat/threads.py), handed over right after the batch's messages.
ThreadUpdates = Callable[[list[dict[str, Any]]], None]


@dataclass(frozen=True)
class PushSpec:
    """How a message of this conversation could push (the conversation level: direct
    conversations always, rooms for the creator's posts); who gets it is decided later."""

    room_name: str | None  # None: a direct conversation
    # A room message that pushes only because it mentions someone (a patron's post): the push
    # reads "X mentioned you in Room" and goes to the mentioned members only (push_audience_page).
    mention: bool = False


@dataclass(frozen=True)
class Outgoing:
    conversation_id: int
    sender_id: str
    sender_name: str | None  # None: read from users in the batch's transaction
    body: str
    client_msg_id: str
    push: PushSpec | None = None
    attachments: tuple[dict[str, Any], ...] = ()  # wire forms, checked by chat/attachments.py
    thread_id: int | None = None  # a reply's root, checked in the batch (chat/threads.py)
    mentions: tuple[str, ...] = ()  # the mentioned members' ids, resolved by chat/mentions.py


@dataclass(frozen=True)
class Stored:
    message: dict[str, Any]  # wire form
    created: bool  # False: a retry, answered with the original


@dataclass
class _Item:
    msg: Outgoing
    future: asyncio.Future[Stored]
    outcome: Stored | BaseException | None = None
    name: str = ""
    trace: sendtrace.Trace | None = None


@dataclass
class _Done:
    """What one committed transaction produced."""

    created: list[dict[str, Any]] = field(default_factory=list)  # wire forms, in seq order per conversation
    pushes: int = 0
    turn: asyncio.Future[Any] | None = None  # its place in the delivery order
    replies: bool = False  # it has thread replies (a batch without any runs no thread statement)
    roots: list[dict[str, Any]] = field(default_factory=list)  # thread roots its replies changed (wire forms)


class MessageWriter:
    def __init__(self, engine: AsyncEngine, deliver: Deliver, *,
                 push_enqueue_jobs: PushEnqueueJobs | None = None,
                 push_wake: Callable[[], Awaitable[None]] | None = None,
                 webhook_messages: WebhookMessages | None = None,
                 max_batch: int = MAX_BATCH, max_in_flight: int = MAX_IN_FLIGHT,
                 at_once: bool | None = None, thread_updates: ThreadUpdates | None = None,
                 commit_engine: AsyncEngine | None = None) -> None:
        self._engine = engine
        # MariaDB: a batch is first written in one round trip (storage.store_new_messages),
        # assuming no retries; SQLite (in process, no round trips to save) statement by statement.
        self._at_once = engine.dialect.name in ("mysql", "mariadb") if at_once is None else at_once
        self.fallbacks = 0  # batches written again the careful way (retries, races, tests read it)
        # Plain batches: the whole transaction in one query on this autocommit engine (MariaDB only).
        self._commit_engine = commit_engine if self._at_once and commit_engine is not None \
            and commit_engine.dialect.name in ("mysql", "mariadb") else None
        self.fast_batches = 0  # plain batches committed in their one query
        self.locked_fallbacks = 0  # plain batches that met a locked conversation row and took the path above
        self._deliver = deliver
        self._push_enqueue_jobs = push_enqueue_jobs
        self._push_wake = push_wake
        self._webhook_messages = webhook_messages
        self._thread_updates = thread_updates
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._pending: list[_Item] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._kick_scheduled = False
        # Batches in flight take their seq ranges one after the other (see _transaction); their
        # deliveries run in that same order, each after the previous one, overlapping the
        # following batches' transactions.
        self._seq_turn = asyncio.Lock()
        self._delivering: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()  # batches handed over, waiting for the relay
        self.batches = 0  # transactions committed (tests and the bench read it)

    async def store(self, msg: Outgoing, trace: sendtrace.Trace | None = None) -> Stored:
        """Store one message with whatever else is pending; raises Conflict, NotFound, or the
        SQLAlchemyError that failed its transaction (then nothing of it was stored)."""
        item = _Item(msg, asyncio.get_running_loop().create_future(), trace=trace)
        if trace is not None:
            trace.mark("queued")
        IN_WRITER.inc()
        item.future.add_done_callback(lambda _: IN_WRITER.dec())
        self._pending.append(item)
        self._schedule_kick()
        # A sender that goes away (its task cancelled) must not cancel the batch it is in.
        return await asyncio.shield(item.future)

    async def close(self) -> None:
        """Wait for what was handed over to be written and delivered."""
        while self._pending or self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            await asyncio.sleep(0)
        if self._delivering is not None:
            await asyncio.gather(self._delivering, return_exceptions=True)
        await asyncio.gather(*self._finishing, return_exceptions=True)

    # ------------------------------------------------------------ batching

    def _schedule_kick(self) -> None:
        # Not at once: the sends that become ready in the same turn of the event loop (e.g. the
        # senders a commit just answered) go into one batch rather than the first alone.
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        """Start transactions for what is pending while fewer than max_in_flight run."""
        self._kick_scheduled = False
        while self._pending and len(self._in_flight) < self.max_in_flight:
            free = self.max_in_flight - len(self._in_flight)
            # Share what is pending among the free slots, so one batch's round trips overlap
            # another's preparation instead of everyone waiting for one big transaction.
            size = min(self.max_batch, -(-len(self._pending) // free))
            batch, self._pending = self._pending[:size], self._pending[size:]
            task = asyncio.create_task(self._run(batch))
            self._in_flight.add(task)

    async def _run(self, batch: list[_Item]) -> None:
        try:
            await self._write(batch)
        except Exception as exc:  # a bug: fail this batch's sends, keep the writer going
            log.exception("message batch failed")
            for item in batch:
                if item.outcome is None:
                    item.outcome = exc
            self._answer(batch)
        finally:
            self._in_flight.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]
            if self._pending:
                self._schedule_kick()

    async def _write(self, batch: list[_Item]) -> None:
        # Written at once (MariaDB), an IntegrityError means a retry of a stored message (nothing
        # looked for it) or a missing conversation: then carefully. Written carefully, it means
        # another process committed one of these (sender, client_msg_id) after our SELECT: once
        # more, carefully, and the SELECT sees it. Should that fail too, one message at a time.
        attempts = (False, True, True) if self._at_once else (True, True)
        if self._commit_engine is not None and self._plain(batch):
            fast = await self._one_query(batch)
            if isinstance(fast, _Done):
                self._committed(batch, fast)
                return
            if fast is sa.exc.IntegrityError:  # a retry or a missing conversation: carefully at once
                self.fallbacks += 1
                attempts = (True, True)
        for n, careful in enumerate(attempts):
            try:
                done = await retry_transaction(functools.partial(self._transaction, batch, careful=careful),
                                                attempts=3)
                break
            except sa.exc.IntegrityError:
                if n == 0:
                    self.fallbacks += 1
                if n < len(attempts) - 1:
                    continue
                if len(batch) == 1:
                    self._fail(batch, sa.exc.IntegrityError("send", None, Exception("duplicate")))
                    return
                for item in batch:
                    await self._write([item])
                return
            except sa.exc.SQLAlchemyError as exc:
                self._fail(batch, exc)
                return
        self._committed(batch, done)

    def _committed(self, batch: list[_Item], done: _Done) -> None:
        self.batches += 1
        BATCHES.inc()
        if done.turn is None:  # nothing new to deliver: retries, conflicts
            self._answer(batch)
        else:
            done.turn.set_result((batch, done))

    @staticmethod
    def _mark(batch: Sequence[_Item], stage: str) -> None:
        for item in batch:
            if item.trace is not None:
                item.trace.mark(stage)

    @staticmethod
    def _reset(batch: Sequence[_Item]) -> None:
        for item in batch:
            item.outcome = None

    def _fail(self, batch: Sequence[_Item], exc: BaseException) -> None:
        log.warning("message batch of %d not stored: %s", len(batch), type(exc).__name__)
        for item in batch:
            item.outcome = exc
        self._answer(batch)

    @staticmethod
    def _answer(batch: Sequence[_Item]) -> None:
        for item in batch:
            if item.future.done():
                continue
            if isinstance(item.outcome, Stored):
                item.future.set_result(item.outcome)
            else:
                item.future.set_exception(item.outcome or ChatError("internal error"))

    def _take_turn(self) -> asyncio.Future[tuple[list[_Item], _Done] | None]:
        """A place in the delivery order; resolved with the committed batch, or None if the
        transaction did not commit."""
        turn: asyncio.Future[tuple[list[_Item], _Done] | None] = asyncio.get_running_loop().create_future()
        self._delivering = asyncio.create_task(self._deliver_in_turn(self._delivering, turn))
        return turn

    async def _deliver_in_turn(self, previous: asyncio.Task[None] | None,
                               turn: asyncio.Future[tuple[list[_Item], _Done] | None]) -> None:
        """Hand the batch over once the previous one was handed over (not relayed: Redis round
        trips do not hold back the next batch's local delivery), then answer its senders once
        it was relayed."""
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        committed = await turn
        if committed is None:
            return
        batch, done = committed
        if sendtrace.ENABLED:
            self._mark(batch, "turn")
        MESSAGES_STORED.inc(len(done.created))
        try:
            relayed = self._deliver(done.created)
        except Exception:  # committed all the same: the members recover it by since_seq
            log.warning("delivery of a stored batch failed", exc_info=True)
            self._answer(batch)
            return
        if done.roots and self._thread_updates is not None:
            try:
                self._thread_updates(done.roots)
            except Exception:  # committed all the same: the next change (or a read) shows the summary
                log.warning("thread updates of a stored batch failed", exc_info=True)
        if sendtrace.ENABLED:
            self._mark(batch, "local")
        task = asyncio.ensure_future(self._answer_when_relayed(batch, done, relayed))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _answer_when_relayed(self, batch: list[_Item], done: _Done, relayed: Awaitable[None]) -> None:
        try:
            await relayed
            if sendtrace.ENABLED:
                self._mark(batch, "published")
            if done.pushes and self._push_wake is not None:
                await self._push_wake()
        except Exception:  # committed all the same: the members recover it by since_seq
            log.warning("delivery of a stored batch failed", exc_info=True)
        finally:
            self._answer(batch)

    # ------------------------------------------------------------ one query (plain batches)

    def _plain(self, batch: Sequence[_Item]) -> bool:
        """Nothing but messages, read positions and mentions to write: no photos to claim, no
        push jobs, no thread roots, no webhook events (their statements are not in the query)."""
        return self._webhook_messages is None and all(
            i.msg.push is None and not i.msg.attachments and i.msg.thread_id is None for i in batch)

    async def _one_query(self, batch: list[_Item]) -> _Done | type[Exception]:
        """The whole transaction of a plain batch in one query; when it did not commit, the
        class of what stopped it (`storage.RowsLocked`: a conversation row locked elsewhere;
        IntegrityError: a retry of a stored message or a missing conversation; another
        SQLAlchemyError: e.g. a dead connection): then nothing of it was written and the
        caller writes it again."""
        assert self._commit_engine is not None
        done = _Done()
        now = utcnow()
        try:
            async with self._commit_engine.connect() as conn:
                if sendtrace.ENABLED:
                    self._mark(batch, "begun")
                self._reset(batch)
                first, new = self._split(batch, {}, await self._names(conn, batch))
                counts = Counter(i.msg.conversation_id for i in new)
                plan, positions = self._plan(new, counts)
                async with self._seq_turn:
                    stored = await storage.store_new_messages(conn, counts, plan, positions, now, commit=True)
                    done.turn = self._take_turn()
        except storage.RowsLocked:
            self.locked_fallbacks += 1
            return storage.RowsLocked
        except sa.exc.IntegrityError:
            return sa.exc.IntegrityError
        except sa.exc.SQLAlchemyError as exc:
            if done.turn is not None:  # committed; only giving the connection back failed
                log.warning("plain batch committed, connection not returned: %s", type(exc).__name__)
            else:
                return sa.exc.SQLAlchemyError
        if sendtrace.ENABLED:
            self._mark(batch, "committed")
        jobs: list[dict[str, Any]] = []
        for item in new:
            mid, seq = stored[(item.msg.sender_id, item.msg.client_msg_id)]
            self._stored(item, mid, seq, now, done, jobs)
        self._repeats(batch, first)
        self.fast_batches += 1
        return done

    # ------------------------------------------------------------ one transaction

    async def _transaction(self, batch: list[_Item], careful: bool = True) -> _Done:
        done = _Done()
        try:
            async with self._engine.begin() as conn:
                if sendtrace.ENABLED:
                    self._mark(batch, "begun")
                await self._statements(conn, batch, done, careful)
                if sendtrace.ENABLED:
                    self._mark(batch, "statements")
            if sendtrace.ENABLED:
                self._mark(batch, "committed")
        except BaseException:
            if done.turn is not None:
                done.turn.set_result(None)  # not committed: the next in line need not wait for it
            raise
        return done

    async def _statements(self, conn: AsyncConnection, batch: list[_Item], done: _Done, careful: bool) -> None:
        now = utcnow()
        self._reset(batch)
        existing = (await storage.find_sent(conn, [(i.msg.sender_id, i.msg.client_msg_id) for i in batch])
                    if careful else {})
        first, new = self._split(batch, existing, await self._names(conn, batch))

        done.replies = any(i.msg.thread_id is not None for i in new)
        if done.replies:  # their roots, checked before photos are claimed and seqs taken
            await self._check_roots(conn, new, careful)
        for item in [i for i in new if i.msg.attachments]:  # photos: claimed before seqs are taken
            m = item.msg
            if not await claim_attachments(conn, m.sender_id, m.conversation_id, m.client_msg_id, m.attachments):
                item.outcome = Invalid("an attachment is already used by another message, or was removed unused")
                new.remove(item)
        counts = Counter(i.msg.conversation_id for i in new)
        if counts and careful:
            await self._store_careful(conn, new, counts, done, now)
        elif counts:
            await self._store_at_once(conn, new, counts, done, now)
        self._repeats(batch, first)

    def _split(self, batch: list[_Item], existing: dict[tuple[str, str], Any],
               names: dict[str, str]) -> tuple[dict[tuple[str, str], _Item], list[_Item]]:
        """(the first item of each (sender, client_msg_id), the new ones to store); the items
        found in `existing` (stored before) get their retry answers."""
        first: dict[tuple[str, str], _Item] = {}
        new: list[_Item] = []
        for item in batch:
            m = item.msg
            item.name = names[m.sender_id]
            key = (m.sender_id, m.client_msg_id)
            row = existing.get(key)
            if row is not None:
                item.outcome = self._retry_answer(item, row.conversation_id, row.body, row.deleted, message_wire_columns(
                    row.id, row.conversation_id, row.seq, row.sender_id, item.name, row.body,
                    row.client_msg_id, row.created_at, row.edited_at, row.deleted, **threads.fields_of(row),
                    mentions=decode_mentions(row.mentions)))
            elif key in first:
                continue  # answered from the first one once that is stored
            else:
                first[key] = item
                new.append(item)
        return first, new

    async def _check_roots(self, conn: AsyncConnection, new: list[_Item], careful: bool) -> None:
        """Take out of `new` the replies whose root is missing, in another conversation, a reply
        or deleted (their outcome the error). Written at once, such a send may be a retry of a
        reply stored before its root was deleted: it is answered as a retry instead."""
        roots = await threads.roots(conn, [i.msg.thread_id for i in new if i.msg.thread_id is not None])
        refused: list[_Item] = []
        for item in [i for i in new if i.msg.thread_id is not None]:
            error = threads.check_root(roots.get(item.msg.thread_id or 0), item.msg.conversation_id)
            if error is not None:
                item.outcome = error
                new.remove(item)
                refused.append(item)
        if refused and not careful:
            stored = await storage.find_sent(conn, [(i.msg.sender_id, i.msg.client_msg_id) for i in refused])
            for item in refused:
                row = stored.get((item.msg.sender_id, item.msg.client_msg_id))
                if row is not None:
                    item.outcome = self._retry_answer(item, row.conversation_id, row.body, row.deleted, message_wire_columns(
                        row.id, row.conversation_id, row.seq, row.sender_id, item.name, row.body,
                        row.client_msg_id, row.created_at, row.edited_at, row.deleted, **threads.fields_of(row)))

    async def _update_roots(self, conn: AsyncConnection, done: _Done, now: datetime) -> None:
        """The thread summaries of the batch's replies' roots (after the seq ranges: see chat/threads.py)."""
        if not done.replies:
            return
        replies = [threads.Reply(int(w["thread_id"]), w["sender"]["id"], int(w["seq"]))
                   for w in done.created if w["thread_id"] is not None]
        if replies:
            done.roots = await threads.update_roots(conn, replies, now)

    async def _store_at_once(self, conn: AsyncConnection, new: list[_Item], counts: Counter[int], done: _Done,
                             now: datetime) -> None:
        """MariaDB, no retries looked for: seq ranges, INSERT and read positions in one round trip."""
        plan, positions = self._plan(new, counts)
        async with self._seq_turn:
            stored = await storage.store_new_messages(conn, counts, plan, positions, now)
            done.turn = self._take_turn()
        jobs: list[dict[str, Any]] = []
        for item in new:
            m = item.msg
            mid, seq = stored[(m.sender_id, m.client_msg_id)]
            self._stored(item, mid, seq, now, done, jobs)
        await self._update_roots(conn, done, now)
        if jobs and self._push_enqueue_jobs is not None:
            done.pushes = await self._push_enqueue_jobs(conn, jobs)
        if done.created and self._webhook_messages is not None:
            await self._webhook_messages(conn, done.created)

    @staticmethod
    def _plan(new: list[_Item], counts: Counter[int]) -> tuple[list[storage.NewMessage], dict[tuple[str, int], int]]:
        """`store_new_messages`' messages (each `back` below its conversation's new last_seq)
        and read positions (the sender's last message of the batch per conversation)."""
        left = dict(counts)
        plan: list[storage.NewMessage] = []
        positions: dict[tuple[str, int], int] = {}
        for item in new:
            m = item.msg
            left[m.conversation_id] -= 1
            back = left[m.conversation_id]
            plan.append(storage.NewMessage(m.conversation_id, back, m.sender_id, m.body, m.client_msg_id,
                                           thread_id=m.thread_id, mentions=m.mentions))
            positions[(m.sender_id, m.conversation_id)] = back  # the sender's last in the batch
        return plan, positions

    def _stored(self, item: _Item, mid: int, seq: int, now: datetime, done: _Done,
                jobs: list[dict[str, Any]]) -> None:
        m = item.msg
        wire = message_wire_columns(mid, m.conversation_id, seq, m.sender_id, item.name,
                                    m.body, m.client_msg_id, now, None, False, list(m.attachments),
                                    thread_id=m.thread_id, mentions=m.mentions)
        item.outcome = Stored(wire, True)
        done.created.append(wire)
        if m.push is not None:
            jobs.append(self._push_job(m, item.name, wire))

    async def _store_careful(self, conn: AsyncConnection, new: list[_Item], counts: Counter[int], done: _Done,
                             now: datetime) -> None:
        """Statement by statement (SQLite; MariaDB after a failed attempt at once)."""
        # The transactions of this process get their seq ranges (their rows' locks) one after
        # the other, in the order their deliveries are queued: each process hands a
        # conversation's messages to delivery in seq order.
        async with self._seq_turn:
            lasts = await storage.take_seq_ranges(conn, counts, now)
            done.turn = self._take_turn()
        next_seq = {cid: last - counts[cid] + 1 for cid, last in lasts.items()}
        rows: list[dict[str, Any]] = []
        stored: list[tuple[_Item, int]] = []
        for item in new:
            m = item.msg
            if m.conversation_id not in next_seq:
                item.outcome = NotFound("no such conversation")
                continue
            seq = next_seq[m.conversation_id]
            next_seq[m.conversation_id] = seq + 1
            rows.append({"conversation_id": m.conversation_id, "seq": seq, "sender_id": m.sender_id,
                         "body": m.body, "client_msg_id": m.client_msg_id, "created_at": now,
                         "edited_at": None, "deleted": False, "thread_id": m.thread_id,
                         "mentions": encode_mentions(m.mentions)})
            stored.append((item, seq))
        ids = await storage.insert_messages(conn, rows) if rows else {}

        positions: dict[tuple[str, int], int] = {}
        jobs: list[dict[str, Any]] = []
        for item, seq in stored:
            m = item.msg
            self._stored(item, ids[(m.conversation_id, seq)], seq, now, done, jobs)
            position = (m.sender_id, m.conversation_id)
            positions[position] = max(positions.get(position, 0), seq)
        await storage.insert_mentions(conn, [{"user_id": uid, "conversation_id": item.msg.conversation_id, "seq": seq}
                                             for item, seq in stored for uid in item.msg.mentions])
        await storage.move_read_positions(conn, positions)
        await self._update_roots(conn, done, now)
        if jobs and self._push_enqueue_jobs is not None:
            done.pushes = await self._push_enqueue_jobs(conn, jobs)
        if done.created and self._webhook_messages is not None:
            await self._webhook_messages(conn, done.created)

    def _repeats(self, batch: list[_Item], first: dict[tuple[str, str], _Item]) -> None:
        for item in batch:  # the repeats of a client_msg_id inside this batch
            if item.outcome is None:
                leader = first[(item.msg.sender_id, item.msg.client_msg_id)]
                if isinstance(leader.outcome, Stored):
                    lw = leader.outcome.message
                    item.outcome = self._retry_answer(item, int(lw["conversation_id"]), lw["body"], False,
                                                      {**lw, "sender": {"id": lw["sender"]["id"], "name": item.name}})
                else:
                    item.outcome = leader.outcome

    async def _names(self, conn: AsyncConnection, batch: Sequence[_Item]) -> dict[str, str]:
        names = {i.msg.sender_id: i.msg.sender_name for i in batch if i.msg.sender_name}
        missing = [i.msg.sender_id for i in batch if i.msg.sender_id not in names]
        if missing:
            names.update(await storage.user_names_of(conn, sorted(set(missing))))
        return {uid: name or uid for uid, name in names.items()}

    @staticmethod
    def _retry_answer(item: _Item, conversation_id: int, body: str, deleted: bool,
                      wire: dict[str, Any]) -> Stored | ChatError:
        if conversation_id != item.msg.conversation_id or (body != item.msg.body and not deleted):
            return Conflict("client_msg_id was already used for a different message")
        if wire.get("thread_id") != (None if item.msg.thread_id is None else str(item.msg.thread_id)):
            return Conflict("client_msg_id was already used for a message in another thread")
        return Stored(wire, False)

    @staticmethod
    def _push_job(m: Outgoing, sender_name: str, wire: dict[str, Any]) -> dict[str, Any]:
        assert m.push is not None
        room = m.push.room_name
        title = sender_name if room is None else f"{sender_name} in {room}"
        if m.push.mention:
            title = f"{sender_name} mentioned you in {room}"
        data = {"type": "message", "conversation_id": wire["conversation_id"], "message_id": wire["id"]}
        if m.thread_id is not None:
            data["thread_id"] = str(m.thread_id)
        job: dict[str, Any] = {
            "conversation_id": m.conversation_id,
            "message_id": int(wire["id"]),
            "sender_id": m.sender_id,
            "payload": {
                "title": title,
                "body": m.body or photo_text(len(m.attachments)),
                "data": data,
                "collapse_key": f"conversation-{m.conversation_id}",
                "high_priority": room is None or m.push.mention,
            },
        }
        if m.thread_id is not None and room is not None:  # a room reply pushes its thread, not the room
            job["thread_id"] = m.thread_id
            job["payload"]["title"] = f"{sender_name} replied in {room}"
        if m.mentions:
            job["mentions"] = list(m.mentions)
        return job
