// Rendering: the conversation list, the open conversation and the connection
// state, redrawn from `state`. Elements are keyed and only rebuilt when what
// they show changed, so scroll position, focus and hover survive live updates.

import { clockTime, dayLabel, fullTime, h, hueClass, linkify, shortTime } from "./dom.js";
import {
  canDelete,
  canEdit,
  canPost,
  conversationName,
  isCreatorOf,
  nameOf,
  openConv,
  otherMemberId,
  sortedConvs,
  state,
} from "./state.js";
import { PICKER, buildReactionRow, reactionsOf, whoText } from "./reactions.js";
import { avatarUrl, fillAvatar, menuModeFor, messageMenu, openPicker, openSubmenu } from "./ui.js";
import { buildPhotos, paint as paintPhotos, photosLabel, uploading } from "./photos.js";
import { composerBlock, moderationItems, moderationSubmenus } from "./moderation.js";
import { isReported, memberItems, messageVeil } from "./reports.js";
import { roomSymbol } from "./spaces.js";
import { canReplyTo, isReply, threadSummary } from "./threads.js";
import { mentionBody, mentionsMe } from "./mentions.js";

/** Filled by app.js: what buttons in rendered items do. */
export const actions = {};

const $ = (id) => document.getElementById(id);

const GROUP_GAP_MS = 5 * 60 * 1000;

let scheduled = false;
let scrollMode = null; // "bottom" forces the list to its end after rendering
const renderHooks = [];

/** Registers an extra renderer (e.g. the notification bell). */
export function addRenderHook(fn) {
  renderHooks.push(fn);
}

/** Batches every change of this turn into one render. */
export function scheduleRender(opts = {}) {
  if (opts.scroll === "bottom") scrollMode = "bottom";
  if (scheduled) return;
  scheduled = true;
  queueMicrotask(() => {
    scheduled = false;
    const mode = scrollMode;
    scrollMode = null;
    renderConnection();
    renderList();
    renderConversation(mode);
    paintPhotos();
    for (const fn of renderHooks) fn();
    renderTitle();
  });
}

function renderTitle() {
  let total = 0;
  for (const conv of state.convs.values()) total += conv.unread;
  const title = total > 0 ? `(${total}) Backstage` : "Backstage";
  if (document.title !== title) document.title = title;
}

// ------------------------------------------------------------------ connection

const CONNECTION_TEXT = { connected: "connected", connecting: "connecting…", offline: "offline" };

function renderConnection() {
  const el = $("conn");
  const text = CONNECTION_TEXT[state.connection] || "connecting…";
  if (el.textContent !== text) el.textContent = text;
  el.dataset.state = state.connection;
  document.body.classList.toggle("is-offline", state.connection !== "connected");
}

// ------------------------------------------------------------ conversation list

const listItems = new Map(); // conversation id -> {el, sig}

function previewText(conv) {
  const m = conv.lastMessage;
  if (!m) return conv.conversation.kind === "room" ? "No messages yet" : "Say hello";
  const who = state.me && m.sender && m.sender.id === state.me.id ? "You" : (m.sender && m.sender.name) || "";
  const veil = messageVeil(conv, m);
  const text = m.deleted ? "message deleted" : veil && veil.placeholder ? veil.placeholder : m.body.replace(/\s+/g, " ").trim() || photosLabel(m);
  return conv.conversation.kind === "room" || who === "You" ? `${who}: ${text}` : text;
}

/**
 * "online" | "offline" for the other member of a direct conversation, "unknown" while this
 * page is not joined to it (disconnected, or before the join's answer): no false "offline".
 */
function presenceOf(conv) {
  const other = otherMemberId(conv);
  if (!other) return null;
  if (!conv.joined) return "unknown";
  return conv.online.has(other) ? "online" : "offline";
}

const PRESENCE_TITLE = { online: "online", offline: "offline", unknown: "status unknown" };

/** What the header says about presence: unknown while we are the ones disconnected. */
function presenceText(presence) {
  if (presence !== "unknown") return presence;
  return state.connection === "connected" ? "" : "status unknown while reconnecting";
}

