"""Background task lifecycle shared by the workers (push: notifications/worker.py, webhooks:
webhooks/worker.py)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def finish(task: asyncio.Task[Any] | None, timeout: float) -> None:  # noqa: ASYNC109
    """Let `task` end by itself for up to `timeout` seconds, then cancel it; never raises (a
    worker's loop logs its own errors, and what it had claimed returns when its lease expires)."""
    if task is None:
        return
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(asyncio.shield(task), timeout)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
