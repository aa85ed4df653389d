"""Chat spaces on the page (issue 14 §1; docs/browser.md "Chat spaces") in a real Chromium
against the two server processes of the shared MariaDB + Redis cluster: a room's emoji, name and
topic in the list and the header, changed live by the backend's PATCH; guidelines a member
accepts before the composer works (after a reload too), and again after a new version; an
archived room's read-only banner without a composer; a deleted room leaving the page."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser_support import seed_messages, tab

pytest_plugins = ["tests.browser_support"]


def test_space_topic_guidelines_archive_and_delete(browser, cluster, pages, who):
    api = cluster.api
    creator = api.user(who.cara, "Cara Creator")
    patron = api.user(who.pat, "Pat Patron")
    api.membership(who.cara, who.pat, 500)
    r = api.server("POST", "/rooms", {"creator_id": who.cara, "name": "Lounge", "min_tier_cents": 100,
                                      "topic": "Say hi to the band", "emoji": "🎸",
                                      "guidelines": "Be kind.\nNo spoilers."})
    assert r.status_code == 201, r.text
    room = str(r.json()["conversation"]["id"])
    seed_messages(api, creator, room, 1, prefix="welcome")

    p = tab(pages, browser, cluster.servers[0].url, patron)
    c = tab(pages, browser, cluster.servers[1].url, creator)
    item = p.conversation_item(room)
    expect(item).to_contain_text("Lounge")
    expect(item.get_by_test_id("conversation-topic")).to_have_text("Say hi to the band")
    expect(item.locator(".avatar")).to_have_text("🎸")

    # The member reads the guidelines and agrees before the composer works.
    p.open(room)
    p.wait_seqs([1])
    expect(p.page.locator("#conv-title")).to_have_text("Lounge")
    expect(p.page.get_by_test_id("conv-topic")).to_have_text("Say hi to the band")
    guidelines = p.page.get_by_test_id("guidelines")
    expect(guidelines).to_be_visible()
    expect(guidelines).to_contain_text("Be kind.\nNo spoilers.")
    composer = p.page.get_by_test_id("composer")
    expect(composer).to_be_disabled()
    expect(composer).to_have_attribute("placeholder", "Accept the guidelines to write here")
    p.assert_accessible()
    # The creator is exempt.
    c.open(room)
    c.wait_seqs([1])
    expect(c.page.get_by_test_id("guidelines")).to_be_hidden()
    expect(c.page.get_by_test_id("composer")).to_be_enabled()
    guidelines.get_by_role("button", name="I agree").click()
    expect(guidelines).to_be_hidden()
    expect(composer).to_be_enabled()
    p.send("hi all")
    p.wait_seqs([1, 2])
    c.wait_seqs([1, 2])
    # Accepted stays accepted: the join answer after a reload says so.
    p.page.reload()
    p.wait_connected()
    p.open(room)
    p.wait_seqs([1, 2])
    expect(guidelines).to_be_hidden()
    expect(composer).to_be_enabled()

    # The backend renames the room: the list and the header follow live, on both processes.
    r = api.server("PATCH", f"/rooms/{room}", {"name": "Green room", "topic": "Tour news", "emoji": "🎹"})
    assert r.status_code == 200, r.text
    for chat in (p, c):
        expect(chat.page.locator("#conv-title")).to_have_text("Green room")
        expect(chat.page.get_by_test_id("conv-topic")).to_have_text("Tour news")
        expect(chat.conversation_item(room)).to_contain_text("Green room")
        expect(chat.conversation_item(room).locator(".avatar")).to_have_text("🎹")

    # A new version of the guidelines asks again.
    r = api.server("PATCH", f"/rooms/{room}", {"guidelines": "Be kind.\nNo spoilers.\nNo ads."})
    assert r.status_code == 200, r.text
    expect(guidelines).to_be_visible()
    expect(guidelines).to_contain_text("No ads.")
    expect(guidelines).to_contain_text("They changed since you accepted them")
    expect(composer).to_be_disabled()
    guidelines.get_by_role("button", name="I agree").click()
    expect(composer).to_be_enabled()
    p.send("agreed again")
    p.wait_seqs([1, 2, 3])

    # Archived: a read-only banner and no composer, for the creator too; unarchived: back.
    r = api.server("PATCH", f"/rooms/{room}", {"archived": True})
    assert r.status_code == 200, r.text
    for chat in (p, c):
        expect(chat.page.get_by_test_id("archived-banner")).to_be_visible()
        expect(chat.page.get_by_test_id("composer")).to_be_hidden()
        expect(chat.conversation_item(room)).to_contain_text("archived")
        chat.wait_seqs([1, 2, 3])  # still readable
    p.assert_accessible()
    r = api.server("PATCH", f"/rooms/{room}", {"archived": False})
    assert r.status_code == 200, r.text
    for chat in (p, c):
        expect(chat.page.get_by_test_id("archived-banner")).to_be_hidden()
        expect(chat.page.get_by_test_id("composer")).to_be_enabled()

    # Deleted: it leaves both pages, with a notice.
    r = api.server("DELETE", f"/rooms/{room}")
    assert r.status_code == 200, r.text
    for chat in (p, c):
        expect(chat.conversation_item(room)).to_have_count(0)
        expect(chat.page.locator(".toast", has_text="“Green room” was deleted.")).to_have_count(1)
        expect(chat.page.get_by_test_id("message-list")).to_be_hidden()
    for chat in (p, c):
        chat.assert_clean()


def test_a_room_regated_above_the_members_tier_leaves_their_page(browser, cluster, pages, who):
    """The backend's PATCH raises a room's tier above Pat's: his page (the room open) drops it at
    once with a notice (`access_revoked`), keeps his other room, and a reload does not bring it back;
    Mia, above the new tier on the other process, keeps it and writes on; lowered again, Pat's
    next reload lists it."""
    api = cluster.api
    creator = api.user(who.cara, "Cara Creator")
    patron = api.user(who.pat, "Pat Patron")
    mia = api.user(who.mia, "Mia Member")
    api.membership(who.cara, who.pat, 500)
    api.membership(who.cara, who.mia, 2000)
    room = api.room(who.cara, "Lounge", min_tier_cents=100)
    hall = api.room(who.cara, "Hall", min_tier_cents=100)
    seed_messages(api, creator, room, 1, prefix="welcome")

    p = tab(pages, browser, cluster.servers[0].url, patron)
    m = tab(pages, browser, cluster.servers[1].url, mia)
    c = tab(pages, browser, cluster.servers[1].url, creator)
    for chat in (p, m, c):
        chat.open(room)
        chat.wait_seqs([1])
    p.page.get_by_test_id("composer").fill("a draft")

    r = api.server("PATCH", f"/rooms/{room}", {"min_tier_cents": 1000})
    assert r.status_code == 200 and r.json()["conversation"]["min_tier_cents"] == 1000, r.text
    expect(p.conversation_item(room)).to_have_count(0)
    expect(p.page.get_by_test_id("message-list")).to_be_hidden()
    expect(p.page.locator(".toast", has_text="You no longer have access to “Lounge”.")).to_have_count(1)
    expect(p.conversation_item(hall)).to_have_count(1)  # only that room
    p.assert_accessible()
    # above the new tier: still in, writing live to the creator on the same process
    m.send("still here")
    m.wait_seqs([1, 2])
    c.wait_seqs([1, 2])
    expect(m.conversation_item(room)).to_have_count(1)
    p.page.reload()
    p.wait_connected()
    expect(p.conversation_item(hall)).to_have_count(1)
    expect(p.conversation_item(room)).to_have_count(0)

    # lowered again: the list has it after a reload, with what was said meanwhile
    r = api.server("PATCH", f"/rooms/{room}", {"min_tier_cents": 100})
    assert r.status_code == 200, r.text
    p.page.reload()
    p.wait_connected()
    p.open(room)
    p.wait_seqs([1, 2])
    for chat in (p, m, c):
        chat.assert_clean()