function buildListItem(conv) {
  const name = conversationName(conv);
  const isRoom = conv.conversation.kind === "room";
  const presence = presenceOf(conv);
  const avatar = h("span", { class: "avatar", "aria-hidden": "true" });
  fillAvatar(avatar, { key: conv.id, name, userId: otherMemberId(conv), symbol: isRoom ? roomSymbol(conv) : null });
  const wrap = h("span", { class: "avatar-wrap" }, avatar);
  if (presence) wrap.append(h("span", { class: `presence-dot ${presence}`, title: PRESENCE_TITLE[presence] }));
  const mentionBadge =
    conv.mentionCount > 0
      ? h(
          "span",
          { class: "mention-badge", "data-testid": "mention-badge", "aria-label": `${conv.mentionCount} ${conv.mentionCount === 1 ? "mention" : "mentions"} of you`, title: "Mentions you" },
          `@${conv.mentionCount}`,
        )
      : null;
  const badge =
    conv.unread > 0
      ? h("span", { class: "badge", "data-testid": "unread-badge", "aria-label": `${conv.unread} unread` }, String(conv.unread))
      : null;
  return [
    wrap,
    h(
      "div",
      { class: "conv-main" },
      h(
        "div",
        { class: "conv-top" },
        h("span", { class: "conv-name" }, name),
        conv.muted ? h("span", { class: "conv-muted", title: "Muted" }, "muted") : null,
        isRoom && conv.conversation.archived ? h("span", { class: "conv-muted", title: "Archived: read-only" }, "archived") : null,
        h("time", { class: "conv-time", datetime: conv.lastMessage ? conv.lastMessage.created_at : null }, conv.lastMessage ? shortTime(conv.lastMessage.created_at) : ""),
      ),
      isRoom && conv.conversation.topic ? h("div", { class: "conv-topic", "data-testid": "conversation-topic" }, conv.conversation.topic) : null,
      h("div", { class: "conv-bottom" }, h("span", { class: "conv-preview" }, previewText(conv)), mentionBadge, badge),
    ),
  ];
}

function renderList() {
  const list = $("conv-list");
  const convs = sortedConvs();
  const seen = new Set();
  let prev = null;
  for (const conv of convs) {
    seen.add(conv.id);
    const sig = JSON.stringify([
      conversationName(conv),
      conv.conversation.kind,
      conv.lastMessage && [conv.lastMessage.seq, conv.lastMessage.body, conv.lastMessage.deleted, conv.lastMessage.created_at],
      conv.unread,
      conv.mentionCount,
      conv.muted,
      presenceOf(conv),
      avatarUrl(otherMemberId(conv)),
      messageVeil(conv, conv.lastMessage),
      [conv.conversation.emoji, conv.conversation.topic, conv.conversation.archived],
    ]);
    let item = listItems.get(conv.id);
    if (!item) {
      // A list item holding one button-like element (a list may only hold list items).
      const button = h("div", { class: "conv-item", tabindex: "0", role: "button" });
      const el = h("li", { class: "conv-li", "data-testid": "conversation-item", "data-conversation-id": conv.id }, button);
      item = { el, button, sig: null };
      listItems.set(conv.id, item);
    }
    if (item.sig !== sig) {
      item.button.replaceChildren(...buildListItem(conv));
      item.sig = sig;
    }
    item.button.classList.toggle("active", conv.id === state.openId);
    item.button.classList.toggle("has-unread", conv.unread > 0);
    if (conv.id === state.openId) item.button.setAttribute("aria-current", "true");
    else item.button.removeAttribute("aria-current");
    const expectedNext = prev ? prev.nextSibling : list.firstChild;
    if (expectedNext !== item.el) list.insertBefore(item.el, expectedNext);
    prev = item.el;
  }
  for (const [id, item] of listItems) {
    if (!seen.has(id)) {
      item.el.remove();
      listItems.delete(id);
    }
  }
  $("conv-empty").hidden = !state.me || convs.length > 0;
}

// ------------------------------------------------------------ open conversation


