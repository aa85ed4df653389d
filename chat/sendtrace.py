"""Where a `send` waits: per-stage timings of the send path, for benchmarks only.

Off unless `BACKSTAGE_SEND_TRACE` names a file. Then every stored message records the time it
reached each stage (`time.perf_counter()`), and every `interval_s` one JSON line is appended to
the file: per stage, the count and p50/p90/p99 in milliseconds of the time since the previous
stage, over the messages of that interval. Stages, in order:

* `handler`: the `send` event's handler started (python-socketio decoded the packet);
* `queued`: validated, handed to the writer (`MessageWriter.store`);
* `begun`: its batch's transaction started (connection checked out);
* `statements`: the batch's statements ran, COMMIT not yet sent;
* `committed`: COMMIT answered;
* `turn`: its batch's turn to deliver came (earlier batches delivered);
* `local`: written to this process's sockets (and queued for the relay);
* `published`: relayed to Redis (when there is a relay, else at once);
* `acked`: the sender's ack written.

Nothing is recorded when the variable is unset (`ENABLED` is False and every call site tests it
first), so the send path pays one attribute read per stage.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

STAGES = ("handler", "queued", "begun", "statements", "committed", "turn", "local", "published", "acked")
_PATH = os.environ.get("BACKSTAGE_SEND_TRACE") or None
ENABLED = _PATH is not None


class Trace:
    """The stage times of one message."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        self.times.setdefault(stage, time.perf_counter())


class _Recorder:
    def __init__(self, path: str, interval_s: float = 2.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self.window: list[dict[str, float]] = []
        self.started = time.perf_counter()

    def done(self, trace: Trace) -> None:
        self.window.append(trace.times)
        now = time.perf_counter()
        if now - self.started >= self.interval_s:
            self.flush(now)

    def flush(self, now: float) -> None:
        window, self.window, self.started = self.window, [], now
        if not window:
            return
        out: dict[str, Any] = {"t": round(time.time(), 1), "messages": len(window)}
        for prev, stage in zip(STAGES, STAGES[1:], strict=False):
            ds = sorted((t[stage] - t[prev]) * 1000 for t in window if stage in t and prev in t)
            if ds:
                out[stage] = {"n": len(ds), "p50": round(ds[len(ds) // 2], 3),
                              "p90": round(ds[int(len(ds) * 0.9)], 3), "p99": round(ds[int(len(ds) * 0.99)], 3)}
        total = sorted((t["acked"] - t["handler"]) * 1000 for t in window if "acked" in t and "handler" in t)
        if total:
            out["total"] = {"n": len(total), "p50": round(total[len(total) // 2], 3),
                            "p99": round(total[int(len(total) * 0.99)], 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(out) + "\n")


_recorder = _Recorder(_PATH) if _PATH is not None else None


def finish(trace: Trace) -> None:
    if _recorder is not None:
        _recorder.done(trace)
