// Backstage live chat: sign-in, the connection and what its events do to the
// page's state. The connection, reconnect recovery (since_seq, dedupe by seq) and
// pending sends are the client module's (backstage-client.js); rendering lives in
// render.js, the bell in notifications.js, the HTTP calls in api.js.

import { io } from "/static/vendor/socket.io.esm.min.js";
import * as api from "./api.js";
import { BackstageClient } from "./backstage-client.js";
import { addLiveNotification, setUnreadNotifications, setupNotifications } from "./notifications.js";
import { actions, onMessageListScroll, scheduleRender, scrollToLatest, showAuthScreen, showNotice } from "./render.js";
import { canPost, conversationName, learnMembers, makeConv, maxSeq, openConv, state } from "./state.js";
import { forgetCreatorChannels, onCreatorEvent, setupCreatorEvents, subscribeCreatorChannels } from "./creator-events.js";
import { applyReactionEvent, loadWho } from "./reactions.js";
import { onMenuClose, renderMe, setupMessageMenus, watchConnection } from "./ui.js";
import { clearTray, photosForSend, setupPhotos } from "./photos.js";
import { isReply, refreshThread, setupThreads } from "./threads.js";
import { attachCompletion, mentionsMe } from "./mentions.js";
import {
  applyJoinAnswer,
  composerBlock,
  sendRefused,
  disarm,
  loadModeration,
  noteSendError,
  noteSent,
  onModeration,
  onPins,
  onSlowMode,
  setupModeration,
} from "./moderation.js";
import { onMessageHidden, onReportOpened, onReportResolved, setupReports } from "./reports.js";
import { loadBlocks, onUserBlocked, setupBlocks } from "./blocks.js";
import { applySpaceJoin, onConversationDeleted, onConversationUpdated, setupSpaces } from "./spaces.js";

const ACK_TIMEOUT_MS = 10_000;
const TYPING_REFRESH_MS = 2_000; // re-send typing:true this often while typing
const TYPING_IDLE_MS = 5_000; // typing:false after this long without a keystroke
const TYPING_EXPIRE_MS = 6_000; // others' typing state without news expires
const PAGE = 50;
const REREAD_PAGE = 100;
const LIST_REFRESH_MS = 60_000;

const $ = (id) => document.getElementById(id);

let client = null; // BackstageClient
let mainMentions = null; // the main composer's @ completion (mentions.js)
let authFailed = false;
const drafts = new Map(); // conversation id -> unsent composer text

// ------------------------------------------------------------------ connection

const isConnected = () => Boolean(client && client.connected);

/** A request with an ack; a lost ack (timeout) or no connection becomes {ok:false}. */
function emitAck(event, payload) {
  if (!client) return Promise.resolve({ ok: false, error: { code: "offline", message: "not connected" } });
  return client.request(event, payload, { timeoutMs: ACK_TIMEOUT_MS }).catch((err) => ({
    ok: false,
    error: { code: err.code, message: err.message },
  }));
}

function updateConnection() {
  if (isConnected()) state.connection = "connected";
  else if (!navigator.onLine) state.connection = "offline";
  else state.connection = "connecting";
  scheduleRender();
}

