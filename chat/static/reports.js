// Reports (docs/api.md "Reports"): a member reports a room message from its menu ("Report…": a
// reason and an optional note, in a dialog; "Reported" afterwards); the creator and moderators
// see the open reports in the Moderate panel (a live count on its button) and dismiss them or
// remove the message. Messages hidden by reports, and those of users we block (blocks.js), show
// as placeholders; the creator and moderators see a hidden message dimmed, marked "hidden".
// app.js feeds it `report_opened`, `report_resolved` and `message_hidden`.

import { clockTime, fullTime, h } from "./dom.js";
import { addRenderHook, scheduleRender, showNotice } from "./render.js";
import { nameOf, openConv, state } from "./state.js";
import { blockItems, isBlocked } from "./blocks.js";
import { canModerate, reloadLog } from "./moderation.js";

const $ = (id) => document.getElementById(id);

export const REASONS = [
  { value: "spam", label: "Spam" },
  { value: "harassment", label: "Harassment or bullying" },
  { value: "hate", label: "Hate speech" },
  { value: "sexual", label: "Sexual content" },
  { value: "violence", label: "Violence or threats" },
  { value: "other", label: "Something else" },
];
const REASON_LABEL = Object.fromEntries(REASONS.map((r) => [r.value, r.label]));
const PAGE = 100;

const rep = {
  /** ids of the messages this page reported (a repeat is harmless: the server counts one) */
  reported: new Set(),
  /** creator id -> {items: Map(message id -> {message, reports, open, hidden}), next, loading, error, loaded} */
  desks: new Map(),
  /** "message id action": a review awaiting its ack */
  reviewing: new Set(),
};
let request = () => Promise.resolve({ ok: false, error: { code: "offline", message: "not connected" } });

/** request(event, payload) -> ack ({ok, ...}). */
export function setupReports(options) {
  request = options.request;
  addRenderHook(renderBadge);
}

// ------------------------------------------------------------------ what a message shows

/**
 * How a message shows to us: null (as it is), {placeholder, reason} (a blocked sender's, or
 * hidden by reports for a member), or {marker: "hidden"} (hidden by reports; we moderate).
 */
export function messageVeil(conv, msg) {
  if (!msg || msg.deleted || !state.me || !msg.sender) return null;
  const own = String(msg.sender.id) === state.me.id;
  if (!own && (msg.hidden_reason === "blocked" || isBlocked(msg.sender.id))) {
    return { placeholder: "Message from a blocked user", reason: "blocked" };
  }
  if (msg.hidden) {
    if (msg.hidden_reason === "reported" || !canModerate(conv)) return { placeholder: "Hidden after reports", reason: "reported" };
    return { marker: "hidden" };
  }
  return null;
}

/** Whether this page reported the message (shown under it as "Reported"). */
export function isReported(msg) {
  return Boolean(msg && msg.id && rep.reported.has(String(msg.id)));
}

/**
 * The members' items of a message's menu: "Report…" (rooms, others' messages, not for the
 * creator and moderators, who review) and Block / Unblock (blocks.js). A placeholder only
 * offers Unblock.
 */
export function memberItems(conv, msg) {
  const moderating = canModerate(conv);
  const veil = messageVeil(conv, msg);
  const items = [];
  const other = state.me && msg.sender && String(msg.sender.id) !== state.me.id;
  if (!veil && other && !moderating && conv.conversation.kind === "room" && msg.id && !msg.deleted) {
    const done = isReported(msg);
    items.push({
      action: "report",
      label: done ? "Reported" : "Report…",
      run: () => (done ? showNotice("You reported this message: the moderators will look at it.", "info") : openReportDialog(msg)),
    });
  }
  if (!msg.deleted && (!veil || veil.reason === "blocked")) items.push(...blockItems(conv, msg, moderating));
  return items;
}

