// Backstage live chat: sign-in, the Socket.IO connection and what its events
// do to the page's state. Rendering lives in render.js, the bell in
// notifications.js, the HTTP calls in api.js.

import { io } from "/static/vendor/socket.io.esm.min.js";
import * as api from "./api.js";
import { addLiveNotification, setUnreadNotifications, setupNotifications } from "./notifications.js";
import { actions, onMessageListScroll, scheduleRender, scrollToLatest, showAuthScreen, showNotice } from "./render.js";
import { canPost, conversationName, learnMembers, makeConv, maxSeq, openConv, state } from "./state.js";
import { forgetCreatorChannels, onCreatorEvent, setupCreatorEvents, subscribeCreatorChannels } from "./creator-events.js";
import { renderMe, setupMessageMenus, watchConnection } from "./ui.js";

const ACK_TIMEOUT_MS = 10_000;
const TYPING_REFRESH_MS = 2_000; // re-send typing:true this often while typing
const TYPING_IDLE_MS = 5_000; // typing:false after this long without a keystroke
const TYPING_EXPIRE_MS = 6_000; // others' typing state without news expires
const PAGE = 50;
const CATCH_UP_PAGE = 100;
const LIST_REFRESH_MS = 60_000;
const MAX_BODY_CHARS = 4_000;

const $ = (id) => document.getElementById(id);

let socket = null;
let authFailed = false;
let everConnected = false;
const drafts = new Map(); // conversation id -> unsent composer text

// ------------------------------------------------------------------ socket I/O

/** Emits with an ack; a lost ack (timeout) or no connection becomes {ok:false}. */
function emitAck(event, payload) {
  return new Promise((resolve) => {
    if (!socket || !socket.connected) {
      resolve({ ok: false, error: { code: "offline", message: "not connected" } });
      return;
    }
    socket.timeout(ACK_TIMEOUT_MS).emit(event, payload, (err, res) => {
      if (err) resolve({ ok: false, error: { code: "timeout", message: "no answer from the server" } });
      else if (res && typeof res === "object") resolve(res);
      else resolve({ ok: false, error: { code: "bad_answer", message: "unexpected answer from the server" } });
    });
  });
}

function updateConnection() {
  if (socket && socket.connected) state.connection = "connected";
  else if (!navigator.onLine) state.connection = "offline";
  else state.connection = "connecting";
  scheduleRender();
}

function connectSocket() {
  socket = io(window.location.origin, {
    auth: { token: api.getToken() },
    transports: ["websocket"],
    reconnectionDelay: 500,
    reconnectionDelayMax: 4_000,
  });
  socket.on("connect", onConnect);
  socket.on("disconnect", onDisconnect);
  socket.on("connect_error", onConnectError);
  socket.io.on("reconnect_attempt", updateConnection);
  socket.on("message", onMessage);
  socket.on("message_updated", onMessageUpdated);
  socket.on("typing", onTyping);
  socket.on("read", onRead);
  socket.on("presence", onPresence);
  socket.on("notification", onNotification);
  socket.on("access_revoked", onAccessRevoked);
  socket.on("resync", onResync);
  socket.on("event", onCreatorEvent);
  watchConnection(socket, reconnectNow);
}

/** A connection attempt now rather than after the current back-off delay. */
function reconnectNow() {
  if (!socket || socket.connected || authFailed) return;
  socket.disconnect();
  socket.connect();
}

async function onConnect() {
  updateConnection();
  try {
    await refreshConversations({ join: false });
  } catch {
    // The list we have is still good; the periodic refresh tries again.
  }
  subscribeCreatorChannels();
  const reconnect = everConnected;
  everConnected = true;
  if (reconnect) for (const c of state.convs.values()) if (c.loaded) c.stale = true;
  await Promise.allSettled([...state.convs.values()].map((conv) => joinConversation(conv)));
  flushPending();
  const conv = openConv();
  if (conv) {
    markRead(conv);
    if (conv.stale) refreshLatest(conv);
  }
  api
    .getMe()
    .then((me) => setUnreadNotifications(me.unread_notifications))
    .catch(() => {});
}

