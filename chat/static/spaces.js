// Chat spaces (docs/api.md "Chat spaces"): a room's emoji, name and topic (in the list and the
// header, renamed live by `conversation_updated`), an archived room (a read-only banner, no
// composer), versioned guidelines a member accepts ("I agree") before the composer works (a new
// version asks again), and a deleted room leaving the page (`conversation_deleted`).
// app.js feeds it the join answers and the two events; moderation.js asks it about the composer.

import { h } from "./dom.js";
import { addRenderHook, scheduleRender, showNotice } from "./render.js";
import { canPost, conversationName, openConv, state } from "./state.js";
import { canModerate } from "./moderation.js";

const $ = (id) => document.getElementById(id);

let request = () => Promise.resolve({ ok: false, error: { code: "offline", message: "not connected" } });
let remove = () => {};
let refresh = () => {};
const accepting = new Set(); // conversation ids with an accept_guidelines awaiting its ack

/** request(event, payload) -> ack; remove(id, notice): drops a conversation; refresh(): re-reads the list. */
export function setupSpaces(options) {
  request = options.request;
  remove = options.remove;
  refresh = options.refresh;
  addRenderHook(renderSpace);
}

/** The room's emoji, or "#" (the avatar of a room). */
export function roomSymbol(conv) {
  const emoji = conv.conversation.emoji;
  return typeof emoji === "string" && emoji ? emoji : "#";
}

/** A join answer: which guidelines version we accepted (the current one, unless `guidelines_accepted` is false). */
export function applySpaceJoin(conv, answer) {
  const version = Number(conv.conversation.guidelines_version) || 0;
  conv.acceptedGuidelines = answer.guidelines_accepted === false ? 0 : version;
}

/** `conversation_updated`: the room as it is now (a rename, topic, emoji, archive, tier, guidelines). */
export function onConversationUpdated(ev) {
  const conv = ev && ev.id !== undefined ? state.convs.get(String(ev.id)) : null;
  if (!conv) return;
  const before = conv.conversation;
  conv.conversation = { ...before, ...ev };
  if (conv.conversation.archived !== before.archived) {
    showNotice(conv.conversation.archived ? `“${conversationName(conv)}” was archived: it is read-only now.` : `“${conversationName(conv)}” is open again.`, "info");
  }
  scheduleRender();
}

/** `conversation_deleted {conversation_id}` (access_revoked follows: nothing left to drop then). */
export function onConversationDeleted(ev) {
  const conv = ev && ev.conversation_id !== undefined ? state.convs.get(String(ev.conversation_id)) : null;
  if (conv) remove(conv.id, `“${conversationName(conv)}” was deleted.`);
}

/** A send refused by the room (`forbidden` with reason `archived` or `guidelines`). */
export function noteSpaceRefusal(conv, error) {
  const details = (error && error.details) || {};
  if (!error || error.code !== "forbidden") return;
  if (details.reason === "archived") {
    conv.conversation = { ...conv.conversation, archived: true };
  } else if (details.reason === "guidelines") {
    const version = Number(details.guidelines_version) || 0;
    if (version > (Number(conv.conversation.guidelines_version) || 0)) refresh(); // the new text
    conv.acceptedGuidelines = 0;
  } else {
    return;
  }
  scheduleRender();
}

function guidelinesPending(conv) {
  const c = conv.conversation;
  if (c.kind !== "room" || c.archived || !c.guidelines || canModerate(conv) || !canPost(conv)) return false;
  if (conv.acceptedGuidelines === undefined) return false; // not joined yet: the join answer says
  return conv.acceptedGuidelines < (Number(c.guidelines_version) || 0);
}

/** What the room does to the composer: null, or {disabled, placeholder, hidden?}. */
export function spaceComposer(conv) {
  if (!conv || conv.conversation.kind !== "room") return null;
  if (conv.conversation.archived) return { disabled: true, hidden: true, placeholder: "This space is archived" };
  if (guidelinesPending(conv)) return { disabled: true, placeholder: "Accept the guidelines to write here" };
  return null;
}

async function accept(conv) {
  if (accepting.has(conv.id)) return;
  const version = Number(conv.conversation.guidelines_version) || 0;
  accepting.add(conv.id);
  scheduleRender();
  const res = await request("accept_guidelines", { conversation_id: conv.id, version });
  accepting.delete(conv.id);
  if (res.ok) {
    conv.acceptedGuidelines = Math.max(conv.acceptedGuidelines || 0, Number(res.guidelines_version) || version);
    if (state.openId === conv.id) queueMicrotask(() => $("composer").focus());
  } else if (res.error && res.error.code === "conflict") {
    showNotice("The guidelines changed meanwhile: read them again.", "warning");
    refresh();
  } else {
    showNotice(`Could not accept the guidelines: ${(res.error && res.error.message) || "error"}`, "error");
  }
  scheduleRender();
}

// ------------------------------------------------------------------ rendering

let sig = null;

function renderSpace() {
  const conv = openConv();
  const c = conv ? conv.conversation : null;
  const room = Boolean(c && c.kind === "room");
  const pending = Boolean(conv && guidelinesPending(conv));
  const next = JSON.stringify([conv && conv.id, room && c.topic, room && c.archived, pending && [c.guidelines, c.guidelines_version], accepting.has(conv && conv.id)]);
  if (next === sig) return;
  sig = next;

  const topic = $("conv-topic");
  topic.textContent = room ? c.topic || "" : "";
  topic.hidden = !topic.textContent;
  topic.title = topic.textContent;

  $("archived-banner").hidden = !(room && c.archived);
  $("composer-form").hidden = Boolean(room && c.archived);

  const box = $("guidelines");
  box.hidden = !pending;
  if (!pending) {
    box.replaceChildren();
    return;
  }
  box.replaceChildren(
    h("h3", { id: "guidelines-title" }, "Guidelines of this space"),
    h("p", { class: "muted guidelines-why" }, conv.acceptedGuidelines > 0 ? "They changed since you accepted them: read and accept them again to write here." : "Read and accept them to write here."),
    h("div", { class: "guidelines-text", tabindex: "0", role: "region", "aria-label": "Guidelines text" }, c.guidelines),
    h("button", { type: "button", class: "small-button guidelines-agree", disabled: accepting.has(conv.id), onclick: () => accept(conv) }, "I agree"),
  );
}
