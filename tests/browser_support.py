"""Helpers for the real-browser tests: Debian's Chromium driven by Playwright (sync API).

Playwright's own browser download does not work here; the tests launch /usr/bin/chromium
(`apt-get install -y chromium`). The page loads socket.io-client from node_modules (`npm ci`).
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SOCKETIO_CLIENT = ROOT / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
# A test tool (package.json devDependencies), injected by the tests, never served by the page.
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
# Avatar pictures live on this made-up host; the tests answer it with page.route.
AVATAR_HOST = "https://avatars.test/"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

MESSAGES = "[data-testid=message-list] [data-testid=message]"


def launch(playwright: Any) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@dataclass
class ChatPage:
    """One signed-in browser tab, with the console errors and CSP reports it produced."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ navigation
    def conversation_item(self, conversation_id: str) -> Any:
        return self.page.locator(f'[data-testid=conversation-item][data-conversation-id="{conversation_id}"]')

    def open(self, conversation_id: str) -> None:
        self.conversation_item(conversation_id).click()
        expect(self.page.get_by_test_id("message-list")).to_be_visible()

    def wait_connected(self, timeout: float = 15_000) -> None:
        expect(self.page.get_by_test_id("connection-state")).to_have_text("connected", timeout=timeout)

    # ------------------------------------------------------------ messages
    def send(self, text: str) -> None:
        composer = self.page.get_by_test_id("composer")
        composer.fill(text)
        composer.press("Enter")

    def messages(self) -> Any:
        return self.page.locator(MESSAGES)

    def seqs(self) -> list[int | None]:
        raw = self.page.eval_on_selector_all(MESSAGES, "els => els.map(e => e.dataset.seq ?? null)")
        return [int(s) if s is not None else None for s in raw]

    def bodies(self) -> list[str]:
        return self.page.eval_on_selector_all(
            MESSAGES, "els => els.map(e => (e.querySelector('.msg-body')?.textContent ?? ''))")

    def message(self, seq: int) -> Any:
        return self.page.locator(f'{MESSAGES}[data-seq="{seq}"]')

    def wait_seqs(self, expected: list[int], timeout: float = 15_000) -> None:
        """Waits until the open conversation shows exactly these seqs, in this order."""
        deadline = time.monotonic() + timeout / 1000
        seqs: list[int | None] = []
        while time.monotonic() < deadline:
            seqs = self.seqs()
            if seqs == expected:
                return
            self.page.wait_for_timeout(100)
        raise AssertionError(f"expected seqs {expected}, page shows {seqs}")

    def assert_clean(self) -> None:
        """No uncaught errors and no Content-Security-Policy violations in this tab."""
        assert not self.errors, self.errors

    def assert_accessible(self) -> None:
        """An axe-core scan of the page as it is now finds no serious or critical violation.

        axe.min.js comes from node_modules (a devDependency) and is evaluated through the
        DevTools protocol, which the page's CSP does not govern: the page itself is not changed."""
        if not self.page.evaluate("typeof window.axe !== 'undefined'"):
            self.page.evaluate(AXE.read_text(encoding="utf-8"))
        violations = self.page.evaluate("""async () => {
            const r = await axe.run(document, {resultTypes: ["violations"]});
            return r.violations.filter(v => v.impact === "serious" || v.impact === "critical")
                .map(v => `${v.impact} ${v.id}: ${v.help} -> ` +
                          v.nodes.slice(0, 5).map(n => `${n.target.join(" ")} (${n.failureSummary})`).join("; "));
        }""")
        assert not violations, "\n".join(violations)


