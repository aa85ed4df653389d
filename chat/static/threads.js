// Threads (docs/api.md "Threads"): a root's summary under it in the conversation ("3 replies ·
// last reply 14:05" with the repliers' avatars), and the thread panel: the root, its replies
// (paged older on scroll-up), live replies, and a composer that sends with `thread_id`. A side
// panel beside the conversation on a desktop; a full view with a back button on a phone.
// Replies are messages of the conversation (same seq stream): app.js keeps them with the others;
// the main view leaves them out (render.js), this panel shows those of the open thread.

import * as api from "./api.js";
import { fullTime, h, shortTime } from "./dom.js";
import { composerBlock, sendRefused } from "./moderation.js";
import { actions, addRenderHook, clearView, makeView, renderMessageView, scheduleRender, showNotice } from "./render.js";
import { canPost, conversationName, nameOf, state } from "./state.js";
import { fillAvatar, setupMessageMenus } from "./ui.js";
import { attachCompletion } from "./mentions.js";
import { addPhotoSlot, clearTray, photosForSend, uploading } from "./photos.js";

const PAGE = 50;

const $ = (id) => document.getElementById(id);

let hooks = {
  connected: () => false,
  request: async () => ({ ok: false }),
  store: () => {},
  sendReply: () => {},
};
let completion = null; // @ completion of the thread's composer
let rootView = null;
let replyView = null;

/** A reply names its root in `thread_id` (null for any other message). */
export function isReply(msg) {
  return Boolean(msg && msg.thread_id !== null && msg.thread_id !== undefined && msg.thread_id !== "");
}

/** A stored, not deleted message that is not itself a reply, in a conversation we may post in. */
export function canReplyTo(conv, msg) {
  return Boolean(msg && msg.id && typeof msg.seq === "number" && !msg.deleted && !isReply(msg) && canPost(conv));
}

/** The thread open in the panel, when it belongs to the open conversation. */
export function openThreadOf(convId) {
  const t = state.thread;
  return t && t.convId === convId && state.openId === convId ? t : null;
}

/** Under a root in the conversation: "N replies · last reply 14:05" and the repliers' avatars. */
export function threadSummary(conv, msg) {
  const t = msg.thread;
  if (!t || !t.reply_count || !msg.id) return null;
  const n = t.reply_count;
  const avatars = (Array.isArray(t.participants) ? t.participants : []).slice(0, 5).map((raw) => {
    const id = String(raw);
    const name = state.me && id === state.me.id ? state.me.name : nameOf(id);
    const el = h("span", { class: "avatar avatar-xs", title: name });
    fillAvatar(el, { key: id, name, userId: id });
    return el;
  });
  return h(
    "button",
    {
      type: "button",
      class: "thread-summary",
      "data-testid": "thread-summary",
      "data-reply-count": String(n),
      title: t.last_reply_at ? `Last reply ${fullTime(t.last_reply_at)}` : null,
      onclick: (e) => {
        e.stopPropagation();
        openThread(conv.id, msg.id);
      },
    },
    h("span", { class: "thread-avatars", "aria-hidden": "true" }, avatars),
    h("span", { class: "thread-count" }, `${n} ${n === 1 ? "reply" : "replies"}`),
    t.last_reply_at ? h("span", { class: "thread-last" }, `· last reply ${shortTime(t.last_reply_at)}`) : null,
  );
}

function isPhone() {
  return window.matchMedia("(max-width: 640px)").matches;
}

/** The thread's photo tray key (photos.js), while one may send there. */
function trayKey() {
  const t = state.thread;
  const conv = t && state.convs.get(t.convId);
  if (!conv || state.openId !== t.convId || !canPost(conv)) return null;
  const block = composerBlock(conv);
  return block && block.disabled ? null : `${t.convId}|${t.rootId}`;
}

