"""Apply Alembic migrations to the configured database (at server start, or `run_server.py migrate`).

A database already at the head revision (every start but the first) is recognised with one query,
without importing Alembic (~0.3 s of CPU per process): the head is read from the revision lines of
migrations/versions/*.py. Anything else (no alembic_version table, an older or unknown revision,
files this reading does not understand) goes through Alembic's upgrade as before.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ROOT / "migrations" / "versions"
_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return cfg


@cache
def head_revision() -> str | None:
    """The single head of the migration files, or None when that is not certain (several heads,
    a revision line that is not a plain literal): then Alembic decides."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        lines = {match[1]: match[2] for match in _REVISION_LINE.finditer(path.read_text())}
        try:
            revision = ast.literal_eval(lines["revision"])
            down = ast.literal_eval(lines["down_revision"])
        except (KeyError, ValueError, SyntaxError):
            return None
        if not isinstance(revision, str):
            return None
        revisions.add(revision)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
            parents.update(down)
        elif down is not None:
            return None
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def at_head(connection: Connection) -> bool:
    """True when the database's alembic_version is exactly the head of the migration files."""
    head = head_revision()
    if head is None or not inspect(connection).has_table("alembic_version"):
        return False
    versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return list(versions) == [head]


def _upgrade(connection: Connection) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Upgrade to head. On MySQL a named lock makes processes starting together take turns."""
    async with engine.connect() as conn:
        if await conn.run_sync(at_head):
            await conn.rollback()
            return
        await conn.rollback()
        mysql = conn.dialect.name in ("mysql", "mariadb")
        if mysql:
            await conn.execute(text("SELECT GET_LOCK('backstage_migrations', 120)"))
        try:
            await conn.run_sync(_upgrade)
            await conn.commit()
        finally:
            if mysql:
                await conn.execute(text("SELECT RELEASE_LOCK('backstage_migrations')"))