def open_chat(browser: Browser, base_url: str, token: str | None, viewport: dict[str, int] = DESKTOP,
              wait: bool = True, fake_clock: bool = False, touch: bool = False,
              setup: Callable[[Page], None] | None = None) -> ChatPage:
    """fake_clock: the page's Date and timers run on Playwright's clock (starting now, ticking
    normally) so that a test can jump ahead with `chat.page.clock.fast_forward(...)`.
    touch: a phone's touch screen (no hover). setup: routes etc. to install before the page loads."""
    context = browser.new_context(viewport=viewport, base_url=base_url, has_touch=touch, is_mobile=touch)
    if fake_clock:
        context.clock.install()
    page = context.new_page()
    chat = ChatPage(context, page)
    if setup is not None:
        setup(page)

    def on_console(msg: Any) -> None:
        if msg.type != "error" or _expected_console_error(msg.text):
            return
        if str((msg.location or {}).get("url", "")).startswith(AVATAR_HOST):
            return  # a missing picture on purpose (the initials show instead)
        chat.errors.append(f"console: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: chat.errors.append(f"pageerror: {exc}"))
    page.goto("/" if token is None else f"/?token={token}")
    if wait:
        chat.wait_connected()
    return chat


_EXPECTED_ERRORS = re.compile(
    r"ERR_INTERNET_DISCONNECTED|ERR_NETWORK_CHANGED|WebSocket connection to .* failed|"
    r"Failed to load resource: the server responded with a status of 401"
)


def _expected_console_error(text: str) -> bool:
    # Offline tests make connection attempts fail on purpose; the auth tests get 401s.
    return bool(_EXPECTED_ERRORS.search(text))


def seed_messages(api: Any, token: str, conversation_id: str, count: int, prefix: str = "seed",
                  thread_id: str | None = None) -> list[dict[str, Any]]:
    """Posts `count` messages over HTTP (replies to `thread_id` when given), waiting out the
    per-user rate limit (a 429 stored nothing); returns the stored messages."""
    stored = []
    for i in range(1, count + 1):
        body: dict[str, Any] = {"body": f"{prefix} {i}", "client_msg_id": str(uuid.uuid4())}
        if thread_id is not None:
            body["thread_id"] = thread_id
        for _ in range(100):
            r = api.client(token, "POST", f"/conversations/{conversation_id}/messages", json=body)
            if r.status_code != 429:
                break
            time.sleep(0.1)
        assert r.status_code == 201, r.text
        stored.append(r.json()["message"])
    return stored


def noisy_png(width: int, height: int, seed: int = 1) -> bytes:
    """A PNG that does not compress (random pixels): about 3 bytes a pixel on the wire."""
    rnd = random.Random(seed)
    img = Image.frombytes("RGB", (width, height), rnd.randbytes(width * height * 3))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def small_jpeg(color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, "JPEG")
    return out.getvalue()


# ---------------------------------------------------------------------- fixtures
# Shared by the browser test modules (tests/test_browser*.py import them by name).

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # A missing browser fails these tests (never skips them): `make test` installs it (`make browser`).
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: run `make browser` (apt-get install -y chromium)"
    assert SOCKETIO_CLIENT.exists(), "socket.io-client is not installed: run `npm ci` at the repository root"
    assert AXE.exists(), "axe-core (a devDependency) is not installed: run `npm ci` at the repository root"
    expect.set_options(timeout=10_000)  # CI machines are small: give live updates room
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def pages() -> Iterator[list[ChatPage]]:
    """Tabs opened by a test; closed (and checked for CSP violations and errors) afterwards."""
    opened: list[ChatPage] = []
    yield opened
    for chat in opened:
        chat.context.close()


@pytest.fixture
def cluster(shared_mysql_cluster: Any) -> Any:
    """The run's shared two-process MariaDB + Redis cluster; each test signs in users of its own."""
    return shared_mysql_cluster


@pytest.fixture
def who(uid: Any) -> Any:
    """This test's user ids (display names stay "Cara Creator", "Pat Patron"...)."""
    return SimpleNamespace(cara=uid("cara"), pat=uid("pat"), evil=uid("evil"), mia=uid("mia"))


def tab(pages: list[ChatPage], browser: Any, url: str, token: str | None, **kw: Any) -> ChatPage:
    chat = open_chat(browser, url, token, **kw)
    pages.append(chat)
    return chat


def setup_room(api: Any, who: Any, name: str = "Lounge") -> tuple[str, str, str]:
    creator = api.user(who.cara, "Cara Creator")
    patron = api.user(who.pat, "Pat Patron")
    api.membership(who.cara, who.pat, 500)
    room = api.room(who.cara, name, min_tier_cents=100)
    return creator, patron, room


def room_tabs(pages: Any, browser: Any, cluster: Any, creator: str, patron: str, room: str) -> tuple[Any, Any]:
    """The creator's tab on the first server process and the patron's on the second, both with
    `room` open: the two-process setup most page tests start from."""
    a = tab(pages, browser, cluster.servers[0].url, creator)
    b = tab(pages, browser, cluster.servers[1].url, patron)
    a.open(room)
    b.open(room)
    return a, b


def socket_call(url: str, token: str, event: str, data: Any) -> Any:
    """One request with an ack from a real Socket.IO client (tests/support.Client) of another
    user, for what a test needs done by someone without a tab. It runs in a thread of its own:
    Playwright's sync API keeps its event loop marked as running in the test's thread."""
    from tests.support import Client

    async def go() -> Any:
        client = await Client(url, token).connect()
        try:
            return await client.call(event, data)
        finally:
            await client.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result(timeout=30)
