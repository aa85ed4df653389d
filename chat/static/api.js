// Sign-in token handling and the HTTP client API (SPEC §3).

const TOKEN_KEY = "backstage.token";

/**
 * `/?token=JWT` signs in: the token moves to sessionStorage and leaves the
 * address bar (and so the history and any copied link).
 */
export function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  if (!url.searchParams.has("token")) return;
  const token = url.searchParams.get("token");
  url.searchParams.delete("token");
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

function base64UrlDecode(part) {
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The JWT's payload (not verified: the server does that), or null. */
export function decodeJwtPayload(token) {
  const parts = String(token || "").split(".");
  if (parts.length !== 3) return null;
  try {
    const payload = JSON.parse(base64UrlDecode(parts[1]));
    return payload && typeof payload === "object" ? payload : null;
  } catch {
    return null;
  }
}

/** null when the token looks usable, else "missing" | "invalid" | "expired". */
export function tokenProblem(token) {
  if (!token) return "missing";
  const payload = decodeJwtPayload(token);
  if (!payload || typeof payload.exp !== "number") return "invalid";
  if (payload.exp * 1000 <= Date.now()) return "expired";
  return null;
}

/** Milliseconds until the token expires (Infinity when unknown). */
export function tokenMsLeft(token) {
  const payload = decodeJwtPayload(token);
  return payload && typeof payload.exp === "number" ? payload.exp * 1000 - Date.now() : Infinity;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

let unauthorizedHandler = () => {};

/** Called once for any 401 answer (expired or revoked credentials). */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${getToken() || ""}` };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached.");
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    if (res.status === 401) unauthorizedHandler();
    throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText);
  }
  return data;
}

export const getMe = () => api("GET", "/api/v1/me");
export const listConversations = () => api("GET", "/api/v1/conversations");
/** {moderator_of, timeouts, teams} (docs/api.md "Moderation"). */
export const getModeration = () => api("GET", "/api/v1/moderation");

export function listMessages(conversationId, { beforeSeq, afterSeq, limit, threadId, includeReplies } = {}) {
  const q = new URLSearchParams();
  if (threadId !== undefined && threadId !== null) q.set("thread_id", String(threadId));
  if (includeReplies !== undefined) q.set("include_replies", includeReplies ? "true" : "false");
  if (beforeSeq !== undefined) q.set("before_seq", String(beforeSeq));
  if (afterSeq !== undefined) q.set("after_seq", String(afterSeq));
  if (limit !== undefined) q.set("limit", String(limit));
  const qs = q.toString();
  return api("GET", `/api/v1/conversations/${encodeURIComponent(conversationId)}/messages${qs ? `?${qs}` : ""}`);
}

/** Members one can mention whose name, a word of it, or id starts with `q`: {members: [{id, name, avatar_url}]}. */
export function listMembers(conversationId, q, limit) {
  const qs = new URLSearchParams({ q: q || "", limit: String(limit || 10) });
  return api("GET", `/api/v1/conversations/${encodeURIComponent(conversationId)}/members?${qs}`);
}

/** Who reacted to a message: {reactions: [{emoji, count, me, users: [{id, name}]}]} (25 users per emoji). */
export function listReactions(conversationId, messageId) {
  return api("GET", `/api/v1/conversations/${encodeURIComponent(conversationId)}/messages/${encodeURIComponent(messageId)}/reactions`);
}

export function setMuted(conversationId, muted) {
  return api("PUT", `/api/v1/conversations/${encodeURIComponent(conversationId)}/settings`, { muted });
}

export function listNotifications({ before, limit } = {}) {
  const q = new URLSearchParams();
  if (before !== undefined) q.set("before", String(before));
  if (limit !== undefined) q.set("limit", String(limit));
  const qs = q.toString();
  return api("GET", `/api/v1/notifications${qs ? `?${qs}` : ""}`);
}

export function markNotificationsRead(idsOrAll) {
  return api("POST", "/api/v1/notifications/read", idsOrAll === "all" ? { all: true } : { ids: idsOrAll });
}

/** crypto.randomUUID where available (secure contexts), else a v4 UUID from getRandomValues. */
export function newClientMsgId() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
  const b = window.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
