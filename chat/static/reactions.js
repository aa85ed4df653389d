// Reactions (docs/api.md "Reactions"): the chips under a message, the picker's emoji, and who
// reacted (GET .../reactions, fetched lazily on hover, focus or long-press, cached per message
// until its counts change). app.js sends `react` and applies acks and `reaction` events.

import * as api from "./api.js";
import { h } from "./dom.js";
import { state } from "./state.js";

/** The picker's fixed set: Unicode emoji, sent as they are (the server stores them fully qualified). */
export const PICKER = [
  { emoji: "👍", name: "thumbs up" },
  { emoji: "❤️", name: "heart" },
  { emoji: "😂", name: "laughing" },
  { emoji: "😮", name: "surprised" },
  { emoji: "😢", name: "sad" },
  { emoji: "🙏", name: "thank you" },
  { emoji: "🎉", name: "party" },
  { emoji: "🔥", name: "fire" },
];

/** The server's `:name:` reactions (other clients may send them), shown as their emoji. */
const SHORT_NAMES = {
  ":plus1:": ["👍", "plus one"],
  ":minus1:": ["👎", "minus one"],
  ":heart:": ["❤️", "heart"],
  ":laugh:": ["😂", "laugh"],
  ":wow:": ["😮", "wow"],
  ":sad:": ["😢", "sad"],
  ":angry:": ["😠", "angry"],
  ":tada:": ["🎉", "tada"],
  ":fire:": ["🔥", "fire"],
  ":clap:": ["👏", "clap"],
  ":eyes:": ["👀", "eyes"],
  ":pray:": ["🙏", "pray"],
  ":100:": ["💯", "hundred"],
  ":rocket:": ["🚀", "rocket"],
  ":star:": ["⭐", "star"],
  ":check:": ["✅", "check"],
};

const PICKER_NAMES = new Map(PICKER.map((p) => [p.emoji, p.name]));

/** [glyph, spoken name or null] of a reaction's emoji. */
export function describe(emoji) {
  if (SHORT_NAMES[emoji]) return SHORT_NAMES[emoji];
  return [emoji, PICKER_NAMES.get(emoji) || null];
}

/** A message's reactions as the page keeps them: [{emoji, count, me}] with count > 0. */
export function reactionsOf(msg) {
  return Array.isArray(msg.reactions) ? msg.reactions.filter((r) => r && typeof r.emoji === "string" && r.count > 0) : [];
}

/** Applies a `reaction` event: counts from its summary, `me` kept from our acks and reads. */
export function applyReactionEvent(msg, ev) {
  if (!Array.isArray(ev.reactions)) return false;
  const mine = new Set(reactionsOf(msg).filter((r) => r.me).map((r) => r.emoji));
  msg.reactions = ev.reactions
    .filter((r) => r && typeof r.emoji === "string" && typeof r.count === "number" && r.count > 0)
    .map((r) => ({ emoji: r.emoji, count: r.count, me: mine.has(r.emoji) }));
  return true;
}

// ------------------------------------------------------------------ who reacted

const who = new Map(); // message id -> {key, byEmoji: Map(emoji -> {count, users}) | null, loading}

function countsKey(msg) {
  return JSON.stringify(reactionsOf(msg).map((r) => [r.emoji, r.count]));
}

/** "Cara Creator, you and 2 others reacted with 👍" (from the cached users), or null. */
export function whoText(msg, emoji) {
  const entry = who.get(msg.id);
  if (!entry || !entry.byEmoji || entry.key !== countsKey(msg)) return null;
  const r = entry.byEmoji.get(emoji);
  if (!r) return null;
  const names = r.users.map((u) => (state.me && String(u.id) === state.me.id ? "you" : u.name || String(u.id)));
  const more = r.count - names.length;
  if (more > 0) names.push(`${more} ${more === 1 ? "other" : "others"}`);
  const list = names.length > 1 ? `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}` : names[0] || "";
  const text = `${list} reacted with ${describe(emoji)[0]}`;
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/**
 * Fetches who reacted to a message (members only; 25 users per emoji) unless the cache still
 * matches its counts; calls `done` once the names are known.
 */
export function loadWho(convId, msg, done) {
  const key = countsKey(msg);
  const entry = who.get(msg.id);
  if (entry && entry.key === key && (entry.byEmoji || entry.loading)) {
    if (entry.byEmoji) done();
    return;
  }
  const mine = { key, byEmoji: null, loading: true };
  who.set(msg.id, mine);
  api
    .listReactions(convId, msg.id)
    .then((res) => {
      if (who.get(msg.id) !== mine) return;
      mine.byEmoji = new Map();
      for (const r of (res && res.reactions) || []) {
        const users = Array.isArray(r.users) ? r.users : [];
        for (const u of users) if (u && u.id && u.name && !state.names.has(String(u.id))) state.names.set(String(u.id), u.name);
        mine.byEmoji.set(r.emoji, { count: r.count, users });
      }
      mine.loading = false;
      done();
    })
    .catch(() => {
      if (who.get(msg.id) === mine) who.delete(msg.id); // tried again on the next hover
    });
}

// ------------------------------------------------------------------ chips

/** The accessible name of a chip: "👍 thumbs up: 2 reactions, including yours". */
export function chipLabel(r) {
  const [glyph, name] = describe(r.emoji);
  const count = `${r.count} ${r.count === 1 ? "reaction" : "reactions"}`;
  return `${glyph}${name ? ` ${name}` : ""}: ${count}${r.me ? ", including yours" : ""}`;
}

/**
 * The row of chips under a message (null when it has none). `toggle(emoji, on)` reacts;
 * `whoOpen` is the emoji whose "who reacted" line a long-press opened, if any.
 */
export function buildReactionRow(convId, msg, toggle, whoOpen) {
  const list = reactionsOf(msg);
  if (!list.length || msg.deleted) return null;
  const refreshTitles = (row) => {
    for (const chip of row.querySelectorAll(".reaction-chip")) {
      const text = whoText(msg, chip.dataset.emoji);
      if (text) chip.title = text;
    }
  };
  const chips = list.map((r) => {
    const [glyph] = describe(r.emoji);
    const text = whoText(msg, r.emoji);
    return h(
      "button",
      {
        type: "button",
        class: r.me ? "reaction-chip me" : "reaction-chip",
        "data-testid": "reaction-chip",
        "data-emoji": r.emoji,
        "aria-pressed": String(Boolean(r.me)),
        "aria-label": chipLabel(r),
        title: text,
        onclick: (e) => {
          e.stopPropagation();
          toggle(r.emoji, !r.me);
        },
      },
      h("span", { class: "reaction-emoji", "aria-hidden": "true" }, glyph),
      h("span", { class: "reaction-count", "aria-hidden": "true" }, String(r.count)),
    );
  });
  const row = h("div", { class: "msg-reactions", role: "group", "aria-label": "Reactions" }, chips);
  const warm = () => loadWho(convId, msg, () => refreshTitles(row));
  row.addEventListener("pointerenter", warm);
  row.addEventListener("focusin", warm);
  if (whoOpen) {
    const text = whoText(msg, whoOpen) || "Loading who reacted…";
    row.append(h("div", { class: "reaction-who", role: "status", "data-testid": "reaction-who" }, text));
  }
  return row;
}
