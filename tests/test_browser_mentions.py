"""Mentions on the page (issue 13 §3; docs/browser.md "Mentions") in a real Chromium against the
two server processes of the shared MariaDB + Redis cluster: `@` completion in the composer by
keyboard (up, down, enter, escape) and in the thread panel's composer, the picked member's id
sent in `mentions`; the mentioned member, on the other process, gets a mention badge live and
after a reload (`mention_count`), the mention highlighted and the message marked, and the badge
cleared once read."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.browser_support import ChatPage, seed_messages, tab

pytest_plugins = ["tests.browser_support"]


def options(chat: ChatPage) -> Any:
    return chat.page.locator("[data-testid=mention-list]:visible [data-testid=mention-option]")


def active_option(chat: ChatPage) -> Any:
    return chat.page.locator("[data-testid=mention-list]:visible [data-testid=mention-option][aria-selected=true]")


def test_mention_completion_by_keyboard_highlight_and_badge(browser, cluster, pages, who, uid):
    api = cluster.api
    creator = api.user(who.cara, "Cara Creator")
    patron = api.user(who.pat, "Pat Patron")
    paula_id = uid("paula")
    api.user(paula_id, "Paula Poe")
    api.user(who.mia, "Mia Mod")
    for member in (who.pat, paula_id, who.mia):
        api.membership(who.cara, member, 500)
    room = api.room(who.cara, "Lounge", min_tier_cents=100)
    seed_messages(api, creator, room, 1, prefix="welcome")

    c = tab(pages, browser, cluster.servers[0].url, creator)
    p = tab(pages, browser, cluster.servers[1].url, patron)
    c.open(room)
    c.wait_seqs([1])
    badge = p.conversation_item(room).get_by_test_id("mention-badge")
    expect(p.conversation_item(room)).to_be_visible()
    expect(badge).to_have_count(0)

    # Escape closes the list and leaves the text as typed.
    composer = c.page.get_by_test_id("composer")
    composer.press_sequentially("ping @Mi")
    expect(options(c)).to_have_count(1)
    expect(options(c).first).to_contain_text("Mia Mod")
    composer.press("Escape")
    expect(c.page.get_by_test_id("mention-list").first).to_be_hidden()
    expect(composer).to_have_value("ping @Mi")
    composer.fill("")

    # "@P": Pat Patron and Paula Poe, by name; down, down (wraps), up, enter.
    composer.press_sequentially("Hey @P")
    expect(options(c)).to_have_count(2)
    expect(options(c).nth(0)).to_contain_text("Pat Patron")
    expect(options(c).nth(1)).to_contain_text("Paula Poe")
    expect(active_option(c)).to_contain_text("Pat Patron")
    composer.press("ArrowDown")
    expect(active_option(c)).to_contain_text("Paula Poe")
    composer.press("ArrowDown")
    expect(active_option(c)).to_contain_text("Pat Patron")
    composer.press("ArrowUp")
    expect(active_option(c)).to_contain_text("Paula Poe")
    composer.press("ArrowUp")
    composer.press("Enter")  # picks, does not send
    expect(composer).to_have_value("Hey @Pat Patron ")
    expect(c.page.get_by_test_id("mention-list").first).to_be_hidden()
    composer.press_sequentially("the stream starts at 8")
    composer.press("Enter")
    c.wait_seqs([1, 2])
    mention = c.message(2).get_by_test_id("mention")
    expect(mention).to_have_text("@Pat Patron")
    expect(mention).to_have_attribute("data-user-id", who.pat)
    expect(c.message(2)).not_to_have_attribute("data-mentions-me", "true")

    # Pat (other process, the room not open): a mention badge, live, and after a reload.
    expect(badge).to_have_text("@1")
    p.page.reload()
    p.wait_connected()
    expect(badge).to_have_text("@1")
    p.assert_accessible()
    p.open(room)
    p.wait_seqs([1, 2])
    expect(p.message(2)).to_have_attribute("data-mentions-me", "true")
    expect(p.message(2).locator("[data-testid=mention].me")).to_have_text("@Pat Patron")
    expect(badge).to_have_count(0)  # read
    p.assert_accessible()

    # The thread composer completes too: Paula is mentioned in a reply.
    msg = c.message(1)
    msg.hover()
    msg.get_by_role("button", name="Message actions").click()
    msg.get_by_role("menuitem", name="Reply in thread").click()
    reply_box = c.page.get_by_test_id("thread-composer")
    expect(reply_box).to_be_focused()
    reply_box.press_sequentially("thanks @pau")
    expect(options(c)).to_have_count(1)
    c.assert_accessible()  # the completion list open
    reply_box.press("Enter")
    expect(reply_box).to_have_value("thanks @Paula Poe ")
    reply_box.press("Enter")
    reply = c.page.locator("[data-testid=thread-list] [data-testid=message][data-seq]")
    expect(reply).to_have_count(1)
    expect(reply.get_by_test_id("mention")).to_have_attribute("data-user-id", paula_id)

    # Pat never saw Paula post: her name comes from the members endpoint, then it is highlighted.
    p.message(1).get_by_test_id("thread-summary").click()
    seen = p.page.locator("[data-testid=thread-list] [data-testid=message][data-seq] [data-testid=mention]")
    expect(seen).to_have_text("@Paula Poe")
    expect(seen).to_have_attribute("data-user-id", paula_id)

    # Read: no badge after a reload either.
    p.page.reload()
    p.wait_connected()
    expect(p.conversation_item(room)).to_be_visible()
    expect(badge).to_have_count(0)
    for chat in (c, p):
        chat.assert_clean()
