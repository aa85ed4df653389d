"""The json module interface python-socketio calls, backed by orjson (packets and pub/sub
messages of the servers)."""

from __future__ import annotations

from typing import Any

import orjson


class OrjsonCompat:
    @staticmethod
    def dumps(obj: Any, **_kw: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(s: str | bytes, **_kw: Any) -> Any:
        return orjson.loads(s)
