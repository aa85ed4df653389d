"""`run_server.py --demo`: seed a creator, two rooms at two tiers and three patrons, then print
one sign-in link per user. Seeding is idempotent (ids are fixed), so restarts reuse the data."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from chat import http_api
from chat.auth import Identity
from chat.config import Settings

CREATOR = ("demo-creator", "Demo Creator")
PATRONS = [("alice", "Alice (Bronze, $3)", 300), ("bob", "Bob (Silver, $10)", 1000),
           ("carol", "Carol (Gold, $25)", 2500)]
ROOMS = [("Community lounge", 300, "everyone"), ("Inner circle", 1000, "everyone")]


def install_demo(app: web.Application, settings: Settings) -> None:
    async def seed(app: web.Application) -> AsyncIterator[None]:
        service = app[http_api.SERVICE_KEY]
        auth = app[http_api.AUTH_KEY]
        await service.put_user(CREATOR[0], CREATOR[1], None)
        for pid, name, tier in PATRONS:
            await service.put_user(pid, name, None)
            await service.put_membership(CREATOR[0], pid, tier, "active")
        creator = Identity(*CREATOR)
        existing = {c["conversation"]["name"] for c in await service.list_conversations(creator)}
        for name, tier, policy in ROOMS:
            if name not in existing:
                room = await service.create_room(CREATOR[0], name, tier, policy)
                await service.send_message(creator, int(room["id"]), f"Welcome to {name}!", f"demo-welcome-{room['id']}")
        for pid, _, _ in PATRONS[:1]:
            direct = await service.open_direct(creator, pid)
            await service.send_message(creator, int(direct["id"]), "Thanks for your support!", f"demo-dm-{pid}")
        host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
        lines = ["", "Backstage demo is running. Open one link per browser window:"]
        for uid, name in [CREATOR] + [(p[0], p[1]) for p in PATRONS]:
            lines.append(f"  {name:<22} http://{host}:{settings.port}/?token={auth.issue(uid, name, 7 * 86400)}")
        lines.append("")
        print("\n".join(lines), flush=True)
        yield

    app.cleanup_ctx.append(seed)
