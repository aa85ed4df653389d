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
    """"Flat after warm-up": the samples taken after the warm-up are cut in thirds; the median of
    the last third may exceed the median of the first third by at most max(frac × first, absolute)."""

    frac: float
    absolute: float

    def judge(self, values: list[float]) -> dict[str, Any]:
        third = max(1, len(values) // 3)
        first, last = statistics.median(values[:third]), statistics.median(values[-third:])
        allowed = max(self.frac * first, self.absolute)
        return {"first_third_median": first, "last_third_median": last, "growth": last - first,
                "allowed_growth": allowed, "min": min(values), "max": max(values),
                "flat": last - first <= allowed}


def write_results(kind: str, results: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS_DIR / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    (RESULTS_DIR / f"{kind}-last.json").write_text(json.dumps(results, indent=1, default=str))
    return path
