"""redis-py's asyncio connection with commands packed in C by hiredis.

redis-py 8 parses replies with hiredis when it is installed (requirements.txt), but its asyncio
`Connection.pack_command` still builds every command in Python (an encoder call and two joins
per argument): 3.3 % of the Python time of a connect storm (docs/performance.md), where each
socket's presence and limiter updates are a few pipelined commands. `PackedConnection` hands
commands whose arguments are all str, bytes, int or float to `hiredis.pack_command` (the same
bytes: tests/test_presence.py compares them) and everything else to redis-py, which also keeps
raising its own `DataError` for the argument types it refuses (bool, None, ...).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import Connection

_PLAIN = frozenset({str, bytes, int, float})


class PackedConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        for arg in args:
            if type(arg) not in _PLAIN:
                return super().pack_command(*args)
        first = args[0]
        # As redis-py does: a command name with literal arguments ('SCRIPT LOAD', 'CLIENT
        # SETINFO') is sent as separate arguments. A float command name it refuses itself.
        if isinstance(first, float):
            return super().pack_command(*args)
        if isinstance(first, str) and " " in first:
            args = (*first.encode().split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


def connection_class(url: str) -> dict[str, Any]:
    """`from_url` keyword arguments that plug `PackedConnection` in for plain redis:// URLs
    (rediss:// and unix:// keep redis-py's own SSL and Unix socket classes)."""
    return {"connection_class": PackedConnection} if url.startswith("redis://") else {}
