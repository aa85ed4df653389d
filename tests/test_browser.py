"""The browser client (SPEC §7) in a real Chromium against real server processes.

Two server processes share one MariaDB database and one Redis prefix (the run's
`shared_mysql_cluster`, so each test signs in users of its own); the two users are signed in
on different processes, so every live update crosses the Redis relay. A missing Chromium
fails these tests: `make test` installs it first (`make browser`).
"""

from __future__ import annotations

import re
import struct
import time
import uuid
import zlib
from typing import Any

from playwright.sync_api import expect

from tests.browser_support import AVATAR_HOST, PHONE, room_tabs, seed_messages, setup_room, tab
from tests.support import make_token

# The fixtures browser, pages, cluster and who (shared by the browser test modules).
pytest_plugins = ["tests.browser_support"]


# ---------------------------------------------------------------------- tests


def test_sign_in_and_live_chat_across_two_processes(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    a = tab(pages, browser, cluster.servers[0].url, creator)
    b = tab(pages, browser, cluster.servers[1].url, patron)

    # The token left the address bar and lives in sessionStorage.
    for chat, token in ((a, creator), (b, patron)):
        assert "token" not in chat.page.url
        assert chat.page.evaluate("sessionStorage.getItem('backstage.token')") == token
    expect(a.conversation_item(room)).to_contain_text("Lounge")

    a.open(room)
    b.open(room)
    expect(b.page.locator("#conv-sub")).to_contain_text("2 online")
    a.send("Hello from the creator")
    b.wait_seqs([1])
    expect(b.message(1)).to_contain_text("Hello from the creator")
    expect(b.message(1)).to_contain_text("Cara Creator")
    a.wait_seqs([1])  # confirmed: the pending bubble became seq 1

    composer = b.page.get_by_test_id("composer")
    composer.press_sequentially("Hi Cara!")
    composer.press("Shift+Enter")  # a new line, not a send
    composer.press_sequentially("second line")
    composer.press("Enter")
    b.page.get_by_test_id("send-button").click()  # empty composer: nothing is sent
    b.page.get_by_test_id("composer").fill("third")
    b.page.get_by_test_id("send-button").click()
    a.wait_seqs([1, 2, 3])
    b.wait_seqs([1, 2, 3])
    assert a.bodies() == ["Hello from the creator", "Hi Cara!\nsecond line", "third"]
    expect(a.conversation_item(room)).to_contain_text("third")

    # A reload signs in again from sessionStorage and shows the same history.
    b.page.reload()
    b.wait_connected()
    assert "token" not in b.page.url
    b.open(room)
    b.wait_seqs([1, 2, 3])
    a.assert_clean()
    b.assert_clean()


def test_missing_expired_and_rejected_tokens_show_a_clear_message(browser, cluster, pages, who):
    url = cluster.servers[0].url
    cluster.api.user(who.pat, "Pat Patron")
    nobody = tab(pages, browser, url, None, wait=False)
    expect(nobody.page.locator("#auth-screen")).to_be_visible()
    expect(nobody.page.locator("#auth-screen")).to_contain_text("not signed in")

    expired = tab(pages, browser, url, make_token(who.pat, "Pat", ttl=-60), wait=False)
    expect(expired.page.locator("#auth-screen")).to_contain_text("expired")
    assert "token" not in expired.page.url

    wrong_key = tab(pages, browser, url, make_token(who.pat, "Pat", secret="not-the-server-secret-0123456789abcdef"),
                    wait=False)
    expect(wrong_key.page.locator("#auth-screen")).to_contain_text("did not accept")
    for chat in (nobody, expired, wrong_key):
        expect(chat.page.get_by_test_id("conversation-item")).to_have_count(0)
        chat.assert_clean()


def test_history_loads_older_pages_on_scroll_up(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    seed_messages(api, creator, room, 130, prefix="line")
    b = tab(pages, browser, cluster.servers[1].url, patron)
    b.open(room)
    b.wait_seqs(list(range(81, 131)))  # the latest 50
    expect(b.message(130)).to_be_in_viewport()

    for expected_first in (31, 1):
        b.page.get_by_test_id("message-list").evaluate("el => { el.scrollTop = 0; }")
        b.page.wait_for_function(
            "n => document.querySelector('[data-testid=message-list] [data-testid=message]')?.dataset.seq == n",
            arg=str(expected_first), timeout=10_000)
    b.wait_seqs(list(range(1, 131)))
    expect(b.page.locator("#history-status")).to_contain_text("beginning")
    # Paging kept the reader's place instead of jumping to the top.
    assert b.page.get_by_test_id("message-list").evaluate("el => el.scrollTop") > 0
    expect(b.page.locator(".day-sep")).to_have_text("Today")

    # A message arriving while the reader is up in the history does not yank the view down.
    seed_messages(api, creator, room, 1, prefix="fresh")
    b.wait_seqs(list(range(1, 132)))
    new_below = b.page.get_by_role("button", name="New messages")
    expect(new_below).to_be_visible()
    expect(b.message(131)).not_to_be_in_viewport()
    new_below.click()
    expect(b.message(131)).to_be_in_viewport()
    expect(new_below).to_be_hidden()
    b.assert_clean()


def test_unread_badges_typing_and_read_receipts(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    # Rooms carry no member list: the page learns a name from that member's messages.
    seed_messages(api, patron, room, 1, prefix="hello from pat")
    a = tab(pages, browser, cluster.servers[0].url, creator)
    b = tab(pages, browser, cluster.servers[1].url, patron)
    item = b.conversation_item(room)
    expect(item.get_by_test_id("unread-badge")).to_be_hidden()

    a.open(room)
    a.wait_seqs([1])
    a.send("one")
    a.send("two")
    expect(item.get_by_test_id("unread-badge")).to_have_text("2")
    expect(item).to_contain_text("two")  # last message preview, live

    # Opening the conversation marks it read: the badge goes, the sender sees a receipt.
    b.open(room)
    b.wait_seqs([1, 2, 3])
    expect(item.get_by_test_id("unread-badge")).to_be_hidden()
    expect(a.message(3).locator(".msg-seen")).to_have_text("Seen by Pat Patron")
    assert api.client(patron, "GET", "/conversations").json()["conversations"][0]["unread_count"] == 0
    # A fresh page learns the receipt from the join answer (read_positions), with no live `read` event.
    a.page.reload()
    a.open(room)
    a.wait_seqs([1, 2, 3])
    expect(a.message(3).locator(".msg-seen")).to_have_text("Seen by Pat Patron")

    # Typing: named while it lasts, gone once the message is sent.
    indicator = a.page.get_by_test_id("typing-indicator")
    expect(indicator).to_be_hidden()
    b.page.get_by_test_id("composer").press_sequentially("typing away", delay=30)
    expect(indicator).to_be_visible()
    expect(indicator).to_have_text("Pat Patron is typing…")
    b.page.get_by_test_id("composer").press("Enter")
    expect(indicator).to_be_hidden()
    a.wait_seqs([1, 2, 3, 4])
    # The reply moved the receipt: the patron's own message carries none.
    expect(a.page.locator(".msg-seen")).to_have_count(0)
    a.assert_clean()
    b.assert_clean()


def test_reconnect_recovers_missed_messages_once_in_order(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    a, b = room_tabs(pages, browser, cluster, creator, patron, room)
    a.send("before")
    b.wait_seqs([1])

    b.context.set_offline(True)
    expect(b.page.get_by_test_id("connection-state")).to_have_text("offline")
    first = a.message(1)  # edited while B is away: B re-reads its latest page on reconnect
    first.hover()
    first.get_by_role("button", name="Message actions").click()
    first.get_by_role("menuitem", name="Edit").click()
    first.locator("textarea").fill("before (edited)")
    first.locator("textarea").press("Enter")
    expect(first).to_contain_text("before (edited)")
    for i in range(1, 6):
        a.send(f"missed {i}")
    a.wait_seqs([1, 2, 3, 4, 5, 6])
    # More than one recovery page (join with since_seq answers 100 and has_more).
    seed_messages(api, creator, room, 105, prefix="bulk")
    b.send("written offline")  # queued, then retried with the same client_msg_id
    expect(b.page.locator("[data-testid=message][data-status=queued]")).to_have_count(1)

    b.context.set_offline(False)
    b.wait_connected()
    b.wait_seqs(list(range(1, 113)))
    expect(b.message(1)).to_contain_text("before (edited)")
    assert b.bodies() == ["before (edited)", *(f"missed {i}" for i in range(1, 6)),
                          *(f"bulk {i}" for i in range(1, 106)), "written offline"]
    a.wait_seqs(list(range(1, 113)))
    stored = api.client(creator, "GET", f"/conversations/{room}/messages", params={"after_seq": 100}).json()
    assert [m["body"] for m in stored["messages"]].count("written offline") == 1

    # Live delivery resumes after the reconnect.
    a.send("after")
    b.wait_seqs(list(range(1, 114)))
    a.assert_clean()


def test_failed_send_shows_error_and_retry_reuses_client_msg_id(browser, cluster, pages, who):
    api = cluster.api
    api.user(who.cara, "Cara Creator")
    patron = api.user(who.pat, "Pat Patron")
    api.membership(who.cara, who.pat, 500)
    direct = api.direct(patron, who.cara)
    b = tab(pages, browser, cluster.servers[1].url, patron)
    expect(b.conversation_item(direct)).to_contain_text("Cara Creator")
    b.open(direct)

    api.membership(who.cara, who.pat, 500, status="former")  # the direct chat is read-only now
    b.send("are you there?")
    failed = b.page.locator("[data-testid=message][data-status=failed]")
    expect(failed).to_contain_text("Not sent")
    cmid = failed.get_attribute("data-client-msg-id")

    api.membership(who.cara, who.pat, 500, status="active")
    failed.get_by_role("button", name="Retry").click()
    b.wait_seqs([1])
    assert b.message(1).get_attribute("data-client-msg-id") == cmid
    b.assert_clean()


def test_edit_and_delete_messages(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    a, b = room_tabs(pages, browser, cluster, creator, patron, room)
    b.send("patron typo")
    b.send("patron second")
    a.wait_seqs([1, 2])

    # Own message: the actions sit in a menu shown on hover; edit in place, seen live by the other side.
    mine = b.message(1)
    trigger = mine.get_by_role("button", name="Message actions")
    expect(trigger).to_have_css("opacity", "0")  # hidden until hover or focus
    mine.hover()
    expect(trigger).to_have_css("opacity", "1")
    trigger.click()
    expect(trigger).to_have_attribute("aria-expanded", "true")
    mine.get_by_role("menuitem", name="Edit").click()
    expect(mine.get_by_role("menu")).to_have_count(0)
    box = mine.locator("textarea")
    box.fill("patron fixed")
    box.press("Enter")
    expect(a.message(1)).to_contain_text("patron fixed")
    expect(a.message(1)).to_contain_text("edited")
    # Others' messages offer no edit; the patron cannot delete the creator's messages.
    a.send("creator note")
    b.wait_seqs([1, 2, 3])
    b.message(3).hover()
    b.message(3).get_by_role("button", name="Message actions").click()
    expect(b.message(3).get_by_role("menuitem")).to_have_text(
        ["Add reaction", "Reply in thread", "Copy text", "Report…", "Block Cara Creator…"])
    b.page.keyboard.press("Escape")

    # The room's creator deletes a patron's message, by keyboard: Enter opens the menu with its
    # first item focused, Escape gives the focus back; Delete arms, a second press deletes.
    theirs = a.message(2)
    trigger = theirs.get_by_role("button", name="Message actions")
    trigger.focus()
    trigger.press("Enter")
    menu = theirs.get_by_role("menu")
    expect(menu.get_by_role("menuitem", name="Add reaction")).to_be_focused()
    expect(menu.get_by_role("menuitem", name="Edit")).to_have_count(0)  # not theirs to edit
    a.page.keyboard.press("Escape")
    expect(menu).to_have_count(0)
    expect(trigger).to_be_focused()
    trigger.press("Enter")
    a.page.keyboard.press("ArrowDown")
    expect(menu.get_by_role("menuitem", name="Reply in thread")).to_be_focused()
    a.page.keyboard.press("ArrowDown")
    expect(menu.get_by_role("menuitem", name="Delete")).to_be_focused()
    a.page.keyboard.press("Enter")
    expect(menu.get_by_role("menuitem", name="Delete?")).to_be_focused()
    a.page.keyboard.press("Enter")
    expect(b.message(2)).to_contain_text("message deleted")
    expect(b.message(2)).not_to_contain_text("patron second")
    expect(a.message(2)).to_contain_text("message deleted")
    a.assert_clean()
    b.assert_clean()


def test_reactions_picker_live_chips_who_reacted_and_reload(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    a, b = room_tabs(pages, browser, cluster, creator, patron, room)
    a.send("Show tonight?")
    a.wait_seqs([1])
    b.wait_seqs([1])

    # A reacts through the message's menu, by keyboard: "Add reaction" opens the picker (a menu
    # of emoji, the first focused, arrows move), Enter picks, the focus returns to the button.
    msg_a = a.message(1)
    trigger = msg_a.get_by_role("button", name="Message actions")
    a.page.bring_to_front()  # B's tab opened last: keyboard focus belongs to the front tab
    expect(msg_a).to_contain_text("Seen by")  # B's read receipt re-renders the message: let it land first
    trigger.focus()
    trigger.press("Enter")
    expect(msg_a.get_by_role("menuitem", name="Add reaction")).to_be_focused()
    a.page.keyboard.press("Enter")
    picker = msg_a.get_by_role("menu", name="Add reaction")
    expect(picker.get_by_role("menuitemcheckbox", name="thumbs up")).to_be_focused()
    a.page.keyboard.press("ArrowRight")
    expect(picker.get_by_role("menuitemcheckbox", name="heart")).to_be_focused()
    a.assert_accessible()  # the picker open
    a.page.keyboard.press("ArrowLeft")
    a.page.keyboard.press("Enter")
    expect(picker).to_have_count(0)
    expect(trigger).to_be_focused()

    chip_a = msg_a.get_by_test_id("reaction-chip")
    chip_b = b.message(1).get_by_test_id("reaction-chip")
    expect(chip_a).to_have_text("👍1")
    expect(chip_a).to_have_attribute("aria-pressed", "true")
    expect(chip_a).to_have_accessible_name("👍 thumbs up: 1 reaction, including yours")
    # B sees it live (from the other process), not pressed; who reacted comes on hover.
    expect(chip_b).to_have_text("👍1")
    expect(chip_b).to_have_attribute("aria-pressed", "false")
    chip_b.hover()
    expect(chip_b).to_have_attribute("title", "Cara Creator reacted with 👍")

    # B toggles it on and off; A's count follows, A's own state stays.
    chip_b.click()
    expect(chip_b).to_have_text("👍2")
    expect(chip_b).to_have_attribute("aria-pressed", "true")
    expect(chip_a).to_have_text("👍2")
    expect(chip_a).to_have_attribute("aria-pressed", "true")
    b.assert_accessible()  # a pressed chip
    chip_b.click()
    expect(chip_b).to_have_attribute("aria-pressed", "false")
    expect(chip_b).to_have_text("👍1")
    expect(chip_a).to_have_text("👍1")
    # The picker knows what is ours: B adds a heart with the mouse, A sees a second chip.
    b.message(1).hover()
    b.message(1).get_by_role("button", name="Message actions").click()
    b.message(1).get_by_role("menuitem", name="Add reaction").click()
    b.message(1).get_by_role("menuitemcheckbox", name="heart").click()
    expect(chip_a).to_have_text(["👍1", "❤️1"])
    expect(chip_b.nth(1)).to_have_attribute("aria-pressed", "true")

    # An edit (message_updated has no reactions) keeps them; a reload gets them from the join.
    msg_a.hover()
    trigger.click()
    msg_a.get_by_role("menuitem", name="Edit").click()
    msg_a.locator("textarea").fill("Show tonight at 8?")
    msg_a.locator("textarea").press("Enter")
    expect(b.message(1)).to_contain_text("Show tonight at 8?")
    expect(chip_b).to_have_text(["👍1", "❤️1"])
    expect(chip_a).to_have_text(["👍1", "❤️1"])
    b.page.reload()
    b.wait_connected()
    b.open(room)
    expect(chip_b).to_have_text(["👍1", "❤️1"])
    expect(chip_b.nth(0)).to_have_attribute("aria-pressed", "false")
    expect(chip_b.nth(1)).to_have_attribute("aria-pressed", "true")
    a.assert_clean()
    b.assert_clean()


def test_access_revoked_leaves_the_conversation(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    b = tab(pages, browser, cluster.servers[1].url, patron)
    b.open(room)
    api.membership(who.cara, who.pat, 500, status="former")
    expect(b.conversation_item(room)).to_have_count(0)
    expect(b.page.get_by_test_id("message-list")).to_be_hidden()
    expect(b.page.locator("#toasts")).to_contain_text("no longer have access")
    b.assert_clean()


HOSTILE_IMG = '<img src=x onerror="window.__pwned=1">'
HOSTILE_SCRIPT = "<script>window.__pwned=2</script>"


def test_hostile_markup_is_shown_as_text(browser, cluster, pages, who):
    api = cluster.api
    evil = api.user(who.evil, HOSTILE_IMG)
    creator = api.user(who.cara, "Cara Creator")
    api.membership(who.cara, who.evil, 500)
    room = api.room(who.cara, HOSTILE_SCRIPT, min_tier_cents=100)
    for body in (HOSTILE_IMG, HOSTILE_SCRIPT, "[x](javascript:alert(1)) javascript:alert(2) https://example.com/ok?a=1&b=<2>"):
        r = api.client(evil, "POST", f"/conversations/{room}/messages", json={"body": body, "client_msg_id": str(uuid.uuid4())})
        assert r.status_code == 201, r.text
    r = api.server("POST", "/notifications", {"user_ids": [who.cara], "type": "test", "title": HOSTILE_SCRIPT,
                                              "body": HOSTILE_IMG})
    assert r.status_code == 202, r.text

    a = tab(pages, browser, cluster.servers[0].url, creator)
    expect(a.conversation_item(room)).to_contain_text(HOSTILE_SCRIPT)
    a.open(room)
    a.wait_seqs([1, 2, 3])
    expect(a.page.locator("#conv-title")).to_have_text(HOSTILE_SCRIPT)
    expect(a.message(1).locator(".msg-sender")).to_have_text(HOSTILE_IMG)
    assert a.bodies()[:2] == [HOSTILE_IMG, HOSTILE_SCRIPT]
    links = a.message(3).locator("a")
    expect(links).to_have_count(1)  # only the https URL is a link, never javascript:
    assert links.get_attribute("href") == "https://example.com/ok?a=1&b="
    assert links.get_attribute("rel") == "noopener noreferrer"
    assert links.get_attribute("target") == "_blank"

    a.page.get_by_test_id("notification-bell").click()
    item = a.page.get_by_test_id("notification-item").first
    expect(item).to_contain_text(HOSTILE_SCRIPT)
    expect(item).to_contain_text(HOSTILE_IMG)

    a.send(HOSTILE_IMG)  # own message: pending bubble and confirmed one
    a.wait_seqs([1, 2, 3, 4])
    assert a.page.evaluate("window.__pwned") is None
    assert a.page.locator("img").count() == 0
    assert a.page.locator("script").count() == 1  # the page's own module script
    a.assert_clean()


def test_notification_bell_feed_and_mark_read(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)

    def notify(title: str) -> None:
        r = api.server("POST", "/notifications", {"user_ids": [who.pat], "type": "post", "title": title,
                                                  "body": f"{title} body", "data": {"conversation_id": room}})
        assert r.status_code == 202, r.text

    notify("First post")
    b = tab(pages, browser, cluster.servers[1].url, patron)
    bell = b.page.get_by_test_id("notification-bell")
    expect(bell).to_contain_text("1")
    notify("Second post")  # live over the socket
    expect(bell).to_contain_text("2")

    def wait_server_unread(expected: int) -> None:
        deadline = time.monotonic() + 10
        while (n := api.client(patron, "GET", "/me").json()["unread_notifications"]) != expected:
            assert time.monotonic() < deadline, f"the server counts {n} unread notifications, not {expected}"
            time.sleep(0.1)

    # Opening the bell marks what it shows as seen (they keep the "new" look while it is open).
    bell.click()
    items = b.page.get_by_test_id("notification-item")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("Second post")
    expect(b.page.locator("#bell-count")).to_be_hidden()
    wait_server_unread(0)
    expect(items.first).to_have_class("notif unread")
    # One arriving while the panel is open is seen at once.
    notify("Third post")
    expect(items).to_have_count(3)
    wait_server_unread(0)
    expect(b.page.locator("#bell-count")).to_be_hidden()

    # Closed, the bell counts again.
    b.page.keyboard.press("Escape")
    notify("Fourth post")
    expect(bell).to_contain_text("1")
    bell.click()
    expect(items).to_have_count(4)
    expect(items.first).to_have_class("notif unread")
    expect(items.nth(1)).to_have_class("notif")  # seen at the last opening: no longer "new"
    expect(b.page.locator("#bell-count")).to_be_hidden()
    wait_server_unread(0)

    # A notification about a conversation opens it.
    items.first.click()
    expect(b.page.get_by_test_id("message-list")).to_be_visible()
    expect(b.page.locator("#conv-title")).to_have_text("Lounge")
    b.assert_clean()


def test_phone_width_list_then_conversation(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    seed_messages(api, creator, room, 3)
    b = tab(pages, browser, cluster.servers[1].url, patron, viewport=PHONE, touch=True)
    # The own name shows on a phone too, inside the screen.
    me = b.page.get_by_test_id("me")
    expect(me).to_be_visible()
    expect(me).to_contain_text("Pat Patron")
    assert b.page.locator("#me-name").evaluate("el => el.getBoundingClientRect().right <= window.innerWidth")
    conv_list = b.page.get_by_test_id("conversation-list")
    expect(conv_list).to_be_visible()
    expect(b.page.get_by_test_id("message-list")).to_be_hidden()
    expect(b.conversation_item(room)).to_contain_text("seed 3")
    fits = "el => el.getBoundingClientRect().right <= window.innerWidth && el.scrollWidth <= el.clientWidth"
    assert b.conversation_item(room).evaluate(fits), "the list item overflows the phone's width"

    b.open(room)
    expect(conv_list).to_be_hidden()
    b.wait_seqs([1, 2, 3])
    expect(b.page.get_by_test_id("composer")).to_be_visible()
    long_text = "from my phone, a message long enough to fill the bubble's whole width on this screen"
    b.send(long_text)
    b.wait_seqs([1, 2, 3, 4])
    # Nothing overflows the phone's width.
    assert b.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # No action buttons squeeze the bubble: it takes the message's full width (86% of the list).
    mine = b.message(4)
    widths = mine.evaluate("""el => [el.querySelector('.msg-bubble').getBoundingClientRect().width,
                                     document.querySelector('[data-testid=message-list]').clientWidth]""")
    assert widths[0] >= 0.8 * widths[1], widths

    # A long-press on the bubble opens the actions as a sheet of 44-px targets.
    box = mine.locator(".msg-bubble").bounding_box()
    assert box is not None
    cdp = b.context.new_cdp_session(b.page)
    point = {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [point]})
    menu = mine.get_by_role("menu")
    expect(menu).to_be_visible()
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(menu).to_be_visible()  # lifting the finger does not close it
    for item in menu.get_by_role("menuitem").all():
        size = item.bounding_box()
        assert size is not None and size["height"] >= 44 and size["width"] >= 44, size
    b.assert_accessible()
    menu.get_by_role("menuitem", name="Edit").tap()
    mine.locator("textarea").fill("edited on my phone")
    mine.locator("textarea").press("Enter")
    expect(mine).to_contain_text("edited on my phone")
    expect(mine).to_contain_text("edited")

    # Reactions by touch: "Add reaction" in the sheet offers 44-px emoji; a long-press on a chip
    # says who reacted, without toggling it.
    def long_press(locator: Any) -> None:
        box = locator.bounding_box()
        assert box is not None
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [
            {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}]})

    long_press(mine.locator(".msg-bubble"))
    expect(menu).to_be_visible()
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    menu.get_by_role("menuitem", name="Add reaction").tap()
    picker = mine.get_by_role("menu", name="Add reaction")
    for item in picker.get_by_role("menuitemcheckbox").all():
        size = item.bounding_box()
        assert size is not None and size["height"] >= 44 and size["width"] >= 44, size
    picker.get_by_role("menuitemcheckbox", name="fire").tap()
    chip = mine.get_by_test_id("reaction-chip")
    expect(chip).to_have_attribute("aria-pressed", "true")
    size = chip.bounding_box()
    assert size is not None and size["height"] >= 44 and size["width"] >= 44, size
    long_press(chip)
    expect(mine.get_by_test_id("reaction-who")).to_have_text("You reacted with 🔥")
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(chip).to_have_attribute("aria-pressed", "true")
    expect(chip).to_have_text("🔥1")

    # The browser's back (Android's back gesture) returns to the list too.
    b.page.go_back()
    expect(conv_list).to_be_visible()
    expect(b.page.get_by_test_id("message-list")).to_be_hidden()
    b.open(room)
    b.page.get_by_test_id("back-button").click()
    expect(conv_list).to_be_visible()
    expect(b.page.get_by_test_id("message-list")).to_be_hidden()
    expect(b.conversation_item(room)).to_contain_text("edited on my phone")
    b.assert_clean()


def test_token_expiring_while_open_signs_out(browser, cluster, pages, who):
    api = cluster.api
    api.user(who.pat, "Pat Patron")
    # The token is good for ten minutes of the page's clock, so loading never races its expiry;
    # then the page's clock jumps past it (the server's is not touched).
    b = tab(pages, browser, cluster.servers[0].url, make_token(who.pat, "Pat Patron", ttl=600), fake_clock=True)
    expect(b.page.get_by_test_id("conversation-list")).to_be_visible()
    expect(b.page.locator("#auth-screen")).to_be_hidden()
    b.page.clock.fast_forward(601_000)
    expect(b.page.locator("#auth-screen")).to_contain_text("expired")
    expect(b.page.get_by_test_id("conversation-list")).to_be_hidden()
    b.assert_clean()


def test_direct_conversation_presence_and_mute(browser, cluster, pages, who):
    api = cluster.api
    creator = api.user(who.cara, "Cara Creator")
    patron = api.user(who.pat, "Pat Patron")
    api.membership(who.cara, who.pat, 500)
    direct = api.direct(patron, who.cara)
    a = tab(pages, browser, cluster.servers[0].url, creator)
    item = a.conversation_item(direct)
    expect(item).to_contain_text("Pat Patron")  # named after the other member
    expect(item.locator(".presence-dot")).to_have_class("presence-dot offline")

    b = tab(pages, browser, cluster.servers[1].url, patron)
    expect(item.locator(".presence-dot")).to_have_class("presence-dot online")
    a.open(direct)
    expect(a.page.locator("#conv-sub")).to_have_text("online")
    b.context.close()
    pages.remove(b)
    expect(item.locator(".presence-dot")).to_have_class("presence-dot offline", timeout=30_000)
    expect(a.page.locator("#conv-sub")).to_have_text("offline")

    a.page.get_by_role("button", name="Mute").click()
    expect(item).to_contain_text("muted")
    entry = api.client(creator, "GET", "/conversations").json()["conversations"][0]
    assert entry["conversation"]["id"] == direct and entry["muted"] is True
    a.assert_clean()


def _png(rgb: tuple[int, int, int]) -> bytes:
    """A 1x1 PNG of one colour (an avatar picture)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" + bytes(rgb))) + chunk(b"IEND", b""))


def serve_avatars(page: Any) -> None:
    """cara.png exists on the avatar host; anything else there is a 404."""
    def handle(route: Any) -> None:
        if route.request.url.endswith("/cara.png"):
            route.fulfill(status=200, content_type="image/png", body=_png((200, 80, 120)))
        else:
            route.fulfill(status=404, content_type="text/plain", body="no such picture")
    page.route(f"{AVATAR_HOST}**", handle)


def test_reconnect_banner_presence_avatars_creator_events_and_axe(browser, cluster, pages, who):
    """The page while its server connection is lost (banner, "retry now", the other person's
    state unknown rather than offline), avatars with initials as fallback, `creator:{id}`
    events, and an axe-core scan with no serious or critical violation."""
    api = cluster.api
    creator = api.user(who.cara, "Cara Creator", avatar_url=f"{AVATAR_HOST}cara.png")
    patron = api.user(who.pat, "Pat Patron", avatar_url=f"{AVATAR_HOST}pat.png")  # a 404: initials
    api.membership(who.cara, who.pat, 500)
    direct = api.direct(patron, who.cara)

    # The patron's websocket goes through this route, which can drop it and refuse new ones.
    net: dict[str, Any] = {"blocked": False, "attempts": 0, "live": []}

    def route_socket(ws: Any) -> None:
        net["attempts"] += 1
        if net["blocked"]:
            ws.close()
            return
        net["live"].append((ws, ws.connect_to_server()))

    def setup(page: Any) -> None:
        serve_avatars(page)
        page.route_web_socket(re.compile(r"/socket\.io/"), route_socket)

    a = tab(pages, browser, cluster.servers[0].url, creator, setup=serve_avatars)
    b = tab(pages, browser, cluster.servers[1].url, patron, setup=setup, fake_clock=True)

    # Avatars: the picture when it loads, the initials when there is none or it fails.
    item = b.conversation_item(direct)
    expect(item.locator(".avatar")).to_have_attribute("data-avatar", "image")
    expect(b.page.locator("#me-avatar")).to_have_attribute("data-avatar", "initials")
    expect(b.page.locator("#me-avatar")).to_have_text("PP")
    expect(a.page.locator("#me-avatar")).to_have_attribute("data-avatar", "image")
    expect(a.conversation_item(direct).locator(".avatar")).to_have_attribute("data-avatar", "initials")
    expect(a.conversation_item(direct).locator(".avatar")).to_have_text("PP")

    b.open(direct)
    expect(b.page.locator("#conv-avatar")).to_have_attribute("data-avatar", "image")
    sub = b.page.locator("#conv-sub")
    expect(sub).to_have_text("online")
    b.send("hello Cara")
    b.wait_seqs([1])
    banner = b.page.get_by_test_id("reconnect-banner")
    expect(banner).to_be_hidden()

    # The server is lost. The page's timers stand still, so no back-off attempt can happen by itself.
    b.page.clock.pause_at((b.page.evaluate("Date.now()") + 1000) / 1000)  # seconds
    net["blocked"] = True
    for ws, server in net["live"]:
        ws.close()
        server.close()
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Connection to the server lost")
    # We are the ones disconnected: Cara's state is unknown, not "offline".
    expect(sub).to_have_text("status unknown while reconnecting")
    expect(item.locator(".presence-dot")).to_have_class("presence-dot unknown")
    expect(b.page.get_by_test_id("connection-state")).to_have_text("connecting…")
    attempts = net["attempts"]
    b.page.get_by_role("button", name="Retry now").click()  # an attempt at once (refused: still blocked)
    deadline = time.monotonic() + 10
    while net["attempts"] == attempts:
        assert time.monotonic() < deadline, "Retry now made no connection attempt"
        b.page.wait_for_timeout(50)
    expect(banner).to_be_visible()
    b.page.clock.resume()

    # The actions menu, by keyboard, and an accessibility scan of the page as it is (banner shown).
    trigger = b.message(1).get_by_role("button", name="Message actions")
    trigger.focus()
    trigger.press("Enter")
    expect(b.message(1).get_by_role("menuitem", name="Add reaction")).to_be_focused()
    b.assert_accessible()
    b.page.keyboard.press("Escape")
    expect(trigger).to_be_focused()

    net["blocked"] = False
    b.page.get_by_role("button", name="Retry now").click()
    b.wait_connected()
    expect(banner).to_be_hidden()
    expect(sub).to_have_text("online")
    expect(item.locator(".presence-dot")).to_have_class("presence-dot online")

    # An event published to the creator's channel reaches the page, subscribed again after the
    # reconnect. Published until both tabs are subscribed (their subscriptions race this test).
    strip = b.page.get_by_test_id("creator-event")
    deadline = time.monotonic() + 15
    while True:
        r = api.server("POST", "/publish", {"channel": f"creator:{who.cara}", "event": "live",
                                            "data": {"text": "Studio session starts now", "url": "https://example.com/live"}})
        assert r.status_code == 200, r.text
        if r.json()["delivered_to"] >= 2:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    expect(strip).to_be_visible()
    expect(strip).to_contain_text("Cara Creator · live")
    expect(strip).to_contain_text("Studio session starts now")
    assert strip.get_by_role("link", name="Open").get_attribute("href") == "https://example.com/live"
    b.assert_accessible()
    strip.get_by_role("button", name="Dismiss announcement").click()
    expect(strip).to_be_hidden()
    a.assert_clean()
    b.assert_clean()