function onDisconnect(reason) {
  forgetCreatorChannels();
  for (const conv of state.convs.values()) {
    conv.joined = false;
    conv.online = new Set();
    for (const t of conv.typers.values()) clearTimeout(t);
    conv.typers.clear();
    for (const p of conv.pending.values()) {
      if (p.status === "sending") {
        p.status = "queued"; // its ack may never come: resent on reconnect
        p.attempt += 1;
      }
    }
  }
  if (reason === "io server disconnect") {
    // The server closed the session (e.g. the token expired); it will not reconnect by itself.
    if (api.tokenProblem(api.getToken())) handleUnauthorized();
    else socket.connect();
  }
  updateConnection();
}

function onConnectError(err) {
  if (!socket.active) {
    // Refused by the server's connect handler (not a network error): bad credentials.
    handleUnauthorized(err && err.message);
    return;
  }
  updateConnection();
}

function handleUnauthorized(detail) {
  if (authFailed) return;
  authFailed = true;
  if (socket) socket.disconnect();
  const problem = api.tokenProblem(api.getToken());
  if (problem === "expired") {
    showAuthScreen("Your session has expired", "Your sign-in link has expired, so Backstage cannot load your chats.");
  } else {
    const why = detail && typeof detail === "string" ? ` (${detail})` : "";
    showAuthScreen("Sign-in failed", `The server did not accept your sign-in link${why}. It may be invalid or expired.`);
  }
}

// ------------------------------------------------------------------ messages

/** Stores a message unless we already hold a newer version of it. Returns true when it was new. */
function mergeMessage(conv, msg) {
  const existing = conv.messages.get(msg.seq);
  if (existing) {
    if (existing.deleted && !msg.deleted) return false;
    if (!msg.deleted && existing.edited_at && (!msg.edited_at || msg.edited_at < existing.edited_at)) return false;
  }
  conv.messages.set(msg.seq, msg);
  if (conv.lastMessage && conv.lastMessage.seq === msg.seq) conv.lastMessage = msg;
  return !existing;
}

function isOwn(msg) {
  return Boolean(state.me && msg.sender && msg.sender.id === state.me.id);
}

function addMessages(conv, msgs) {
  for (const msg of msgs || []) {
    if (!msg || typeof msg.seq !== "number" || !msg.sender) continue;
    msg.sender.id = String(msg.sender.id);
    if (msg.sender.name) state.names.set(msg.sender.id, msg.sender.name);
    const isNew = mergeMessage(conv, msg);
    if (isOwn(msg) && msg.client_msg_id) conv.pending.delete(msg.client_msg_id);
    if (!isNew) continue;
    if (conv.lowSeq === null || msg.seq < conv.lowSeq) conv.lowSeq = msg.seq;
    if (!conv.lastMessage || msg.seq >= conv.lastMessage.seq) conv.lastMessage = msg;
    // Messages up to countedSeq were in the server's unread_count of the last list refresh.
    if (msg.seq > conv.countedSeq && !isOwn(msg) && !msg.deleted) conv.unread += 1;
    // Sending moves the sender's read position to their message.
    const pos = conv.readers.get(msg.sender.id) || 0;
    if (msg.seq > pos) conv.readers.set(msg.sender.id, msg.seq);
    if (isOwn(msg) && msg.seq > conv.readSent) conv.readSent = msg.seq;
    if (conv.typers.has(msg.sender.id)) {
      clearTimeout(conv.typers.get(msg.sender.id));
      conv.typers.delete(msg.sender.id);
    }
  }
  while (conv.messages.has(conv.highSeq + 1)) conv.highSeq += 1;
}

function hasGap(conv) {
  for (const seq of conv.messages.keys()) if (seq > conv.highSeq) return true;
  return false;
}

/** The latest page (join without since_seq, or GET .../messages): the window to grow from. */
function applyLatestPage(conv, messages, hasMore) {
  addMessages(conv, messages);
  if (messages && messages.length) {
    const top = Math.max(...messages.map((m) => m.seq));
    if (top > conv.highSeq) conv.highSeq = top;
    while (conv.messages.has(conv.highSeq + 1)) conv.highSeq += 1;
  }
  if (!conv.loaded) conv.hasMoreBefore = Boolean(hasMore);
  conv.loaded = true;
}

