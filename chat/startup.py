"""Start-up shared by the web server (run_server.py) and the push worker
(`python -m notifications.worker`): logging, what the ready line names, and waiting for the
database and Redis. An unreachable database or Redis at start is one ERROR line per attempt,
retried with backoff (1, 2, 4 ... 30 s), not a crash loop that buries the reason in tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from sqlalchemy.engine import make_url

from chat.config import Settings

log = logging.getLogger("backstage")


class JsonFormatter(logging.Formatter):
    STANDARD = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self.STANDARD and k != "message"})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    # aiohttp's access log would print ?token=... of the page links: keep it off.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # These log SQL statements with their parameters (message bodies, FCM tokens) below WARNING:
    # kept at WARNING whatever LOG_LEVEL says.
    for name in ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "aiomysql"):
        logging.getLogger(name).setLevel(logging.WARNING)


def describe_database(url: str) -> str:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return f"sqlite ({u.database or ':memory:'})"
    return f"{u.get_backend_name()} ({u.host}:{u.port or 3306}/{u.database})"


def describe_relay(settings: Settings) -> str:
    if not settings.redis_url:
        return "in-process (no REDIS_URL: single process)"
    u = make_url(settings.redis_url) if "://" in settings.redis_url else None
    where = f"{u.host}:{u.port or 6379}" if u is not None and u.host else "unix socket"
    return f"redis ({where}, prefix {settings.redis_prefix!r})"


async def unreachable(settings: Settings) -> list[str]:
    """The dependencies that do not answer now, each as `name (reason)`; SQLite always answers."""
    problems: list[str] = []
    if make_url(settings.database_url).get_backend_name() != "sqlite":
        from chat.db import create_engine

        engine = create_engine(settings.database_url, pool_size=1)
        try:
            async with asyncio.timeout(10):
                async with engine.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            problems.append(f"database {describe_database(settings.database_url)} ({reason(exc)})")
        finally:
            await engine.dispose()
    if settings.redis_url:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            async with asyncio.timeout(10):
                await client.ping()
        except Exception as exc:
            problems.append(f"redis {describe_relay(settings)} ({reason(exc)})")
        finally:
            await client.aclose()
    return problems


def reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def wait_for_dependencies(settings: Settings, max_delay: float = 30.0) -> None:
    """Block until the database and Redis answer: a platform restarting a crashed process would
    loop fast and bury the reason in tracebacks; one line per attempt with backoff says it once."""
    delay = 1.0
    while problems := asyncio.run(unreachable(settings)):
        log.error("unreachable at start: %s; retrying in %.0f s", "; ".join(problems), delay)
        time.sleep(delay)
        delay = min(delay * 2, max_delay)