function seenByMap(conv, sortedSeqs) {
  const bySeq = new Map();
  if (!state.me) return bySeq;
  for (const [userId, readSeq] of conv.readers) {
    if (userId === state.me.id) continue;
    // The last loaded message at or below their read position.
    let target = null;
    for (let i = sortedSeqs.length - 1; i >= 0; i--) {
      if (sortedSeqs[i] <= readSeq) {
        target = sortedSeqs[i];
        break;
      }
    }
    if (target === null) continue;
    const msg = conv.messages.get(target);
    if (msg && msg.sender && msg.sender.id === userId) continue;
    if (!bySeq.has(target)) bySeq.set(target, []);
    bySeq.get(target).push(nameOf(userId));
  }
  for (const [seq, names] of bySeq) {
    names.sort();
    if (names.length > 3) bySeq.set(seq, [...names.slice(0, 2), `${names.length - 2} others`]);
  }
  return bySeq;
}

/** The key of a view's message menus (ui.js): the thread panel's are its own. */
export function menuKey(conv, scope) {
  return scope === "thread" ? `${conv.id}|thread` : conv.id;
}

/** Whether the message being edited is this one, in this view. */
function editingIn(conv, msg, scope) {
  const ed = state.editing;
  return Boolean(ed && ed.convId === conv.id && ed.seq === msg.seq && (ed.scope || "main") === scope);
}

export function buildMessage(conv, msg, { grouped, seenBy, pending, scope = "main" }) {
  const own = Boolean(state.me && msg.sender && msg.sender.id === state.me.id);
  const classes = ["msg"];
  if (own) classes.push("own");
  if (grouped) classes.push("grouped");
  if (msg.deleted) classes.push("deleted");
  if (pending) classes.push(pending.status === "failed" ? "failed" : "pending");
  const forMe = !pending && !own && mentionsMe(msg);
  if (forMe) classes.push("mentions-me");
  const el = h("article", {
    class: classes.join(" "),
    "data-testid": "message",
    "data-seq": pending ? null : String(msg.seq),
    "data-message-id": pending ? null : msg.id,
    "data-client-msg-id": msg.client_msg_id || null,
    "data-status": pending ? pending.status : "sent",
    "data-mentions-me": forMe ? "true" : null,
  });

  if (!grouped || pending) {
    el.append(
      h(
        "div",
        { class: "msg-head" },
        own ? null : h("span", { class: `msg-sender ${hueClass(msg.sender.id)}` }, msg.sender.name || msg.sender.id),
        !own && conv.conversation.kind === "room" && msg.sender.id === conv.conversation.creator_id
          ? h("span", { class: "msg-role" }, "creator")
          : null,
        h("time", { class: "msg-time", datetime: msg.created_at, title: fullTime(msg.created_at) }, clockTime(msg.created_at)),
      ),
    );
  }

  const editing = !pending && editingIn(conv, msg, scope) ? state.editing : null;
  const bubble = h("div", { class: "msg-bubble" });
  const veil = pending ? null : messageVeil(conv, msg);
  if (msg.deleted) {
    bubble.append(h("em", { class: "msg-body msg-deleted-text" }, "message deleted"));
  } else if (veil && veil.placeholder) {
    el.classList.add("veiled");
    el.dataset.hidden = veil.reason;
    bubble.append(h("em", { class: "msg-body msg-hidden-text", "data-testid": "hidden-placeholder" }, veil.placeholder));
  } else if (editing) {
    const area = h("textarea", { class: "edit-box", rows: "2", maxlength: "4000", "aria-label": "Edit message" });
    area.value = editing.draft;
    area.addEventListener("input", () => {
      editing.draft = area.value;
    });
    area.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        actions.saveEdit();
      } else if (e.key === "Escape") {
        e.preventDefault();
        actions.cancelEdit();
      }
    });
    bubble.append(
      area,
      h(
        "div",
        { class: "edit-actions" },
        editing.error ? h("span", { class: "msg-error" }, editing.error) : null,
        h("button", { type: "button", class: "link-button", onclick: () => actions.cancelEdit() }, "Cancel"),
        h("button", { type: "button", class: "small-button", onclick: () => actions.saveEdit() }, "Save"),
      ),
    );
    queueMicrotask(() => {
      if (document.activeElement !== area && area.isConnected && !editing.focused) {
        editing.focused = true;
        area.focus();
        area.setSelectionRange(area.value.length, area.value.length);
      }
    });
  } else {
    const photos = buildPhotos(msg, msg.sender.name || msg.sender.id);
    if (photos) bubble.append(photos);
    if (msg.body || !photos) bubble.append(h("div", { class: "msg-body" }, pending ? linkify(msg.body) : mentionBody(msg)));
    if (msg.edited_at) bubble.append(h("span", { class: "msg-edited", title: fullTime(msg.edited_at) }, "edited"));
    if (veil && veil.marker) {
      el.classList.add("dimmed");
      el.dataset.hidden = "reported";
      bubble.append(h("span", { class: "msg-hidden-marker", "data-testid": "hidden-marker", title: "Hidden from members after reports" }, veil.marker));
    }
  }
  const row = h("div", { class: "msg-row" }, bubble);
  el.append(row);

  if (!pending && !editing) {
    const items = messageActions(conv, msg, scope);
    if (items.length) {
      el.classList.add("has-menu");
      row.append(messageMenu(menuKey(conv, scope), msg.seq, items, reactionPickerOf(conv, msg), moderationSubmenus(conv, msg)));
    }
  }

  if (!pending && isReported(msg) && !msg.deleted) el.append(h("div", { class: "msg-reported", "data-testid": "reported-marker" }, "Reported"));

  if (!pending) {
    const whoOpen = state.reactionWho && state.reactionWho.convId === conv.id && state.reactionWho.seq === msg.seq
      ? state.reactionWho.emoji
      : null;
    const reactions = veil && veil.placeholder ? null : buildReactionRow(conv.id, msg, (emoji, on) => actions.react(conv.id, msg.seq, emoji, on), whoOpen);
    if (reactions) el.append(reactions);
    if (scope === "main") {
      const summary = threadSummary(conv, msg);
      if (summary) el.append(summary);
    }
  }

  if (pending) {
    if (pending.status === "failed") {
      el.append(
        h(
          "div",
          { class: "msg-status failed", role: "alert" },
          h("span", { class: "msg-error" }, `Not sent: ${pending.error || "error"}`),
          h("button", { type: "button", class: "small-button retry", "data-action": "retry", onclick: () => actions.retrySend(conv.id, pending.cmid) }, "Retry"),
          h("button", { type: "button", class: "link-button", "data-action": "discard", onclick: () => actions.discardSend(conv.id, pending.cmid) }, "Discard"),
        ),
      );
    } else {
      el.append(h("div", { class: "msg-status" }, pending.status === "queued" ? "Waiting for connection…" : "Sending…"));
    }
  }

  if (seenBy && seenBy.length) {
    const who = seenBy.length > 1 ? `${seenBy.slice(0, -1).join(", ")} and ${seenBy[seenBy.length - 1]}` : seenBy[0];
    el.append(h("div", { class: "msg-seen", "data-testid": "read-receipt" }, `Seen by ${who}`));
  }
  return el;
}

