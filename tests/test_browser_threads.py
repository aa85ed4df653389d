"""Threads on the page (issue 13 §1; docs/browser.md "Threads") in a real Chromium against the two
server processes of the shared MariaDB + Redis cluster: a reply from the thread panel, the other
user (on the other process) sees the root's reply count and the reply in the panel, never in the
main list; reactions in a reply; older replies paged on scroll-up; a reload whose join page is all
replies still shows the roots only; a phone's full-view thread and its back button."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.browser_support import PHONE, ChatPage, seed_messages, setup_room, small_jpeg, tab

pytest_plugins = ["tests.browser_support"]


def panel(chat: ChatPage) -> Any:
    return chat.page.get_by_test_id("thread-panel")


def replies(chat: ChatPage) -> Any:
    return chat.page.locator("[data-testid=thread-list] [data-testid=message]")


def reply_seqs(chat: ChatPage) -> list[int]:
    raw = chat.page.eval_on_selector_all(
        "[data-testid=thread-list] [data-testid=message][data-seq]", "els => els.map(e => Number(e.dataset.seq))")
    return list(raw)


def summary(chat: ChatPage, seq: int) -> Any:
    return chat.message(seq).get_by_test_id("thread-summary")


def reply(chat: ChatPage, text: str) -> None:
    composer = chat.page.get_by_test_id("thread-composer")
    composer.fill(text)
    composer.press("Enter")


def test_thread_reply_live_on_the_other_process_and_main_view_without_replies(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    seed_messages(api, creator, room, 1, prefix="Q&A tonight?")
    seed_messages(api, patron, room, 1, prefix="hello")

    c = tab(pages, browser, cluster.servers[0].url, creator)
    p = tab(pages, browser, cluster.servers[1].url, patron)
    for chat in (c, p):
        chat.open(room)
        chat.wait_seqs([1, 2])
        expect(summary(chat, 1)).to_have_count(0)  # no replies yet: no summary

    # Pat opens the thread from the root's menu and replies from the panel.
    msg = p.message(1)
    msg.hover()
    msg.get_by_role("button", name="Message actions").click()
    msg.get_by_role("menuitem", name="Reply in thread").click()
    expect(panel(p)).to_be_visible()
    expect(p.page.get_by_test_id("thread-root")).to_contain_text("Q&A tonight? 1")
    expect(p.page.locator("#thread-status")).to_have_text("No replies yet.")
    expect(p.page.get_by_test_id("thread-composer")).to_be_focused()
    reply(p, "count me in")
    expect(replies(p)).to_have_count(1)
    expect(replies(p).first).to_have_attribute("data-status", "sent")
    expect(replies(p).first).to_have_attribute("data-seq", "3")
    expect(summary(p, 1)).to_contain_text("1 reply")
    p.wait_seqs([1, 2])  # the reply stays out of the main list

    # Cara (other process): the root's summary updates live, the reply is not in her main list.
    expect(summary(c, 1)).to_contain_text("1 reply")
    expect(summary(c, 1)).to_contain_text("last reply")
    expect(summary(c, 1).locator(".avatar")).to_have_count(1)  # Pat, the one participant
    expect(summary(c, 1).locator(".avatar-initials")).to_have_text("PP")
    c.wait_seqs([1, 2])
    summary(c, 1).click()
    expect(panel(c)).to_be_visible()
    expect(replies(c)).to_have_count(1)
    expect(replies(c).first.locator(".msg-body")).to_have_text("count me in")
    c.assert_accessible()  # the panel open beside the conversation

    # Cara answers in the thread: Pat's open panel shows it live, the count follows.
    reply(c, "see you there")
    expect(replies(p)).to_have_count(2)
    expect(replies(p).nth(1).locator(".msg-body")).to_have_text("see you there")
    expect(summary(p, 1)).to_contain_text("2 replies")
    expect(summary(p, 1).locator(".avatar")).to_have_count(2)
    p.wait_seqs([1, 2])
    # A plain message still goes to the main list, not to the thread.
    c.send("back in the room")
    p.wait_seqs([1, 2, 5])
    expect(replies(p)).to_have_count(2)

    # A reaction in a reply, through its menu in the panel: the other side sees the chip live.
    first = replies(c).first
    first.hover()
    first.get_by_role("button", name="Message actions").click()
    first.get_by_role("menuitem", name="Add reaction").click()
    c.page.get_by_test_id("reaction-picker").get_by_role("menuitemcheckbox", name="fire").click()
    expect(replies(p).first.get_by_test_id("reaction-chip")).to_have_attribute("data-emoji", "🔥")
    expect(replies(p).first.get_by_test_id("reaction-chip")).to_have_attribute("aria-pressed", "false")
    expect(p.message(1).get_by_test_id("reaction-chip")).to_have_count(0)

    # A photo in a reply, from the panel's own attach button and tray: the other side's panel
    # shows the thumbnail and opens the viewer; the main list's tray stays empty.
    c.page.get_by_test_id("thread-photo-input").set_input_files(
        {"name": "stage.jpg", "mimeType": "image/jpeg", "buffer": small_jpeg()})
    tray = c.page.get_by_test_id("thread-photo-tray")
    expect(tray.get_by_test_id("photo-preview")).to_have_attribute("data-status", "done")
    expect(c.page.get_by_test_id("photo-tray")).to_be_hidden()
    reply(c, "the stage")
    expect(tray).to_be_hidden()
    expect(replies(p)).to_have_count(3)
    photo = replies(p).nth(2).get_by_test_id("message-photo")
    expect(photo).to_be_visible()
    photo.click()
    expect(p.page.get_by_test_id("photo-viewer")).to_be_visible()
    p.page.keyboard.press("Escape")
    expect(p.page.get_by_test_id("photo-viewer")).to_have_count(0)
    expect(summary(p, 1)).to_contain_text("3 replies")

    # Closing the panel; opening it again reads the thread again.
    p.page.get_by_test_id("thread-close").click()
    expect(panel(p)).to_be_hidden()
    summary(p, 1).click()
    expect(replies(p)).to_have_count(3)
    for chat in (c, p):
        chat.assert_clean()


def test_thread_pages_older_replies_and_a_reload_shows_roots_only(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    seed_messages(api, creator, room, 2, prefix="root")  # seqs 1, 2
    root_id = api.client(creator, "GET", f"/conversations/{room}/messages").json()["messages"][0]["id"]
    seed_messages(api, patron, room, 60, prefix="reply", thread_id=root_id)  # seqs 3..62

    # The join's latest 50 are all replies: the main view shows the roots, read with include_replies=false.
    p = tab(pages, browser, cluster.servers[1].url, patron)
    p.open(room)
    p.wait_seqs([1, 2])
    expect(summary(p, 1)).to_contain_text("60 replies")
    summary(p, 1).click()
    expect(replies(p)).to_have_count(50)
    assert reply_seqs(p) == list(range(13, 63))
    expect(p.page.locator("#thread-status")).to_have_text("Scroll up for older replies")
    p.page.locator("[data-testid=thread-list]").evaluate("el => { el.scrollTop = 0; }")
    expect(replies(p)).to_have_count(60)
    assert reply_seqs(p) == list(range(3, 63))
    p.wait_seqs([1, 2])

    # Live: a reply from Cara on the other process reaches the open panel only.
    c = tab(pages, browser, cluster.servers[0].url, creator)
    c.open(room)
    c.wait_seqs([1, 2])
    summary(c, 1).click()
    expect(replies(c)).to_have_count(50)
    reply(c, "last word")
    expect(replies(p)).to_have_count(61)
    expect(replies(p).last.locator(".msg-body")).to_have_text("last word")
    expect(summary(p, 1)).to_contain_text("61 replies")
    p.wait_seqs([1, 2])
    for chat in (c, p):
        chat.assert_clean()


def test_phone_thread_is_a_full_view_with_back(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    root = seed_messages(api, creator, room, 1, prefix="phone root")[0]
    seed_messages(api, creator, room, 1, prefix="first reply", thread_id=root["id"])

    p = tab(pages, browser, cluster.servers[1].url, patron, viewport=PHONE, touch=True)
    p.open(room)
    p.wait_seqs([1])
    summary(p, 1).tap()
    expect(panel(p)).to_be_visible()
    expect(p.page.locator("#conversation")).to_be_hidden()  # the thread takes the screen
    expect(p.page.get_by_test_id("thread-close")).to_be_hidden()
    expect(replies(p)).to_have_count(1)
    box = panel(p).bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5
    assert p.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    p.page.get_by_test_id("thread-composer").tap()
    reply(p, "from my phone")
    expect(replies(p)).to_have_count(2)
    expect(replies(p).nth(1)).to_have_attribute("data-status", "sent")
    p.assert_accessible()

    # The thread's back button returns to the conversation; the browser's back then to the list.
    p.page.get_by_test_id("thread-back").tap()
    expect(panel(p)).to_be_hidden()
    expect(p.page.get_by_test_id("message-list")).to_be_visible()
    expect(summary(p, 1)).to_contain_text("2 replies")
    p.wait_seqs([1])
    summary(p, 1).tap()
    expect(panel(p)).to_be_visible()
    p.page.go_back()  # Android's back closes the thread first
    expect(panel(p)).to_be_hidden()
    expect(p.page.get_by_test_id("message-list")).to_be_visible()
    p.page.go_back()
    expect(p.page.get_by_test_id("conversation-list")).to_be_visible()
    expect(p.page.get_by_test_id("message-list")).to_be_hidden()
    p.assert_clean()