/** Fetches everything after highSeq until there is no more and no gap. */
async function catchUp(conv) {
  if (conv.syncing) {
    conv.syncAgain = true;
    return;
  }
  conv.syncing = true;
  try {
    for (let round = 0; round < 1000; round++) {
      conv.syncAgain = false;
      const before = conv.highSeq;
      const res = await api.listMessages(conv.id, { afterSeq: conv.highSeq, limit: CATCH_UP_PAGE });
      if (!state.convs.has(conv.id)) return;
      addMessages(conv, res.messages);
      afterMessagesChanged(conv);
      if (!(res.has_more || hasGap(conv) || conv.syncAgain)) break;
      if (conv.highSeq === before) break; // no progress: try again on the next event or reconnect
    }
  } catch {
    // Network or server trouble: the next reconnect or gap tries again.
  } finally {
    conv.syncing = false;
    scheduleRender();
  }
}

function afterMessagesChanged(conv, opts = {}) {
  if (conv.loaded && hasGap(conv) && !conv.syncing) catchUp(conv);
  if (state.openId === conv.id) markRead(conv);
  scheduleRender(opts);
}

async function joinConversation(conv) {
  const payload = { conversation_id: conv.id };
  const resuming = conv.loaded;
  if (resuming) payload.since_seq = conv.highSeq;
  const res = await emitAck("join", payload);
  if (!state.convs.has(conv.id)) return;
  if (!res.ok) {
    const code = res.error && res.error.code;
    if (code === "forbidden" || code === "not_found") {
      removeConversation(conv.id, state.openId === conv.id ? `You no longer have access to “${conversationName(conv)}”.` : null);
    } else if (code === "unauthorized") {
      handleUnauthorized();
    } else if (code !== "offline") {
      // A lost ack or a busy server: try again shortly while still connected.
      setTimeout(() => {
        if (socket && socket.connected && !conv.joined && state.convs.has(conv.id)) joinConversation(conv);
      }, 3_000);
    }
    return; // a disconnect: the next connect joins again
  }
  conv.joined = true;
  if (res.conversation) {
    conv.conversation = { ...conv.conversation, ...res.conversation };
    learnMembers(conv);
  }
  conv.online = new Set((res.online || []).map(String));
  for (const rp of res.read_positions || []) {
    learnName(rp);
    const userId = String(rp.user_id);
    if (typeof rp.seq === "number" && rp.seq > (conv.readers.get(userId) || 0)) conv.readers.set(userId, rp.seq);
  }
  if (resuming) {
    addMessages(conv, res.messages);
    if (res.has_more) catchUp(conv);
  } else {
    applyLatestPage(conv, res.messages || [], res.has_more);
    if (state.openId === conv.id) setTimeout(fillViewport, 50);
  }
  afterMessagesChanged(conv);
}

/**
 * After a reconnect, `since_seq` brings the messages we missed but not edits or deletions of
 * ones we already show: the open conversation re-reads what it shows (its latest 1,000 at most).
 */
async function refreshLatest(conv) {
  conv.stale = false;
  if (conv.lowSeq === null) return;
  const top = conv.highSeq;
  let after = Math.max(conv.lowSeq - 1, top - 1_000);
  try {
    while (after < top) {
      const res = await api.listMessages(conv.id, { afterSeq: after, limit: CATCH_UP_PAGE });
      if (!state.convs.has(conv.id)) return;
      const msgs = res.messages || [];
      addMessages(conv, msgs);
      if (!msgs.length || !res.has_more) break;
      after = msgs[msgs.length - 1].seq;
    }
    afterMessagesChanged(conv);
  } catch {
    conv.stale = true;
  }
}

async function loadLatestOverHttp(conv) {
  try {
    const res = await api.listMessages(conv.id, { limit: PAGE });
    if (!state.convs.has(conv.id) || conv.loaded) return;
    applyLatestPage(conv, res.messages || [], res.has_more);
    afterMessagesChanged(conv, { scroll: "bottom" });
  } catch (err) {
    if (err.status !== 401) showNotice(`Could not load messages: ${err.message}`, "error");
  }
}