/** The "Add reaction" picker of a message: the fixed emoji, checked when already ours. */
function reactionPickerOf(conv, msg) {
  const mine = new Set(reactionsOf(msg).filter((r) => r.me).map((r) => r.emoji));
  return {
    choices: PICKER.map((p) => ({ ...p, on: mine.has(p.emoji) })),
    choose: (emoji, on) => actions.react(conv.id, msg.seq, emoji, on),
  };
}

/**
 * The actions of a message's menu: Add reaction (any sent message), Edit (own), Delete (own;
 * any in the room of a creator we are or moderate), the moderation items (moderation.js), Copy.
 */
function messageActions(conv, msg, scope = "main") {
  const key = menuKey(conv, scope);
  const items = [];
  const veiled = Boolean((messageVeil(conv, msg) || {}).placeholder);
  if (veiled) return [...(canDelete(conv, msg) ? [deleteItem(conv, msg)] : []), ...memberItems(conv, msg)];
  if (!msg.deleted && msg.id) {
    items.push({ action: "react", label: "Add reaction", keepOpen: true, run: () => openPicker(key, msg.seq) });
  }
  if (scope === "main" && canReplyTo(conv, msg)) {
    items.push({ action: "reply", label: "Reply in thread", run: () => actions.openThread(conv.id, msg.id) });
  }
  if (canEdit(msg)) items.push({ action: "edit", label: "Edit", run: () => actions.startEdit(conv.id, msg.seq, scope) });
  if (canDelete(conv, msg)) items.push(deleteItem(conv, msg));
  items.push(...moderationItems(conv, msg, (name) => openSubmenu(key, msg.seq, name)));
  if (items.length && navigator.clipboard && msg.body && !msg.deleted) {
    items.push({ action: "copy", label: "Copy text", run: () => navigator.clipboard.writeText(msg.body).catch(() => {}) });
  }
  items.push(...memberItems(conv, msg)); // Report…, Block / Unblock (reports.js, blocks.js)
  return items;
}