/** Opens a root's thread in the panel (a full view on a phone, with a history entry for back). */
export function openThread(convId, rootId) {
  const conv = state.convs.get(convId);
  if (!conv || state.openId !== convId || rootId === null || rootId === undefined) return;
  const id = String(rootId);
  if (state.thread && state.thread.convId === convId && state.thread.rootId === id) {
    focusComposer();
    return;
  }
  state.thread = { convId, rootId: id, lowSeq: null, hasMoreBefore: false, loaded: false, loading: false, scrollBottom: true };
  $("thread-composer").value = "";
  if (completion) completion.reset();
  if (isPhone()) {
    const entry = { ...(window.history.state || {}), backstageThread: id };
    if (window.history.state && window.history.state.backstageThread) window.history.replaceState(entry, "");
    else window.history.pushState(entry, "");
  }
  scheduleRender();
  loadPage(state.thread, false);
  focusComposer();
}

function focusComposer() {
  if (isPhone()) return; // no keyboard popping up on a phone until the reader taps
  queueMicrotask(() => {
    const c = $("thread-composer");
    if (c && !c.disabled && c.isConnected) c.focus();
  });
}

/** Closes the panel (the back button on a phone undoes our history entry instead). */
export function closeThread() {
  if (!state.thread) return;
  if (window.history.state && window.history.state.backstageThread) {
    window.history.back(); // popstate closes it
    return;
  }
  state.thread = null;
  scheduleRender();
}

/** After a reconnect: the open thread's latest page is read again (edits, deletions, reactions). */
export function refreshThread() {
  if (state.thread && state.thread.loaded) loadPage(state.thread, false);
}

/** Loads the thread's latest page, or (older) the page before what is loaded. */
async function loadPage(t, older) {
  const conv = state.convs.get(t.convId);
  if (!conv || t.loading) return;
  if (older && (!t.hasMoreBefore || t.lowSeq === null)) return;
  t.loading = true;
  scheduleRender();
  try {
    let res;
    if (hooks.connected()) {
      const payload = { conversation_id: conv.id, thread_id: t.rootId, limit: PAGE };
      if (older) payload.before_seq = t.lowSeq;
      res = await hooks.request("history", payload);
      if (!res.ok) throw new Error((res.error && res.error.message) || "failed");
    } else {
      res = await api.listMessages(conv.id, { threadId: t.rootId, limit: PAGE, beforeSeq: older ? t.lowSeq : undefined });
    }
    if (state.thread !== t || !state.convs.has(conv.id)) return;
    const msgs = (res.messages || []).filter((m) => m && typeof m.seq === "number");
    hooks.store(conv, msgs);
    for (const m of msgs) if (t.lowSeq === null || m.seq < t.lowSeq) t.lowSeq = m.seq;
    t.hasMoreBefore = Boolean(res.has_more);
    t.loaded = true;
    if (!older) t.scrollBottom = true;
  } catch (err) {
    if (state.thread === t) showNotice(`Could not load the thread: ${err.message}`, "error");
  } finally {
    t.loading = false;
    scheduleRender();
    if (state.thread === t) setTimeout(fillPanel, 50);
  }
}

/** Loads older replies until the panel can scroll (or there are none). */
function fillPanel() {
  const t = state.thread;
  const list = $("thread-list");
  if (!t || !t.hasMoreBefore || t.loading) return;
  if (list.clientHeight > 0 && list.scrollHeight <= list.clientHeight + 40) loadPage(t, true);
}

function findById(conv, id) {
  for (const m of conv.messages.values()) if (String(m.id) === id) return m;
  return null;
}