async function loadOlder(conv) {
  if (!conv || !conv.loaded || !conv.hasMoreBefore || conv.loadingOlder || conv.lowSeq === null) return;
  conv.loadingOlder = true;
  scheduleRender();
  try {
    let res;
    if (socket && socket.connected) {
      res = await emitAck("history", { conversation_id: conv.id, before_seq: conv.lowSeq, limit: PAGE });
      if (!res.ok) throw new Error((res.error && res.error.message) || "failed");
    } else {
      res = await api.listMessages(conv.id, { beforeSeq: conv.lowSeq, limit: PAGE });
    }
    addMessages(conv, res.messages);
    conv.hasMoreBefore = Boolean(res.has_more);
  } catch (err) {
    showNotice(`Could not load older messages: ${err.message}`, "error");
  } finally {
    conv.loadingOlder = false;
    scheduleRender();
    setTimeout(fillViewport, 50);
  }
}

/** Loads older pages until the message list can scroll (or there is nothing older). */
function fillViewport() {
  const conv = openConv();
  const list = $("message-list");
  if (!conv || !conv.hasMoreBefore || conv.loadingOlder) return;
  if (list.clientHeight > 0 && list.scrollHeight <= list.clientHeight + 40) loadOlder(conv);
  else if (list.scrollTop < 120 && list.scrollHeight > list.clientHeight) loadOlder(conv);
}

function markRead(conv) {
  if (state.openId !== conv.id || document.visibilityState === "hidden") return;
  conv.unread = 0;
  const seq = maxSeq(conv);
  if (seq <= conv.readSent || !socket || !socket.connected) return;
  const previous = conv.readSent;
  conv.readSent = seq;
  emitAck("read", { conversation_id: conv.id, seq }).then((res) => {
    if (!res.ok) {
      if (conv.readSent === seq) conv.readSent = previous; // resent on the next change or reconnect
      return;
    }
    if (typeof res.unread_count === "number" && state.openId !== conv.id) {
      conv.unread = res.unread_count;
      scheduleRender();
    }
  });
}

// ------------------------------------------------------------------ sending

function trySend(conv, p) {
  if (!socket || !socket.connected) {
    p.status = "queued";
    scheduleRender();
    return;
  }
  p.attempt += 1;
  const attempt = p.attempt;
  p.status = "sending";
  p.error = null;
  p.autoRetry = false;
  scheduleRender();
  const payload = { conversation_id: conv.id, body: p.body, client_msg_id: p.cmid };
  socket.timeout(ACK_TIMEOUT_MS).emit("send", payload, (err, res) => {
    if (!conv.pending.has(p.cmid)) return; // already confirmed by the broadcast
    if (!err && res && res.ok && res.message) {
      addMessages(conv, [res.message]);
      afterMessagesChanged(conv);
      return;
    }
    if (attempt !== p.attempt) return; // a newer attempt is under way
    p.status = "failed";
    if (err) {
      p.error = "no answer from the server";
      p.autoRetry = true;
    } else {
      const e = (res && res.error) || {};
      p.error = e.message || e.code || "error";
      p.autoRetry = e.code === "unavailable";
      if (e.code === "unauthorized") handleUnauthorized();
    }
    scheduleRender();
  });
}

/** Resends what was queued while offline (same client_msg_id: the server dedupes). */
function flushPending() {
  for (const conv of state.convs.values()) {
    const waiting = [...conv.pending.values()].sort((a, b) => a.createdAt - b.createdAt);
    for (const p of waiting) {
      if (p.status === "queued" || p.status === "sending" || (p.status === "failed" && p.autoRetry)) trySend(conv, p);
    }
  }
}

