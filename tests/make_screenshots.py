"""Regenerates the README screenshots of the browser client (not part of the test run).

    .venv/bin/python tests/make_screenshots.py

Starts one server on a throwaway SQLite file, seeds a creator, patrons, rooms and messages
through the server and client APIs, and photographs the creator's desktop view
(docs/screenshot-desktop-creator.png, 1280x800) and a patron's phone view
(docs/screenshot-phone-patron.png, 390x844) with /usr/bin/chromium. Needs `npm ci`.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser_support import DESKTOP, PHONE, launch, open_chat  # noqa: E402
from tests.support import Api, ServerProcess  # noqa: E402

DOCS = ROOT / "docs"


def post(api: Api, token: str, conversation_id: str, body: str) -> None:
    for _ in range(50):
        r = api.client(token, "POST", f"/conversations/{conversation_id}/messages",
                       json={"body": body, "client_msg_id": str(uuid.uuid4())})
        if r.status_code != 429:
            break
        time.sleep(0.1)
    assert r.status_code == 201, r.text


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(f"sqlite+aiosqlite:///{tmp}/screens.db", log_path=Path(tmp) / "server.log")
        api = Api(server.url)
        try:
            maya = api.user("maya", "Maya Lin")
            priya = api.user("priya", "Priya Shah")
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
            for title, body in (("New patron", "Sam Okafor joined at $5/month"),
                                ("Pledge upgraded", "Priya Shah moved to Gold ($25/month)")):
                r = api.server("POST", "/notifications", {"user_ids": ["maya"], "type": "patron", "title": title,
                                                          "body": body})
                assert r.status_code == 202, r.text

            with sync_playwright() as p:
                browser = launch(p)
                creator = open_chat(browser, server.url, maya, viewport=DESKTOP)
                patron = open_chat(browser, server.url, priya, viewport=PHONE)

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
                patron.page.wait_for_timeout(300)
                patron.page.screenshot(path=str(DOCS / "screenshot-phone-patron.png"))
                browser.close()
        finally:
            api.close()
            server.stop()
    print("wrote docs/screenshot-desktop-creator.png and docs/screenshot-phone-patron.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
