// Moderation on the page (docs/moderation.md, docs/api.md "Moderation"): what the creator and
// their moderators do (appoint moderators, time out, block, pin, slow mode, the log) and what
// members see (pinned messages, a timeout banner with a disabled composer, the slow-mode wait).
// app.js feeds it the server's events and join answers; render.js asks it for the message
// menu's items and whether the composer is usable.

import * as api from "./api.js";
import { clockTime, fullTime, h } from "./dom.js";
import { addRenderHook, scheduleRender, showNotice } from "./render.js";
import { isCreatorOf, nameOf, openConv, state } from "./state.js";
import { blockedComposer, noteDirectRefusal, noteDirectSent } from "./blocks.js";
import { loadDesk, reloadDesks, reportsSection, reportsSig } from "./reports.js";
import { noteSpaceRefusal, spaceComposer } from "./spaces.js";

const $ = (id) => document.getElementById(id);

/** Timeout lengths offered (minutes; the server takes 1 minute to 7 days). */
export const TIMEOUTS = [
  { minutes: 1, label: "1 minute" },
  { minutes: 10, label: "10 minutes" },
  { minutes: 60, label: "1 hour" },
  { minutes: 24 * 60, label: "1 day" },
  { minutes: 7 * 24 * 60, label: "1 week" },
];
/** Slow mode intervals offered (seconds; 0 turns it off). */
export const SLOW_MODES = [0, 5, 10, 30, 60, 300, 900, 3600];
const LOG_PAGE = 20;

const mod = {
  /** creator id -> {moderators, blocked, timed_out} (GET /api/v1/moderation: ours and those we moderate) */
  teams: new Map(),
  /** creator id -> ms since epoch when our timeout in their rooms ends */
  timeouts: new Map(),
  /** conversation id -> ms since epoch before which slow mode lets us send nothing */
  slowUntil: new Map(),
  /** the message whose "Block" awaits a second press: "convId seq" */
  armed: null,
  panel: { open: false, creatorId: null, entries: [], next: null, loading: false, error: null, sig: null },
};
let request = () => Promise.resolve({ ok: false, error: { code: "offline", message: "not connected" } });
let refreshConversations = () => {};
let ticker = null;
let armTimer = null;

// ------------------------------------------------------------------ setup and state

/** request(event, payload) -> ack ({ok, ...}); refresh(): re-read the conversation list. */
export function setupModeration(options) {
  request = options.request;
  refreshConversations = options.refresh;
  $("moderate-button").addEventListener("click", () => togglePanel());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && mod.panel.open) {
      togglePanel(false);
      $("moderate-button").focus();
    }
  });
  addRenderHook(renderModeration);
}

/** Reads GET /api/v1/moderation: whose rooms we moderate, our timeouts, the teams we act for. */
export async function loadModeration() {
  let res;
  try {
    res = await api.getModeration();
  } catch {
    return; // a moderator's tools appear with the next refresh (or the next `moderation` event)
  }
  state.moderatorOf = new Set((res.moderator_of || []).map(String));
  mod.timeouts.clear();
  for (const t of res.timeouts || []) setTimeoutUntil(String(t.creator_id), t.until);
  mod.teams.clear();
  for (const team of res.teams || []) {
    for (const list of [team.moderators, team.blocked, team.timed_out]) {
      for (const u of list || []) if (u.id && u.name && !state.names.has(String(u.id))) state.names.set(String(u.id), u.name);
    }
    mod.teams.set(String(team.creator_id), team);
  }
  mod.panel.sig = null;
  reloadDesks(); // the open reports of the teams we act for
  scheduleRender();
}

function setTimeoutUntil(creatorId, until) {
  const t = until ? Date.parse(until) : NaN;
  if (Number.isFinite(t) && t > Date.now()) mod.timeouts.set(creatorId, t);
  else mod.timeouts.delete(creatorId);
  startTicker();
}