function openReportDialog(msg) {
  const name = msg.sender.name || nameOf(String(msg.sender.id));
  const error = h("p", { class: "msg-error", role: "alert", hidden: true });
  const note = h("textarea", { id: "report-note", name: "note", rows: "3", maxlength: "500", class: "dialog-note" });
  const submit = h("button", { type: "submit", class: "small-button" }, "Report");
  const cancel = h("button", { type: "button", class: "link-button" }, "Cancel");
  const form = h(
    "form",
    { method: "dialog" },
    h("h2", { id: "report-dialog-title" }, "Report this message"),
    h("p", { class: "muted report-quote" }, `${name}: ${msg.body || (msg.attachments && msg.attachments.length ? "📷 Photo" : "")}`),
    h(
      "fieldset",
      { class: "report-reasons" },
      h("legend", null, "Why should the moderators look at it?"),
      REASONS.map((r) => h("label", { class: "report-reason" }, h("input", { type: "radio", name: "reason", value: r.value }), ` ${r.label}`)),
    ),
    h("label", { for: "report-note", class: "mod-label" }, "Anything to add? (optional)"),
    note,
    error,
    h("div", { class: "dialog-actions" }, cancel, submit),
  );
  const dialog = h("dialog", { class: "app-dialog", "data-testid": "report-dialog", "aria-labelledby": "report-dialog-title" }, form);
  cancel.addEventListener("click", () => dialog.close());
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const chosen = form.querySelector("input[name=reason]:checked");
    if (!chosen) {
      error.textContent = "Choose a reason.";
      error.hidden = false;
      form.querySelector("input[name=reason]").focus();
      return;
    }
    submit.disabled = true;
    const payload = { message_id: String(msg.id), reason: chosen.value };
    if (note.value.trim()) payload.note = note.value.trim();
    const res = await request("report", payload);
    submit.disabled = false;
    if (!res.ok) {
      error.textContent = `Not reported: ${(res.error && res.error.message) || "error"}`;
      error.hidden = false;
      return;
    }
    rep.reported.add(String(msg.id));
    dialog.close();
    showNotice(res.created === false ? "You had already reported this message." : "Thank you: the moderators will look at it.", "info");
    scheduleRender();
  });
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  form.querySelector("input[name=reason]").focus();
}

// ------------------------------------------------------------------ server events

function findMessage(conv, messageId, seq) {
  const bySeq = typeof seq === "number" ? conv.messages.get(seq) : null;
  if (bySeq && String(bySeq.id) === messageId) return bySeq;
  for (const m of conv.messages.values()) if (String(m.id) === messageId) return m;
  return null;
}

/**
 * `message_hidden {conversation_id, message_id, seq, hidden, message?}`: reports hid a message
 * (members: its placeholder; the creator and moderators: marked), or a review showed it again
 * (with the message, as this reader may see it).
 */
export function onMessageHidden(conv, ev) {
  if (!ev || ev.message_id === undefined) return;
  const messageId = String(ev.message_id);
  const seq = Number(ev.seq);
  const msg = findMessage(conv, messageId, seq);
  const last = conv.lastMessage && String(conv.lastMessage.id) === messageId ? conv.lastMessage : null;
  if (ev.hidden) {
    for (const m of new Set([msg, last])) {
      if (!m) continue;
      m.hidden = true;
      if (!canModerate(conv)) Object.assign(m, { hidden_reason: "reported", body: "", attachments: [], reactions: [] });
    }
  } else if (ev.message && typeof ev.message.seq === "number" && ev.message.sender) {
    const fresh = { ...ev.message, sender: { ...ev.message.sender, id: String(ev.message.sender.id) } };
    if (!Array.isArray(fresh.reactions)) fresh.reactions = msg && !msg.hidden_reason ? msg.reactions || [] : [];
    if (msg) conv.messages.set(msg.seq, fresh);
    if (last) conv.lastMessage = fresh;
  } else {
    for (const m of [msg, last]) if (m && !m.hidden_reason) delete m.hidden;
  }
  const item = deskItem(String(conv.conversation.creator_id), messageId);
  if (item) item.hidden = Boolean(ev.hidden);
  scheduleRender();
}

/** `report_opened {report, message, open_reports, hidden}` (creator and moderators). */
export function onReportOpened(ev) {
  if (!ev || !ev.report) return;
  const creatorId = String(ev.report.creator_id);
  const desk = rep.desks.get(creatorId);
  if (!desk || !desk.loaded) {
    loadDesk(creatorId); // the page brings it along
    return;
  }
  addRow(desk, { ...ev.report, message: ev.message, open_reports: ev.open_reports, hidden: ev.hidden }, true);
  scheduleRender();
}

