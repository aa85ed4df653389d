"""The outgoing side of a websocket: frames of one event-loop turn leave in one write.

Every outgoing frame of a websocket socket (broadcasts, acks, single emits, pings, the close
packet) goes through the socket's `Outbox.write`, in call order. A frame is not written to the
transport at once: the outbox keeps the frames of the current loop turn, and one `TurnFlush`
for all sockets of the server writes each outbox's frames with ONE `transport.write` (one
`send()` syscall) at the start of the next loop turn (`loop.call_soon`, scheduled once per turn
for all sockets, not once per socket). A room filling up sends each member one `presence`
event per joiner; the joiners of one turn now cost each member one syscall instead of one per
joiner, and a sender's `message` and the ack of its `send` go out together.

Order: a socket's frames stay in call order (one list per outbox, flushed whole, and nothing
else writes to the transport while frames are pending: `flush()` comes first in `finish()`,
and the close frame of `DetachedWebSocket` goes through `write`). Back-pressure counts the
pending bytes and the transport's unsent bytes: past `FanoutLimits.max_buffer_bytes` the
pending frames are written at once (a turn never holds more than the limit), and a connection
whose transport is then left with more than the limit unsent is aborted (the client
reconnects and recovers with `since_seq`), as is one whose
unsent bytes have not shrunk for `FanoutLimits.stall_s` (`FanoutEngineIO`'s sweeper).

Long-polling sockets do not use an outbox (engine.io's queue, as upstream).

Metrics: `backstage_ws_frames_total` (frames written) and
`backstage_ws_writes_total` (transport writes made for them); frames / writes is the
coalescing ratio. Both are counted in plain ints and added to the counters once per flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

log = logging.getLogger(__name__)

WS_FRAMES = Counter("backstage_ws_frames_total", "WebSocket frames written to websocket connections")
WS_WRITES = Counter("backstage_ws_writes_total",
                    "transport.write calls (send syscalls) made for websocket frames; frames/writes = coalescing")


@dataclass(frozen=True)
class FanoutLimits:
    """When a socket that does not read what is sent to it gets disconnected."""

    max_buffer_bytes: int = 1024 * 1024  # websocket: pending + unsent bytes
    max_queued_packets: int = 1000  # long-polling: packets waiting for the next poll
    stall_s: float = 10.0  # websocket: unsent bytes that have not shrunk for this long


class TurnFlush:
    """Writes the pending frames of every outbox that got some during this loop turn: one
    `loop.call_soon` per turn for all of them, one `transport.write` per outbox."""

    __slots__ = ("_due", "_scheduled")

    def __init__(self) -> None:
        self._due: list[Outbox] = []
        self._scheduled = False

    def add(self, outbox: Outbox) -> None:
        """`outbox` has pending frames (called once per turn per outbox, by its first write)."""
        self._due.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        due, self._due = self._due, []
        self._scheduled = False
        frames = writes = 0
        for outbox in due:
            try:
                n = outbox.flush()
            except Exception:  # one broken connection must not keep the others' frames
                log.exception("websocket flush failed")
                continue
            if n:
                frames += n
                writes += 1
        if writes:
            WS_FRAMES.inc(frames)
            WS_WRITES.inc(writes)

    def __len__(self) -> int:
        return len(self._due)


class Outbox:
    """The outgoing side of one websocket: frames go to the transport in call order, those of
    one loop turn in one write (see the module docstring).

    The transport's buffer is the only queue past the current turn. Pending + unsent bytes are
    checked on writes: over `max_buffer_bytes`, the pending frames are written at once, and if
    the transport is then left with more than that unsent, the connection is aborted. The
    sweeper checks the outboxes with unsent bytes once per second (not shrinking for
    `stall_s`: abort). The stall check is not done on writes: a long burst of writes without a
    return to the event loop gives the transport no chance to drain and must not count as a
    stalled client."""

    __slots__ = ("_transport", "_limits", "_on_overflow", "_stalled_since", "_last_size", "closed", "_backlog",
                 "_flusher", "_pending", "_pending_bytes", "_pending_frames", "_buffered")

    def __init__(self, transport: asyncio.Transport, limits: FanoutLimits,
                 on_overflow: Callable[[str], None], backlog: set[Outbox] | None = None,
                 flusher: TurnFlush | None = None) -> None:
        self._transport = transport
        self._limits = limits
        self._on_overflow = on_overflow
        self._stalled_since = 0.0
        self._last_size = 0
        self.closed = False
        # The outboxes with unsent bytes, shared by the server: the sweeper checks only those
        # (a socket whose transport took everything cannot be stalled).
        self._backlog = backlog if backlog is not None else set()
        self._flusher = flusher if flusher is not None else TurnFlush()
        self._pending: list[bytes] | None = None  # frames of this turn, not written yet
        self._pending_bytes = 0
        self._pending_frames = 0  # for backstage_ws_frames_total (an item may hold several)
        # The transport's unsent bytes after our last write: it only shrinks until the next
        # one, so pending + this is an upper bound of what the socket holds.
        self._buffered = 0

    def write(self, data: bytes, frames: int = 1) -> None:
        """Queue `data` (`frames` WebSocket frames) for the end of this loop turn."""
        if self.closed:
            return
        pending = self._pending
        if pending is None:
            if self._transport.is_closing():
                self.closed = True  # the connection is gone
                return
            self._pending = [data]
            self._pending_bytes = len(data)
            self._pending_frames = frames
            self._flusher.add(self)
        else:
            pending.append(data)
            self._pending_bytes += len(data)
            self._pending_frames += frames
        if self._pending_bytes + self._buffered > self._limits.max_buffer_bytes:
            # Too much for one turn: write now (the kernel takes what it can); `flush` aborts
            # if the transport is then left with more than the limit unsent.
            self.flush_now()

    def flush(self) -> int:
        """Write the pending frames in one `transport.write`; returns how many frames there were."""
        pending = self._pending
        if pending is None:
            return 0
        frames = self._pending_frames
        self._pending = None
        self._pending_bytes = 0
        transport = self._transport
        if self.closed or transport.is_closing():
            self.closed = True
            return 0
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        self._buffered = size = transport.get_write_buffer_size()
        if size > self._limits.max_buffer_bytes:
            self.abort("bytes")
        elif size and self not in self._backlog:
            self._stalled_since = time.monotonic()  # unsent bytes from now on
            self._last_size = size
            self._backlog.add(self)
        return frames

    def check_stall(self, now: float) -> bool:
        """Called periodically: abort if unsent bytes have not shrunk for `stall_s`. Returns
        whether the outbox still has unsent bytes to watch."""
        if self.closed:
            return False
        self._buffered = size = self._transport.get_write_buffer_size()
        if not size or size < self._last_size:
            self._stalled_since = now
        self._last_size = size
        if size and now - self._stalled_since > self._limits.stall_s:
            self.abort("stall")
            return False
        return bool(size)

    def flush_now(self) -> None:
        """`flush` outside the turn's flush (counted in the metrics here)."""
        n = self.flush()
        if n:
            WS_FRAMES.inc(n)
            WS_WRITES.inc()

    def finish(self) -> None:
        """Close the connection once what is pending and buffered has been sent."""
        if not self.closed:
            self.flush_now()
            if not self.closed:
                self.closed = True
                self._transport.close()

    def abort(self, limit: str) -> None:
        """Drop the connection now, pending frames with it; the reader side sees it and runs
        the disconnect."""
        self._pending = None
        self._pending_bytes = 0
        if self.closed:
            return
        self.closed = True
        self._on_overflow(limit)
        self._transport.abort()


__all__ = ["WS_FRAMES", "WS_WRITES", "FanoutLimits", "Outbox", "TurnFlush"]