/** The creator or one of their moderators, in a room. */
export function canModerate(conv) {
  if (!conv || conv.conversation.kind !== "room" || !state.me) return false;
  return isCreatorOf(conv) || state.moderatorOf.has(String(conv.conversation.creator_id));
}

function teamOf(conv) {
  return mod.teams.get(String(conv.conversation.creator_id)) || { moderators: [], blocked: [], timed_out: [] };
}

function isTeamModerator(conv, userId) {
  return teamOf(conv).moderators.some((m) => String(m.id) === userId);
}

/** A join answer: the room's slow mode and pinned messages. */
export function applyJoinAnswer(conv, answer) {
  conv.slowMode = Number(answer.slow_mode_s) || 0;
  const pinned = Array.isArray(answer.pinned) ? answer.pinned : [];
  conv.pinnedMsgs = new Map(pinned.filter((m) => m && m.id !== undefined).map((m) => [String(m.id), m]));
  conv.pinnedIds = [...conv.pinnedMsgs.keys()];
}

// ------------------------------------------------------------------ server events

/** `moderation {action, creator_id, until}`: about us. */
export function onModeration(ev) {
  if (!ev || !ev.creator_id) return;
  const creatorId = String(ev.creator_id);
  const who = nameOf(creatorId);
  if (ev.action === "timeout") {
    setTimeoutUntil(creatorId, ev.until);
    showNotice(`A moderator timed you out of ${who}’s rooms until ${fullTime(ev.until)}.`, "warning");
  } else if (ev.action === "timeout_lifted") {
    mod.timeouts.delete(creatorId);
    showNotice(`You can post in ${who}’s rooms again.`, "info");
  } else if (ev.action === "block") {
    showNotice(`You were blocked from ${who}’s rooms.`, "warning"); // access_revoked removed them
  } else if (ev.action === "unblock") {
    showNotice(`You were unblocked: ${who}’s rooms are back.`, "info");
    refreshConversations(); // lists and joins them again
  } else if (ev.action === "moderator_added" || ev.action === "moderator_removed") {
    if (ev.action === "moderator_added") state.moderatorOf.add(creatorId);
    else state.moderatorOf.delete(creatorId);
    showNotice(ev.action === "moderator_added" ? `You are now a moderator of ${who}’s rooms.` : `You are no longer a moderator of ${who}’s rooms.`, "info");
    loadModeration();
  }
  scheduleRender();
}

/** `slow_mode {conversation_id, seconds}`. */
export function onSlowMode(conv, ev) {
  conv.slowMode = Number(ev.seconds) || 0;
  if (!conv.slowMode) mod.slowUntil.delete(conv.id);
  scheduleRender();
}

/** `pins {conversation_id, message_ids}`. */
export function onPins(conv, ev) {
  conv.pinnedIds = (ev.message_ids || []).map(String);
  scheduleRender();
}

// ------------------------------------------------------------------ sending

function exemptFromSlowMode(conv) {
  return canModerate(conv);
}

/** A send of ours was stored: slow mode makes us wait before the next one. */
export function noteSent(conv) {
  noteDirectSent(conv);
  if (conv.slowMode > 0 && !exemptFromSlowMode(conv)) {
    mod.slowUntil.set(conv.id, Date.now() + conv.slowMode * 1000);
    startTicker();
  }
}

/** A send was refused: a timeout (`forbidden` with `until`) or slow mode (`rate_limited` with `retry_after`). */
export function noteSendError(conv, error) {
  noteDirectRefusal(conv, error);
  noteSpaceRefusal(conv, error);
  const details = (error && error.details) || {};
  if (error && error.code === "forbidden" && details.until) {
    setTimeoutUntil(String(conv.conversation.creator_id), details.until);
    scheduleRender();
  } else if (error && error.code === "rate_limited" && typeof details.retry_after === "number" && /slow mode/i.test(error.message || "")) {
    mod.slowUntil.set(conv.id, Date.now() + details.retry_after * 1000);
    startTicker();
    scheduleRender();
  }
}