/** `report_resolved {message_id, conversation_id, action, by, resolved}`. */
export function onReportResolved(ev) {
  if (!ev || ev.message_id === undefined) return;
  for (const desk of rep.desks.values()) desk.items.delete(String(ev.message_id));
  scheduleRender();
}

// ------------------------------------------------------------------ the creator's open reports

function deskItem(creatorId, messageId) {
  const desk = rep.desks.get(creatorId);
  return desk ? desk.items.get(messageId) || null : null;
}

function addRow(desk, row, live) {
  const messageId = String(row.message_id);
  let item = desk.items.get(messageId);
  if (!item) {
    item = { messageId, conversationId: String(row.conversation_id), message: null, reports: [], open: 0, hidden: false, newest: 0 };
    desk.items.set(messageId, item);
  }
  if (!item.reports.some((r) => String(r.id) === String(row.id))) item.reports.push(row);
  item.reports.sort((a, b) => Number(a.id) - Number(b.id));
  if (row.message) item.message = row.message;
  if (typeof row.open_reports === "number" && (live || !item.open)) item.open = row.open_reports;
  item.open = Math.max(item.open, item.reports.length);
  item.hidden = live ? Boolean(row.hidden) : item.hidden || Boolean(row.hidden);
  item.newest = Math.max(item.newest, Number(row.id) || 0);
}

/** Reads a creator's open reports (`reports`, newest first, 100 a page). */
export async function loadDesk(creatorId, more = false) {
  let desk = rep.desks.get(creatorId);
  if (!desk) {
    desk = { items: new Map(), next: null, loading: false, error: null, loaded: false };
    rep.desks.set(creatorId, desk);
  }
  if (desk.loading) return;
  desk.loading = true;
  const payload = { creator_id: creatorId, status: "open", limit: PAGE };
  if (more && desk.next) payload.before_id = desk.next;
  const res = await request("reports", payload);
  desk.loading = false;
  if (res.ok) {
    if (!more) desk.items = new Map();
    for (const row of res.reports || []) addRow(desk, row, false);
    desk.next = res.next_cursor || null;
    desk.error = null;
    desk.loaded = true;
  } else {
    desk.error = (res.error && res.error.message) || "error";
  }
  scheduleRender();
}

/** After a reconnect (or a change of who we moderate for): the loaded desks are read again. */
export function reloadDesks() {
  for (const creatorId of rep.desks.keys()) loadDesk(creatorId);
}

function openCount(creatorId) {
  const desk = rep.desks.get(creatorId);
  let n = 0;
  if (desk) for (const item of desk.items.values()) n += item.open;
  return n;
}

async function review(creatorId, item, action) {
  const key = `${item.messageId} ${action}`;
  if (rep.reviewing.has(key)) return;
  rep.reviewing.add(key);
  scheduleRender();
  const res = await request("review_report", { message_id: item.messageId, action });
  rep.reviewing.delete(key);
  if (res.ok) {
    const desk = rep.desks.get(creatorId);
    if (desk) desk.items.delete(item.messageId);
    showNotice(action === "dismiss" ? "Reports dismissed: the message stays." : "The message was removed.", "info");
    reloadLog();
  } else {
    showNotice(`Could not review the reports: ${(res.error && res.error.message) || "error"}`, "error");
  }
  scheduleRender();
}

/** What the Moderate panel's "Reports" section shows (for its redraw check). */
export function reportsSig(creatorId) {
  const desk = rep.desks.get(creatorId);
  if (!desk) return null;
  return [desk.loaded, desk.loading, desk.error, desk.next, [...rep.reviewing],
    [...desk.items.values()].map((i) => [i.messageId, i.open, i.hidden, i.reports.length, i.message && [i.message.body, i.message.deleted]])];
}

