// The notification bell: unread count, feed panel, mark as read, live items.

import { getMe, listNotifications, markNotificationsRead } from "./api.js";
import { fullTime, h, linkify, shortTime } from "./dom.js";
import { addRenderHook, scheduleRender, showNotice } from "./render.js";
import { state } from "./state.js";

const $ = (id) => document.getElementById(id);
const PAGE = 20;

let onOpenConversation = () => {};

export function setupNotifications({ openConversation }) {
  onOpenConversation = openConversation;
  addRenderHook(renderBell);
  $("bell").addEventListener("click", (e) => {
    e.stopPropagation();
    togglePanel();
  });
  $("notif-close").addEventListener("click", () => togglePanel(false));
  $("notif-read-all").addEventListener("click", () => markRead("all"));
  $("notif-more").addEventListener("click", () => loadPage(true));
  $("notif-list").addEventListener("click", onItemClick);
  document.addEventListener("click", (e) => {
    // composedPath: the clicked item may have been re-rendered (detached) by now.
    if (state.notifications.open && !e.composedPath().includes($("notif-panel"))) togglePanel(false);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.notifications.open) togglePanel(false);
  });
}

export function setUnreadNotifications(count) {
  state.notifications.unread = Math.max(0, Number(count) || 0);
  scheduleRender();
}

let syncTimer = null;

/**
 * Re-reads the unread count from the server shortly: a live event and a feed page can
 * cross (the page may already hold the item the event announces), so the local +1 is
 * only a first guess.
 */
function syncUnreadSoon() {
  clearTimeout(syncTimer);
  syncTimer = setTimeout(() => {
    getMe()
      .then((me) => setUnreadNotifications(me.unread_notifications))
      .catch(() => {});
  }, 400);
}

/** A live `notification` event: seen at once while the panel is open in a visible tab. */
export function addLiveNotification(n) {
  const feed = state.notifications;
  if (!n || n.id === undefined) return;
  if (!feed.items.some((x) => x.id === n.id)) {
    feed.items.unshift(n);
    if (!n.read_at) feed.unread += 1;
  }
  if (feed.open && document.visibilityState === "visible") markSeen();
  else syncUnreadSoon();
  scheduleRender();
}

function togglePanel(open = !state.notifications.open) {
  const feed = state.notifications;
  feed.open = open;
  if (open) loadPage(false).then(markSeen);
  else feed.fresh.clear();
  scheduleRender();
}

/**
 * Opening the bell marks what it shows as seen (`POST /api/v1/notifications/read` with their
 * ids); they keep the "new" look until the panel closes. Older unread ones not loaded stay
 * unread ("Mark all read" takes them too).
 */
function markSeen() {
  const feed = state.notifications;
  if (!feed.open) return;
  const ids = feed.items.filter((n) => !n.read_at).map((n) => n.id);
  if (!ids.length) return;
  for (const id of ids) feed.fresh.add(String(id));
  markRead(ids);
}

async function loadPage(older) {
  const feed = state.notifications;
  if (feed.loading) return;
  feed.loading = true;
  try {
    const last = feed.items[feed.items.length - 1];
    const res = await listNotifications(older && last ? { before: last.id, limit: PAGE } : { limit: PAGE });
    const incoming = res.notifications || [];
    if (older) {
      const known = new Set(feed.items.map((n) => n.id));
      feed.items.push(...incoming.filter((n) => !known.has(n.id)));
      feed.hasMore = Boolean(res.has_more);
    } else {
      // The page is authoritative for its span; keep live items newer than it (they may have
      // arrived while it was in flight) and older pages already loaded.
      const pageIds = new Set(incoming.map((n) => n.id));
      const others = feed.items.filter((n) => !pageIds.has(n.id));
      const newest = incoming[0];
      const oldest = incoming[incoming.length - 1];
      const newer = newest ? others.filter((n) => n.created_at >= newest.created_at) : others;
      const older = feed.loaded && oldest ? others.filter((n) => n.created_at < oldest.created_at) : [];
      feed.items = [...newer, ...incoming, ...older];
      if (!feed.loaded || !older.length) feed.hasMore = Boolean(res.has_more);
    }
    feed.loaded = true;
  } catch (err) {
    if (err.status !== 401) showNotice(`Could not load notifications: ${err.message}`, "error");
  } finally {
    feed.loading = false;
    scheduleRender();
  }
}