function timeoutLeft(conv) {
  if (conv.conversation.kind !== "room") return 0;
  const until = mod.timeouts.get(String(conv.conversation.creator_id));
  return until ? Math.max(0, until - Date.now()) : 0;
}

function slowLeft(conv) {
  const until = mod.slowUntil.get(conv.id);
  return until ? Math.max(0, until - Date.now()) : 0;
}

const MAX_BODY_CHARS = 4_000;

/** Whether a send from a composer of `conv` cannot go now (the reason shown as a notice):
 * the composer is blocked, slow mode's wait, photos still uploading or failed, too long. */
export function sendRefused(conv, body, photos) {
  const block = composerBlock(conv);
  if (block && block.disabled) return true;
  let notice = null;
  if (block && block.wait) notice = [`Slow mode: you can send again in ${block.wait}.`, "warning"];
  else if (photos.busy) notice = ["Wait until the photos are uploaded.", "warning"];
  else if (photos.failed) notice = ["A photo could not be uploaded: remove it first.", "error"];
  else if ([...body].length > MAX_BODY_CHARS) notice = [`Messages are limited to ${MAX_BODY_CHARS} characters.`, "error"];
  if (notice) showNotice(...notice);
  return notice !== null;
}

/**
 * What moderation does to the composer of a conversation: null (nothing), or {disabled: true,
 * placeholder} while timed out, or {wait: "12 s"} while slow mode holds the next send back.
 */
export function composerBlock(conv) {
  const blocked = blockedComposer(conv) || spaceComposer(conv);
  if (blocked) return blocked;
  if (timeoutLeft(conv) > 0) return { disabled: true, placeholder: "You are timed out in this room" };
  const slow = slowLeft(conv);
  if (slow > 0) return { wait: duration(slow) };
  return null;
}

