// The page's state: what the server told us, kept in plain objects. Views
// read it; app.js changes it and then asks for a render.

export const state = {
  /** {id, name} from GET /api/v1/me */
  me: null,
  /** conversation id -> Conv (see makeConv) */
  convs: new Map(),
  /** the open conversation's id, or null */
  openId: null,
  /** user id -> display name, learned from /me, members and message senders */
  names: new Map(),
  /** user id -> avatar_url (from /me and direct conversations' members) */
  avatars: new Map(),
  /** "connecting" | "connected" | "offline" */
  connection: "connecting",
  /** message being edited: {convId, seq, draft, error} */
  editing: null,
  /** message whose delete awaits a second click: {convId, seq} */
  confirmDelete: null,
  /** creator ids whose rooms we moderate (GET /api/v1/moderation, `moderation` events) */
  moderatorOf: new Set(),
  /** the thread open in the panel (threads.js): {convId, rootId, lowSeq, hasMoreBefore, loaded, loading} */
  thread: null,
  /** reaction chip whose "who reacted" line a long-press opened: {convId, seq, emoji} */
  reactionWho: null,
  notifications: {
    unread: 0,
    items: [],
    loaded: false,
    loading: false,
    hasMore: false,
    open: false,
    /** ids marked seen by this opening of the panel (shown as new until it closes) */
    fresh: new Set(),
  },
};

/** One conversation as the page tracks it. */
export function makeConv(entry, order) {
  const conv = {
    id: String(entry.conversation.id),
    conversation: entry.conversation,
    /** server order of the last list refresh (tie-break for sorting) */
    order,
    lastMessage: entry.last_message || null,
    unread: entry.unread_count || 0,
    /** unread messages that mention us (the list's mention_count plus live ones) */
    mentionCount: entry.mention_count || 0,
    muted: Boolean(entry.muted),
    /** messages of others up to this seq are already counted in `unread` */
    countedSeq: entry.last_message ? entry.last_message.seq : 0,
    /** seq -> message object; the loaded window [lowSeq, ...] */
    messages: new Map(),
    /** true once a full page of the latest messages was loaded */
    loaded: false,
    lowSeq: null,
    /** every seq from lowSeq up to highSeq is loaded (recovery resumes after it) */
    highSeq: 0,
    hasMoreBefore: false,
    loadingOlder: false,
    syncing: false,
    joined: false,
    /** client_msg_id -> {cmid, body, status: "queued"|"sending"|"failed", error, autoRetry, attempt, createdAt} */
    pending: new Map(),
    /** user ids with a socket in the conversation */
    online: new Set(),
    /** user id -> expiry timer of their typing state */
    typers: new Map(),
    /** user id -> highest seq they have read (from live read events) */
    readers: new Map(),
    /** highest seq we reported with `read` */
    readSent: 0,
    /** slow mode of a room in seconds (join answer, `slow_mode` events); 0: off */
    slowMode: 0,
    /** pinned message ids, oldest pin first (join answer, `pins` events) */
    pinnedIds: [],
    /** message id -> the pinned messages of the join answer (they may be older than what is loaded) */
    pinnedMsgs: new Map(),
  };
  learnMembers(conv);
  return conv;
}

export function learnMembers(conv) {
  for (const m of memberList(conv.conversation)) {
    if (m.id && m.name && !state.names.has(m.id)) state.names.set(m.id, m.name);
    if (m.id && m.avatar_url !== undefined) state.avatars.set(m.id, m.avatar_url);
  }
}

/** members as [{id, name}] whatever form the server used (objects or ids). */
export function memberList(conversation) {
  const members = Array.isArray(conversation.members) ? conversation.members : [];
  return members
    .map((m) =>
      m && typeof m === "object"
        ? { id: String(m.id ?? ""), name: m.name ?? null, avatar_url: m.avatar_url }
        : { id: String(m), name: null, avatar_url: undefined },
    )
    .filter((m) => m.id);
}

/** The other member's id in a direct conversation (null if unknown). */
export function otherMemberId(conv) {
  const c = conv.conversation;
  if (c.kind !== "direct" || !state.me) return null;
  const other = memberList(c).find((m) => m.id !== state.me.id);
  if (other) return other.id;
  if (c.creator_id && c.creator_id !== state.me.id) return c.creator_id;
  return null;
}

export function nameOf(userId) {
  if (!userId) return "Someone";
  if (state.me && userId === state.me.id) return "You";
  return state.names.get(userId) || userId;
}

export function conversationName(conv) {
  const c = conv.conversation;
  if (c.kind === "direct") {
    const otherId = otherMemberId(conv);
    const member = memberList(c).find((m) => m.id === otherId);
    if (member && member.name) return member.name;
    if (otherId && state.names.has(otherId)) return state.names.get(otherId);
    return "Direct";
  }
  return c.name || "Room";
}

export function isCreatorOf(conv) {
  return Boolean(state.me && conv.conversation.creator_id === state.me.id);
}

/** Own messages, and any message of a room whose creator we are or whose creator we moderate. */
export function canDelete(conv, msg) {
  if (msg.deleted || !state.me) return false;
  if (msg.sender && msg.sender.id === state.me.id) return true;
  return conv.conversation.kind === "room" && (isCreatorOf(conv) || state.moderatorOf.has(String(conv.conversation.creator_id)));
}

export function canEdit(msg) {
  return Boolean(!msg.deleted && state.me && msg.sender && msg.sender.id === state.me.id);
}

export function canPost(conv) {
  const c = conv.conversation;
  return !(c.kind === "room" && c.post_policy === "creator" && !isCreatorOf(conv));
}

/** Highest seq of any loaded message (0 when none). */
export function maxSeq(conv) {
  let max = conv.lastMessage ? conv.lastMessage.seq : 0;
  for (const seq of conv.messages.keys()) if (seq > max) max = seq;
  return max;
}

/** Conversations by latest activity, newest first. */
export function sortedConvs() {
  const key = (c) => (c.lastMessage && c.lastMessage.created_at) || "";
  return [...state.convs.values()].sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    if (ka !== kb) return ka < kb ? 1 : -1;
    return a.order - b.order;
  });
}

export function openConv() {
  return state.openId ? state.convs.get(state.openId) || null : null;
}