function submitComposer() {
  const conv = openConv();
  if (!conv || !canPost(conv)) return;
  const composer = $("composer");
  const body = composer.value.trim();
  if (!body) return;
  if ([...body].length > MAX_BODY_CHARS) {
    showNotice(`Messages are limited to ${MAX_BODY_CHARS} characters.`, "error");
    return;
  }
  composer.value = "";
  drafts.delete(conv.id);
  stopTyping();
  const p = {
    cmid: api.newClientMsgId(),
    body,
    status: "queued",
    error: null,
    autoRetry: false,
    attempt: 0,
    createdAt: Date.now(),
  };
  conv.pending.set(p.cmid, p);
  scheduleRender({ scroll: "bottom" });
  trySend(conv, p);
}

// ------------------------------------------------------------------ typing

let typingConvId = null; // the conversation we last told "typing: true"
let typingSentAt = 0;
let lastInputAt = 0;
let typingTimer = null;

function emitTyping(conversationId, typing) {
  if (socket && socket.connected) socket.emit("typing", { conversation_id: conversationId, typing }, () => {});
}

function sendTypingTrue(conversationId) {
  emitTyping(conversationId, true);
  typingConvId = conversationId;
  typingSentAt = Date.now();
}

function onComposerInput() {
  const conv = openConv();
  if (!conv) return;
  const composer = $("composer");
  drafts.set(conv.id, composer.value);
  if (!composer.value.trim()) {
    stopTyping();
    return;
  }
  lastInputAt = Date.now();
  if (typingConvId && typingConvId !== conv.id) stopTyping();
  if (typingConvId !== conv.id || Date.now() - typingSentAt >= TYPING_REFRESH_MS) sendTypingTrue(conv.id);
  if (!typingTimer) typingTimer = setTimeout(typingTick, TYPING_REFRESH_MS);
}

/**
 * While the user keeps typing, "typing: true" is repeated every TYPING_REFRESH_MS (the
 * others expire it after TYPING_EXPIRE_MS; the server may also drop one sent too soon
 * after the last); after TYPING_IDLE_MS without a keystroke it becomes "typing: false".
 */
function typingTick() {
  typingTimer = null;
  if (!typingConvId) return;
  if (Date.now() - lastInputAt >= TYPING_IDLE_MS) {
    stopTyping();
    return;
  }
  if (Date.now() - typingSentAt >= TYPING_REFRESH_MS - 100) sendTypingTrue(typingConvId);
  typingTimer = setTimeout(typingTick, TYPING_REFRESH_MS);
}

function stopTyping() {
  clearTimeout(typingTimer);
  typingTimer = null;
  if (!typingConvId) return;
  emitTyping(typingConvId, false);
  typingConvId = null;
  typingSentAt = 0;
}

// ------------------------------------------------------------------ server events

/** Events that carry the user's name (a server may add it) teach it to the page. */
function learnName(ev) {
  const name = ev && (ev.name || ev.user_name);
  if (ev && ev.user_id && typeof name === "string" && name) state.names.set(String(ev.user_id), name);
}

function convOf(payload) {
  if (!payload || payload.conversation_id === undefined) return null;
  return state.convs.get(String(payload.conversation_id)) || null;
}

let refreshSoonTimer = null;
function refreshConversationsSoon() {
  clearTimeout(refreshSoonTimer);
  refreshSoonTimer = setTimeout(() => refreshConversations().catch(() => {}), 500);
}

function onMessage(msg) {
  const conv = convOf(msg);
  if (!conv) {
    refreshConversationsSoon();
    return;
  }
  addMessages(conv, [msg]);
  afterMessagesChanged(conv, isOwn(msg) ? { scroll: "bottom" } : {});
}

function onMessageUpdated(msg) {
  const conv = convOf(msg);
  if (!conv || typeof msg.seq !== "number") return;
  if (conv.messages.has(msg.seq)) mergeMessage(conv, msg);
  else if (conv.lastMessage && conv.lastMessage.seq === msg.seq) conv.lastMessage = msg;
  if (msg.deleted && state.editing && state.editing.convId === conv.id && state.editing.seq === msg.seq) state.editing = null;
  scheduleRender();
}

function onTyping(ev) {
  learnName(ev);
  const conv = convOf(ev);
  if (!conv || !ev.user_id) return;
  const userId = String(ev.user_id);
  if (state.me && userId === state.me.id) return;
  clearTimeout(conv.typers.get(userId));
  if (ev.typing) {
    conv.typers.set(
      userId,
      setTimeout(() => {
        conv.typers.delete(userId);
        scheduleRender();
      }, TYPING_EXPIRE_MS),
    );
  } else {
    conv.typers.delete(userId);
  }
  scheduleRender();
}

