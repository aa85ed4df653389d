// Blocks between members (docs/api.md "Blocks between members"): any member blocks another from
// a message's menu ("Block {name}…", confirmed in a dialog) and unblocks from it or from the list
// of their blocks (the own name's menu in the top bar). A blocked user's messages show as a
// placeholder (reports.js `messageVeil`); a direct conversation with them cannot be written to.
// app.js feeds it `user_blocked` and asks for the list on each connect.

import { h } from "./dom.js";
import { addRenderHook, scheduleRender, showNotice } from "./render.js";
import { nameOf, openConv, otherMemberId, state } from "./state.js";

const $ = (id) => document.getElementById(id);

const blocks = {
  /** user id -> blocked_at (ISO) of the users we block (`blocks`, `user_blocked`) */
  users: new Map(),
  /** direct conversation ids whose send was refused because one of the two blocks the other */
  refusedDirect: new Set(),
  panelOpen: false,
  sig: null,
};
let request = () => Promise.resolve({ ok: false, error: { code: "offline", message: "not connected" } });
let reread = () => {};

/**
 * request(event, payload) -> ack ({ok, ...}); reread(): after an unblock, the messages already
 * loaded as placeholders are read again (and the list's previews).
 */
export function setupBlocks(options) {
  request = options.request;
  reread = options.reread;
  $("me").addEventListener("click", () => togglePanel());
  document.addEventListener("click", (e) => {
    const path = e.composedPath();
    if (blocks.panelOpen && !path.includes($("me-panel")) && !path.includes($("me"))) togglePanel(false);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && blocks.panelOpen) {
      togglePanel(false);
      $("me").focus();
    }
  });
  addRenderHook(renderBlocks);
}

/** Reads our blocks (`blocks`): on every connect (another tab may have changed them). */
export async function loadBlocks() {
  const res = await request("blocks", {});
  if (!res.ok) return;
  blocks.users = new Map((res.blocks || []).map((b) => [String(b.user_id), b.blocked_at || null]));
  blocks.sig = null;
  scheduleRender();
}

export function isBlocked(userId) {
  return Boolean(userId) && blocks.users.has(String(userId));
}

/** `user_blocked {user_id, blocked}`: from this tab or another one of ours. */
export function onUserBlocked(ev) {
  if (!ev || !ev.user_id) return;
  const userId = String(ev.user_id);
  const was = blocks.users.has(userId);
  if (ev.blocked) blocks.users.set(userId, blocks.users.get(userId) || new Date().toISOString());
  else blocks.users.delete(userId);
  if (was && !ev.blocked) afterUnblock();
  blocks.sig = null;
  scheduleRender();
}

function afterUnblock() {
  blocks.refusedDirect.clear(); // the server says again on the next send if the other one blocks us
  reread();
}

async function setBlocked(userId, on) {
  const res = await request("block_user", { user_id: userId, on });
  if (!res.ok) {
    showNotice(`Could not ${on ? "block" : "unblock"} ${nameOf(userId)}: ${(res.error && res.error.message) || "error"}`, "error");
    return;
  }
  onUserBlocked({ user_id: userId, blocked: on });
  showNotice(on ? `You blocked ${nameOf(userId)}. Their messages are hidden for you.` : `You unblocked ${nameOf(userId)}.`, "info");
}

// ------------------------------------------------------------------ the message menu

/**
 * "Block {name}…" / "Unblock {name}" on another member's message. Not in a room we moderate:
 * there the moderation items block from the creator's rooms (moderation.js).
 */
export function blockItems(conv, msg, moderating) {
  if (!state.me || !msg.id || !msg.sender || moderating) return [];
  const target = String(msg.sender.id);
  if (target === state.me.id) return [];
  const name = msg.sender.name || nameOf(target);
  if (isBlocked(target)) return [{ action: "unblock-user", label: `Unblock ${name}`, run: () => setBlocked(target, false) }];
  return [{ action: "block-user", label: `Block ${name}…`, danger: true, run: () => confirmBlock(target, name) }];
}

