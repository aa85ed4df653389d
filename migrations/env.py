"""Alembic environment. The server runs migrations itself at start (chat/migrate.py) by passing
an open connection in config.attributes["connection"]; the `alembic` CLI uses DATABASE_URL."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

import chat.models  # noqa: F401  (registers tables)
import notifications.models  # noqa: F401
import webhooks.models  # noqa: F401
from chat.config import DEFAULT_DATABASE_URL
from chat.db import Base, create_engine

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    engine = create_engine(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    async with engine.connect() as conn:
        await conn.run_sync(run_with)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    asyncio.run(run_online())
