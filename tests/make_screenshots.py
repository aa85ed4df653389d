"""Regenerates the README screenshots of the browser client (not part of the test run).

    .venv/bin/python tests/make_screenshots.py

Starts one server on a throwaway SQLite file, seeds a creator, patrons, rooms and messages
through the server and client APIs, and photographs with /usr/bin/chromium:
the creator's desktop view (docs/screenshot-desktop-creator.png, 1280x800), a patron's phone
view with an announcement on the creator's channel (docs/screenshot-phone-patron.png, 390x844),
the same phone with a message's actions open by long-press (docs/screenshot-phone-menu.png)
and its "Add reaction" picker (docs/screenshot-phone-reactions.png),
and the desktop while the server is unreachable (docs/screenshot-desktop-reconnect.png).
Avatar pictures are served by a page route (no network). Needs `npm ci`, and for the emoji a
colour emoji font (`apt-get install -y fonts-noto-color-emoji`).
"""

from __future__ import annotations

import asyncio
import re
import struct
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser_support import DESKTOP, PHONE, launch, open_chat  # noqa: E402
from tests.support import Api, Client, ServerProcess  # noqa: E402

DOCS = ROOT / "docs"
AVATARS = "https://avatars.test/"


def gradient_png(size: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> bytes:
    """A square PNG fading from `top` to `bottom` (a stand-in profile picture)."""
    rows = b""
    for y in range(size):
        t = y / (size - 1)
        px = bytes(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        rows += b"\x00" + px * size

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


PICTURES = {"maya.png": gradient_png(64, (255, 170, 120), (190, 60, 120)),
            "priya.png": gradient_png(64, (120, 200, 255), (60, 80, 190))}


def serve_avatars(page: Any) -> None:
    def handle(route: Any) -> None:
        name = route.request.url.rsplit("/", 1)[-1]
        if name in PICTURES:
            route.fulfill(status=200, content_type="image/png", body=PICTURES[name])
        else:
            route.fulfill(status=404, body="")
    page.route(f"{AVATARS}**", handle)


def post(api: Api, token: str, conversation_id: str, body: str) -> None:
    for _ in range(50):
        r = api.client(token, "POST", f"/conversations/{conversation_id}/messages",
                       json={"body": body, "client_msg_id": str(uuid.uuid4())})
        if r.status_code != 429:
            break
        time.sleep(0.1)
    assert r.status_code == 201, r.text


def react(url: str, reactions: list[tuple[str, str, str]]) -> None:
    """(token, message id, emoji): each user reacts over a socket of their own."""
    async def run() -> None:
        for token, message_id, emoji in reactions:
            c = await Client(url, token).connect()
            try:
                res = await c.call("react", {"message_id": message_id, "emoji": emoji, "on": True})
                assert res["ok"], res
            finally:
                await c.close()

    asyncio.run(run())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(f"sqlite+aiosqlite:///{tmp}/screens.db", log_path=Path(tmp) / "server.log")
        api = Api(server.url)
        try:
            maya = api.user("maya", "Maya Lin", avatar_url=f"{AVATARS}maya.png")
            priya = api.user("priya", "Priya Shah", avatar_url=f"{AVATARS}priya.png")
            jordan = api.user("jordan", "Jordan Ellis")
            sam = api.user("sam", "Sam Okafor")
            for patron, tier in (("priya", 2500), ("jordan", 1000), ("sam", 500)):
                api.membership("maya", patron, tier)
            studio = api.room("maya", "Studio supporters", min_tier_cents=500)
            gold = api.room("maya", "Gold circle", min_tier_cents=2500, post_policy="creator")
            dm_jordan = api.direct(jordan, "maya")
            dm_priya = api.direct(priya, "maya")

            post(api, maya, gold, "Gold members: the uncut studio session goes live Friday at 6pm.")
            post(api, priya, dm_priya, "Thank you for the shout-out in the last video!")
            post(api, maya, dm_priya, "Of course, your feedback on the mix was spot on.")
            post(api, maya, studio, "Morning everyone! New track preview is up: https://example.com/preview")
            post(api, jordan, studio, "Just listened twice. The bridge is so good!")
            post(api, sam, studio, "Agreed. Is the full version coming out this month?")
            post(api, maya, studio, "Aiming for the 24th. Mastering takes a few more days.")
            post(api, priya, studio, "Could you share the synth patch you used in the intro?")
            post(api, maya, studio, "Sure, I'll post it here tonight along with the stems.")
            post(api, jordan, dm_jordan, "Hey Maya, quick question about the merch drop")
            studio_ids = {m["seq"]: m["id"] for m in
                          api.client(maya, "GET", f"/conversations/{studio}/messages").json()["messages"]}
            react(server.url, [(jordan, studio_ids[1], "🔥"), (sam, studio_ids[1], "🔥"), (priya, studio_ids[1], "❤️"),
                               (maya, studio_ids[2], "👍"), (priya, studio_ids[2], "👍"), (sam, studio_ids[3], "👍")])
            for title, body in (("New patron", "Sam Okafor joined at $5/month"),
                                ("Pledge upgraded", "Priya Shah moved to Gold ($25/month)")):
                r = api.server("POST", "/notifications", {"user_ids": ["maya"], "type": "patron", "title": title,
                                                          "body": body})
                assert r.status_code == 202, r.text

            with sync_playwright() as p:
                browser = launch(p)
                sockets: list[Any] = []
                blocked = {"on": False}

                def route_socket(ws: Any) -> None:
                    if blocked["on"]:
                        ws.close()
                    else:
                        sockets.append((ws, ws.connect_to_server()))

                def creator_setup(page: Any) -> None:
                    serve_avatars(page)
                    page.route_web_socket(re.compile(r"/socket\.io/"), route_socket)

                creator = open_chat(browser, server.url, maya, viewport=DESKTOP, setup=creator_setup)
                patron = open_chat(browser, server.url, priya, viewport=PHONE, touch=True, setup=serve_avatars)

                creator.open(studio)
                creator.wait_seqs([1, 2, 3, 4, 5, 6])
                patron.open(studio)
                patron.wait_seqs([1, 2, 3, 4, 5, 6])
                patron.send("Amazing, thank you!")
                creator.wait_seqs([1, 2, 3, 4, 5, 6, 7])
                creator.send("You're welcome! Stems are 48 kHz WAV.")
                patron.wait_seqs([1, 2, 3, 4, 5, 6, 7, 8])
                expect(creator.page.locator(".msg-seen")).to_have_count(1)
                patron.page.get_by_test_id("composer").press_sequentially("Perfect, I'll try", delay=20)
                expect(creator.page.get_by_test_id("typing-indicator")).to_be_visible(timeout=10_000)
                creator.page.mouse.move(0, 0)
                creator.page.wait_for_timeout(300)
                creator.page.screenshot(path=str(DOCS / "screenshot-desktop-creator.png"))

                patron.page.get_by_test_id("composer").fill("")
                creator.page.get_by_test_id("composer").press_sequentially("One more thing", delay=20)
                expect(patron.page.get_by_test_id("typing-indicator")).to_be_visible(timeout=10_000)
                r = api.server("POST", "/publish", {"channel": "creator:maya", "event": "live", "data": {
                    "text": "Studio session starts now", "url": "https://example.com/live"}})
                assert r.status_code == 200 and r.json()["delivered_to"] >= 2, r.text
                expect(patron.page.get_by_test_id("creator-event")).to_be_visible(timeout=10_000)
                patron.page.wait_for_timeout(300)
                patron.page.screenshot(path=str(DOCS / "screenshot-phone-patron.png"))

                # A long-press on an own message: its actions as a sheet of 44-px rows.
                bubble = patron.message(7).locator(".msg-bubble")
                box = bubble.bounding_box()
                assert box is not None
                cdp = patron.context.new_cdp_session(patron.page)
                point = {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}
                cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [point]})
                expect(patron.message(7).get_by_role("menu")).to_be_visible(timeout=10_000)
                cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
                patron.page.wait_for_timeout(300)
                patron.page.screenshot(path=str(DOCS / "screenshot-phone-menu.png"))

                # Its "Add reaction": the picker's emoji in the same sheet.
                patron.message(7).get_by_role("menuitem", name="Add reaction").tap()
                expect(patron.message(7).get_by_test_id("reaction-picker")).to_be_visible(timeout=10_000)
                patron.page.wait_for_timeout(300)
                patron.page.screenshot(path=str(DOCS / "screenshot-phone-reactions.png"))

                # The creator's connection is lost: the banner, "Retry now", Priya's state unknown.
                creator.page.get_by_test_id("composer").fill("")
                creator.open(dm_priya)
                expect(creator.page.locator("#conv-sub")).to_have_text("online", timeout=10_000)
                blocked["on"] = True
                for ws, upstream in sockets:
                    ws.close()
                    upstream.close()
                expect(creator.page.get_by_test_id("reconnect-banner")).to_be_visible(timeout=10_000)
                creator.page.wait_for_timeout(300)
                creator.page.screenshot(path=str(DOCS / "screenshot-desktop-reconnect.png"))
                browser.close()
        finally:
            api.close()
            server.stop()
    print("wrote docs/screenshot-{desktop-creator,phone-patron,phone-menu,phone-reactions,desktop-reconnect}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
