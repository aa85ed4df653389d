// Backstage JavaScript client: one ES module, no build step, for browsers and Node.js.
//
// It sits on the official socket.io-client, which the caller passes in (`io`), so the same
// file works with the page's vendored ESM build and with `import { io } from "socket.io-client"`
// in Node. It does what every client of Backstage otherwise rebuilds by hand: connect and
// authenticate, refresh the token before `exp` (and reconnect after `token_expired`), keep the
// joined conversations joined across reconnects, recover missed messages with `since_seq`
// (after a reconnect, a `resync`, or a live gap), deliver messages once each in `seq` order,
// and keep sends pending while disconnected, retried with their `client_msg_id` (the server
// stores a retry once). docs/js-client.md describes the API.

/** Error codes of the server (docs/api.md) and of this client. */
export const ErrorCode = Object.freeze({
  INVALID: "invalid",
  UNAUTHORIZED: "unauthorized",
  FORBIDDEN: "forbidden",
  NOT_FOUND: "not_found",
  CONFLICT: "conflict",
  TOO_LARGE: "too_large",
  RATE_LIMITED: "rate_limited",
  UNAVAILABLE: "unavailable",
  TOO_MANY_CONNECTIONS: "too_many_connections",
  // client-side
  OFFLINE: "offline", // not connected when the request was made
  DISCONNECTED: "disconnected", // the connection was lost before the answer came
  TIMEOUT: "timeout", // no answer within ackTimeoutMs
  BAD_ANSWER: "bad_answer", // the server answered something that is not an answer object
  CANCELLED: "cancelled", // cancelSend() or leave()
  CLOSED: "closed", // close() was called
});

/** The codes after which the same request may succeed later (nothing was decided). */
const TRANSIENT = new Set(["unavailable", "rate_limited", "timeout", "offline", "disconnected"]);
/** Codes after which a conversation cannot be joined: it is no longer tracked. */
const JOIN_FATAL = new Set(["forbidden", "not_found", "invalid"]);

/** Every failure of this client: `code` is one of ErrorCode (or a newer server code). */
export class BackstageError extends Error {
  constructor(code, message, details) {
    super(message || code);
    this.name = "BackstageError";
    this.code = code;
    /** the server's error object or the connect_error's data, when there was one */
    this.details = details ?? null;
  }

  /** True when retrying the same request later may succeed. */
  get transient() {
    return TRANSIENT.has(this.code);
  }
}

// ------------------------------------------------------------------ helpers

/** A v4 UUID: crypto.randomUUID where available (secure contexts, Node), else getRandomValues. */
export function newClientMsgId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = c.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The JWT's claims (not verified: the server does that), or null. */
export function decodeToken(token) {
  const parts = String(token || "").split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (ch) => ch.charCodeAt(0))));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** Milliseconds until the token's `exp` (Infinity when it has none that can be read). */
export function tokenMsLeft(token, now = Date.now()) {
  const claims = decodeToken(token);
  return claims && typeof claims.exp === "number" ? claims.exp * 1000 - now : Infinity;
}

const MAX_TIMER_MS = 2_147_000_000; // setTimeout's limit (~24.8 days)

/** A tiny event emitter: on / off / once; a throwing handler neither stops the others nor the client. */
class Emitter {
  constructor() {
    this._handlers = new Map();
  }

  on(event, handler) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(handler);
    return this;
  }

  off(event, handler) {
    const set = this._handlers.get(event);
    if (set) set.delete(handler);
    return this;
  }

  once(event, handler) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      handler(...args);
    };
    return this.on(event, wrapper);
  }

  _emit(event, ...args) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(...args);
      } catch (err) {
        setTimeout(() => {
          throw err; // reported as an uncaught error, after the client's own work is done
        }, 0);
      }
    }
  }
}

// ------------------------------------------------------------------ the client

/**
 * new BackstageClient({url, io, token?, getToken?, ...options})
 *
 * - `io`: socket.io-client's `io` function (required).
 * - `token`: a client JWT; `getToken`: `async () => jwt`, called for a new one before `exp`,
 *   after `token_expired`, and when a reconnect finds the token expired. One of them is needed.
 * - `socketOptions`: extra socket.io-client options (default: websocket only, 0.5–5 s back-off).
 * - `ackTimeoutMs` (10 s), `refreshBeforeMs` (60 s: refresh that long before `exp`, or halfway
 *   for shorter tokens), `retryDelayMs` / `maxRetryDelayMs` (1 s / 30 s back-off of sends and
 *   joins after a transient error), `maxSendAttempts` (10), `gapWaitMs` (500 ms: how long a live
 *   gap may stay open, waiting for the missing message, before `join {since_seq}` fills it),
 *   `autoRefresh` (true: with getToken, the token is refreshed before `exp` while connected).
 */