function connectSocket() {
  client = new BackstageClient({
    url: window.location.origin,
    io,
    token: api.getToken(),
    ackTimeoutMs: ACK_TIMEOUT_MS,
    socketOptions: { reconnectionDelay: 500, reconnectionDelayMax: 4_000 },
  });
  // "state": connecting | connected | reconnecting | disconnected ({state, previous, reason, reconnect}).
  client.on("state", onConnectionState);
  client.on("joined", onJoined);
  client.on("join_error", onJoinError);
  client.on("send_status", onSendStatus);
  client.on("message", onMessage);
  client.on("message_updated", onMessageUpdated);
  client.on("typing", onTyping);
  client.on("read", onRead);
  client.on("presence", onPresence);
  client.on("reaction", onReaction);
  client.on("notification", onNotification);
  client.on("access_revoked", onAccessRevoked);
  client.on("resync", onResync);
  client.on("moderation", onModeration);
  client.on("slow_mode", (ev) => {
    const conv = convOf(ev);
    if (conv) onSlowMode(conv, ev);
  });
  client.on("pins", (ev) => {
    const conv = convOf(ev);
    if (conv) onPins(conv, ev);
  });
  client.on("event", onCreatorEvent);
  client.on("report_opened", onReportOpened);
  client.on("report_resolved", onReportResolved);
  client.on("message_hidden", (ev) => {
    const conv = convOf(ev);
    if (conv) onMessageHidden(conv, ev);
  });
  client.on("user_blocked", onUserBlocked);
  client.on("conversation_updated", onConversationUpdated);
  client.on("conversation_deleted", onConversationDeleted);
  // Refused by the server (not a network error): bad credentials, or too many connections.
  client.connect().catch((err) => handleUnauthorized(err && err.message));
  watchConnection(client.socket, reconnectNow);
}

/** A connection attempt now rather than after the current back-off delay. */
function reconnectNow() {
  if (client && !authFailed) client.reconnectNow();
}

function onConnectionState(ev) {
  if (ev.state === "connected") onConnect(ev.reconnect);
  else if (ev.previous === "connected") onDisconnect();
  // The token expired (the server closed the session), or a reconnect was refused: sign-in screen.
  if (ev.state === "disconnected" && (ev.reason === "token_expired" || ev.reason === "refused")) {
    handleUnauthorized(ev.error && ev.error.message);
  }
  updateConnection();
}

async function onConnect(reconnect) {
  updateConnection();
  try {
    await refreshConversations({ join: false });
  } catch {
    // The list we have is still good; the periodic refresh tries again.
  }
  subscribeCreatorChannels();
  loadBlocks();
  if (reconnect) for (const c of state.convs.values()) if (c.loaded) c.stale = true;
  // The client keeps joined conversations joined (and recovers them with since_seq); the
  // others (the first connect, conversations listed while offline) are joined here.
  const tracked = new Set(client.conversations());
  await Promise.allSettled([...state.convs.values()].filter((c) => !tracked.has(c.id)).map((conv) => joinConversation(conv)));
  const conv = openConv();
  if (conv) {
    markRead(conv);
    if (conv.stale) refreshLatest(conv);
  }
  api
    .getMe()
    .then((me) => setUnreadNotifications(me.unread_notifications))
    .catch(() => {});
  if (reconnect) {
    loadModeration(); // a timeout or an appointment may have come meanwhile
    refreshThread();
  }
}

function onDisconnect() {
  forgetCreatorChannels();
  for (const conv of state.convs.values()) {
    conv.joined = false;
    conv.online = new Set();
    for (const t of conv.typers.values()) clearTimeout(t);
    conv.typers.clear();
  }
}

function handleUnauthorized(detail) {
  if (authFailed) return;
  authFailed = true;
  if (client) client.close();
  const problem = api.tokenProblem(api.getToken());
  if (problem === "expired") {
    showAuthScreen("Your session has expired", "Your sign-in link has expired, so Backstage cannot load your chats.");
  } else {
    const why = detail && typeof detail === "string" ? ` (${detail})` : "";
    showAuthScreen("Sign-in failed", `The server did not accept your sign-in link${why}. It may be invalid or expired.`);
  }
}

// ------------------------------------------------------------------ messages

/**
 * Stores a message unless we already hold a newer version of it. Returns true when it was new.
 * `message_updated` (and the edit/delete acks) carry no `reactions`: an edit keeps ours.
 */
