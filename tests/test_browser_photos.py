"""Photos on the page (issue 13 §4; docs/browser.md "Photos") in a real Chromium against the two
server processes of the shared MariaDB + Redis cluster: the client-side check, previews with
upload progress and remove, the upload (XMLHttpRequest), sending with attachment ids, a
photo-only message (pasted), the server's refusal shown on the preview, and the other member
seeing the thumbnail and opening the full size."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser_support import noisy_png, room_tabs, setup_room, small_jpeg

pytest_plugins = ["tests.browser_support"]


def test_photo_upload_with_preview_progress_and_the_recipient_sees_it(browser, cluster, pages, who):
    api = cluster.api
    creator, patron, room = setup_room(api, who)
    a, b = room_tabs(pages, browser, cluster, creator, patron, room)
    page = b.page
    tray_items = page.get_by_test_id("photo-preview")
    file_input = page.get_by_test_id("photo-input")

    # The client-side check: not a photo, or over 10 MB, is refused with a clear message.
    file_input.set_input_files({"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"})
    expect(page.locator(".toast")).to_contain_text("“notes.txt” is not a photo")
    file_input.set_input_files({"name": "huge.png", "mimeType": "image/png", "buffer": b"\0" * (10 * 1024 * 1024 + 1)})
    expect(page.locator(".toast").last).to_contain_text("“huge.png” is too large")
    expect(tray_items).to_have_count(0)

    # A slow uplink (DevTools network throttling): the preview shows the upload's progress and
    # the Send button waits for it.
    cdp = b.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": 256 * 1024})
    big = noisy_png(640, 640)  # ~1.2 MB: several seconds at 256 KiB/s
    file_input.set_input_files({"name": "beach.png", "mimeType": "image/png", "buffer": big})
    expect(tray_items).to_have_count(1)
    expect(tray_items.first).to_have_attribute("data-status", "uploading")
    expect(tray_items.first.get_by_role("img")).to_have_attribute("alt", "Preview of beach.png")
    expect(page.get_by_test_id("send-button")).to_be_disabled()
    page.wait_for_function(
        "() => { const p = document.querySelector('[data-testid=photo-progress]'); return p && p.value > 0 && p.value < 100; }",
        timeout=15_000)
    expect(tray_items.first).to_contain_text("Uploading")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": -1})
    expect(tray_items.first).to_have_attribute("data-status", "done", timeout=30_000)
    expect(page.get_by_test_id("send-button")).to_be_enabled()

    # A second photo, removed before sending: only the first goes.
    file_input.set_input_files({"name": "oops.jpg", "mimeType": "image/jpeg", "buffer": small_jpeg()})
    expect(tray_items).to_have_count(2)
    page.get_by_role("button", name="Remove oops.jpg").click()
    expect(tray_items).to_have_count(1)
    b.send("the beach today")
    b.wait_seqs([1])
    expect(tray_items).to_have_count(0)
    expect(page.get_by_test_id("photo-tray")).to_be_hidden()

    # The creator (on the other process) sees the thumbnail, and opens the full size.
    a.wait_seqs([1])
    photo = a.message(1).get_by_test_id("message-photo")
    expect(photo).to_have_count(1)
    expect(a.message(1)).to_contain_text("the beach today")
    thumb = photo.locator("img")
    src = thumb.get_attribute("src") or ""
    assert "/api/v1/attachments/" in src and "/thumb?" in src, src
    a.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    assert thumb.evaluate("img => img.naturalWidth") <= 320  # the server's thumbnail, not the 640-px photo
    photo.click()
    viewer = a.page.get_by_test_id("photo-viewer")
    expect(viewer).to_be_visible()
    full = viewer.locator("img")
    a.page.wait_for_function("img => img.complete && img.naturalWidth === 640", arg=full.element_handle())
    assert "/thumb" not in (full.get_attribute("src") or "")
    a.assert_accessible()
    a.page.keyboard.press("Escape")
    expect(viewer).to_have_count(0)

    # A photo pasted into the composer, sent without text.
    a.page.get_by_test_id("composer").focus()
    a.page.evaluate("""async () => {
        const canvas = document.createElement("canvas");
        canvas.width = 80; canvas.height = 60;
        const ctx = canvas.getContext("2d"); ctx.fillStyle = "#3a7"; ctx.fillRect(0, 0, 80, 60);
        const blob = await new Promise((r) => canvas.toBlob(r, "image/png"));
        const dt = new DataTransfer();
        dt.items.add(new File([blob], "pasted.png", {type: "image/png"}));
        const paste = new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true});
        document.getElementById("composer").dispatchEvent(paste);
    }""")
    expect(a.page.get_by_test_id("photo-preview")).to_have_attribute("data-status", "done")
    a.page.get_by_test_id("send-button").click()
    b.wait_seqs([1, 2])
    expect(b.message(2).get_by_test_id("message-photo")).to_have_count(1)
    expect(b.message(2).locator(".msg-body")).to_have_count(0)
    expect(b.conversation_item(room)).to_contain_text("Photo")

    # A photo dropped onto the conversation joins the tray the same way.
    page.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array([1, 2, 3])], "dropped.gif", {type: "image/gif"}));
        const pane = document.getElementById("conv-pane");
        for (const type of ["dragenter", "dragover", "drop"]) {
            pane.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
        }
    }""")
    expect(tray_items).to_have_count(1)
    expect(tray_items.first).to_contain_text("dropped.gif")  # no preview: not a readable image
    expect(tray_items.first).to_have_attribute("data-status", "error")  # ... and the server agrees
    page.get_by_role("button", name="Remove dropped.gif").click()
    expect(tray_items).to_have_count(0)
    expect(page.locator("#conv-pane.dropping")).to_have_count(0)

    # What the server refuses (a PNG that is not one) shows on its preview, and is not sent.
    file_input.set_input_files({"name": "fake.png", "mimeType": "image/png", "buffer": b"\x89PNG not really"})
    expect(tray_items.first).to_have_attribute("data-status", "error")
    expect(tray_items.first).to_contain_text("Not uploaded")
    b.page.get_by_test_id("composer").fill("with a broken photo")
    b.page.get_by_test_id("composer").press("Enter")
    expect(page.locator(".toast").last).to_contain_text("remove it first")
    page.get_by_role("button", name="Remove fake.png").click()
    b.page.get_by_test_id("composer").press("Enter")
    b.wait_seqs([1, 2, 3])
    # the refused uploads' 400s are the only console errors of b's tab
    assert b.errors == ["console: Failed to load resource: the server responded with a status of 400 (Bad Request)"] * 2
    b.errors.clear()
    a.assert_clean()
    b.assert_clean()
