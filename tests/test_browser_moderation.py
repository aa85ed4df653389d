"""Moderation on the page (issue 14 §2; docs/browser.md "Moderation") in a real Chromium against
the two server processes of the shared MariaDB + Redis cluster: the creator appoints a moderator
from a message's menu; the moderator times a member out (the member, on the other process, sees
the banner and cannot send), pins a message (shown to members, after a reload too) and reads the
log; slow mode set from the panel shows the wait after a send; a block takes the room away and
an unblock brings it back."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.browser_support import PHONE, ChatPage, seed_messages, small_jpeg, tab

pytest_plugins = ["tests.browser_support"]


def menu_of(chat: ChatPage, seq: int) -> Any:
    """Opens the actions menu of message `seq` (hover, then its "Message actions" button)."""
    msg = chat.message(seq)
    msg.hover()
    msg.get_by_role("button", name="Message actions").click()
    menu = msg.get_by_role("menu")
    expect(menu).to_be_visible()
    return menu


def lounge(api: Any, who: Any) -> tuple[str, str, str, str]:
    """Cara's room "Lounge" (tier 100) with Mia and Pat as members at 500; (creator, mia, patron
    tokens, room)."""
    creator = api.user(who.cara, "Cara Creator")
    mia = api.user(who.mia, "Mia Mod")
    patron = api.user(who.pat, "Pat Patron")
    for member in (who.mia, who.pat):
        api.membership(who.cara, member, 500)
    return creator, mia, patron, api.room(who.cara, "Lounge", min_tier_cents=100)


def test_moderator_timeout_pins_slow_mode_and_block(browser, cluster, pages, who):
    api = cluster.api
    creator, mia, patron, room = lounge(api, who)
    seed_messages(api, mia, room, 1, prefix="hi from mia")
    seed_messages(api, patron, room, 1, prefix="hello from pat")
    seed_messages(api, creator, room, 1, prefix="welcome everyone")

    c = tab(pages, browser, cluster.servers[0].url, creator)
    m = tab(pages, browser, cluster.servers[1].url, mia)
    p = tab(pages, browser, cluster.servers[0].url, patron)
    for chat in (c, m, p):
        chat.open(room)
        chat.wait_seqs([1, 2, 3])
    expect(m.page.get_by_test_id("moderate-button")).to_be_hidden()
    # a member's menu has no moderation items
    expect(menu_of(p, 1).get_by_role("menuitem", name="Pin to the room")).to_have_count(0)
    p.page.keyboard.press("Escape")

    # The creator appoints Mia from her message's menu; Mia's page gets the tools live.
    menu_of(c, 1).get_by_role("menuitem", name="Make Mia Mod a moderator").click()
    expect(m.page.get_by_test_id("moderate-button")).to_be_visible()

    # Mia times Pat out for 10 minutes: Pat (other process) sees the banner and cannot send.
    menu = menu_of(m, 2)
    menu.get_by_role("menuitem", name="Time out Pat Patron…").click()
    lengths = m.message(2).get_by_role("menu", name="Time out Pat Patron for")
    lengths.get_by_role("menuitem", name="10 minutes").click()
    banner = p.page.get_by_test_id("timeout-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("you can post in this room again in 9 min")
    expect(p.page.get_by_test_id("composer")).to_be_disabled()
    expect(p.page.get_by_test_id("send-button")).to_be_disabled()
    expect(p.page.get_by_test_id("attach-button")).to_be_disabled()

    # Mia pins the creator's message: everyone sees it above the conversation, after a reload too.
    menu_of(m, 3).get_by_role("menuitem", name="Pin to the room").click()
    for chat in (c, p):
        expect(chat.page.get_by_test_id("pinned-message")).to_have_count(1)
        expect(chat.page.get_by_test_id("pinned-message")).to_contain_text("Cara Creator: welcome everyone 1")
    expect(p.page.get_by_role("button", name="Unpin message")).to_have_count(0)  # members only read pins
    p.page.reload()
    p.wait_connected()
    p.open(room)
    expect(p.page.get_by_test_id("pinned-message")).to_contain_text("welcome everyone 1")
    expect(p.page.get_by_test_id("timeout-banner")).to_be_visible()  # the timeout is read again on load

    # Mia's moderation panel: the log, and lifting Pat's timeout.
    m.page.get_by_test_id("moderate-button").click()
    panel = m.page.get_by_test_id("moderation-panel")
    expect(panel).to_be_visible()
    entries = panel.get_by_test_id("moderation-log-entry")
    expect(entries.first).to_contain_text("You pinned a message by Cara Creator in Lounge")
    expect(entries.nth(1)).to_contain_text("You timed out Pat Patron for 10 min")
    expect(entries.nth(2)).to_contain_text("Cara Creator made you a moderator")
    m.assert_accessible()
    panel.get_by_role("button", name="Lift").click()
    expect(p.page.get_by_test_id("timeout-banner")).to_be_hidden()
    expect(p.page.get_by_test_id("composer")).to_be_enabled()

    # The creator turns slow mode on from the panel; Pat sees it, and the wait after a send.
    c.page.get_by_test_id("moderate-button").click()
    c.page.get_by_test_id("slow-mode-select").select_option(label="30 s")
    slow = p.page.get_by_test_id("slow-mode")
    expect(slow).to_contain_text("Slow mode: one message every 30 s.")
    expect(m.page.get_by_test_id("slow-mode")).to_contain_text("It does not apply to you.")
    p.send("first under slow mode")
    p.wait_seqs([1, 2, 3, 4])
    expect(slow).to_contain_text("You can send again in 2")
    expect(p.page.get_by_test_id("send-button")).to_be_disabled()
    p.page.get_by_test_id("composer").fill("too soon")
    p.page.get_by_test_id("composer").press("Enter")
    expect(p.page.locator(".toast").last).to_contain_text("Slow mode: you can send again in")
    p.wait_seqs([1, 2, 3, 4])  # nothing went out

    # Block (two presses) takes the room away from Pat; Unblock in the panel brings it back.
    c.page.keyboard.press("Escape")
    block = menu_of(c, 2).get_by_role("menuitem", name="Block Pat Patron")
    block.click()
    menu_of_c = c.message(2).get_by_role("menu")
    menu_of_c.get_by_role("menuitem", name="Block Pat Patron?").click()
    expect(p.conversation_item(room)).to_have_count(0)
    expect(p.page.locator(".toast").last).to_contain_text("blocked")
    c.page.get_by_test_id("moderate-button").click()
    c.page.get_by_test_id("moderation-panel").get_by_role("button", name="Unblock").click()
    expect(p.conversation_item(room)).to_have_count(1)
    for chat in (c, m, p):
        chat.assert_clean()


def test_phone_width_photo_tray_sheet_items_and_moderation_panel(browser, cluster, pages, who):
    """The creator on a phone (390 px, touch): the photo tray, a sent photo, the moderation items
    in the long-press sheet, the pinned bar and the moderation panel all fit the screen (axe scans)."""
    api = cluster.api
    creator = api.user(who.cara, "Cara Creator")
    patron = api.user(who.pat, "Pat Patron")
    api.membership(who.cara, who.pat, 500)
    room = api.room(who.cara, "Lounge", min_tier_cents=100)
    seed_messages(api, patron, room, 1, prefix="hello from pat")
    c = tab(pages, browser, cluster.servers[0].url, creator, viewport=PHONE, touch=True)
    p = tab(pages, browser, cluster.servers[1].url, patron)
    p.open(room)
    c.open(room)
    c.wait_seqs([1])
    page = c.page
    fits = "el => { const r = el.getBoundingClientRect(); return r.left >= 0 && r.right <= window.innerWidth; }"

    page.get_by_test_id("photo-input").set_input_files({"name": "a.jpg", "mimeType": "image/jpeg", "buffer": small_jpeg()})
    preview = page.get_by_test_id("photo-preview")
    expect(preview).to_have_attribute("data-status", "done")
    assert page.get_by_test_id("photo-tray").evaluate(fits)
    c.assert_accessible()
    page.get_by_test_id("composer").fill("from my phone")
    page.get_by_test_id("send-button").tap()
    c.wait_seqs([1, 2])
    expect(c.message(2).get_by_test_id("message-photo")).to_be_visible()
    assert c.message(2).get_by_test_id("message-photo").evaluate(fits)
    p.wait_seqs([1, 2])
    expect(p.message(2).get_by_test_id("message-photo")).to_be_visible()

    # A long-press on Pat's message: the sheet has the moderation items, 44 px high.
    box = c.message(1).locator(".msg-bubble").bounding_box()
    assert box is not None
    cdp = c.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [
        {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}]})
    sheet = c.message(1).get_by_role("menu")
    expect(sheet).to_be_visible()
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    for name in ("Pin to the room", "Time out Pat Patron…", "Block Pat Patron", "Make Pat Patron a moderator"):
        size = sheet.get_by_role("menuitem", name=name).bounding_box()
        assert size is not None and size["height"] >= 44, (name, size)
    sheet.get_by_role("menuitem", name="Pin to the room").tap()
    expect(p.page.get_by_test_id("pinned-message")).to_contain_text("Pat Patron: hello from pat 1")
    expect(page.get_by_test_id("pinned-message")).to_be_visible()
    assert page.get_by_test_id("pinned-bar").evaluate(fits)

    page.get_by_test_id("moderate-button").tap()
    panel = page.get_by_test_id("moderation-panel")
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("moderation-log-entry").first).to_contain_text("You pinned a message by Pat Patron")
    assert panel.evaluate(fits)
    c.assert_accessible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    c.assert_clean()
    p.assert_clean()


def test_moderator_deletes_unpins_and_blocks_then_loses_the_tools(browser, cluster, pages, who):
    """What a moderator appointed by the backend does on the page, seen live by the members on
    both processes: delete another member's message, unpin (the creator from the pinned bar, the
    moderator from a message's menu), block a member from the creator's rooms; then the creator
    removes the moderator from a message's menu and her page loses the tools at once."""
    api = cluster.api
    creator, mia, patron, room = lounge(api, who)
    seed_messages(api, creator, room, 1, prefix="welcome everyone")
    seed_messages(api, mia, room, 1, prefix="hi from mia")
    seed_messages(api, patron, room, 2, prefix="pat says")
    pins = [m["id"] for m in seed_messages(api, creator, room, 2, prefix="pin me")]
    r = api.server("PUT", f"/creators/{who.cara}/moderators/{who.mia}")
    assert r.status_code == 200 and r.json()["moderator"] is True, r.text
    for message_id in pins:
        assert api.server("PUT", f"/messages/{message_id}/pin").status_code == 200

    c = tab(pages, browser, cluster.servers[0].url, creator)
    m = tab(pages, browser, cluster.servers[1].url, mia)
    p = tab(pages, browser, cluster.servers[0].url, patron)
    for chat in (c, m, p):
        chat.open(room)
        chat.wait_seqs([1, 2, 3, 4, 5, 6])
        expect(chat.page.get_by_test_id("pinned-message")).to_have_count(2)
    expect(m.page.get_by_test_id("moderate-button")).to_be_visible()  # read from GET /moderation

    # 1. Mia deletes Pat's message (two presses): Pat and the creator see it go.
    menu = menu_of(m, 4)
    menu.get_by_role("menuitem", name="Delete", exact=True).click()
    menu.get_by_role("menuitem", name="Delete?", exact=True).click()
    for chat in (p, c, m):
        expect(chat.message(4)).to_contain_text("message deleted")
        expect(chat.message(4)).not_to_contain_text("pat says 2")
    expect(p.message(3)).to_contain_text("pat says 1")  # only that one

    # 4. Unpinning: the creator from the pinned bar, Mia from the message's menu; the members'
    # bars follow live, and the log says who did it.
    bar = p.page.get_by_test_id("pinned-message")
    expect(p.page.get_by_role("button", name="Unpin message")).to_have_count(0)  # members only read pins
    c.page.get_by_test_id("pinned-message").filter(has_text="pin me 1").get_by_role(
        "button", name="Unpin message").click()
    for chat in (p, m):
        expect(chat.page.get_by_test_id("pinned-message")).to_have_count(1)
        expect(chat.page.get_by_test_id("pinned-message")).to_contain_text("Cara Creator: pin me 2")
    menu_of(m, 6).get_by_role("menuitem", name="Unpin", exact=True).click()
    for chat in (p, c):
        expect(chat.page.get_by_test_id("pinned-message")).to_have_count(0)
        expect(chat.page.get_by_test_id("pinned-bar")).to_be_hidden()
    expect(bar).to_have_count(0)
    expect(menu_of(m, 6).get_by_role("menuitem", name="Pin to the room")).to_have_count(1)  # pinnable again
    m.page.keyboard.press("Escape")

    # 2. Mia blocks Pat (two presses): Pat loses the room at once, with a notice, and after a reload.
    menu = menu_of(m, 3)
    menu.get_by_role("menuitem", name="Block Pat Patron", exact=True).click()
    m.message(3).get_by_role("menu").get_by_role("menuitem", name="Block Pat Patron?", exact=True).click()
    expect(p.conversation_item(room)).to_have_count(0)
    expect(p.page.get_by_test_id("message-list")).to_be_hidden()
    expect(p.page.locator(".toast", has_text="You were blocked from Cara Creator’s rooms.")).to_have_count(1)
    p.page.reload()
    p.wait_connected()
    expect(p.page.get_by_test_id("conversation-list")).to_be_visible()
    expect(p.conversation_item(room)).to_have_count(0)
    m.page.get_by_test_id("moderate-button").click()
    panel = m.page.get_by_test_id("moderation-panel")
    entries = panel.get_by_test_id("moderation-log-entry")
    expect(entries.first).to_contain_text("You blocked Pat Patron")
    expect(entries.nth(1)).to_contain_text("You unpinned a message by Cara Creator in Lounge")
    expect(entries.nth(2)).to_contain_text("Cara Creator unpinned a message by Cara Creator in Lounge")
    expect(entries.nth(3)).to_contain_text("You deleted a message by Pat Patron")
    expect(panel.get_by_role("button", name="Unblock")).to_have_count(1)

    # 3. The creator removes Mia as moderator from her message's menu: Mia's page drops the panel,
    # the Moderate button and the moderation items live, and they stay gone after a reload.
    menu_of(c, 2).get_by_role("menuitem", name="Remove Mia Mod as moderator").click()
    expect(m.page.get_by_test_id("moderate-button")).to_be_hidden()
    expect(panel).to_be_hidden()
    expect(m.page.locator(".toast", has_text="You are no longer a moderator of Cara Creator’s rooms.")).to_have_count(1)
    for chat in (m,):
        items = menu_of(chat, 1).get_by_role("menuitem")
        expect(items).to_have_text(["Add reaction", "Reply in thread", "Copy text", "Report…", "Block Cara Creator…"])
        chat.page.keyboard.press("Escape")
    expect(menu_of(m, 3).get_by_role("menuitem", name="Delete", exact=True)).to_have_count(0)
    m.page.keyboard.press("Escape")
    m.page.reload()
    m.wait_connected()
    m.open(room)
    m.wait_seqs([1, 2, 3, 4, 5, 6])
    expect(m.page.get_by_test_id("moderate-button")).to_be_hidden()
    expect(menu_of(m, 3).get_by_role("menuitem", name="Time out Pat Patron…")).to_have_count(0)
    m.page.keyboard.press("Escape")
    # the creator's menu offers to appoint her again
    expect(menu_of(c, 2).get_by_role("menuitem", name="Make Mia Mod a moderator")).to_have_count(1)
    for chat in (c, m, p):
        chat.assert_clean()
