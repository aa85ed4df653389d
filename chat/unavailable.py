"""Every `unavailable` (503) answer is logged at WARNING with its cause and counted.

The cause is the exception's class and, for database and Redis errors, the driver's code and
message: never str(exc) of a SQLAlchemy error, which carries the statement's parameters
(message bodies, tokens).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter

log = logging.getLogger("chat.unavailable")

UNAVAILABLE = Counter("backstage_unavailable_total", "Answers of `unavailable` (503), by transport and cause",
                      ["transport", "cause"])
_MAX_MESSAGE = 200


def cause_of(exc: BaseException) -> tuple[str, str]:
    """(short cause label for the metric, longer description for the log)."""
    orig = getattr(exc, "orig", None)
    if orig is not None:  # SQLAlchemy DBAPIError: the driver's exception is in .orig
        args: tuple[Any, ...] = tuple(getattr(orig, "args", ()) or ())
        code = args[0] if args and isinstance(args[0], int) else None
        text = str(args[1])[:_MAX_MESSAGE] if len(args) > 1 else type(orig).__name__
        label = f"{type(orig).__name__}:{code}" if code is not None else type(orig).__name__
        return label, f"{type(exc).__name__} ({label}: {text})"
    cause = exc.__cause__ or exc.__context__
    if type(exc).__name__ in ("Unavailable", "PresenceUnavailable") and cause is not None:
        inner_label, inner_text = cause_of(cause)
        return inner_label, f"{type(exc).__name__} from {inner_text}"
    name = type(exc).__name__
    module = type(exc).__module__
    if module.startswith(("redis", "chat", "builtins", "asyncio", "aiomysql", "pymysql")):
        return name, f"{name}: {str(exc)[:_MAX_MESSAGE]}"
    return name, name


class _Throttle:
    """At most `per_s` log lines a second per key; the rest are counted and reported with the next."""

    def __init__(self, per_s: float = 1.0) -> None:
        self.interval = 1.0 / per_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            self._last[key] = now
            if len(self._last) > 1000:
                self._last = {key: now}
            return True, self._suppressed.pop(key, 0)
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        return False, 0


_throttle = _Throttle(per_s=5.0)


def report(exc: BaseException, transport: str, where: str) -> None:
    """Log (WARNING, at most a few lines a second per cause) and count one `unavailable` answer."""
    label, text = cause_of(exc)
    UNAVAILABLE.labels(transport, label).inc()
    allowed, suppressed = _throttle.allow(f"{transport}:{label}")
    if allowed:
        more = f" (+{suppressed} more since the last line)" if suppressed else ""
        log.warning("unavailable answered on %s %s: %s%s", transport, where, text, more,
                    extra={"transport": transport, "where": where, "cause": label})
