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
import logging
import os
import sys
from typing import Any

from chat.config import ConfigError, Settings, report_config_errors, settings_warnings
from chat.startup import configure_logging, describe_database, describe_relay, wait_for_dependencies

log = logging.getLogger("backstage")


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

    from chat import rawconnect
    from chat.app import WS_CONNECT_KEY, create_app

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

    def ready(*_: Any) -> None:  # called once the listening socket is bound
        log.info("ready: listening on http://%s:%d, database %s, relay %s", settings.host, settings.port,
                 describe_database(settings.database_url), describe_relay(settings))

    # aiohttp's run_app, with websocket-first connects answered before its request handler
    rawconnect.run_app(app, app[WS_CONNECT_KEY], host=settings.host, port=settings.port, ready=ready,
                       backlog=settings.listen_backlog,
                       # in-flight HTTP requests get this long; open websockets were closed in on_shutdown
                       shutdown_timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
