"""Backstage server entry point.

    python run_server.py [--demo]            serve HTTP + Socket.IO on HOST:PORT
    python run_server.py migrate             apply database migrations and exit
    python run_server.py token USER_ID [--name NAME] [--ttl SECONDS]

A bad setting is one line on stderr naming the variable and the fix (JSON when LOG_FORMAT=json),
exit code 2. An unreachable database or Redis at start is one ERROR line per attempt, retried with
backoff, not a crash loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import time
from typing import Any

from sqlalchemy.engine import make_url

from chat.config import ConfigError, Settings, report_config_errors, settings_warnings

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_server.py", description="Backstage chat server")
    parser.add_argument("--demo", action="store_true", help="seed demo data and print sign-in links")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("migrate", help="apply database migrations and exit")
    token = sub.add_parser("token", help="print a client JWT signed with JWT_SECRET")
    token.add_argument("user_id")
    token.add_argument("--name")
    token.add_argument("--ttl", type=int, default=86400)
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env(demo=args.demo)
    except ConfigError as error:
        report_config_errors(error.problems)
        return 2
    configure_logging(settings)
    demo_key: str | None = None
    if args.demo and args.command is None:
        from chat.demo import load_demo_credentials

        settings, demo_key = load_demo_credentials(settings, os.environ)
    for warning in settings_warnings(settings):
        log.warning("%s", warning)

    if args.command == "migrate":
        from chat import migrate
        from chat.db import create_engine

        wait_for_dependencies(settings)

        async def run() -> None:
            engine = create_engine(settings.database_url)
            await migrate.upgrade(engine)
            await engine.dispose()

        asyncio.run(run())
        print("database is at the latest migration")
        return 0

    if args.command == "token":
        from chat.auth import Authenticator

        if not settings.jwt_secret:
            print("JWT_SECRET is required to sign tokens", file=sys.stderr)
            return 2
        print(Authenticator(settings).issue(args.user_id, args.name, args.ttl))
        return 0

    if not settings.jwt_secret and not settings.jwt_public_key:
        report_config_errors(["JWT_SECRET: required (or JWT_PUBLIC_KEY); set a random string of "
                              "32+ characters, or try --demo"])
        return 2

    wait_for_dependencies(settings)

    import uvloop
    from aiohttp import web

    from chat.app import create_app

    app = create_app(settings)
    if args.demo:
        from chat.demo import install_demo

        install_demo(app, settings, demo_key)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # Full collections stall every socket of the process (measured: up to 277 ms, see
    # docs/performance.md). Freeze what start-up allocated and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

    def ready(*_: Any) -> None:  # run_app calls this once the listening socket is bound
        log.info("ready: listening on http://%s:%d, database %s, relay %s", settings.host, settings.port,
                 describe_database(settings.database_url), describe_relay(settings))

    web.run_app(app, host=settings.host, port=settings.port, access_log=None,
                print=ready,
                # in-flight HTTP requests get this long; open websockets were closed in on_shutdown
                shutdown_timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
