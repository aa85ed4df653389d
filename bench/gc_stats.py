"""Run run_server.py with the cyclic garbage collector's pauses recorded (bench only).

    BENCH_GC_STATS=/tmp/gc python bench/gc_stats.py [run_server.py args]

At exit, writes to $BENCH_GC_STATS.<pid>.json, per generation: collections, total and max pause (ms), the pauses over
10 ms, and the number of tracked objects. Used by profile_backstage.py --gc.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
stats = {g: {"n": 0, "total_ms": 0.0, "max_ms": 0.0, "over_10ms": 0} for g in range(3)}
_start = [0.0]


def _cb(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _start[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _start[0]) * 1000
    s = stats[info["generation"]]
    s["n"] += 1
    s["total_ms"] += ms
    s["max_ms"] = max(s["max_ms"], ms)
    s["over_10ms"] += ms > 10


def _dump() -> None:
    out = {"generations": stats, "tracked_objects_at_exit": len(gc.get_objects()),
           "thresholds": gc.get_threshold()}
    Path(f"{os.environ.get('BENCH_GC_STATS', 'gc-stats')}.{os.getpid()}.json").write_text(json.dumps(out, indent=1))


gc.callbacks.append(_cb)
atexit.register(_dump)
sys.argv = [str(ROOT / "run_server.py"), *sys.argv[1:]]
sys.path.insert(0, str(ROOT))
runpy.run_path(str(ROOT / "run_server.py"), run_name="__main__")