function deleteItem(conv, msg) {
  const confirming = state.confirmDelete && state.confirmDelete.convId === conv.id && state.confirmDelete.seq === msg.seq;
  return {
    action: "delete",
    label: confirming ? "Delete?" : "Delete",
    danger: true,
    keepOpen: !confirming, // the first press arms, the second deletes
    run: () => actions.deleteMessage(conv.id, msg.seq),
  };
}

function renderHeader(conv) {
  const name = conversationName(conv);
  const isRoom = conv.conversation.kind === "room";
  fillAvatar($("conv-avatar"), { key: conv.id, name, userId: otherMemberId(conv), symbol: isRoom ? roomSymbol(conv) : null });
  const title = $("conv-title");
  if (title.textContent !== name) title.textContent = name;

  const sub = $("conv-sub");
  const parts = [];
  if (isRoom) {
    parts.push(isCreatorOf(conv) ? "Your room" : "Room");
    if (conv.joined) parts.push(`${conv.online.size} online`);
    else if (state.connection !== "connected") parts.push("online count unknown");
    if (conv.conversation.post_policy === "creator") parts.push("creator posts only");
    if (conv.conversation.archived) parts.push("archived");
  } else {
    parts.push(presenceText(presenceOf(conv)));
  }
  const subText = parts.filter(Boolean).join(" · ");
  if (sub.textContent !== subText) sub.textContent = subText;
  sub.dataset.presence = isRoom ? "" : presenceOf(conv) || "";

  $("mute-button").textContent = conv.muted ? "Unmute" : "Mute";

  const composer = $("composer");
  const block = composerBlock(conv);
  const allowed = canPost(conv) && !(block && block.disabled);
  composer.disabled = !allowed;
  $("attach-button").disabled = !allowed;
  $("send-button").disabled = !allowed || Boolean(block && block.wait) || uploading(conv.id);
  const placeholder = !canPost(conv) ? "Only the creator posts in this room" : block && block.placeholder ? block.placeholder : `Message ${name}`;
  if (composer.placeholder !== placeholder) composer.placeholder = placeholder;
}