async function markRead(idsOrAll) {
  const feed = state.notifications;
  const now = new Date().toISOString();
  const ids = idsOrAll === "all" ? null : new Set(idsOrAll);
  for (const n of feed.items) if (!n.read_at && (!ids || ids.has(n.id))) n.read_at = now;
  scheduleRender();
  try {
    const res = await markNotificationsRead(idsOrAll);
    if (res && typeof res.unread_notifications === "number") feed.unread = res.unread_notifications;
  } catch (err) {
    if (err.status !== 401) showNotice(`Could not mark as read: ${err.message}`, "error");
  }
  scheduleRender();
}

function onItemClick(e) {
  const li = e.target.closest("[data-notification-id]");
  if (!li) return;
  const n = state.notifications.items.find((x) => String(x.id) === li.dataset.notificationId);
  if (!n) return;
  if (e.target.closest("a")) {
    if (!n.read_at) markRead([n.id]);
    return;
  }
  if (!n.read_at) markRead([n.id]);
  const convId = n.data && typeof n.data === "object" ? n.data.conversation_id : undefined;
  if (convId !== undefined && state.convs.has(String(convId))) {
    togglePanel(false);
    onOpenConversation(String(convId));
  }
}

const itemEls = new Map(); // id -> {el, sig}

function renderBell() {
  const feed = state.notifications;
  const bell = $("bell");
  const count = $("bell-count");
  const text = feed.unread > 99 ? "99+" : String(feed.unread);
  count.textContent = feed.unread > 0 ? text : "";
  count.hidden = feed.unread === 0;
  bell.dataset.count = String(feed.unread);
  bell.setAttribute("aria-label", feed.unread > 0 ? `Notifications, ${feed.unread} unread` : "Notifications");
  bell.setAttribute("aria-expanded", String(feed.open));
  bell.classList.toggle("has-unread", feed.unread > 0);

  const panel = $("notif-panel");
  panel.hidden = !feed.open;
  document.body.classList.toggle("notif-open", feed.open);
  if (!feed.open) return;

  const list = $("notif-list");
  const keep = new Set();
  let prev = null;
  for (const n of feed.items) {
    const id = String(n.id);
    keep.add(id);
    const fresh = feed.fresh.has(id);
    const sig = JSON.stringify([n.title, n.body, n.read_at, n.created_at, fresh]);
    let item = itemEls.get(id);
    if (!item || item.sig !== sig) {
      const el = h(
        "li",
        {
          class: n.read_at && !fresh ? "notif" : "notif unread",
          "data-testid": "notification-item",
          "data-notification-id": id,
          tabindex: "0",
        },
        h("div", { class: "notif-title" }, n.title || n.type || "Notification"),
        n.body ? h("div", { class: "notif-body" }, linkify(String(n.body))) : null,
        h("time", { class: "notif-time muted", datetime: n.created_at, title: fullTime(n.created_at) }, shortTime(n.created_at)),
      );
      if (item) item.el.replaceWith(el);
      item = { el, sig };
      itemEls.set(id, item);
    }
    const next = prev ? prev.nextSibling : list.firstChild;
    if (next !== item.el) list.insertBefore(item.el, next);
    prev = item.el;
  }
  for (const [id, item] of itemEls) {
    if (!keep.has(id)) {
      item.el.remove();
      itemEls.delete(id);
    }
  }
  $("notif-empty").hidden = !feed.loaded || feed.items.length > 0;
  $("notif-more").hidden = !feed.hasMore;
  $("notif-read-all").disabled = feed.unread === 0 && !feed.items.some((n) => !n.read_at);
}