export class BackstageClient extends Emitter {
  constructor(options = {}) {
    super();
    const { url, io, token = null, getToken = null, socketOptions = {} } = options;
    if (typeof io !== "function") throw new TypeError("BackstageClient needs socket.io-client's io function (options.io)");
    if (!token && typeof getToken !== "function") throw new TypeError("BackstageClient needs a token or a getToken function");
    this.url = url;
    this._io = io;
    this._token = token;
    this._getToken = typeof getToken === "function" ? getToken : null;
    this._socketOptions = socketOptions;
    this._ackTimeoutMs = options.ackTimeoutMs ?? 10_000;
    this._refreshBeforeMs = options.refreshBeforeMs ?? 60_000;
    this._retryDelayMs = options.retryDelayMs ?? 1_000;
    this._maxRetryDelayMs = options.maxRetryDelayMs ?? 30_000;
    this._maxSendAttempts = options.maxSendAttempts ?? 10;
    this._gapWaitMs = options.gapWaitMs ?? 500;
    this._autoRefresh = options.autoRefresh ?? true;

    this._socket = null;
    this._state = "idle";
    this._closed = false;
    this._everConnected = false;
    this._tokenExpired = false; // the server said token_expired: its disconnect follows
    this._authRetried = false; // one new token per refused connect
    this._connectWaiters = [];
    this._refreshTimer = null;
    this._convs = new Map(); // conversation id -> tracked conversation (see _track)
    this._pending = new Map(); // client_msg_id -> pending send
    this._channels = new Set(); // subscribed channels, subscribed again after a reconnect
    this._replyCounts = new Map(); // thread root id -> highest thread.reply_count seen in message_updated
    this._sendOrder = 0;
  }

  // ------------------------------------------------------------ properties

  /** "idle" | "connecting" | "connected" | "reconnecting" | "disconnected" */
  get state() {
    return this._state;
  }

  get connected() {
    return Boolean(this._socket && this._socket.connected);
  }

  /** The token in use (the newest one once refreshed). */
  get token() {
    return this._token;
  }

  /** The signed-in user's id (the token's `sub`), or null. */
  get userId() {
    const claims = decodeToken(this._token);
    return claims && typeof claims.sub === "string" ? claims.sub : null;
  }

  /** The underlying socket.io-client Socket (null before connect()); for advanced use. */
  get socket() {
    return this._socket;
  }

  /** The highest seq up to which every message of a joined conversation was delivered (null: unknown). */
  lastSeq(conversationId) {
    const conv = this._convs.get(String(conversationId));
    return conv ? conv.highSeq : null;
  }

  /** Ids of the conversations this client keeps joined. */
  conversations() {
    return [...this._convs.keys()];
  }

  /** The sends not yet confirmed (optionally of one conversation), oldest first. */
  pendingSends(conversationId) {
    const id = conversationId === undefined ? null : String(conversationId);
    return [...this._pending.values()]
      .filter((p) => id === null || p.conversationId === id)
      .sort((a, b) => a.order - b.order)
      .map(publicSend);
  }

  // ------------------------------------------------------------ connection

