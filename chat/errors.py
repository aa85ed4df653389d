"""Domain errors, each carrying its SPEC §5 code and HTTP status."""

from __future__ import annotations

from datetime import datetime
from typing import Any


class ChatError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class Invalid(ChatError):
    code, status = "invalid", 400


class Unauthorized(ChatError):
    code, status = "unauthorized", 401


class Forbidden(ChatError):
    code, status = "forbidden", 403


class NotFound(ChatError):
    code, status = "not_found", 404


class Conflict(ChatError):
    code, status = "conflict", 409


class TooLarge(ChatError):
    code, status = "too_large", 413


class RateLimited(ChatError):
    code, status = "rate_limited", 429

    def __init__(self, message: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        # Over HTTP: Retry-After and the RateLimit-* headers (chat/ratelimit.py Quota).
        self.headers = headers or {"Retry-After": "1"}


class Unavailable(ChatError):
    code, status = "unavailable", 503


def error_wire(err: ChatError) -> dict[str, Any]:
    return {"ok": False, "error": err.to_wire()}


class TimedOut(Forbidden):
    """A send by a member a moderator timed out: `forbidden` with the remaining time in the message,
    and (an extension of SPEC §5, docs/moderation.md) `until` and `retry_after` (whole seconds)."""

    def __init__(self, message: str, until: datetime, retry_after: int) -> None:
        super().__init__(message)
        self.until, self.retry_after = until, retry_after

    def to_wire(self) -> dict[str, Any]:
        until = self.until.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {**super().to_wire(), "until": until, "retry_after": self.retry_after}


class SlowModeLimited(RateLimited):
    """A send within a room's slow-mode interval: `rate_limited` with the wait in the message, and
    (an extension, docs/moderation.md) `retry_after` in seconds; over HTTP also Retry-After."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"Retry-After": str(retry_after)})
        self.retry_after = retry_after

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "retry_after": self.retry_after}


class SpaceRefused(Forbidden):
    """A send (or edit, reaction) a chat space refuses (docs/moderation.md, chat/spaces.py):
    `forbidden` with, as extensions of the error object, `reason` ("archived", or "guidelines"
    with the `guidelines_version` to accept first)."""

    def __init__(self, message: str, reason: str, guidelines_version: int | None = None) -> None:
        super().__init__(message)
        self.reason, self.guidelines_version = reason, guidelines_version

    def to_wire(self) -> dict[str, Any]:
        wire = {**super().to_wire(), "reason": self.reason}
        if self.guidelines_version is not None:
            wire["guidelines_version"] = self.guidelines_version
        return wire


class GuidelinesChanged(Conflict):
    """`accept_guidelines` of a version that is not the room's current one: `conflict` with the
    current `guidelines_version` (an extension of the error object, docs/moderation.md)."""

    def __init__(self, message: str, guidelines_version: int) -> None:
        super().__init__(message)
        self.guidelines_version = guidelines_version

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "guidelines_version": self.guidelines_version}
