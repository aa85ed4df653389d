"""Map any exception to the ChatError the wire should see (used by sockets and HTTP alike)."""

from __future__ import annotations

import logging

import redis.exceptions
import sqlalchemy.exc

from chat.errors import ChatError, Unavailable
from chat.presence import PresenceUnavailable

log = logging.getLogger(__name__)


def as_chat_error(exc: BaseException) -> ChatError:
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                        sqlalchemy.exc.TimeoutError, redis.exceptions.ConnectionError,
                        redis.exceptions.TimeoutError, PresenceUnavailable, ConnectionError, TimeoutError)):
        return Unavailable("a backing service is unavailable; nothing was stored, retry")
    return ChatError("internal error")