  /**
   * Opens the connection. Resolves once connected; rejects with a BackstageError when the
   * server refuses it (`unauthorized`, `too_many_connections`) or close() is called first.
   * Network failures do not reject: socket.io-client keeps trying (state "reconnecting").
   */
  connect() {
    if (this.connected) return Promise.resolve();
    this._closed = false;
    const waiter = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this._socket) {
      this._socket = this._io(this.url, {
        transports: ["websocket"],
        reconnectionDelay: 500,
        reconnectionDelayMax: 5_000,
        ...this._socketOptions,
        autoConnect: false,
        auth: (cb) => this._auth(cb),
      });
      this._wire(this._socket);
    }
    this._setState(this._everConnected ? "reconnecting" : "connecting");
    if (!this._socket.active) this._socket.connect();
    return waiter;
  }

  /** Closes the connection for good: pending sends and joins are rejected with `closed`. */
  close() {
    this._closed = true;
    clearTimeout(this._refreshTimer);
    if (this._socket) this._socket.disconnect();
    const err = new BackstageError("closed", "the client was closed");
    for (const conv of this._convs.values()) this._untrack(conv, err);
    for (const p of [...this._pending.values()]) this._settleSend(p, null, err);
    this._channels.clear();
    this._rejectConnect(err);
    this._setState("disconnected", { reason: "closed" });
  }

  /** Reconnects at once (e.g. on the browser's `online` event) instead of after the back-off delay. */
  reconnectNow() {
    if (this._closed || !this._socket || this.connected) return;
    this._socket.disconnect();
    this._setState(this._everConnected ? "reconnecting" : "connecting");
    this._socket.connect();
  }

  _wire(socket) {
    socket.on("connect", () => this._onConnect());
    socket.on("disconnect", (reason) => this._onDisconnect(reason));
    socket.on("connect_error", (err) => this._onConnectError(err));
    socket.io.on("reconnect_attempt", () => {
      if (!this._closed && !this.connected) this._setState(this._everConnected ? "reconnecting" : "connecting");
    });
    socket.on("message", (msg) => this._onMessage(msg));
    socket.on("message_updated", (msg) => this._onMessageUpdated(msg));
    for (const name of ["typing", "read", "presence", "reaction", "notification", "event", "moderation", "slow_mode", "pins",
      "message_hidden", "report_opened", "report_resolved", "user_blocked"]) {
      socket.on(name, (payload) => this._emit(name, payload));
    }
    // chat spaces (docs/api.md): a room changed; a room was deleted (access_revoked follows)
    for (const name of ["conversation_updated", "conversation_deleted"]) {
      socket.on(name, (payload) => this._emit(name, payload));
    }
    socket.on("access_revoked", (ev) => {
      const conv = ev && this._convs.get(String(ev.conversation_id));
      if (conv) this._untrack(conv, new BackstageError("forbidden", "access revoked"));
      this._emit("access_revoked", ev);
    });
    socket.on("resync", (ev) => this._onResync(ev));
    socket.on("token_expired", (ev) => {
      this._tokenExpired = true;
      this._emit("token_expired", ev);
    });
  }

  /** socket.io-client asks for the auth payload at every (re)connect: a fresh token when due. */
  _auth(cb) {
    const expired = tokenMsLeft(this._token) <= 1_000; // (or about to be)
    if (!this._getToken || (this._token && !expired && !this._tokenExpired)) {
      cb({ token: this._token });
      return;
    }
    this._fetchToken().then(
      () => cb({ token: this._token }),
      (err) => {
        this._emit("error", asError(err, "unauthorized"));
        cb({ token: this._token });
      },
    );
  }

  async _fetchToken() {
    const token = await this._getToken();
    if (typeof token !== "string" || !token) throw new BackstageError("unauthorized", "getToken() returned no token");
    this._token = token;
    this._tokenExpired = false;
    return token;
  }

  _onConnect() {
    const reconnect = this._everConnected;
    this._everConnected = true;
    this._authRetried = false;
    this._tokenExpired = false;
    this._setState("connected", { reconnect });
    this._scheduleRefresh();
    for (const w of this._connectWaiters.splice(0)) w.resolve();
    for (const channel of this._channels) {
      this.request("subscribe", { channel }).then(
        () => this._emit("subscribed", { channel, resubscribed: true }),
        (err) => this._emit("error", err),
      );
    }
    for (const conv of this._convs.values()) this._sync(conv, reconnect ? "reconnect" : "connect");
    this._flushSends();
  }

  _onDisconnect(reason) {
    clearTimeout(this._refreshTimer);
    for (const conv of this._convs.values()) {
      conv.joined = false;
      clearTimeout(conv.gapTimer);
      conv.gapTimer = null;
      clearTimeout(conv.retryTimer);
      conv.retryTimer = null;
    }
    for (const p of this._pending.values()) {
      clearTimeout(p.timer);
      p.timer = null;
      if (p.status === "sending" || p.status === "retrying") this._setSendStatus(p, "queued", p.error);
    }
    if (this._closed) return;
    if (reason === "io server disconnect") {
      // A namespace disconnect: socket.io-client does not reconnect by itself.
      if (this._tokenExpired && !this._getToken) {
        this._setState("disconnected", { reason: "token_expired" });
        return;
      }
      this._setState("reconnecting", { reason });
      setTimeout(() => {
        if (!this._closed && this._socket && !this._socket.active) this._socket.connect();
      }, this._tokenExpired ? 0 : this._retryDelayMs);
      return;
    }
    if (reason === "io client disconnect") return; // reconnectNow() or close()
    this._setState("reconnecting", { reason });
  }

  _onConnectError(err) {
    if (this._closed) return;
    const data = err && err.data && typeof err.data === "object" ? err.data : null;
    const error = new BackstageError((data && data.code) || (this._socket.active ? "unavailable" : "unauthorized"),
      (data && data.message) || (err && err.message) || "cannot connect", data);
    if (this._socket.active) {
      // A network failure: socket.io-client tries again after its back-off.
      this._emit("connect_error", error);
      this._setState(this._everConnected ? "reconnecting" : "connecting", { error });
      return;
    }
    // Refused by the server. A new token may cure `unauthorized`: one try.
    if (error.code === "unauthorized" && this._getToken && !this._authRetried) {
      this._authRetried = true;
      this._tokenExpired = true; // makes _auth fetch a new token
      this._socket.connect();
      return;
    }
    this._emit("connect_error", error);
    this._emit("error", error);
    this._rejectConnect(error);
    this._setState("disconnected", { reason: "refused", error });
  }

  _rejectConnect(error) {
    for (const w of this._connectWaiters.splice(0)) w.reject(error);
  }

  _setState(state, extra = {}) {
    if (state === this._state && !extra.error) return;
    const previous = this._state;
    this._state = state;
    this._emit("state", { state, previous, ...extra });
  }

  // ------------------------------------------------------------ tokens

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._autoRefresh || !this._getToken || !this.connected) return;
    const left = tokenMsLeft(this._token);
    if (!Number.isFinite(left)) return;
    const delay = Math.max(0, left - this._refreshBeforeMs, left / 2);
    this._refreshTimer = setTimeout(() => {
      this.refreshToken().catch((err) => {
        this._emit("error", err);
        // Try again while the token lasts; after it, token_expired leads to a reconnect.
        if (this.connected && tokenMsLeft(this._token) > 2_000) {
          this._refreshTimer = setTimeout(() => this._scheduleRefresh(), Math.min(this._retryDelayMs * 5, tokenMsLeft(this._token) / 2));
        }
      });
    }, Math.min(delay, MAX_TIMER_MS));
  }

  /**
   * Replaces the token: `token`, or a new one from getToken(). While connected it is sent with
   * `refresh_token` (the socket then lives until the new `exp`) and the answer is returned
   * (`{expires_at}`); otherwise it is kept for the next connect and null is returned.
   */
  async refreshToken(token) {
    let fresh = token;
    if (fresh === undefined) {
      if (!this._getToken) throw new BackstageError("invalid", "refreshToken() needs a token or options.getToken");
      fresh = await this._getToken();
    }
    if (typeof fresh !== "string" || !fresh) throw new BackstageError("unauthorized", "no token to refresh with");
    if (!this.connected) {
      this._token = fresh;
      return null;
    }
    const res = await this.request("refresh_token", { token: fresh });
    this._token = fresh;
    this._emit("token_refreshed", { expiresAt: res.expires_at });
    this._scheduleRefresh();
    return res;
  }

  // ------------------------------------------------------------ requests

  /**
   * Emits `event` with an ack. Resolves the `{ok: true, ...}` answer; rejects a BackstageError
   * with the server's code, or `offline` / `disconnected` / `timeout` / `bad_answer`.
   */
  request(event, payload, { timeoutMs } = {}) {
    return new Promise((resolve, reject) => {
      const socket = this._socket;
      if (!socket || !socket.connected) {
        reject(new BackstageError("offline", "not connected"));
        return;
      }
      socket.timeout(timeoutMs ?? this._ackTimeoutMs).emit(event, payload, (err, res) => {
        if (err) {
          if (/disconnected/.test(err.message || "")) reject(new BackstageError("disconnected", "the connection was lost before the answer"));
          else reject(new BackstageError("timeout", "no answer from the server"));
        } else if (!res || typeof res !== "object") {
          reject(new BackstageError("bad_answer", "unexpected answer from the server"));
        } else if (res.ok === false) {
          const e = res.error && typeof res.error === "object" ? res.error : {};
          reject(new BackstageError(String(e.code || "error"), e.message, e));
        } else {
          resolve(res);
        }
      });
    });
  }

  history(conversationId, { beforeSeq, afterSeq, limit, threadId, includeReplies } = {}) {
    const payload = { conversation_id: String(conversationId) };
    if (beforeSeq !== undefined && beforeSeq !== null) payload.before_seq = beforeSeq;
    if (afterSeq !== undefined && afterSeq !== null) payload.after_seq = afterSeq;
    if (limit !== undefined) payload.limit = limit;
    if (threadId !== undefined && threadId !== null) payload.thread_id = String(threadId);
    if (includeReplies !== undefined) payload.include_replies = includeReplies;
    return this.request("history", payload);
  }

  editMessage(messageId, body) {
    return this.request("edit", { message_id: String(messageId), body }).then((res) => res.message);
  }

  deleteMessage(messageId) {
    return this.request("delete", { message_id: String(messageId) }).then((res) => res.message);
  }

  /** Reports a room message (reason: spam, harassment, hate, sexual, violence, other); a repeat counts nothing. */
  report(messageId, reason, note) {
    const payload = { message_id: String(messageId), reason };
    if (note !== undefined && note !== null) payload.note = note;
    return this.request("report", payload);
  }

  /** Blocks (on) or unblocks another user: their messages arrive as placeholders (`hidden: true`). */
  blockUser(userId, on = true) {
    return this.request("block_user", { user_id: String(userId), on: Boolean(on) });
  }

  markRead(conversationId, seq) {
    return this.request("read", { conversation_id: String(conversationId), seq });
  }

  typing(conversationId, typing) {
    return this.request("typing", { conversation_id: String(conversationId), typing: Boolean(typing) });
  }

  /** Accepts a room's guidelines at `version` (its conversation's guidelines_version), which
   * sends there need first; resolves {conversation_id, guidelines_version}. */
  acceptGuidelines(conversationId, version) {
    return this.request("accept_guidelines", { conversation_id: String(conversationId), version });
  }

  /** Subscribes to a channel; kept across reconnects until unsubscribe(). */
  async subscribe(channel) {
    const res = await this.request("subscribe", { channel });
    this._channels.add(channel);
    this._emit("subscribed", { channel, resubscribed: false });
    return res;
  }

  async unsubscribe(channel) {
    this._channels.delete(channel);
    return this.connected ? this.request("unsubscribe", { channel }) : {};
  }

  // ------------------------------------------------------------ conversations

  /**
   * Joins a conversation and keeps it joined: after every reconnect (and `resync`, and a live
   * gap) the client joins again with `since_seq` and delivers what was missed as `message`
   * events, in seq order, each once. Resolves the first join answer (`{conversation, messages,
   * has_more, online, ...}`); every later message comes as a `message` event. With `sinceSeq`,
   * the answer holds the messages after it and, when it `has_more`, the rest follow as events.
   * Called while disconnected, it joins once connected. Rejects on `forbidden` / `not_found` /
   * `invalid` (the conversation is not tracked then), `closed` or `cancelled` (leave()).
   */
  join(conversationId, { sinceSeq } = {}) {
    const id = String(conversationId);
    const existing = this._convs.get(id);
    if (existing) {
      if (existing.highSeq !== null) return Promise.resolve(existing.lastAnswer);
      return new Promise((resolve, reject) => existing.waiters.push({ resolve, reject }));
    }
    const conv = {
      id,
      sinceSeq: sinceSeq ?? null,
      highSeq: null, // null until the first answer: live messages wait in `buffer` until then
      buffer: new Map(),
      joined: false,
      syncing: false,
      again: false,
      failures: 0,
      gapTimer: null,
      retryTimer: null,
      lastAnswer: null,
      waiters: [],
    };
    this._convs.set(id, conv);
    const promise = new Promise((resolve, reject) => conv.waiters.push({ resolve, reject }));
    if (this.connected) this._sync(conv, "join");
    return promise;
  }

  /** Stops tracking a conversation and leaves it on the server. */
  async leave(conversationId) {
    const conv = this._convs.get(String(conversationId));
    if (conv) this._untrack(conv, new BackstageError("cancelled", "left the conversation"));
    if (!this.connected) return {};
    return this.request("leave", { conversation_id: String(conversationId) });
  }

  _untrack(conv, error) {
    if (this._convs.get(conv.id) === conv) this._convs.delete(conv.id);
    clearTimeout(conv.gapTimer);
    clearTimeout(conv.retryTimer);
    conv.buffer.clear();
    for (const w of conv.waiters.splice(0)) w.reject(error);
  }

  /** Joins (again) with since_seq until caught up; one run per conversation at a time. */
  async _sync(conv, reason) {
    if (conv.syncing) {
      conv.again = true;
      return;
    }
    conv.syncing = true;
    clearTimeout(conv.retryTimer);
    conv.retryTimer = null;
    try {
      for (let round = 0; round < 10_000; round++) {
        conv.again = false;
        if (!this.connected || this._convs.get(conv.id) !== conv) return;
        const first = conv.highSeq === null;
        const since = first ? conv.sinceSeq : conv.highSeq;
        const payload = { conversation_id: conv.id };
        if (since !== null) payload.since_seq = since;
        let answer;
        try {
          answer = await this.request("join", payload);
        } catch (err) {
          this._joinFailed(conv, err, reason);
          return;
        }
        if (this._convs.get(conv.id) !== conv) return;
        conv.joined = true;
        conv.failures = 0;
        conv.lastAnswer = answer;
        const messages = (Array.isArray(answer.messages) ? answer.messages : [])
          .filter(isMessage)
          .sort((a, b) => a.seq - b.seq);
        const before = conv.highSeq;
        if (first) {
          // The answer's messages are the caller's: only what comes after them is emitted.
          const top = messages.length ? messages[messages.length - 1].seq : 0;
          conv.highSeq = Math.max(since ?? 0, top);
          for (const msg of messages) this._confirmOwn(msg);
        } else {
          for (const msg of messages) conv.buffer.set(msg.seq, msg);
        }
        this._drain(conv, { fillGaps: false });
        this._emit("joined", { conversationId: conv.id, answer, rejoin: !first, reason });
        if (first) for (const w of conv.waiters.splice(0)) w.resolve(answer);
        // since_seq answers at most 100 after it: `has_more` asks for the next page.
        const more = since !== null && Boolean(answer.has_more) && conv.highSeq > (before ?? since);
        if (!more && !conv.again && !conv.buffer.size) return;
        if (!more && !conv.again && conv.highSeq === before) return; // no progress: wait for the gap timer
      }
    } finally {
      conv.syncing = false;
      if (this._convs.get(conv.id) === conv && conv.buffer.size) this._scheduleGapFill(conv);
    }
  }

  _joinFailed(conv, err, reason) {
    if (this._convs.get(conv.id) !== conv) return;
    const error = asError(err, "error");
    if (JOIN_FATAL.has(error.code)) {
      this._untrack(conv, error);
      this._emit("join_error", { conversationId: conv.id, error, reason });
      return;
    }
    this._emit("join_error", { conversationId: conv.id, error, reason, retrying: true });
    if (error.code === "offline" || error.code === "disconnected") return; // the next connect joins again
    // timeout, unavailable, rate_limited, unauthorized (a token refresh may be under way): later.
    conv.failures += 1;
    const delay = Math.min(this._retryDelayMs * 2 ** (conv.failures - 1), this._maxRetryDelayMs);
    conv.retryTimer = setTimeout(() => {
      conv.retryTimer = null;
      if (this.connected) this._sync(conv, reason);
    }, delay);
  }

  _onMessage(msg) {
    if (!isMessage(msg)) return;
    const conv = this._convs.get(String(msg.conversation_id));
    if (!conv) {
      // A conversation this client did not join (another layer's join): passed on as it is.
      this._confirmOwn(msg);
      this._emit("message", msg);
      return;
    }
    if (conv.highSeq !== null && msg.seq <= conv.highSeq) {
      this._confirmOwn(msg); // a duplicate (live and recovered): already delivered
      return;
    }
    conv.buffer.set(msg.seq, msg);
    this._drain(conv, { fillGaps: true });
  }

  /** Delivers the buffered messages that follow highSeq without a hole. */
  _drain(conv, { fillGaps }) {
    if (conv.highSeq === null) return; // the first join answer is not in yet
    for (const seq of [...conv.buffer.keys()]) {
      if (seq <= conv.highSeq) {
        this._confirmOwn(conv.buffer.get(seq));
        conv.buffer.delete(seq);
      }
    }
    while (conv.buffer.has(conv.highSeq + 1)) {
      const msg = conv.buffer.get(conv.highSeq + 1);
      conv.buffer.delete(msg.seq);
      conv.highSeq = msg.seq;
      this._confirmOwn(msg);
      this._emit("message", msg);
    }
    if (!conv.buffer.size) {
      clearTimeout(conv.gapTimer);
      conv.gapTimer = null;
    } else if (fillGaps) {
      this._scheduleGapFill(conv);
    }
  }

  _scheduleGapFill(conv) {
    if (conv.gapTimer || !this.connected) return;
    conv.gapTimer = setTimeout(() => {
      conv.gapTimer = null;
      if (conv.buffer.size && this._convs.get(conv.id) === conv) this._sync(conv, "gap");
    }, this._gapWaitMs);
  }

  /**
   * A thread root's summary only grows (`thread.reply_count`); updates from different server
   * processes may cross, so one with fewer replies than already seen for that root is stale and
   * dropped. A root's update is also emitted as `thread`.
   */
  _onMessageUpdated(msg) {
    const thread = msg && msg.thread;
    if (thread && typeof thread.reply_count === "number") {
      const seen = this._replyCounts.get(msg.id) ?? 0;
      if (thread.reply_count < seen) return;
      this._replyCounts.delete(msg.id); // (re-inserted: the oldest entries go first)
      this._replyCounts.set(msg.id, thread.reply_count);
      if (this._replyCounts.size > 10_000) this._replyCounts.delete(this._replyCounts.keys().next().value);
    }
    this._emit("message_updated", msg);
    this._emit(msg && msg.deleted ? "delete" : "edit", msg);
    if (thread) this._emit("thread", msg);
  }

  _onResync(ev) {
    const conv = ev && this._convs.get(String(ev.conversation_id));
    this._emit("resync", ev);
    if (!conv || conv.highSeq === null) return;
    const behind = typeof ev.last_seq !== "number" || conv.highSeq < ev.last_seq;
    if (behind) this._sync(conv, "resync");
  }

  // ------------------------------------------------------------ sending

  /**
   * Sends a message; resolves the stored message (the ack's, or the broadcast's when it comes
   * first). `clientMsgId` defaults to a new UUID; `threadId` makes it a reply to that root message. While disconnected the send waits (status
   * "queued") and goes out after the reconnect; a send whose answer was lost, `unavailable`
   * or `rate_limited` is retried with the same client_msg_id, which the server stores once.
   * Rejects with the server's error (`forbidden`, `invalid`, `conflict`, ...), after
   * maxSendAttempts transient failures, or `cancelled` / `closed`.
   * `send_status` events follow it: queued, sending, retrying, sent, failed, cancelled.
   * `mentions`: user ids the message mentions besides the body's @mentions (e.g. picked from a
   * completion list); the server keeps the members among them (the message's `mentions`).
   */
  send(conversationId, body, { clientMsgId, attachments, threadId, mentions } = {}) {
    const cmid = clientMsgId ?? newClientMsgId();
    const existing = this._pending.get(cmid);
    if (existing) {
      if (existing.status === "retrying" || existing.status === "queued") this.retrySend(cmid);
      return existing.promise;
    }
    const p = {
      conversationId: String(conversationId),
      body,
      attachments: Array.isArray(attachments) && attachments.length ? attachments.map(String) : null,
      clientMsgId: cmid,
      threadId: threadId === undefined || threadId === null ? null : String(threadId),
      mentions: Array.isArray(mentions) && mentions.length ? mentions.map(String) : null,
      status: "new",
      error: null,
      attempts: 0,
      order: this._sendOrder++,
      createdAt: Date.now(),
      timer: null,
    };
    p.promise = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    this._pending.set(cmid, p);
    this._attemptSend(p);
    return p.promise;
  }

  /** Sends a pending message again now (e.g. a "Retry" button); false when it is not pending. */
  retrySend(clientMsgId) {
    const p = this._pending.get(clientMsgId);
    if (!p) return false;
    clearTimeout(p.timer);
    p.timer = null;
    this._attemptSend(p);
    return true;
  }

  /** Gives up a pending send (its promise rejects with `cancelled`). It may still have been stored. */
  cancelSend(clientMsgId) {
    const p = this._pending.get(clientMsgId);
    if (!p) return false;
    this._settleSend(p, null, new BackstageError("cancelled", "the send was cancelled"));
    return true;
  }

  _attemptSend(p) {
    if (!this.connected) {
      this._setSendStatus(p, "queued", p.error);
      return;
    }
    p.attempts += 1;
    const attempt = p.attempts;
    this._setSendStatus(p, "sending", null);
    const payload = { conversation_id: p.conversationId, body: p.body, client_msg_id: p.clientMsgId };
    if (p.attachments) payload.attachments = p.attachments;
    if (p.threadId !== null) payload.thread_id = p.threadId;
    if (p.mentions) payload.mentions = p.mentions;
    this.request("send", payload).then(
      (res) => {
        if (this._pending.get(p.clientMsgId) !== p) return; // confirmed by the broadcast already
        const conv = this._convs.get(p.conversationId);
        if (res.message && conv && isMessage(res.message)) {
          // Into the ordered stream too (the broadcast is dropped as a duplicate, or this is).
          this._onMessage(res.message);
        }
        if (this._pending.get(p.clientMsgId) === p) this._settleSend(p, res.message ?? null, null);
      },
      (err) => {
        if (this._pending.get(p.clientMsgId) !== p || p.attempts !== attempt) return; // a newer attempt runs
        const error = asError(err, "error");
        if (error.code === "offline" || error.code === "disconnected") {
          this._setSendStatus(p, "queued", error); // sent again after the reconnect
        } else if (TRANSIENT.has(error.code) && p.attempts < this._maxSendAttempts) {
          this._setSendStatus(p, "retrying", error);
          // A server-given wait (`retry_after`, e.g. a room's slow mode) comes first.
          const after = error.details && typeof error.details.retry_after === "number" ? error.details.retry_after * 1000 : 0;
          const delay = Math.max(Math.min(this._retryDelayMs * 2 ** (p.attempts - 1), this._maxRetryDelayMs), after);
          p.timer = setTimeout(() => {
            p.timer = null;
            if (this._pending.get(p.clientMsgId) === p) this._attemptSend(p);
          }, delay);
        } else {
          this._settleSend(p, null, error);
        }
      },
    );
  }

  _flushSends() {
    const waiting = [...this._pending.values()].sort((a, b) => a.order - b.order);
    for (const p of waiting) {
      if (p.status === "queued" || p.status === "retrying") {
        clearTimeout(p.timer);
        p.timer = null;
        this._attemptSend(p);
      }
    }
  }

  /** A stored message of ours settles the send it answers (whichever copy arrives first). */
  _confirmOwn(msg) {
    if (!msg || !msg.client_msg_id || !this._pending.size) return;
    const p = this._pending.get(msg.client_msg_id);
    if (!p || p.conversationId !== String(msg.conversation_id)) return;
    const sender = msg.sender && msg.sender.id !== undefined ? String(msg.sender.id) : null;
    if (sender !== this.userId) return;
    this._settleSend(p, msg, null);
  }

  _settleSend(p, message, error) {
    if (this._pending.get(p.clientMsgId) !== p) return;
    this._pending.delete(p.clientMsgId);
    clearTimeout(p.timer);
    p.timer = null;
    if (error) {
      this._setSendStatus(p, error.code === "cancelled" || error.code === "closed" ? "cancelled" : "failed", error);
      p.reject(error);
    } else {
      p.message = message;
      this._setSendStatus(p, "sent", null);
      p.resolve(message);
    }
  }

  _setSendStatus(p, status, error) {
    p.status = status;
    p.error = error ?? null;
    this._emit("send_status", publicSend(p));
  }
}

function publicSend(p) {
  return {
    conversationId: p.conversationId,
    clientMsgId: p.clientMsgId,
    body: p.body,
    threadId: p.threadId,
    status: p.status,
    error: p.error,
    attempts: p.attempts,
    createdAt: p.createdAt,
    message: p.message ?? null,
  };
}

function isMessage(msg) {
  return Boolean(msg && typeof msg === "object" && typeof msg.seq === "number" && msg.conversation_id !== undefined);
}

function asError(err, fallbackCode) {
  if (err instanceof BackstageError) return err;
  return new BackstageError(fallbackCode, (err && err.message) || String(err));
}
