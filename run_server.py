"""Backstage server entry point.

    python run_server.py [--demo]            serve HTTP + Socket.IO on HOST:PORT
    python run_server.py migrate             apply database migrations and exit
    python run_server.py token USER_ID [--name NAME] [--ttl SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys

from chat.config import Settings


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

    settings = Settings.from_env(demo=args.demo)
    configure_logging(settings)

    if args.command == "migrate":
        from chat import migrate
        from chat.db import create_engine

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
        print("JWT_SECRET (or JWT_PUBLIC_KEY) is required; try --demo", file=sys.stderr)
        return 2

    import uvloop
    from aiohttp import web

    from chat.app import create_app

    app = create_app(settings)
    if args.demo:
        from chat.demo import install_demo

        install_demo(app, settings)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # Full collections stall every socket of the process (measured: up to 277 ms, see
    # docs/performance.md). Freeze what start-up allocated and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    web.run_app(app, host=settings.host, port=settings.port, access_log=None,
                print=lambda *_: None,
                # in-flight HTTP requests get this long; open websockets were closed in on_shutdown
                shutdown_timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