function onRead(ev) {
  learnName(ev);
  const conv = convOf(ev);
  if (!conv || !ev.user_id || typeof ev.seq !== "number") return;
  const userId = String(ev.user_id);
  if (state.me && userId === state.me.id) {
    // Read in another tab or device of ours.
    if (ev.seq >= maxSeq(conv)) conv.unread = 0;
    if (ev.seq > conv.readSent) conv.readSent = ev.seq;
  } else if (ev.seq > (conv.readers.get(userId) || 0)) {
    conv.readers.set(userId, ev.seq);
  }
  scheduleRender();
}

function onPresence(ev) {
  learnName(ev);
  const conv = convOf(ev);
  if (!conv || !ev.user_id) return;
  const userId = String(ev.user_id);
  if (ev.online) conv.online.add(userId);
  else {
    conv.online.delete(userId);
    clearTimeout(conv.typers.get(userId));
    conv.typers.delete(userId);
  }
  scheduleRender();
}

function onNotification(n) {
  addLiveNotification(n);
  refreshConversationsSoon(); // it may announce a conversation we are not in yet
}

/**
 * The server's relay was interrupted (docs/api.md `resync`): broadcasts may have been lost,
 * the messages are stored. Join again with since_seq when behind `last_seq`; edits and
 * deletions are not counted by seq, so what we show is re-read too (the open one at once).
 */
function onResync(ev) {
  const conv = convOf(ev);
  if (!conv || !conv.joined) return;
  if (conv.loaded) {
    conv.stale = true;
    if (state.openId === conv.id) refreshLatest(conv);
  }
  const behind = typeof ev.last_seq !== "number" || !conv.loaded || conv.highSeq < ev.last_seq;
  if (behind && socket && socket.connected) joinConversation(conv);
}

function onAccessRevoked(ev) {
  const conv = convOf(ev);
  if (!conv) return;
  removeConversation(conv.id, `You no longer have access to “${conversationName(conv)}”.`);
}

// ------------------------------------------------------------------ conversations

function removeConversation(id, notice) {
  const conv = state.convs.get(id);
  if (!conv) return;
  for (const t of conv.typers.values()) clearTimeout(t);
  state.convs.delete(id);
  drafts.delete(id);
  if (state.openId === id) {
    state.openId = null;
    state.editing = null;
    state.confirmDelete = null;
    if (typingConvId === id) {
      clearTimeout(typingTimer);
      typingTimer = null;
      typingConvId = null;
    }
  }
  if (notice) showNotice(notice, "warning");
  scheduleRender();
}

async function refreshConversations({ join = true } = {}) {
  const res = await api.listConversations();
  const entries = (res && res.conversations) || [];
  const seen = new Set();
  entries.forEach((entry, index) => {
    if (!entry || !entry.conversation) return;
    const id = String(entry.conversation.id);
    seen.add(id);
    let conv = state.convs.get(id);
    if (!conv) {
      conv = makeConv(entry, index);
      state.convs.set(id, conv);
      if (join && socket && socket.connected) joinConversation(conv);
      return;
    }
    conv.order = index;
    conv.conversation = { ...conv.conversation, ...entry.conversation };
    learnMembers(conv);
    conv.muted = Boolean(entry.muted);
    const last = entry.last_message;
    if (last && (!conv.lastMessage || last.seq >= conv.lastMessage.seq)) {
      conv.lastMessage = conv.messages.get(last.seq) || last;
    }
    conv.countedSeq = last ? last.seq : 0;
    let newer = 0;
    for (const m of conv.messages.values()) if (m.seq > conv.countedSeq && !isOwn(m) && !m.deleted) newer += 1;
    conv.unread = (entry.unread_count || 0) + newer;
  });
  for (const id of [...state.convs.keys()]) {
    if (!seen.has(id)) {
      const conv = state.convs.get(id);
      removeConversation(id, state.openId === id ? `You no longer have access to “${conversationName(conv)}”.` : null);
    }
  }
  const open = openConv();
  if (open) markRead(open);
  if (socket && socket.connected) subscribeCreatorChannels();
  scheduleRender();
}

