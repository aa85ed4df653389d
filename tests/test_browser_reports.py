"""Reports and blocks between members on the page (issue 14 §3, §4; docs/browser.md "Reports"
and "Blocks between members") in a real Chromium against the two server processes of the shared
MariaDB + Redis cluster: members report a message from its menu, at three reports it becomes a
placeholder for members on both processes (live and after a reload), the moderator sees the
reports in the Moderate panel (a live count) and dismisses them or removes the message; a member
blocks another (placeholders live and after a reload, the list of blocks, unblock), and a
direct conversation with a blocked user cannot be written to, on either side."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.browser_support import ChatPage, seed_messages, socket_call, tab

pytest_plugins = ["tests.browser_support"]

HIDDEN = "Hidden after reports"
BLOCKED = "Message from a blocked user"


def menu_of(chat: ChatPage, seq: int) -> Any:
    """Opens the actions menu of message `seq` (hover, then its "Message actions" button)."""
    msg = chat.message(seq)
    msg.hover()
    msg.get_by_role("button", name="Message actions").click()
    menu = msg.get_by_role("menu")
    expect(menu).to_be_visible()
    return menu


def report(chat: ChatPage, seq: int, reason: str, note: str = "") -> None:
    """Reports message `seq` through its menu and the dialog."""
    menu_of(chat, seq).get_by_role("menuitem", name="Report…").click()
    dialog = chat.page.get_by_test_id("report-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("radio", name=reason).check()
    if note:
        dialog.get_by_label("Anything to add? (optional)").fill(note)
    dialog.get_by_role("button", name="Report", exact=True).click()
    expect(dialog).to_have_count(0)


def test_reports_hide_a_message_and_the_moderator_dismisses_or_removes(browser, cluster, pages, who, uid):
    api = cluster.api
    api.user(who.cara, "Cara Creator")
    mia = api.user(who.mia, "Mia Mod")
    patron = api.user(who.pat, "Pat Patron")
    eve = api.user(who.evil, "Eve Member")
    sam = api.user(uid("sam"), "Sam Member")
    tom = api.user(uid("tom"), "Tom Troll")
    for member in (who.mia, who.pat, who.evil, uid("sam"), uid("tom")):
        api.membership(who.cara, member, 500)
    assert api.server("PUT", f"/creators/{who.cara}/moderators/{who.mia}").status_code == 200
    room = api.room(who.cara, "Lounge", min_tier_cents=100)
    seed_messages(api, tom, room, 1, prefix="buy cheap followers")
    seed_messages(api, tom, room, 1, prefix="more spam")

    m = tab(pages, browser, cluster.servers[1].url, mia)
    p = tab(pages, browser, cluster.servers[0].url, patron)
    e = tab(pages, browser, cluster.servers[1].url, eve)
    for chat in (m, p, e):
        chat.open(room)
        chat.wait_seqs([1, 2])
    moderate = m.page.get_by_test_id("moderate-button")
    expect(moderate).to_be_visible()
    expect(m.page.get_by_test_id("reports-badge")).to_have_count(0)
    # The moderator reviews reports rather than filing them.
    expect(menu_of(m, 1).get_by_role("menuitem", name="Report…")).to_have_count(0)
    m.page.keyboard.press("Escape")

    # Pat reports: a reason is required, the note is optional; "Reported" afterwards.
    menu_of(p, 1).get_by_role("menuitem", name="Report…").click()
    dialog = p.page.get_by_test_id("report-dialog")
    expect(dialog).to_be_visible()
    p.assert_accessible()
    dialog.get_by_role("button", name="Report", exact=True).click()
    expect(dialog.get_by_role("alert")).to_have_text("Choose a reason.")
    dialog.get_by_role("radio", name="Spam").check()
    dialog.get_by_label("Anything to add? (optional)").fill("a bot selling followers")
    dialog.get_by_role("button", name="Report", exact=True).click()
    expect(dialog).to_have_count(0)
    expect(p.page.locator(".toast").last).to_contain_text("the moderators will look at it")
    expect(p.message(1).get_by_test_id("reported-marker")).to_have_text("Reported")
    expect(menu_of(p, 1).get_by_role("menuitem", name="Reported")).to_be_visible()
    p.page.keyboard.press("Escape")
    # The moderator's count, live (the report came through the other process).
    expect(m.page.get_by_test_id("reports-badge")).to_have_text("1")

    # A repeat (after a reload the page no longer knows) is harmless: nothing more is counted.
    p.page.reload()
    p.wait_connected()
    p.open(room)
    p.wait_seqs([1, 2])
    report(p, 1, "Spam")
    expect(p.page.locator(".toast").last).to_contain_text("You had already reported this message.")

    # Eve (other process) reports it too: 2. Sam's report (a socket client) is the third: hidden.
    report(e, 1, "Harassment or bullying")
    expect(m.page.get_by_test_id("reports-badge")).to_have_text("2")
    message_id = p.message(1).get_attribute("data-message-id")
    ack = socket_call(cluster.servers[0].url, sam, "report", {"message_id": message_id, "reason": "other", "note": "scam"})
    assert ack["ok"] and ack["created"], ack
    for chat in (p, e):  # members on both processes: the placeholder, live
        expect(chat.message(1).get_by_test_id("hidden-placeholder")).to_have_text(HIDDEN)
        expect(chat.message(1)).not_to_contain_text("buy cheap followers")
        expect(chat.conversation_item(room)).to_contain_text("more spam")  # the preview is seq 2
    expect(m.message(1).get_by_test_id("hidden-marker")).to_have_text("hidden")  # moderators: dimmed
    expect(m.message(1)).to_contain_text("buy cheap followers 1")
    expect(m.page.get_by_test_id("reports-badge")).to_have_text("3")
    # A reload reads the placeholder from the join answer.
    e.page.reload()
    e.wait_connected()
    e.open(room)
    expect(e.message(1).get_by_test_id("hidden-placeholder")).to_have_text(HIDDEN)
    expect(e.message(1).get_by_role("button", name="Message actions")).to_have_count(0)

    # The moderator's panel: the reported message, its reasons and notes; Dismiss shows it again.
    moderate.click()
    panel = m.page.get_by_test_id("moderation-panel")
    items = panel.get_by_test_id("report-item")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("Tom Troll in Lounge")
    expect(items.first).to_contain_text("buy cheap followers 1")
    expect(items.first).to_contain_text("3 reports: Spam, Harassment or bullying, Something else")
    expect(items.first).to_contain_text("“a bot selling followers”")
    expect(items.first).to_contain_text("“scam”")
    expect(items.first).to_contain_text("hidden")
    m.assert_accessible()
    items.first.get_by_role("button", name="Dismiss").click()
    expect(items).to_have_count(0)
    expect(panel.get_by_test_id("reports-section")).to_contain_text("No open reports.")
    expect(m.page.get_by_test_id("reports-badge")).to_have_count(0)
    for chat in (p, e):
        expect(chat.message(1).get_by_test_id("hidden-placeholder")).to_have_count(0)
        expect(chat.message(1)).to_contain_text("buy cheap followers 1")
    expect(m.message(1).get_by_test_id("hidden-marker")).to_have_count(0)
    expect(panel.get_by_test_id("moderation-log-entry").first).to_contain_text(
        "You dismissed the reports of a message by Tom Troll")

    # One report of the second message; the moderator removes it: deleted for everyone.
    report(e, 2, "Spam")
    expect(items).to_have_count(1)
    expect(m.page.get_by_test_id("reports-badge")).to_have_text("1")
    items.first.get_by_role("button", name="Remove message").click()
    for chat in (m, p, e):
        expect(chat.message(2)).to_contain_text("message deleted")
    expect(items).to_have_count(0)
    for chat in (m, p, e):
        chat.assert_clean()


def test_member_blocks_placeholders_list_and_direct_conversation(browser, cluster, pages, who):
    api = cluster.api
    creator = api.user(who.cara, "Cara Creator")
    patron = api.user(who.pat, "Pat Patron")
    eve = api.user(who.evil, "Eve Member")
    for member in (who.pat, who.evil):
        api.membership(who.cara, member, 500)
    room = api.room(who.cara, "Lounge", min_tier_cents=100)
    seed_messages(api, eve, room, 1, prefix="eve says")
    seed_messages(api, patron, room, 1, prefix="pat says")
    direct = api.direct(creator, who.pat)
    seed_messages(api, creator, direct, 1, prefix="hi pat")

    p = tab(pages, browser, cluster.servers[0].url, patron)
    e = tab(pages, browser, cluster.servers[1].url, eve)
    c = tab(pages, browser, cluster.servers[1].url, creator)
    p.open(room)
    e.open(room)
    p.wait_seqs([1, 2])
    # Not on one's own messages.
    expect(menu_of(p, 2).get_by_role("menuitem", name="Block", exact=False)).to_have_count(0)
    p.page.keyboard.press("Escape")

    # Pat blocks Eve, confirmed in a dialog: her messages become placeholders at once.
    menu_of(p, 1).get_by_role("menuitem", name="Block Eve Member…").click()
    dialog = p.page.get_by_test_id("block-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    p.assert_accessible()
    dialog.get_by_role("button", name="Block", exact=True).click()
    expect(dialog).to_have_count(0)
    expect(p.message(1).get_by_test_id("hidden-placeholder")).to_have_text(BLOCKED)
    expect(p.message(2)).to_contain_text("pat says 1")
    # Live from the other process: Eve's new message reaches Pat as a placeholder.
    e.send("eve live")
    p.wait_seqs([1, 2, 3])
    expect(p.message(3).get_by_test_id("hidden-placeholder")).to_have_text(BLOCKED)
    expect(p.message(3)).not_to_contain_text("eve live")
    expect(p.conversation_item(room)).to_contain_text(BLOCKED)
    expect(e.message(2)).to_contain_text("pat says 1")  # Eve is not told; she sees Pat as before
    # After a reload the join answer brings the placeholders; the menu offers Unblock.
    p.page.reload()
    p.wait_connected()
    p.open(room)
    p.wait_seqs([1, 2, 3])
    expect(p.message(1).get_by_test_id("hidden-placeholder")).to_have_text(BLOCKED)
    expect(menu_of(p, 3).get_by_role("menuitem")).to_have_text(["Unblock Eve Member"])
    p.page.keyboard.press("Escape")

    # The list of blocks (the own name's menu): Unblock brings the messages back.
    p.page.get_by_test_id("me").click()
    me_panel = p.page.get_by_test_id("me-panel")
    expect(me_panel.get_by_test_id("blocked-user")).to_have_text(["Eve MemberUnblock"])
    p.assert_accessible()
    me_panel.get_by_role("button", name="Unblock Eve Member").click()
    expect(me_panel).to_contain_text("You block nobody.")
    expect(p.message(1)).to_contain_text("eve says 1")
    expect(p.message(3)).to_contain_text("eve live")
    expect(p.page.get_by_test_id("hidden-placeholder")).to_have_count(0)
    p.page.keyboard.press("Escape")
    expect(me_panel).to_be_hidden()

    # A direct conversation: Pat blocks Cara there; neither can write to the other.
    p.open(direct)
    p.wait_seqs([1])
    menu_of(p, 1).get_by_role("menuitem", name="Block Cara Creator…").click()
    p.page.get_by_test_id("block-dialog").get_by_role("button", name="Block", exact=True).click()
    banner = p.page.get_by_test_id("blocked-banner")
    expect(banner).to_contain_text("You blocked Cara Creator")
    expect(p.page.get_by_test_id("composer")).to_be_disabled()
    expect(p.page.get_by_test_id("send-button")).to_be_disabled()
    c.open(direct)
    c.wait_seqs([1])
    c.send("are you there?")
    expect(c.page.locator("[data-testid=message][data-status=failed]")).to_contain_text("one of you blocks the other")
    c_banner = c.page.get_by_test_id("blocked-banner")
    expect(c_banner).to_contain_text("one of you blocks the other")  # Cara is not told who blocks
    c.page.get_by_test_id("message").get_by_role("button", name="Discard").click()
    # Unblocking from the banner lets both write again.
    banner.get_by_role("button", name="Unblock").click()
    expect(banner).to_be_hidden()
    expect(p.page.get_by_test_id("composer")).to_be_enabled()
    p.send("sorry, back")
    p.wait_seqs([1, 2])
    c.wait_seqs([1, 2])
    c.send("no problem")
    c.wait_seqs([1, 2, 3])
    expect(c_banner).to_be_hidden()
    p.wait_seqs([1, 2, 3])
    for chat in (p, e, c):
        chat.assert_clean()
