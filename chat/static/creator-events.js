// Creator channels (SPEC §4 `subscribe` / `event`): on every connection the page subscribes
// to `creator:{id}` for each creator whose conversation it lists, and shows what the platform
// publishes there (`POST /api/v1/server/publish`): a strip above the open conversation of
// that creator, and a notice when another conversation (or none) is open.

import { fullTime, h, linkify, safeHttpUrl, shortTime } from "./dom.js";
import { addRenderHook, scheduleRender, showNotice } from "./render.js";
import { openConv, state } from "./state.js";

const $ = (id) => document.getElementById(id);
const TEXT_KEYS = ["text", "message", "title", "body"];

let subscribe = async () => ({ ok: false, error: { code: "offline" } });
const subscribed = new Set(); // creator ids subscribed (or being subscribed) on this connection
const refused = new Set(); // creator ids this connection may not subscribe to (forbidden)
const latest = new Map(); // creator id -> {event, data, published_at, dismissed}

/** subscribe: (channel) => Promise<{ok, ...}>; the client keeps a subscribed channel across reconnects. */
export function setupCreatorEvents({ subscribe: subscribeChannel }) {
  subscribe = subscribeChannel;
  addRenderHook(renderStrip);
  $("creator-event-close").addEventListener("click", () => {
    const conv = openConv();
    const ev = conv && latest.get(conv.conversation.creator_id);
    if (ev) ev.dismissed = true;
    scheduleRender();
  });
}

/** Subscribes to the creator channels of the listed conversations not subscribed yet. */
export function subscribeCreatorChannels() {
  const creators = new Set();
  for (const conv of state.convs.values()) if (conv.conversation.creator_id) creators.add(String(conv.conversation.creator_id));
  for (const id of creators) {
    if (subscribed.has(id) || refused.has(id)) continue;
    subscribed.add(id);
    subscribe(`creator:${id}`).then((res) => {
      if (res && res.ok) return;
      subscribed.delete(id);
      const code = res && res.error && res.error.code;
      // e.g. a direct conversation kept after the membership ended: not the creator's audience.
      if (code === "forbidden") refused.add(id);
      // a lost ack, unavailable, rate_limited: once more in a second (offline: the next connect does it)
      else if (code !== "offline") setTimeout(subscribeCreatorChannels, 1_000);
    });
  }
}

/** Subscriptions belong to one socket connection: a new one subscribes again. */
export function forgetCreatorChannels() {
  subscribed.clear();
  refused.clear();
}

/** A live `event` {channel, event, data, published_at}. */
export function onCreatorEvent(ev) {
  if (!ev || typeof ev.channel !== "string" || !ev.channel.startsWith("creator:")) return;
  const creatorId = ev.channel.slice("creator:".length);
  const item = { event: String(ev.event || "update"), data: ev.data, published_at: ev.published_at, dismissed: false };
  latest.set(creatorId, item);
  const conv = openConv();
  if (!conv || String(conv.conversation.creator_id) !== creatorId) {
    const text = eventText(item);
    showNotice(`${creatorLabel(creatorId)} · ${item.event}${text ? `: ${text}` : ""}`, "info");
  }
  scheduleRender();
}

/** The creator's name when known, else one of their rooms' names, else the id. */
function creatorLabel(creatorId) {
  if (state.names.has(creatorId)) return state.names.get(creatorId);
  for (const conv of state.convs.values()) {
    if (String(conv.conversation.creator_id) === creatorId && conv.conversation.name) return conv.conversation.name;
  }
  return creatorId;
}

function eventText(item) {
  const d = item.data;
  if (typeof d === "string") return d;
  if (d && typeof d === "object") {
    for (const key of TEXT_KEYS) if (typeof d[key] === "string" && d[key].trim()) return d[key].trim();
  }
  return "";
}

function eventUrl(item) {
  const d = item.data;
  return d && typeof d === "object" && typeof d.url === "string" ? safeHttpUrl(d.url) : null;
}

let stripSig = null;

/** Shows or hides the strip; a reader at the newest message stays there as the list shrinks. */
function renderStrip() {
  const list = $("message-list");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  fillStrip();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function fillStrip() {
  const strip = $("creator-event");
  const conv = openConv();
  const creatorId = conv ? String(conv.conversation.creator_id) : null;
  const item = creatorId ? latest.get(creatorId) : null;
  if (!item || item.dismissed) {
    strip.hidden = true;
    stripSig = null;
    return;
  }
  strip.hidden = false;
  const sig = JSON.stringify([creatorId, item.event, item.data, item.published_at]);
  if (sig === stripSig) return;
  stripSig = sig;
  strip.dataset.event = item.event;
  const text = eventText(item);
  const url = eventUrl(item);
  $("creator-event-body").replaceChildren(
    h("strong", { class: "creator-event-title" }, `${creatorLabel(creatorId)} · ${item.event}`),
    text ? h("span", { class: "creator-event-text" }, linkify(text)) : null,
    url ? h("a", { class: "creator-event-link", href: url, rel: "noopener noreferrer", target: "_blank" }, "Open") : null,
    item.published_at
      ? h("time", { class: "creator-event-time", datetime: item.published_at, title: fullTime(item.published_at) }, shortTime(item.published_at))
      : null,
  );
}