/** "9 min 58 s", "1 h 5 min", "2 d 3 h", "12 s". */
export function duration(ms) {
  let s = Math.ceil(ms / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const hrs = Math.floor(s / 3600);
  s -= hrs * 3600;
  const min = Math.floor(s / 60);
  s -= min * 60;
  if (d) return hrs ? `${d} d ${hrs} h` : `${d} d`;
  if (hrs) return min ? `${hrs} h ${min} min` : `${hrs} h`;
  if (min) return s ? `${min} min ${s} s` : `${min} min`;
  return `${s} s`;
}

function slowLabel(seconds) {
  if (!seconds) return "Off";
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${seconds / 60} min`;
  return `${seconds / 3600} h`;
}

/** Re-renders every second while a countdown (timeout, slow mode) runs. */
function startTicker() {
  if (ticker) return;
  ticker = setInterval(() => {
    const now = Date.now();
    for (const [k, t] of mod.timeouts) if (t <= now) mod.timeouts.delete(k);
    for (const [k, t] of mod.slowUntil) if (t <= now) mod.slowUntil.delete(k);
    scheduleRender();
    if (!mod.timeouts.size && !mod.slowUntil.size) {
      clearInterval(ticker);
      ticker = null;
    }
  }, 1000);
}

// ------------------------------------------------------------------ actions

async function act(event, payload, failure) {
  const res = await request(event, payload);
  if (!res.ok) showNotice(`${failure}: ${(res.error && res.error.message) || "error"}`, "error");
  return res;
}

async function pin(conv, msg, on) {
  const res = await act("pin", { message_id: String(msg.id), on }, on ? "Could not pin the message" : "Could not unpin the message");
  if (res.ok) onPins(conv, res);
}

async function timeOut(conv, userId, minutes) {
  const res = await act("timeout", { creator_id: conv.conversation.creator_id, user_id: userId, minutes }, "Could not time out");
  if (res.ok) {
    showNotice(minutes ? `${nameOf(userId)} is timed out until ${clockTime(res.until)}.` : `${nameOf(userId)} can post again.`, "info");
    loadModeration();
  }
}

async function block(conv, userId, on) {
  const res = await act("block", { creator_id: conv.conversation.creator_id, user_id: userId, on }, on ? "Could not block" : "Could not unblock");
  if (res.ok) {
    showNotice(on ? `${nameOf(userId)} is blocked from your rooms.` : `${nameOf(userId)} is unblocked.`, "info");
    loadModeration();
  }
}

async function appoint(userId, on) {
  const res = await act("moderator", { user_id: userId, on }, on ? "Could not appoint" : "Could not remove the moderator");
  if (res.ok) {
    showNotice(on ? `${nameOf(userId)} is now a moderator.` : `${nameOf(userId)} is no longer a moderator.`, "info");
    loadModeration();
  }
}

async function setSlowMode(conv, seconds) {
  const res = await act("slow_mode", { conversation_id: conv.id, seconds }, "Could not change slow mode");
  if (res.ok) onSlowMode(conv, res);
}

function armKey(conv, msg) {
  return `${conv.id} ${msg.seq}`;
}

/**
 * The moderation items of a message's menu (the creator and moderators, in a room): Pin/Unpin,
 * and on another member's message Time out… (a submenu of lengths), Lift timeout, Block (two
 * presses) or Unblock, and for the creator Make / Remove moderator.
 * openSubmenu(name) turns the menu into the submenu `name` of `moderationSubmenus`.
 */
export function moderationItems(conv, msg, openSubmenu) {
  if (!canModerate(conv) || !msg.id || msg.deleted || !msg.sender) return [];
  const items = [];
  const pinned = (conv.pinnedIds || []).includes(String(msg.id));
  items.push({ action: pinned ? "unpin" : "pin", label: pinned ? "Unpin" : "Pin to the room", run: () => pin(conv, msg, !pinned) });
  const target = String(msg.sender.id);
  const creatorId = String(conv.conversation.creator_id);
  const amCreator = isCreatorOf(conv);
  if (target === creatorId || target === state.me.id) return items;
  const targetIsMod = isTeamModerator(conv, target);
  const name = msg.sender.name || nameOf(target);
  if (amCreator || !targetIsMod) {
    const team = teamOf(conv);
    const timedOut = team.timed_out.some((u) => String(u.id) === target);
    items.push({ action: "timeout", label: `Time out ${name}…`, keepOpen: true, run: () => openSubmenu("timeout") });
    if (timedOut) items.push({ action: "lift-timeout", label: `Lift ${name}’s timeout`, run: () => timeOut(conv, target, 0) });
    if (team.blocked.some((u) => String(u.id) === target)) {
      items.push({ action: "unblock", label: `Unblock ${name}`, run: () => block(conv, target, false) });
    } else {
      const armed = mod.armed === armKey(conv, msg);
      items.push({
        action: "block",
        label: armed ? `Block ${name}?` : `Block ${name}`,
        danger: true,
        keepOpen: !armed,
        run: () => {
          if (!armed) {
            mod.armed = armKey(conv, msg);
            clearTimeout(armTimer);
            armTimer = setTimeout(() => {
              mod.armed = null;
              scheduleRender();
            }, 4_000);
            scheduleRender();
            return;
          }
          mod.armed = null;
          block(conv, target, true);
        },
      });
    }
  }
  if (amCreator) {
    items.push(targetIsMod
      ? { action: "unmoderator", label: `Remove ${name} as moderator`, run: () => appoint(target, false) }
      : { action: "moderator", label: `Make ${name} a moderator`, run: () => appoint(target, true) });
  }
  return items;
}

/** The submenus the moderation items open: {timeout: {label, items}}. */
export function moderationSubmenus(conv, msg) {
  if (!canModerate(conv) || !msg.sender) return {};
  const target = String(msg.sender.id);
  const name = msg.sender.name || nameOf(target);
  return {
    timeout: {
      label: `Time out ${name} for`,
      items: TIMEOUTS.map((t) => ({ action: `timeout-${t.minutes}`, label: t.label, run: () => timeOut(conv, target, t.minutes) })),
    },
  };
}

/** Drops an armed "Block" when the menu closes. */
export function disarm() {
  mod.armed = null;
}

// ------------------------------------------------------------------ rendering

function renderModeration() {
  const conv = openConv();
  renderPinned(conv);
  renderBanner(conv);
  renderSlowMode(conv);
  const button = $("moderate-button");
  const show = canModerate(conv);
  button.hidden = !show;
  if (!show && mod.panel.open) togglePanel(false);
  button.setAttribute("aria-expanded", String(mod.panel.open));
  if (mod.panel.open && conv) renderPanel(conv);
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

let pinnedSig = null;

function renderPinned(conv) {
  const bar = $("pinned-bar");
  const pinned = conv && conv.conversation.kind === "room" ? pinnedMessages(conv) : [];
  const canUnpin = canModerate(conv);
  const sig = JSON.stringify([conv && conv.id, canUnpin, pinned.map((m) => [m.id, m.body, m.sender && m.sender.name, (m.attachments || []).length])]);
  if (sig === pinnedSig) return;
  pinnedSig = sig;
  bar.hidden = pinned.length === 0;
  bar.replaceChildren(
    ...pinned.map((m) =>
      h(
        "div",
        { class: "pinned-item", "data-testid": "pinned-message", "data-message-id": String(m.id) },
        h("span", { class: "pin-icon", "aria-hidden": "true" }, "📌"),
        h(
          "button",
          { type: "button", class: "pinned-text", title: "Show this message", onclick: () => showMessage(String(m.id)) },
          h("span", { class: "pinned-sender" }, `${(m.sender && m.sender.name) || nameOf(m.sender && m.sender.id)}: `),
          m.body || (Array.isArray(m.attachments) && m.attachments.length ? "📷 Photo" : ""),
        ),
        canUnpin
          ? h("button", { type: "button", class: "icon-button pinned-unpin", "aria-label": "Unpin message", onclick: () => pin(conv, m, false) }, "✕")
          : null,
      ),
    ),
  );
}

/** The pinned messages we can show (oldest pin first): loaded ones, else those of the join answer. */
function pinnedMessages(conv) {
  const out = [];
  for (const id of conv.pinnedIds || []) {
    let msg = null;
    for (const m of conv.messages.values()) {
      if (String(m.id) === id) {
        msg = m;
        break;
      }
    }
    msg = msg || (conv.pinnedMsgs && conv.pinnedMsgs.get(id)) || null;
    if (msg && !msg.deleted) out.push(msg);
  }
  return out;
}

function showMessage(messageId) {
  const el = document.querySelector(`[data-testid=message-list] [data-message-id="${CSS.escape(messageId)}"]`);
  if (!el) {
    showNotice("That message is further up: scroll up to load it.", "info");
    return;
  }
  el.scrollIntoView({ block: "center", behavior: "smooth" });
  el.classList.add("flash");
  setTimeout(() => el.classList.remove("flash"), 1600);
}

function renderBanner(conv) {
  const el = $("timeout-banner");
  const left = conv ? timeoutLeft(conv) : 0;
  el.hidden = left <= 0;
  if (left > 0) setText(el, `A moderator timed you out: you can post in this room again in ${duration(left)}.`);
}

function renderSlowMode(conv) {
  const el = $("slow-mode");
  const seconds = conv && conv.conversation.kind === "room" ? conv.slowMode || 0 : 0;
  el.hidden = !seconds;
  if (!seconds) return;
  const left = slowLeft(conv);
  let text = `Slow mode: one message every ${slowLabel(seconds)}.`;
  if (exemptFromSlowMode(conv)) text += " It does not apply to you.";
  else if (left > 0) text += ` You can send again in ${duration(left)}.`;
  el.classList.toggle("waiting", left > 0);
  setText(el, text);
}

// ------------------------------------------------------------------ the moderation panel

function togglePanel(open = !mod.panel.open) {
  const conv = openConv();
  mod.panel.open = Boolean(open && conv);
  $("moderation-panel").hidden = !mod.panel.open;
  $("moderate-button").setAttribute("aria-expanded", String(mod.panel.open));
  if (mod.panel.open) {
    const creatorId = String(conv.conversation.creator_id);
    if (mod.panel.creatorId !== creatorId) {
      Object.assign(mod.panel, { creatorId, entries: [], next: null, error: null });
    }
    mod.panel.sig = null;
    loadLog(true);
    loadDesk(creatorId);
    loadModeration();
    renderPanel(conv);
    const first = $("moderation-panel").querySelector("select, button");
    if (first) first.focus();
  }
}

/** Something was logged (e.g. a report reviewed): the open panel reads the log again. */
export function reloadLog() {
  if (mod.panel.open) loadLog(true);
}

async function loadLog(fresh) {
  const p = mod.panel;
  if (p.loading) return;
  p.loading = true;
  const creatorId = p.creatorId;
  const payload = { creator_id: creatorId, limit: LOG_PAGE };
  if (!fresh && p.next) payload.before_id = p.next;
  const res = await request("moderation_log", payload);
  p.loading = false;
  if (p.creatorId !== creatorId) return;
  if (res.ok) {
    p.entries = fresh ? res.entries || [] : [...p.entries, ...(res.entries || [])];
    p.next = res.next_cursor || null;
    p.error = null;
  } else {
    p.error = (res.error && res.error.message) || "error";
  }
  p.sig = null;
  scheduleRender();
}

function renderPanel(conv) {
  const panel = $("moderation-panel");
  const team = teamOf(conv);
  const amCreator = isCreatorOf(conv);
  const p = mod.panel;
  const creatorId = String(conv.conversation.creator_id);
  const sig = JSON.stringify([conv.id, conv.slowMode, team, amCreator, p.entries.map((e) => e.id), p.next, p.error, p.loading, reportsSig(creatorId)]);
  if (sig === p.sig) return;
  p.sig = sig;
  const focusedKey = document.activeElement && panel.contains(document.activeElement) ? document.activeElement.dataset.key : null;

  const select = h(
    "select",
    { class: "slow-select", id: "slow-mode-select", "data-testid": "slow-mode-select", "data-key": "slow" },
    SLOW_MODES.map((s) => h("option", { value: String(s), selected: s === (conv.slowMode || 0) }, slowLabel(s))),
  );
  if (!SLOW_MODES.includes(conv.slowMode || 0)) select.append(h("option", { value: String(conv.slowMode), selected: true }, slowLabel(conv.slowMode)));
  select.addEventListener("change", () => setSlowMode(conv, Number(select.value)));

  const people = (title, list, button, empty) =>
    h(
      "section",
      { class: "mod-section" },
      h("h3", null, title),
      list.length
        ? h("ul", { class: "mod-people" }, list.map((u) => h("li", null, h("span", { class: "mod-person" }, u.name || u.id, u.until ? h("span", { class: "muted" }, ` until ${fullTime(u.until)}`) : null), button ? button(u) : null)))
        : h("p", { class: "muted" }, empty),
    );

  panel.replaceChildren(
    h(
      "header",
      { class: "notif-head" },
      h("h2", null, "Moderation"),
      h("button", { type: "button", class: "icon-button", "aria-label": "Close moderation", "data-key": "close", onclick: () => {
        togglePanel(false);
        $("moderate-button").focus();
      } }, "✕"),
    ),
    h("div", { class: "mod-body" },
      reportsSection(creatorId),
      h("section", { class: "mod-section" }, h("label", { class: "mod-label", for: "slow-mode-select" }, "Slow mode in this room"), select),
      people("Moderators", team.moderators, amCreator
        ? (u) => h("button", { type: "button", class: "link-button", "data-key": `unmod-${u.id}`, onclick: () => appoint(String(u.id), false) }, "Remove")
        : null, amCreator ? "None yet: open a member’s message menu and choose “Make … a moderator”." : "None."),
      people("Timed out", team.timed_out, (u) => h("button", { type: "button", class: "link-button", "data-key": `lift-${u.id}`, onclick: () => timeOut(conv, String(u.id), 0) }, "Lift"), "Nobody."),
      people("Blocked", team.blocked, (u) => h("button", { type: "button", class: "link-button", "data-key": `unblock-${u.id}`, onclick: () => block(conv, String(u.id), false) }, "Unblock"), "Nobody."),
      h("section", { class: "mod-section" },
        h("h3", null, "Moderation log"),
        p.error ? h("p", { class: "msg-error", role: "alert" }, `Could not load the log: ${p.error}`) : null,
        p.entries.length
          ? h("ol", { class: "mod-log" }, p.entries.map((e) => h("li", { "data-testid": "moderation-log-entry", "data-action": e.action },
            h("span", null, logText(e)), e.reason ? h("span", { class: "muted" }, ` — ${e.reason}`) : null,
            h("time", { class: "muted mod-log-time", datetime: e.created_at, title: fullTime(e.created_at) }, ` ${clockTime(e.created_at)}`))))
          : h("p", { class: "muted" }, p.loading ? "Loading…" : "Nothing yet."),
        p.next ? h("button", { type: "button", class: "link-button", "data-key": "older", onclick: () => loadLog(false) }, "Load older") : null,
      ),
    ),
  );
  if (focusedKey) {
    const again = panel.querySelector(`[data-key="${CSS.escape(focusedKey)}"]`);
    if (again) again.focus();
  }
}

function actorName(id) {
  return id ? nameOf(String(id)) : "The platform";
}

/** One log entry in words: "Mia timed out Pat for 10 min". */
export function logText(e) {
  const actor = actorName(e.actor_id);
  const targetId = e.target_id ? String(e.target_id) : "";
  const target = !targetId ? "" : state.me && targetId === state.me.id ? "you" : nameOf(targetId);
  const room = e.conversation_id && state.convs.get(String(e.conversation_id));
  const where = room ? ` in ${room.conversation.name || "a room"}` : "";
  switch (e.action) {
    case "moderator_added":
      return `${actor} made ${target} a moderator`;
    case "moderator_removed":
      return `${actor} removed ${target} as moderator`;
    case "timeout": {
      const ms = e.until && e.created_at ? Date.parse(e.until) - Date.parse(e.created_at) : NaN;
      return `${actor} timed out ${target}${Number.isFinite(ms) ? ` for ${duration(ms)}` : ""}`;
    }
    case "timeout_lifted":
      return `${actor} lifted ${target === "you" ? "your" : `${target}’s`} timeout`;
    case "block":
      return `${actor} blocked ${target}`;
    case "unblock":
      return `${actor} unblocked ${target}`;
    case "message_deleted":
      return `${actor} deleted a message by ${target}`;
    case "slow_mode":
      return e.seconds ? `${actor} set slow mode to ${slowLabel(e.seconds)}${where}` : `${actor} turned slow mode off${where}`;
    case "message_pinned":
      return `${actor} pinned a message by ${target}${where}`;
    case "message_unpinned":
      return `${actor} unpinned a message by ${target}${where}`;
    case "report_dismissed":
      return `${actor} dismissed the reports of a message by ${target}${where}`;
    case "report_removed":
      return `${actor} removed a reported message by ${target}${where}`;
    default:
      return `${actor}: ${e.action}${target ? ` ${target}` : ""}`;
  }
}