function openConversation(id) {
  const conv = state.convs.get(id);
  if (!conv) return;
  if (state.openId !== id) {
    stopTyping();
    state.editing = null;
    state.confirmDelete = null;
  }
  // On a phone the conversation is a screen of its own: the browser's back returns to the list.
  if (isPhone() && !state.openId) window.history.pushState({ backstageConversation: id }, "");
  state.openId = id;
  const composer = $("composer");
  composer.value = drafts.get(id) || "";
  markRead(conv);
  if (!conv.loaded && !(socket && socket.connected)) loadLatestOverHttp(conv);
  else if (conv.stale && socket && socket.connected) refreshLatest(conv);
  scheduleRender({ scroll: "bottom" });
  setTimeout(fillViewport, 50);
  if (window.matchMedia("(min-width: 641px)").matches && canPost(conv)) composer.focus();
}

function isPhone() {
  return window.matchMedia("(max-width: 640px)").matches;
}

/** The back button: undo our history entry when there is one, which closes the view. */
function goBack() {
  if (window.history.state && window.history.state.backstageConversation) window.history.back();
  else closeConversation();
}

function closeConversation() {
  stopTyping();
  state.openId = null;
  state.editing = null;
  state.confirmDelete = null;
  scheduleRender();
}

// ------------------------------------------------------------------ edit / delete / retry

actions.startEdit = (convId, seq) => {
  const conv = state.convs.get(convId);
  const msg = conv && conv.messages.get(seq);
  if (!msg) return;
  state.editing = { convId, seq, draft: msg.body, error: null, focused: false, saving: false };
  state.confirmDelete = null;
  scheduleRender();
};

actions.cancelEdit = () => {
  state.editing = null;
  scheduleRender();
  $("composer").focus();
};

actions.saveEdit = async () => {
  const ed = state.editing;
  if (!ed || ed.saving) return;
  const conv = state.convs.get(ed.convId);
  const msg = conv && conv.messages.get(ed.seq);
  if (!msg) {
    state.editing = null;
    scheduleRender();
    return;
  }
  const body = ed.draft.trim();
  if (!body) {
    ed.error = "A message cannot be empty: delete it instead.";
    scheduleRender();
    return;
  }
  if (body === msg.body) {
    actions.cancelEdit();
    return;
  }
  ed.saving = true;
  const res = await emitAck("edit", { message_id: msg.id, body });
  ed.saving = false;
  if (res.ok) {
    if (res.message) mergeMessage(conv, res.message);
    if (state.editing === ed) state.editing = null;
  } else {
    ed.error = `Not saved: ${(res.error && res.error.message) || "error"}`;
  }
  scheduleRender();
};

let confirmTimer = null;
actions.deleteMessage = async (convId, seq) => {
  const conv = state.convs.get(convId);
  const msg = conv && conv.messages.get(seq);
  if (!msg) return;
  const cd = state.confirmDelete;
  if (!cd || cd.convId !== convId || cd.seq !== seq) {
    // First click arms the button; a second click within 4 s deletes.
    state.confirmDelete = { convId, seq };
    clearTimeout(confirmTimer);
    confirmTimer = setTimeout(() => {
      state.confirmDelete = null;
      scheduleRender();
    }, 4_000);
    scheduleRender();
    return;
  }
  state.confirmDelete = null;
  scheduleRender();
  const res = await emitAck("delete", { message_id: msg.id });
  if (res.ok) {
    if (res.message) mergeMessage(conv, res.message);
    scheduleRender();
  } else {
    showNotice(`Could not delete the message: ${(res.error && res.error.message) || "error"}`, "error");
  }
};

actions.retrySend = (convId, cmid) => {
  const conv = state.convs.get(convId);
  const p = conv && conv.pending.get(cmid);
  if (p) trySend(conv, p);
};