/** The "Reports" section of the Moderate panel: each reported message, Dismiss / Remove. */
export function reportsSection(creatorId) {
  const desk = rep.desks.get(creatorId);
  const items = desk ? [...desk.items.values()].sort((a, b) => b.newest - a.newest) : [];
  return h(
    "section",
    { class: "mod-section", "data-testid": "reports-section" },
    h("h3", null, items.length ? `Reports (${items.length})` : "Reports"),
    desk && desk.error ? h("p", { class: "msg-error", role: "alert" }, `Could not load the reports: ${desk.error}`) : null,
    items.length
      ? h("ul", { class: "mod-reports" }, items.map((item) => reportItem(creatorId, item)))
      : h("p", { class: "muted" }, !desk || !desk.loaded ? "Loading…" : "No open reports."),
    desk && desk.next ? h("button", { type: "button", class: "link-button", "data-key": "reports-older", onclick: () => loadDesk(creatorId, true) }, "Load older") : null,
  );
}

/** " (Pat Patron)" when the page knows the reporter's name (reports carry ids only), else "". */
function reporterName(r) {
  const name = state.names.get(String(r.reporter_id));
  return name ? ` (${state.me && String(r.reporter_id) === state.me.id ? "you" : name})` : "";
}

function reportItem(creatorId, item) {
  const m = item.message;
  const sender = m && m.sender ? m.sender.name || nameOf(String(m.sender.id)) : "Someone";
  const room = state.convs.get(item.conversationId);
  const text = !m ? "" : m.deleted ? "message deleted" : m.body || (m.attachments && m.attachments.length ? "📷 Photo" : "");
  const reasons = new Map();
  for (const r of item.reports) reasons.set(r.reason, (reasons.get(r.reason) || 0) + 1);
  const reasonText = [...reasons].map(([r, n]) => (n > 1 ? `${REASON_LABEL[r] || r} ×${n}` : REASON_LABEL[r] || r)).join(", ");
  const busy = (action) => rep.reviewing.has(`${item.messageId} ${action}`);
  const newest = item.reports[item.reports.length - 1];
  return h(
    "li",
    { class: "mod-report", "data-testid": "report-item", "data-message-id": item.messageId },
    h(
      "div",
      { class: "mod-report-head" },
      h("strong", null, sender),
      room ? h("span", { class: "muted" }, ` in ${room.conversation.name || "a room"}`) : null,
      item.hidden ? h("span", { class: "msg-hidden-marker" }, "hidden") : null,
    ),
    h("blockquote", { class: "mod-report-text" }, text),
    h("p", { class: "mod-report-reasons" }, `${item.open} ${item.open === 1 ? "report" : "reports"}: ${reasonText}`),
    item.reports.filter((r) => r.note).map((r) => h("p", { class: "muted mod-report-note" }, `“${r.note}”${reporterName(r)}`)),
    newest ? h("time", { class: "muted mod-log-time", datetime: newest.created_at, title: fullTime(newest.created_at) }, `last ${clockTime(newest.created_at)}`) : null,
    h(
      "div",
      { class: "mod-report-actions" },
      h("button", { type: "button", class: "link-button", "data-action": "dismiss", "data-key": `dismiss-${item.messageId}`, disabled: busy("dismiss"),
        "aria-label": `Dismiss the reports of ${sender}’s message`, onclick: () => review(creatorId, item, "dismiss") }, "Dismiss"),
      h("button", { type: "button", class: "link-button danger-link", "data-action": "remove", "data-key": `remove-${item.messageId}`, disabled: busy("remove"),
        "aria-label": `Remove message by ${sender}`, onclick: () => review(creatorId, item, "remove") }, "Remove message"),
    ),
  );
}

// ------------------------------------------------------------------ the count on "Moderate"

let badgeSig = null;

function renderBadge() {
  const conv = openConv();
  const button = $("moderate-button");
  const creatorId = conv ? String(conv.conversation.creator_id) : null;
  const show = Boolean(conv && canModerate(conv));
  if (show && !rep.desks.has(creatorId) && state.connection === "connected") loadDesk(creatorId);
  const count = show ? openCount(creatorId) : 0;
  const sig = `${show} ${count}`;
  if (sig === badgeSig) return;
  badgeSig = sig;
  const old = button.querySelector(".reports-extra");
  if (old) old.remove();
  if (!count) return;
  // "Moderate 3 open reports" for screen readers; "Moderate ③" on screen.
  button.append(h("span", { class: "reports-extra" }, " ",
    h("span", { class: "reports-badge", "data-testid": "reports-badge" }, String(count)),
    h("span", { class: "sr-only" }, ` open ${count === 1 ? "report" : "reports"}`)));
}
