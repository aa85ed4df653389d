"""The json module interface python-socketio calls, backed by orjson. Servers and the Redis
publisher must encode pub/sub messages the same way, so both use this one."""

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
