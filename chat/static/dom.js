// DOM helpers. Every user-supplied string goes through textContent or text
// nodes; nothing here ever assigns innerHTML.

/**
 * Builds an element. props: class, text, dataset, hidden, on<event>, or any
 * attribute. Children may be nodes, strings (made into text nodes) or null.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "hidden") el.hidden = Boolean(value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING_PUNCT_RE = /[.,;:!?'")\]}]+$/;

/** Returns the URL when it is a well-formed http(s) URL, else null. */
export function safeHttpUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/**
 * Text with http(s) URLs turned into links, as a DocumentFragment. Only the
 * http and https schemes are ever linked (no javascript:, data:, ...).
 */
export function linkify(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let candidate = match[0];
    // "(see https://x.y/z)." -> the link stops before ")." unless the URL opened a paren.
    const trail = candidate.match(TRAILING_PUNCT_RE);
    if (trail) {
      let cut = trail[0];
      if (cut.startsWith(")") && candidate.includes("(")) cut = cut.slice(1);
      candidate = candidate.slice(0, candidate.length - cut.length);
    }
    const href = safeHttpUrl(candidate);
    if (!href) continue;
    if (match.index > last) frag.append(document.createTextNode(text.slice(last, match.index)));
    const a = document.createElement("a");
    a.href = href;
    a.textContent = candidate;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    frag.append(a);
    last = match.index + candidate.length;
  }
  if (last < text.length) frag.append(document.createTextNode(text.slice(last)));
  return frag;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function parseDate(iso) {
  if (!iso) return null;
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "14:05" today, "Mar 3" on another day. */
export function shortTime(iso) {
  const d = parseDate(iso);
  if (!d) return "";
  const now = new Date();
  return d.toDateString() === now.toDateString() ? timeFmt.format(d) : dayFmt.format(d);
}

export function clockTime(iso) {
  const d = parseDate(iso);
  return d ? timeFmt.format(d) : "";
}

export function fullTime(iso) {
  const d = parseDate(iso);
  return d ? fullFmt.format(d) : "";
}

const longDayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const yearDayFmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "long", day: "numeric" });

/** "Today", "Yesterday", "Monday, March 3", or with the year when it is not this year. */
export function dayLabel(iso) {
  const d = parseDate(iso);
  if (!d) return "";
  const now = new Date();
  const yesterday = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1);
  if (d.toDateString() === now.toDateString()) return "Today";
  if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
  return d.getFullYear() === now.getFullYear() ? longDayFmt.format(d) : yearDayFmt.format(d);
}

/** A small, stable hue for a user or conversation id (avatar colour classes). */
export function hueClass(id) {
  let hash = 0;
  for (const ch of String(id)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hue-${hash % 8}`;
}