actions.discardSend = (convId, cmid) => {
  const conv = state.convs.get(convId);
  if (conv) conv.pending.delete(cmid);
  scheduleRender();
};

async function toggleMute() {
  const conv = openConv();
  if (!conv) return;
  const muted = !conv.muted;
  try {
    await api.setMuted(conv.id, muted);
    conv.muted = muted;
  } catch (err) {
    if (err.status !== 401) showNotice(`Could not change the setting: ${err.message}`, "error");
  }
  scheduleRender();
}

// ------------------------------------------------------------------ boot

function wireDom() {
  const list = $("conv-list");
  const openFromEvent = (e) => {
    const li = e.target.closest("[data-conversation-id]");
    if (li) openConversation(li.dataset.conversationId);
  };
  list.addEventListener("click", openFromEvent);
  list.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openFromEvent(e);
    }
  });
  $("back-button").addEventListener("click", goBack);
  window.addEventListener("popstate", () => {
    if (state.openId && !(window.history.state && window.history.state.backstageConversation)) closeConversation();
  });
  $("mute-button").addEventListener("click", toggleMute);

  const composer = $("composer");
  composer.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submitComposer();
    }
  });
  composer.addEventListener("input", onComposerInput);
  composer.addEventListener("blur", stopTyping);
  $("composer-form").addEventListener("submit", (e) => {
    e.preventDefault();
    submitComposer();
  });

  $("message-list").addEventListener("scroll", () => {
    if ($("message-list").scrollTop < 120) loadOlder(openConv());
    onMessageListScroll();
  });
  $("new-below").addEventListener("click", scrollToLatest);

  window.addEventListener("offline", updateConnection);
  window.addEventListener("online", () => {
    updateConnection();
    reconnectNow();
  });
  document.addEventListener("visibilitychange", () => {
    const conv = openConv();
    if (conv && document.visibilityState === "visible") {
      markRead(conv);
      scheduleRender();
    }
  });
}

function watchExpiry() {
  const left = api.tokenMsLeft(api.getToken());
  if (!Number.isFinite(left)) return;
  setTimeout(() => handleUnauthorized(), Math.min(Math.max(left, 0), 2_147_000_000));
}

async function loadMe() {
  for (let delay = 1_000; ; delay = Math.min(delay * 2, 15_000)) {
    try {
      return await api.getMe();
    } catch (err) {
      if (err.status === 401) return null;
      state.connection = navigator.onLine ? "connecting" : "offline";
      scheduleRender();
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

async function boot() {
  api.takeTokenFromUrl();
  // A reload starts on the list: forget a conversation entry left in this tab's history.
  if (window.history.state && window.history.state.backstageConversation) window.history.replaceState(null, "");
  const token = api.getToken();
  const problem = api.tokenProblem(token);
  if (problem === "missing") {
    showAuthScreen("You are not signed in", "Open Backstage with your personal sign-in link (it ends in ?token=…).");
    return;
  }
  if (problem === "invalid") {
    showAuthScreen("This sign-in link is not valid", "The token in the link cannot be read.");
    return;
  }
  if (problem === "expired") {
    showAuthScreen("Your session has expired", "Your sign-in link has expired, so Backstage cannot load your chats.");
    return;
  }
  api.onUnauthorized(() => handleUnauthorized());
  watchExpiry();
  wireDom();
  setupNotifications({ openConversation });
  setupCreatorEvents({ emitAck });
  setupMessageMenus($("message-list"));
  scheduleRender();

  const me = await loadMe();
  if (!me || authFailed) return;
  state.me = { id: String(me.user.id), name: me.user.name || String(me.user.id) };
  state.names.set(state.me.id, state.me.name);
  state.avatars.set(state.me.id, me.user.avatar_url || null);
  renderMe();
  setUnreadNotifications(me.unread_notifications);
  try {
    await refreshConversations({ join: false });
  } catch (err) {
    if (err.status !== 401) showNotice(`Could not load conversations: ${err.message}`, "error");
  }
  if (authFailed) return;
  connectSocket();
  setInterval(() => {
    if (!authFailed) refreshConversations().catch(() => {});
  }, LIST_REFRESH_MS);
}

boot();
