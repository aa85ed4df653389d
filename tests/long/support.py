"""Helpers of the long runs (`make test-long`): resource samples of server processes, the
flatness rule, and where results are written."""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import ROOT

RESULTS_DIR = Path(os.environ.get("LONG_RESULTS_DIR", ROOT / "long-results"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Flat:
    """"Flat after warm-up", on the samples taken after the warm-up, cut in thirds.

    - `median` (memory, file descriptors): the median of the last third may exceed the median
      of the first third by at most max(frac × first, absolute).
    - `peak` (connection pools): the median of the last third may exceed the highest value seen
      before the last third by at most `absolute`. A pool opens connections up to a high-water
      mark set by the worst concurrency burst so far and keeps them (redis-py does not close idle
      connections; the bound is REDIS max_connections, 200 a process): a new burst may raise
      it, a leak raises it steadily, so the last third outgrows everything before it.
    """

    frac: float
    absolute: float
    rule: str = "median"

    def judge(self, values: list[float]) -> dict[str, Any]:
        third = max(1, len(values) // 3)
        first, last = statistics.median(values[:third]), statistics.median(values[-third:])
        if self.rule == "peak":
            base = max(values[:-third])
            allowed = self.absolute
        else:
            base = first
            allowed = max(self.frac * first, self.absolute)
        return {"rule": self.rule, "first_third_median": first, "last_third_median": last,
                "base": base, "growth": last - base, "allowed_growth": allowed,
                "min": min(values), "max": max(values), "flat": last - base <= allowed}


def write_results(kind: str, results: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS_DIR / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    (RESULTS_DIR / f"{kind}-last.json").write_text(json.dumps(results, indent=1, default=str))
    return path
