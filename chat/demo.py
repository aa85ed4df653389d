"""`run_server.py --demo`: seed a creator, two rooms at two tiers and three patrons, then print
one sign-in link per user. Seeding is idempotent (ids are fixed), so restarts reuse the data.

The generated JWT secret and a demo API key are kept in `.backstage-demo.json` next to the SQLite
database (ignored by git), so the printed sign-in links and the key survive restarts."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from chat import http_api
from chat.auth import Identity
from chat.config import Settings

DEMO_FILE = ".backstage-demo.json"


def demo_file(settings: Settings) -> Path:
    """Next to the SQLite database file; in the working directory for MySQL or :memory:."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).resolve().parent / DEMO_FILE
    return Path.cwd() / DEMO_FILE


def load_demo_credentials(settings: Settings, env: Mapping[str, str]) -> tuple[Settings, str]:
    """The demo's JWT secret (unless JWT_SECRET/JWT_PUBLIC_KEY is set) and API key, read from the
    demo file or created there (mode 0600) on the first start."""
    path = demo_file(settings)
    stored: dict[str, str] = {}
    if path.is_file():
        stored = json.loads(path.read_text())
    if not stored.get("jwt_secret") or not stored.get("api_key"):
        stored = {"jwt_secret": stored.get("jwt_secret") or secrets.token_urlsafe(32),
                  "api_key": stored.get("api_key") or "demo-" + secrets.token_urlsafe(24)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f)
    if not env.get("JWT_SECRET") and not env.get("JWT_PUBLIC_KEY"):
        settings = replace(settings, jwt_secret=stored["jwt_secret"])
    api_key = stored["api_key"]
    if api_key not in settings.api_keys:
        settings = replace(settings, api_keys=(*settings.api_keys, api_key))
    return settings, api_key

CREATOR = ("demo-creator", "Demo Creator")
PATRONS = [("alice", "Alice (Bronze, $3)", 300), ("bob", "Bob (Silver, $10)", 1000),
           ("carol", "Carol (Gold, $25)", 2500)]
ROOMS = [("Community lounge", 300, "everyone"), ("Inner circle", 1000, "everyone")]


def install_demo(app: web.Application, settings: Settings, api_key: str | None = None) -> None:
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
                room, _ = await service.create_room(CREATOR[0], name, tier, policy)
                await service.send_message(creator, int(room["id"]), f"Welcome to {name}!", f"demo-welcome-{room['id']}")
        for pid, _, _ in PATRONS[:1]:
            direct = await service.open_direct(creator, pid)
            await service.send_message(creator, int(direct["id"]), "Thanks for your support!", f"demo-dm-{pid}")
        host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
        lines = ["", "Backstage demo is running. Open one link per browser window:"]
        for uid, name in [CREATOR] + [(p[0], p[1]) for p in PATRONS]:
            lines.append(f"  {name:<22} http://{host}:{settings.port}/?token={auth.issue(uid, name, 7 * 86400)}")
        if api_key:
            base = f"http://{host}:{settings.port}"
            lines += ["", f"Server API key (kept in {demo_file(settings)}): {api_key}",
                      "Try the server API (the notification appears live on Alice's page):",
                      f"  curl -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\",
                      """    -d '{"user_ids": ["alice"], "type": "demo", "title": "Hello", "body": "From curl"}' \\""",
                      f"    {base}/api/v1/server/notifications"]
        lines.append("")
        print("\n".join(lines), flush=True)
        yield

    app.cleanup_ctx.append(seed)