function mergeMessage(conv, msg) {
  const existing = conv.messages.get(msg.seq);
  if (existing) {
    if (existing.deleted && !msg.deleted) return false;
    if (!msg.deleted && existing.edited_at && (!msg.edited_at || msg.edited_at < existing.edited_at)) return false;
  }
  if (!Array.isArray(msg.reactions)) msg.reactions = msg.deleted || !existing ? [] : existing.reactions || [];
  // A root's summary only grows (updates from two processes may cross): keep the larger one.
  const had = existing && existing.thread;
  if (had && (!msg.thread || (msg.thread.reply_count || 0) < (had.reply_count || 0))) msg.thread = had;
  // An edit's frame may leave the photos out: they cannot change, keep the ones we have.
  if (!msg.deleted && existing && !(Array.isArray(msg.attachments) && msg.attachments.length)) msg.attachments = existing.attachments || [];
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
    // (Also when a thread page brought it first: the main window starts at lowSeq.)
    if (conv.lowSeq === null || msg.seq < conv.lowSeq) conv.lowSeq = msg.seq;
    if (!isNew) continue;
    if (!conv.lastMessage || msg.seq >= conv.lastMessage.seq) conv.lastMessage = msg;
    // Messages up to countedSeq were in the server's unread_count of the last list refresh.
    if (msg.seq > conv.countedSeq && !isOwn(msg) && !msg.deleted) conv.unread += 1;
    if (msg.seq > conv.countedSeq && !isOwn(msg) && mentionsMe(msg)) conv.mentionCount += 1;
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

/**
 * A thread page's messages (threads.js): kept with the others, so edits, reactions and the
 * seq stream apply to them alike, but outside the main window (lowSeq) and without unread
 * counting. Ones the client has not delivered yet are left to it (they come in order).
 */
function storeThreadMessages(conv, msgs) {
  const delivered = client ? client.lastSeq(conv.id) : null;
  for (const msg of msgs || []) {
    if (!msg || typeof msg.seq !== "number" || !msg.sender) continue;
    if (delivered !== null && msg.seq > delivered && !conv.messages.has(msg.seq)) continue;
    msg.sender.id = String(msg.sender.id);
    if (msg.sender.name) state.names.set(msg.sender.id, msg.sender.name);
    mergeMessage(conv, msg);
  }
  scheduleRender();
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

function afterMessagesChanged(conv, opts = {}) {
  if (state.openId === conv.id) markRead(conv);
  scheduleRender(opts);
}

/**
 * Joins a conversation through the client, which keeps it joined: after a reconnect or a
 * `resync` it joins again with since_seq itself and what was missed arrives as `message`
 * events, in seq order and once each. Resumes after highSeq when messages are loaded already.
 */
async function joinConversation(conv) {
  const resuming = conv.loaded;
  let res;
  try {
    res = await client.join(conv.id, resuming ? { sinceSeq: conv.highSeq } : {});
  } catch {
    return; // forbidden / not_found: onJoinError; closed: signed out
  }
  if (!state.convs.has(conv.id)) return;
  if (resuming) {
    addMessages(conv, res.messages); // and, when it has_more, the rest as message events
  } else {
    applyLatestPage(conv, res.messages || [], res.has_more);
    if (state.openId === conv.id) setTimeout(fillViewport, 50);
  }
  afterMessagesChanged(conv);
}

/** Every join answer (the first, and the client's joins after a reconnect, resync or gap). */
function onJoined({ conversationId, answer }) {
  const conv = state.convs.get(conversationId);
  if (!conv) return;
  conv.joined = true;
  if (answer.conversation) {
    conv.conversation = { ...conv.conversation, ...answer.conversation };
    learnMembers(conv);
  }
  conv.online = new Set((answer.online || []).map(String));
  applyJoinAnswer(conv, answer);
  applySpaceJoin(conv, answer);
  for (const rp of answer.read_positions || []) {
    learnName(rp);
    const userId = String(rp.user_id);
    if (typeof rp.seq === "number" && rp.seq > (conv.readers.get(userId) || 0)) conv.readers.set(userId, rp.seq);
  }
  scheduleRender();
}

/** A join the client gave up (forbidden / not_found: the conversation is no longer ours). */
function onJoinError({ conversationId, error, retrying }) {
  const conv = state.convs.get(conversationId);
  if (!conv || retrying) return;
  if (error.code === "forbidden" || error.code === "not_found") {
    removeConversation(conv.id, state.openId === conv.id ? `You no longer have access to “${conversationName(conv)}”.` : null);
  }
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
      const res = await api.listMessages(conv.id, { afterSeq: after, limit: REREAD_PAGE });
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
    if (isConnected()) {
      // Without thread replies: they show in their thread (threads.js).
      res = await emitAck("history", { conversation_id: conv.id, before_seq: conv.lowSeq, limit: PAGE, include_replies: false });
      if (!res.ok) throw new Error((res.error && res.error.message) || "failed");
    } else {
      res = await api.listMessages(conv.id, { beforeSeq: conv.lowSeq, limit: PAGE, includeReplies: false });
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
  conv.mentionCount = 0;
  const seq = maxSeq(conv);
  if (seq <= conv.readSent || !isConnected()) return;
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

/**
 * Hands a pending message to the client, which sends it now or once connected, and retries a
 * lost answer, `unavailable` or `rate_limited` with the same client_msg_id (the server stores it
 * once). Its progress comes back as `send_status` events (onSendStatus).
 */
function sendPending(conv, p) {
  const attachments = (p.attachments || []).map((a) => a.id);
  const mentions = p.mentions && p.mentions.length ? p.mentions : undefined;
  client.send(conv.id, p.body, { clientMsgId: p.cmid, attachments, threadId: p.threadId || null, mentions }).then(
    (msg) => {
      if (!msg || !state.convs.has(conv.id)) return;
      addMessages(conv, [msg]);
      afterMessagesChanged(conv);
    },
    (err) => {
      if (err.code === "unauthorized") handleUnauthorized();
    },
  );
}

/** queued (offline) | sending | retrying (shown as failed, retried by itself) | failed | sent | cancelled */
function onSendStatus(s) {
  const conv = state.convs.get(s.conversationId);
  const p = conv && conv.pending.get(s.clientMsgId);
  if (!p) return;
  p.attempt = s.attempts;
  if (s.status === "sent" || s.status === "cancelled") {
    if (s.message) addMessages(conv, [s.message]);
    conv.pending.delete(p.cmid);
    if (s.status === "sent") noteSent(conv);
  } else if (s.status === "retrying" || s.status === "failed") {
    noteSendError(conv, s.error);
    p.status = "failed";
    p.error = (s.error && (s.error.message || s.error.code)) || "error";
    p.autoRetry = s.status === "retrying";
  } else {
    p.status = s.status; // queued | sending
    p.error = null;
    p.autoRetry = false;
  }
  scheduleRender();
}

/** A reply from the thread panel (threads.js): pending like any send, with its root's id. */
function sendReply(conv, body, rootId, mentions = [], attachments = []) {
  const p = {
    cmid: api.newClientMsgId(),
    body,
    mentions,
    attachments,
    threadId: rootId,
    status: "queued",
    error: null,
    autoRetry: false,
    attempt: 0,
    createdAt: Date.now(),
  };
  conv.pending.set(p.cmid, p);
  scheduleRender();
  sendPending(conv, p);
}

function submitComposer() {
  const conv = openConv();
  if (!conv || !canPost(conv)) return;
  const composer = $("composer");
  const body = composer.value.trim();
  const photos = photosForSend(conv.id);
  if (!body && !photos.attachments.length && !photos.busy && !photos.failed) return;
  if (sendRefused(conv, body, photos)) return;
  const mentions = mainMentions ? mainMentions.mentionsFor(body) : [];
  composer.value = "";
  drafts.delete(conv.id);
  clearTray(conv.id);
  stopTyping();
  if (mainMentions) mainMentions.reset();
  const p = {
    cmid: api.newClientMsgId(),
    body,
    mentions,
    attachments: photos.attachments,
    status: "queued",
    error: null,
    autoRetry: false,
    attempt: 0,
    createdAt: Date.now(),
  };
  conv.pending.set(p.cmid, p);
  scheduleRender({ scroll: "bottom" });
  sendPending(conv, p);
}

// ------------------------------------------------------------------ typing

let typingConvId = null; // the conversation we last told "typing: true"
let typingSentAt = 0;
let lastInputAt = 0;
let typingTimer = null;

function emitTyping(conversationId, typing) {
  if (isConnected()) client.typing(conversationId, typing).catch(() => {});
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
  afterMessagesChanged(conv, isOwn(msg) && !isReply(msg) ? { scroll: "bottom" } : {});
}

function onMessageUpdated(msg) {
  const conv = convOf(msg);
  if (!conv || typeof msg.seq !== "number") return;
  if (conv.messages.has(msg.seq)) mergeMessage(conv, msg);
  else if (conv.lastMessage && conv.lastMessage.seq === msg.seq) conv.lastMessage = msg;
  if (msg.deleted && state.editing && state.editing.convId === conv.id && state.editing.seq === msg.seq) state.editing = null;
  scheduleRender();
}

/** A (coalesced) `reaction` event: the message's counts from its summary, `me` kept. */
function onReaction(ev) {
  const conv = convOf(ev);
  if (!conv || ev.message_id === undefined) return;
  const msg = findMessage(conv, String(ev.message_id));
  if (!msg || msg.deleted || !applyReactionEvent(msg, ev)) return;
  scheduleRender();
}

function findMessage(conv, messageId) {
  for (const m of conv.messages.values()) if (String(m.id) === messageId) return m;
  return null;
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
    if (ev.seq >= maxSeq(conv)) {
      conv.unread = 0;
      conv.mentionCount = 0;
    }
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
 * the messages are stored. The client joins again with since_seq when behind `last_seq`; edits
 * and deletions are not counted by seq, so what we show is re-read too (the open one at once).
 */
function onResync(ev) {
  const conv = convOf(ev);
  if (!conv || !conv.loaded) return;
  conv.stale = true;
  if (state.openId === conv.id) refreshLatest(conv);
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
  if (client && client.conversations().includes(id)) client.leave(id).catch(() => {}); // no rejoin on reconnect
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
      if (join && isConnected()) joinConversation(conv);
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
    let newerMentions = 0;
    for (const m of conv.messages.values()) {
      if (m.seq <= conv.countedSeq || isOwn(m) || m.deleted) continue;
      newer += 1;
      if (mentionsMe(m)) newerMentions += 1;
    }
    conv.unread = (entry.unread_count || 0) + newer;
    conv.mentionCount = (entry.mention_count || 0) + newerMentions;
  });
  for (const id of [...state.convs.keys()]) {
    if (!seen.has(id)) {
      const conv = state.convs.get(id);
      removeConversation(id, state.openId === id ? `You no longer have access to “${conversationName(conv)}”.` : null);
    }
  }
  const open = openConv();
  if (open) markRead(open);
  if (isConnected()) subscribeCreatorChannels();
  scheduleRender();
}

function openConversation(id) {
  const conv = state.convs.get(id);
  if (!conv) return;
  if (state.openId !== id) {
    stopTyping();
    state.editing = null;
    state.confirmDelete = null;
    state.thread = null;
    if (mainMentions) mainMentions.reset();
  }
  // On a phone the conversation is a screen of its own: the browser's back returns to the list.
  if (isPhone() && !state.openId) window.history.pushState({ backstageConversation: id }, "");
  state.openId = id;
  const composer = $("composer");
  composer.value = drafts.get(id) || "";
  markRead(conv);
  // Offline, a conversation never joined is read over HTTP (one the client tracks is joined on reconnect).
  if (!conv.loaded && !isConnected() && !(client && client.conversations().includes(conv.id))) loadLatestOverHttp(conv);
  else if (conv.stale && isConnected()) refreshLatest(conv);
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

actions.startEdit = (convId, seq, scope = "main") => {
  const conv = state.convs.get(convId);
  const msg = conv && conv.messages.get(seq);
  if (!msg) return;
  state.editing = { convId, seq, scope, draft: msg.body, error: null, focused: false, saving: false };
  state.confirmDelete = null;
  scheduleRender();
};

actions.cancelEdit = () => {
  const inThread = state.editing && state.editing.scope === "thread";
  state.editing = null;
  scheduleRender();
  $(inThread ? "thread-composer" : "composer").focus();
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

const reacting = new Set(); // "message id emoji" with a `react` awaiting its ack

/** Adds (on) or takes back a reaction; the ack's `reactions` (with our `me`) replace the message's. */
actions.react = async (convId, seq, emoji, on) => {
  const conv = state.convs.get(convId);
  const msg = conv && conv.messages.get(seq);
  if (!msg || !msg.id) return;
  const key = `${msg.id} ${emoji}`;
  if (reacting.has(key)) return; // a double click toggles once
  reacting.add(key);
  const res = await emitAck("react", { conversation_id: conv.id, message_id: msg.id, emoji, on });
  reacting.delete(key);
  const current = conv.messages.get(seq);
  if (res.ok) {
    if (current && !current.deleted && Array.isArray(res.reactions)) current.reactions = res.reactions;
    scheduleRender();
  } else {
    showNotice(`Could not ${on ? "add" : "remove"} the reaction: ${(res.error && res.error.message) || "error"}`, "error");
  }
};

/** A long-press on a reaction chip: a line under the chips says who reacted (until the next tap). */
function showWhoReacted(chip) {
  const el = chip.closest("[data-testid=message][data-seq]");
  const conv = openConv();
  const msg = el && conv && conv.messages.get(Number(el.dataset.seq));
  if (!msg) return;
  state.reactionWho = { convId: conv.id, seq: msg.seq, emoji: chip.dataset.emoji };
  loadWho(conv.id, msg, scheduleRender);
  scheduleRender();
}

actions.retrySend = (convId, cmid) => {
  const conv = state.convs.get(convId);
  const p = conv && conv.pending.get(cmid);
  if (p && !client.retrySend(cmid)) sendPending(conv, p); // same client_msg_id: stored once
};

actions.discardSend = (convId, cmid) => {
  const conv = state.convs.get(convId);
  if (client) client.cancelSend(cmid);
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
  // Through the client's subscribe(): it subscribes the channel again on every reconnect itself.
  setupCreatorEvents({
    subscribe: (channel) =>
      client
        ? client.subscribe(channel).then(
            (res) => res,
            (err) => ({ ok: false, error: { code: err.code, message: err.message } }),
          )
        : Promise.resolve({ ok: false, error: { code: "offline" } }),
  });
  setupMessageMenus($("message-list"), { onChipHold: showWhoReacted });
  mainMentions = attachCompletion($("composer"), { convId: () => state.openId });
  setupThreads({
    connected: isConnected,
    request: emitAck,
    store: storeThreadMessages,
    sendReply,
    onChipHold: showWhoReacted,
  });
  onMenuClose(disarm);
  setupPhotos({
    convId: () => {
      const conv = openConv();
      return conv && canPost(conv) && !(composerBlock(conv) || {}).disabled ? conv.id : null;
    },
    changed: () => scheduleRender(),
    notice: showNotice,
    unauthorized: () => handleUnauthorized(),
  });
  setupModeration({ request: emitAck, refresh: () => refreshConversations().catch(() => {}) });
  setupReports({ request: emitAck });
  setupSpaces({ request: emitAck, remove: removeConversation, refresh: () => refreshConversations().catch(() => {}) });
  setupBlocks({
    request: emitAck,
    // After an unblock: what arrived as placeholders is read again.
    reread: () => {
      for (const conv of state.convs.values()) {
        if (conv.loaded && [...conv.messages.values()].some((m) => m.hidden_reason === "blocked")) refreshLatest(conv);
      }
      refreshConversations().catch(() => {});
    },
  });
  document.addEventListener("pointerdown", (e) => {
    if (state.reactionWho && !e.target.closest(".reaction-who")) {
      state.reactionWho = null;
      scheduleRender();
    }
  });
  scheduleRender();

  const me = await loadMe();
  if (!me || authFailed) return;
  state.me = { id: String(me.user.id), name: me.user.name || String(me.user.id) };
  state.names.set(state.me.id, state.me.name);
  state.avatars.set(state.me.id, me.user.avatar_url || null);
  renderMe();
  setUnreadNotifications(me.unread_notifications);
  loadModeration();
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
