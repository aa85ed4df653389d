"""Apply Alembic migrations to the configured database (at server start, or `run_server.py migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parent.parent


def alembic_config() -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return cfg


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Upgrade to head. On MySQL a named lock makes processes starting together take turns."""
    async with engine.connect() as conn:
        mysql = conn.dialect.name in ("mysql", "mariadb")
        if mysql:
            await conn.execute(text("SELECT GET_LOCK('backstage_migrations', 120)"))
        try:
            await conn.run_sync(_upgrade)
            await conn.commit()
        finally:
            if mysql:
                await conn.execute(text("SELECT RELEASE_LOCK('backstage_migrations')"))