function renderThread() {
  const panel = $("thread-panel");
  const t = state.thread;
  const conv = t && state.convs.get(t.convId);
  const open = Boolean(t && conv && state.openId === t.convId);
  if (t && !open) state.thread = null; // its conversation closed, or another one opened
  panel.hidden = !open;
  document.body.classList.toggle("thread-open", open);
  if (!rootView) {
    rootView = makeView({ list: $("thread-root"), status: $("thread-root-status"), newBelow: null, scope: "thread" });
    replyView = makeView({ list: $("thread-list"), status: $("thread-status"), newBelow: null, scope: "thread" });
  }
  if (!open) {
    clearView(rootView);
    clearView(replyView);
    return;
  }
  const where = `in ${conversationName(conv)}`;
  if ($("thread-where").textContent !== where) $("thread-where").textContent = where;
  const viewKey = `${conv.id}:${t.rootId}`;
  const root = findById(conv, t.rootId);
  renderMessageView(rootView, conv, { viewKey, msgs: root ? [root] : [], pendings: [], statusText: "", days: false });
  const replies = [...conv.messages.values()]
    .filter((m) => isReply(m) && String(m.thread_id) === t.rootId && (t.lowSeq === null || m.seq >= t.lowSeq))
    .sort((a, b) => a.seq - b.seq);
  const pendings = [...conv.pending.values()].filter((p) => p.threadId === t.rootId);
  const statusText = !t.loaded
    ? "Loading replies…"
    : t.loading
      ? "Loading older replies…"
      : t.hasMoreBefore
        ? "Scroll up for older replies"
        : replies.length || pendings.length
          ? ""
          : "No replies yet.";
  $("thread-status").hidden = !statusText;
  const mode = t.scrollBottom ? "bottom" : null;
  t.scrollBottom = false;
  renderMessageView(replyView, conv, { viewKey, msgs: replies, pendings, statusText, mode });

  const composer = $("thread-composer");
  const block = composerBlock(conv);
  const allowed = canPost(conv) && Boolean(root && !root.deleted) && !(block && block.disabled);
  composer.disabled = !allowed;
  $("thread-attach-button").disabled = !allowed;
  $("thread-send").disabled = !allowed || Boolean(block && block.wait) || uploading(`${t.convId}|${t.rootId}`);
  const placeholder = !root ? "" : root.deleted ? "The message was deleted: no new replies" : "Reply in the thread";
  if (composer.placeholder !== placeholder) composer.placeholder = placeholder;
}

function submitReply() {
  const t = state.thread;
  const conv = t && state.convs.get(t.convId);
  if (!conv || !canPost(conv)) return;
  const composer = $("thread-composer");
  const body = composer.value.trim();
  const key = `${t.convId}|${t.rootId}`;
  const photos = photosForSend(key);
  if (!body && !photos.attachments.length && !photos.busy && !photos.failed) return;
  if (sendRefused(conv, body, photos)) return;
  const mentions = completion ? completion.mentionsFor(body) : [];
  composer.value = "";
  if (completion) completion.reset();
  clearTray(key);
  t.scrollBottom = true;
  hooks.sendReply(conv, body, t.rootId, mentions, photos.attachments);
}

/**
 * Wires the panel. connected(); request(event, payload) -> ack; store(conv, msgs): keeps a
 * thread page's messages (no unread counting); sendReply(conv, body, rootId); onChipHold(chip).
 */
export function setupThreads(options) {
  hooks = { ...hooks, ...options };
  actions.openThread = openThread;
  addRenderHook(renderThread);
  $("thread-close").addEventListener("click", closeThread);
  $("thread-back").addEventListener("click", closeThread);
  window.addEventListener("popstate", () => {
    if (state.thread && !(window.history.state && window.history.state.backstageThread)) {
      state.thread = null;
      scheduleRender();
    }
  });
  const composer = $("thread-composer");
  completion = attachCompletion(composer, { convId: () => (state.thread ? state.thread.convId : null) });
  addPhotoSlot({
    button: $("thread-attach-button"),
    input: $("thread-photo-input"),
    composer,
    zone: $("thread-panel"),
    tray: $("thread-photo-tray"),
    trayKey,
  });
  composer.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submitReply();
    }
  });
  $("thread-form").addEventListener("submit", (e) => {
    e.preventDefault();
    submitReply();
  });
  $("thread-list").addEventListener("scroll", () => {
    const t = state.thread;
    if (t && $("thread-list").scrollTop < 120) loadPage(t, true);
  });
  const menuKey = () => (state.thread ? `${state.thread.convId}|thread` : null);
  setupMessageMenus($("thread-list"), { onChipHold: options.onChipHold, menuKey });
  setupMessageMenus($("thread-root"), { onChipHold: options.onChipHold, menuKey });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.thread && e.target === composer) closeThread();
  });
}
