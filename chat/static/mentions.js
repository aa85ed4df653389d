// Mentions (docs/api.md "Mentions"): completion of members' names after `@` in a composer (the
// main one and the thread panel's), the ids picked sent as `mentions`, mentions highlighted in
// messages (the reader's own marked), and the conversations' mention badges (`mention_count`).

import * as api from "./api.js";
import { h, linkify } from "./dom.js";
import { scheduleRender } from "./render.js";
import { state } from "./state.js";
import { fillAvatar } from "./ui.js";

const LIMIT = 8;
const MAX_QUERY = 64;
const DEBOUNCE_MS = 120;

/** The query being typed: an `@` not after a letter, digit or `_`, then up to the caret (one line). */
const QUERY_RE = /(^|[^\p{L}\p{N}_])@([^@\n]{0,64})$/u;

let listSeq = 0;

/** The user's mentions in a message: ids listed in its `mentions`. */
export function mentionsMe(msg) {
  return Boolean(state.me && msg && !msg.deleted && Array.isArray(msg.mentions) && msg.mentions.map(String).includes(state.me.id));
}

// ------------------------------------------------------------------ completion

/**
 * Adds `@` completion to a composer (a textarea). convId(): the conversation it writes in.
 * Returns {mentionsFor(body): the ids picked whose "@Name" is still in the body, reset()}.
 */
export function attachCompletion(textarea, { convId }) {
  const id = `mention-list-${++listSeq}`;
  const list = h("ul", { class: "mention-list", id, role: "listbox", "aria-label": "Members to mention", "data-testid": "mention-list", hidden: true });
  textarea.closest("form").before(list);
  textarea.setAttribute("aria-autocomplete", "list");
  textarea.setAttribute("aria-controls", id);
  const picked = new Map(); // user id -> the name inserted
  const cache = new Map(); // "conv\u0000q" -> members
  let open = null; // {start, query, members, active}
  let timer = null;
  let asked = 0;
  let quiet = false; // our own input event after a pick

  const close = () => {
    open = null;
    clearTimeout(timer);
    list.hidden = true;
    list.replaceChildren();
    textarea.removeAttribute("aria-activedescendant");
  };

  const paint = () => {
    if (!open || !open.members.length) {
      list.hidden = true;
      list.replaceChildren();
      textarea.removeAttribute("aria-activedescendant");
      return;
    }
    list.hidden = false;
    list.replaceChildren(
      ...open.members.map((m, i) => {
        const avatar = h("span", { class: "avatar avatar-xs", "aria-hidden": "true" });
        fillAvatar(avatar, { key: m.id, name: m.name || m.id, userId: m.id });
        const li = h(
          "li",
          {
            id: `${id}-${i}`,
            role: "option",
            class: i === open.active ? "mention-option active" : "mention-option",
            "aria-selected": String(i === open.active),
            "data-testid": "mention-option",
            "data-user-id": m.id,
          },
          avatar,
          h("span", { class: "mention-name" }, m.name || m.id),
          h("span", { class: "mention-id" }, `@${m.id}`),
        );
        li.addEventListener("pointerdown", (e) => e.preventDefault()); // the composer keeps the focus
        li.addEventListener("click", () => pick(i));
        return li;
      }),
    );
    textarea.setAttribute("aria-activedescendant", `${id}-${open.active}`);
    const active = list.children[open.active];
    if (active) active.scrollIntoView({ block: "nearest" });
  };

  const pick = (i) => {
    if (!open || !open.members[i]) return;
    const m = open.members[i];
    const name = m.name || m.id;
    const before = textarea.value.slice(0, open.start);
    const after = textarea.value.slice(textarea.selectionStart);
    const insert = `@${name} `;
    textarea.value = before + insert + after.replace(/^ /, "");
    const caret = before.length + insert.length;
    textarea.setSelectionRange(caret, caret);
    picked.set(m.id, name);
    if (m.name) state.names.set(m.id, m.name);
    if (m.avatar_url !== undefined) state.avatars.set(m.id, m.avatar_url);
    close();
    quiet = true;
    textarea.dispatchEvent(new Event("input", { bubbles: true })); // drafts, typing
    quiet = false;
    textarea.focus();
  };

  const lookup = () => {
    if (quiet) return;
    const conv = convId();
    const caret = textarea.selectionStart;
    if (!conv || caret !== textarea.selectionEnd) return close();
    const m = textarea.value.slice(0, caret).match(QUERY_RE);
    if (!m || m[2].length > MAX_QUERY || /\s\s|^\s/.test(m[2])) return close();
    const query = m[2];
    const start = caret - query.length - 1;
    const key = `${conv}\u0000${query.toLowerCase()}`;
    const show = (members) => {
      if (!members.length && !query.includes(" ")) {
        open = { start, query, members: [], active: 0 };
        paint();
        return;
      }
      if (!members.length) return close();
      const keep = open && open.query === query ? open.active : 0;
      open = { start, query, members, active: Math.min(keep, members.length - 1) };
      paint();
    };
    if (cache.has(key)) return show(cache.get(key));
    if (!open) open = { start, query, members: [], active: 0 };
    const ask = ++asked;
    clearTimeout(timer);
    timer = setTimeout(() => {
      api
        .listMembers(conv, query, LIMIT)
        .then((res) => {
          const members = ((res && res.members) || [])
            .filter((x) => x && x.id !== undefined && (!state.me || String(x.id) !== state.me.id))
            .map((x) => ({ id: String(x.id), name: x.name || "", avatar_url: x.avatar_url }));
          cache.set(key, members);
          if (ask === asked && document.activeElement === textarea) show(members);
        })
        .catch(() => {
          if (ask === asked) close();
        });
    }, DEBOUNCE_MS);
  };

  textarea.addEventListener("input", lookup);
  textarea.addEventListener("click", lookup);
  textarea.addEventListener("blur", () => setTimeout(() => {
    if (document.activeElement !== textarea) close();
  }, 150));
  // Capture: before the composer's own Enter (send) and Escape handlers.
  textarea.addEventListener(
    "keydown",
    (e) => {
      if (!open || !open.members.length || e.isComposing) return;
      const n = open.members.length;
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        open.active = (open.active + (e.key === "ArrowDown" ? 1 : n - 1)) % n;
        paint();
      } else if (e.key === "Enter" || e.key === "Tab") {
        pick(open.active);
      } else if (e.key === "Escape") {
        close();
      } else {
        return;
      }
      e.preventDefault();
      e.stopImmediatePropagation();
    },
    true,
  );

  return {
    mentionsFor(body) {
      const ids = [];
      for (const [uid, name] of picked) {
        if (body.toLowerCase().includes(`@${name.toLowerCase()}`)) ids.push(uid);
      }
      return ids.slice(0, 25);
    },
    reset() {
      picked.clear();
      close();
    },
  };
}