/** The confirmation: what a block does, Block / Cancel (a modal dialog; Escape cancels). */
function confirmBlock(userId, name) {
  const cancel = h("button", { type: "button", class: "link-button", value: "cancel" }, "Cancel");
  const ok = h("button", { type: "submit", class: "small-button danger-button", value: "block" }, "Block");
  const title = h("h2", { id: "block-dialog-title" }, `Block ${name}?`);
  const dialog = h(
    "dialog",
    { class: "app-dialog", "data-testid": "block-dialog", "aria-labelledby": "block-dialog-title" },
    h(
      "form",
      { method: "dialog" },
      title,
      h("p", null, `Their messages will show as “Message from a blocked user” for you, and no direct messages can go between you. ${name} is not told; you can unblock them at any time.`),
      h("div", { class: "dialog-actions" }, cancel, ok),
    ),
  );
  cancel.addEventListener("click", () => dialog.close("cancel"));
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (dialog.returnValue === "block") setBlocked(userId, true);
  });
  document.body.append(dialog);
  dialog.showModal();
  cancel.focus();
}

// ------------------------------------------------------------------ direct conversations

/** A send was refused: in a direct conversation, `forbidden` means one of us blocks the other. */
export function noteDirectRefusal(conv, error) {
  if (conv.conversation.kind === "direct" && error && error.code === "forbidden" && /blocks the other/.test(error.message || "")) {
    blocks.refusedDirect.add(conv.id);
    scheduleRender();
  }
}

/** A send of ours went through: whatever refused the last one is over. */
export function noteDirectSent(conv) {
  if (blocks.refusedDirect.delete(conv.id)) scheduleRender();
}

/** What blocks do to the composer: null, or {disabled, placeholder, banner, unblock?}. */
export function blockedComposer(conv) {
  if (!conv || conv.conversation.kind !== "direct") return null;
  const other = otherMemberId(conv);
  if (other && isBlocked(other)) {
    const name = nameOf(other);
    return { disabled: true, placeholder: `You blocked ${name}`, banner: `You blocked ${name}: you cannot write to each other.`, unblock: other };
  }
  if (blocks.refusedDirect.has(conv.id)) {
    // We are not told who blocks whom: the composer stays usable (a later send may go through).
    return { placeholder: "Your messages cannot be delivered here", banner: "Your last message was not delivered: one of you blocks the other." };
  }
  return null;
}

// ------------------------------------------------------------------ rendering

function renderBlocks() {
  renderBanner(openConv());
  $("me").setAttribute("aria-expanded", String(blocks.panelOpen));
  $("me-panel").hidden = !blocks.panelOpen;
  if (blocks.panelOpen) renderPanel();
}

let bannerSig = null;

function renderBanner(conv) {
  const el = $("blocked-banner");
  const info = blockedComposer(conv);
  const sig = JSON.stringify(info && [info.banner, info.unblock || null]);
  if (sig === bannerSig) return;
  bannerSig = sig;
  el.hidden = !info;
  if (!info) {
    el.replaceChildren();
    return;
  }
  el.replaceChildren(
    h("span", null, info.banner),
    info.unblock ? h("button", { type: "button", class: "link-button", onclick: () => setBlocked(info.unblock, false) }, "Unblock") : null,
  );
}

function togglePanel(open = !blocks.panelOpen) {
  blocks.panelOpen = open;
  blocks.sig = null;
  scheduleRender();
  if (open) {
    loadBlocks();
    queueMicrotask(() => {
      const first = $("me-panel").querySelector("button");
      if (first) first.focus();
    });
  }
}

function renderPanel() {
  const panel = $("me-panel");
  const list = [...blocks.users.keys()].map((id) => ({ id, name: nameOf(id) })).sort((a, b) => a.name.localeCompare(b.name));
  const sig = JSON.stringify(list);
  if (sig === blocks.sig) return;
  blocks.sig = sig;
  const focusedKey = document.activeElement && panel.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  panel.replaceChildren(
    h(
      "header",
      { class: "notif-head" },
      h("h2", null, "Blocked users"),
      h("button", { type: "button", class: "icon-button", "aria-label": "Close blocked users", "data-key": "close", onclick: () => {
        togglePanel(false);
        $("me").focus();
      } }, "✕"),
    ),
    list.length
      ? h("ul", { class: "mod-people me-blocks" }, list.map((u) => h("li", { "data-testid": "blocked-user", "data-user-id": u.id },
        h("span", { class: "mod-person" }, u.name),
        h("button", { type: "button", class: "link-button", "data-key": `unblock-${u.id}`, "aria-label": `Unblock ${u.name}`, onclick: () => setBlocked(u.id, false) }, "Unblock"))))
      : h("p", { class: "muted me-empty" }, "You block nobody. To block someone, open the menu of one of their messages."),
  );
  const again = focusedKey && panel.querySelector(`[data-key="${CSS.escape(focusedKey)}"]`);
  if (again) again.focus();
  else if (focusedKey) $("me").focus();
}