function typingText(conv) {
  const names = [...conv.typers.keys()].filter((id) => !state.me || id !== state.me.id).map(nameOf);
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`;
}

function renderTyping(conv) {
  const el = $("typing-indicator");
  const text = conv ? typingText(conv) : "";
  if (el.textContent !== text) el.textContent = text;
  el.hidden = text === "";
}


/**
 * A list of messages kept in sync with the state: the open conversation's, or the thread
 * panel's (threads.js). Elements are keyed and rebuilt only when what they show changed.
 */
export function makeView({ list, status, newBelow: newBelowEl, scope }) {
  return { list, status, newBelowEl, scope, els: new Map(), convId: null, lastKey: null, newBelow: false };
}

/** Removes every message element of a view (its conversation closed). */
export function clearView(view) {
  for (const { el } of view.els.values()) el.remove();
  view.els.clear();
  view.convId = null;
  view.lastKey = null;
  view.newBelow = false;
}

/** A pending send shown as a message (no seq yet). */
function pendingMessage(p) {
  return {
    id: null,
    seq: null,
    body: p.body,
    client_msg_id: p.cmid,
    created_at: new Date(p.createdAt).toISOString(),
    edited_at: null,
    deleted: false,
    sender: { id: state.me ? state.me.id : "", name: state.me ? state.me.name : "" },
    attachments: (p.attachments || []).map((a) => ({ id: a.id, preview: a.preview })),
  };
}

/**
 * Draws `msgs` (ascending by seq) and `pendings` into a view, keeping the reader's place (or
 * going to the end with mode "bottom"). `viewKey` changes reset the view (another conversation
 * or thread). seenBy: seq -> names (read receipts), or null.
 */
export function renderMessageView(view, conv, { viewKey, msgs, pendings, seenBy = null, statusText, mode = null, days = true }) {
  const list = view.list;
  if (view.convId !== viewKey) {
    clearView(view);
    view.convId = viewKey;
    mode = "bottom";
  }
  const scope = view.scope;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  // Keep the reader's place: remember the first visible message and its offset
  // (by key: the element itself may be rebuilt, e.g. when older messages regroup it).
  let anchorKey = null;
  let anchorOffset = 0;
  if (mode !== "bottom" && !atBottom) {
    let best = null;
    for (const [key, { el }] of view.els) {
      if (key.startsWith("d:")) continue; // day separators move when older days load
      if (el.offsetTop + el.offsetHeight > list.scrollTop && (!best || el.offsetTop < best.offsetTop)) {
        best = el;
        anchorKey = key;
      }
    }
    if (best) anchorOffset = best.offsetTop - list.scrollTop;
  }
  if (view.status.textContent !== statusText) view.status.textContent = statusText;

  const wanted = [];
  let prevMsg = null;
  let prevDay = null;
  for (const msg of msgs) {
    const day = dayKey(msg.created_at);
    if (days && day && day !== prevDay) {
      wanted.push({ key: `d:${day}`, day: dayLabel(msg.created_at) });
      prevDay = day;
      prevMsg = null;
    }
    const grouped = Boolean(
      prevMsg &&
        !prevMsg.deleted &&
        prevMsg.sender.id === msg.sender.id &&
        prevMsg.seq === msg.seq - 1 &&
        Date.parse(msg.created_at) - Date.parse(prevMsg.created_at) < GROUP_GAP_MS,
    );
    wanted.push({ key: `m:${msg.seq}`, msg, opts: { grouped, seenBy: (seenBy && seenBy.get(msg.seq)) || null, pending: null, scope } });
    prevMsg = msg;
  }
  for (const p of [...pendings].sort((a, b) => a.createdAt - b.createdAt)) {
    wanted.push({ key: `p:${p.cmid}`, msg: pendingMessage(p), opts: { grouped: false, seenBy: null, pending: p, scope } });
  }

  const key = menuKey(conv, scope);
  const lastKeyBefore = view.lastKey;
  const keep = new Set();
  let prevEl = view.status;
  for (const { key: elKey, msg, opts, day } of wanted) {
    keep.add(elKey);
    if (day !== undefined) {
      let sep = view.els.get(elKey);
      if (!sep || sep.sig !== day) {
        const el = h("div", { class: "day-sep", role: "separator" }, h("span", null, day));
        if (sep) sep.el.replaceWith(el);
        sep = { el, sig: day };
        view.els.set(elKey, sep);
      }
      if (prevEl.nextSibling !== sep.el) list.insertBefore(sep.el, prevEl.nextSibling);
      prevEl = sep.el;
      continue;
    }
    const editingThis = Boolean(!opts.pending && editingIn(conv, msg, scope));
    const confirming = Boolean(state.confirmDelete && state.confirmDelete.convId === conv.id && state.confirmDelete.seq === msg.seq);
    const menuMode = !opts.pending && menuModeFor(key, msg.seq);
    const sig = JSON.stringify([
      msg.body,
      msg.edited_at,
      msg.deleted,
      msg.sender.name,
      (msg.mentions || []).map((id) => [id, state.names.get(String(id)) || null]),
      (msg.attachments || []).map((a) => a.id || a.preview),
      opts.grouped,
      opts.seenBy,
      opts.pending && [opts.pending.status, opts.pending.error],
      editingThis && [state.editing.error],
      confirming,
      canEdit(msg),
      canDelete(conv, msg),
      menuMode,
      menuMode && messageActions(conv, msg, scope).map((it) => it.label),
      reactionsOf(msg),
      !opts.pending && [messageVeil(conv, msg), isReported(msg)],
      state.reactionWho && state.reactionWho.convId === conv.id && state.reactionWho.seq === msg.seq
        ? [state.reactionWho.emoji, whoText(msg, state.reactionWho.emoji)]
        : null,
      scope === "main" ? summarySig(msg) : null,
      canReplyTo(conv, msg),
    ]);
    let item = view.els.get(elKey);
    if (!item || item.sig !== sig) {
      const el = buildMessage(conv, msg, opts);
      if (item) item.el.replaceWith(el);
      item = { el, sig };
      view.els.set(elKey, item);
    }
    if (prevEl.nextSibling !== item.el) list.insertBefore(item.el, prevEl.nextSibling);
    prevEl = item.el;
  }
  for (const [elKey, item] of view.els) {
    if (!keep.has(elKey)) {
      item.el.remove();
      view.els.delete(elKey);
    }
  }

  const lastWanted = wanted.length ? wanted[wanted.length - 1] : null;
  view.lastKey = lastWanted ? lastWanted.key : null;
  if (mode === "bottom" || atBottom) {
    list.scrollTop = list.scrollHeight;
    view.newBelow = false;
  } else {
    if (anchorKey && view.els.has(anchorKey)) {
      list.scrollTop = view.els.get(anchorKey).el.offsetTop - anchorOffset;
    }
    // Something arrived below while the reader is further up: offer a way down.
    if (view.lastKey !== lastKeyBefore && lastKeyBefore !== null) view.newBelow = true;
  }
  if (view.newBelowEl) view.newBelowEl.hidden = !view.newBelow;
}

/** What a thread summary shows (its element is rebuilt when this changes). */
function summarySig(msg) {
  const t = msg.thread;
  if (!t || !t.reply_count) return null;
  return [t.reply_count, t.last_reply_at, (t.participants || []).map((id) => [id, nameOf(id), avatarUrl(id)]), shortTime(t.last_reply_at)];
}

let mainView = null;

function renderConversation(mode) {
  const conv = openConv();
  document.body.classList.toggle("conv-open", Boolean(conv));
  $("conv-pane").hidden = !conv;
  $("conv-placeholder").hidden = Boolean(conv);
  if (!mainView) mainView = makeView({ list: $("message-list"), status: $("history-status"), newBelow: $("new-below"), scope: "main" });
  if (!conv) {
    clearView(mainView);
    renderTyping(null);
    return;
  }
  renderHeader(conv);
  renderTyping(conv);
  // The main view: the conversation's messages from its loaded window on, thread replies left
  // out (they show in the thread panel; their roots carry the summary).
  const msgs = [...conv.messages.values()]
    .filter((m) => !isReply(m) && (conv.lowSeq === null || m.seq >= conv.lowSeq))
    .sort((a, b) => a.seq - b.seq);
  const statusText = !conv.loaded
    ? "Loading messages…"
    : conv.loadingOlder
      ? "Loading older messages…"
      : conv.hasMoreBefore
        ? "Scroll up for older messages"
        : msgs.length
          ? "This is the beginning of the conversation."
          : "No messages yet. Say hello!";
  const pendings = [...conv.pending.values()].filter((p) => !p.threadId);
  const seenBy = seenByMap(conv, msgs.map((m) => m.seq));
  renderMessageView(mainView, conv, { viewKey: conv.id, msgs, pendings, seenBy, statusText, mode });
}

/** The message list was scrolled (by the user or by us). */
export function onMessageListScroll() {
  const list = $("message-list");
  if (mainView && mainView.newBelow && list.scrollHeight - list.scrollTop - list.clientHeight < 80) {
    mainView.newBelow = false;
    $("new-below").hidden = true;
  }
}

export function scrollToLatest() {
  const list = $("message-list");
  list.scrollTop = list.scrollHeight;
  if (mainView) mainView.newBelow = false;
  $("new-below").hidden = true;
}

function dayKey(iso) {
  const d = iso ? new Date(iso) : null;
  return d && !Number.isNaN(d.getTime()) ? `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}` : null;
}

// ------------------------------------------------------------------- notices

/** A short-lived message at the bottom of the screen. */
export function showNotice(text, kind = "info") {
  const box = $("toasts");
  const el = h("div", { class: `toast ${kind}` }, text);
  box.append(el);
  setTimeout(() => el.remove(), 7000);
}

/** Replaces the page with a sign-in message (missing, invalid or expired token). */
export function showAuthScreen(title, message) {
  $("auth-title").textContent = title;
  $("auth-message").textContent = message;
  $("auth-screen").hidden = false;
  $("app").hidden = true;
}