// ------------------------------------------------------------------ highlighting

const asking = new Set(); // user ids whose name was asked for (once per page)

/**
 * A mentioned member the page cannot name yet (rooms have no member list; they may never have
 * posted): their name comes from the members endpoint, once, and the message is drawn again.
 */
function learnName(convId, uid) {
  if (asking.has(uid) || convId === undefined || convId === null) return;
  asking.add(uid);
  api
    .listMembers(String(convId), uid, 25)
    .then((res) => {
      const m = ((res && res.members) || []).find((x) => x && String(x.id) === uid);
      if (!m || !m.name) return;
      state.names.set(uid, m.name);
      if (m.avatar_url !== undefined && !state.avatars.has(uid)) state.avatars.set(uid, m.avatar_url);
      scheduleRender();
    })
    .catch(() => {});
}

/**
 * A message's body with its mentions highlighted (the reader's own with `me`), links kept:
 * `@Name` or `@id` of each id in `mentions` (names as the page knows them).
 */
export function mentionBody(msg) {
  const body = msg.body || "";
  const ids = Array.isArray(msg.mentions) ? msg.mentions.map(String) : [];
  if (!ids.length || !body.includes("@")) return linkify(body);
  const lower = body.toLowerCase();
  const ranges = [];
  for (const uid of ids) {
    const names = [uid];
    const known = state.me && uid === state.me.id ? state.me.name : state.names.get(uid);
    if (known) names.push(known);
    else learnName(msg.conversation_id, uid);
    for (const name of names) {
      const needle = `@${name.toLowerCase()}`;
      for (let at = lower.indexOf(needle); at >= 0; at = lower.indexOf(needle, at + 1)) {
        const end = at + needle.length;
        const next = body.slice(end, end + 1);
        if (next && /[\p{L}\p{N}_]/u.test(next)) continue; // "@Annie" is not "@Ann"
        ranges.push({ start: at, end, uid });
      }
    }
  }
  ranges.sort((a, b) => a.start - b.start || b.end - a.end);
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const r of ranges) {
    if (r.start < last) continue; // overlapping: the longest at each position won
    if (r.start > last) frag.append(linkify(body.slice(last, r.start)));
    const me = Boolean(state.me && r.uid === state.me.id);
    frag.append(
      h("span", { class: me ? "mention me" : "mention", "data-testid": "mention", "data-user-id": r.uid, title: me ? "Mentions you" : null }, body.slice(r.start, r.end)),
    );
    last = r.end;
  }
  if (last < body.length) frag.append(linkify(body.slice(last)));
  return frag;
}
