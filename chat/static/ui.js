// Page pieces that do not depend on how the connection works: the reconnect banner, avatars
// (picture over initials), the own name, and the message actions menu (hover or focus on a
// desktop, long-press on touch, keyboard). app.js wires them; render.js builds with them.

import { h, hueClass, safeHttpUrl } from "./dom.js";
import { scheduleRender } from "./render.js";
import { state } from "./state.js";

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ reconnect banner

/**
 * Shows the reconnect banner from the socket's and its manager's own events, and nothing
 * else: from a lost connection (or a first one that fails) until the next `connect`.
 * `retryNow` is what "Retry now" does (a connection attempt at once, not after the back-off).
 */
export function watchConnection(socket, retryNow) {
  let lost = false;
  let attempt = 0;
  const render = () => renderBanner(lost, attempt);
  socket.on("connect", () => {
    lost = false;
    attempt = 0;
    render();
  });
  socket.on("disconnect", () => {
    lost = true;
    render();
  });
  socket.on("connect_error", () => {
    if (!socket.active) return; // refused by the server: the sign-in screen takes over
    lost = true;
    render();
  });
  socket.io.on("reconnect_attempt", (n) => {
    attempt = n;
    render();
  });
  $("reconnect-retry").addEventListener("click", () => {
    retryNow();
    render();
  });
  window.addEventListener("online", render);
  window.addEventListener("offline", render);
}

function renderBanner(lost, attempt) {
  const banner = $("reconnect-banner");
  banner.hidden = !lost;
  document.body.classList.toggle("connection-lost", lost);
  if (!lost) return;
  const title = navigator.onLine ? "Connection to the server lost." : "You are offline.";
  const detail = attempt > 0 ? `Reconnecting… (attempt ${attempt})` : "Reconnecting…";
  setText($("reconnect-title"), title);
  setText($("reconnect-detail"), `${detail} Messages you write are sent once it is back.`);
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// ------------------------------------------------------------------ avatars, own name

const brokenAvatars = new Set(); // picture URLs that failed to load: initials from then on

/** "Maya Lin" -> "ML", "priya" -> "P" (first letters of the first and last word). */
export function initials(name) {
  const words = String(name || "").trim().split(/\s+/).filter(Boolean);
  if (!words.length) return "?";
  const first = Array.from(words[0])[0];
  const last = words.length > 1 ? Array.from(words[words.length - 1])[0] : "";
  return (first + last).toUpperCase();
}

/** The user's picture URL (`avatar_url`, http(s) only), or null for initials. */
export function avatarUrl(userId) {
  const raw = userId ? state.avatars.get(userId) : null;
  const url = raw ? safeHttpUrl(raw) : null;
  return url && !brokenAvatars.has(url) ? url : null;
}

/**
 * Fills an `.avatar` element: the initials (or `symbol`, e.g. "#" for rooms), with the
 * user's picture over them when there is one; a picture that fails to load leaves the
 * initials. `data-avatar` says which shows: "image", "loading" or "initials".
 */
export function fillAvatar(el, { key, name, userId = null, symbol = null }) {
  const url = symbol ? null : avatarUrl(userId);
  const sig = JSON.stringify([key, name, symbol, url]);
  if (el.dataset.sig === sig) return;
  el.dataset.sig = sig;
  el.classList.remove(...[...el.classList].filter((c) => c.startsWith("hue-")));
  el.classList.add("avatar", hueClass(key));
  const children = [h("span", { class: "avatar-initials" }, symbol || initials(name))];
  el.dataset.avatar = "initials";
  if (url) {
    el.dataset.avatar = "loading";
    const img = h("img", { class: "avatar-img", src: url, alt: "", decoding: "async", referrerpolicy: "no-referrer" });
    img.addEventListener("load", () => {
      el.dataset.avatar = "image";
    });
    img.addEventListener("error", () => {
      brokenAvatars.add(url);
      img.remove();
      el.dataset.avatar = "initials";
    });
    children.push(img);
  }
  el.replaceChildren(...children);
}

/** The signed-in user's avatar and name in the top bar (shown on phones too). */
export function renderMe() {
  if (!state.me) return;
  fillAvatar($("me-avatar"), { key: state.me.id, name: state.me.name, userId: state.me.id });
  setText($("me-name"), state.me.name);
  $("me").title = `Signed in as ${state.me.name}`;
}

// ------------------------------------------------------------------ message actions menu

const LONG_PRESS_MS = 450;
const PRESS_SLOP_PX = 10;

let menu = null; // {convId, seq, focus: action to focus after the next render, or null}
let returnFocus = null; // {convId, seq}: give the trigger focus back after the menu closed

export function menuOpenFor(convId, seq) {
  return Boolean(menu && menu.convId === convId && menu.seq === seq);
}

/** null (closed), "actions" (the menu) or "picker" (its "Add reaction" emoji). */
export function menuModeFor(convId, seq) {
  return menuOpenFor(convId, seq) ? menu.mode : null;
}

export function openMenu(convId, seq, focus = "first") {
  menu = { convId, seq, focus, mode: "actions" };
  returnFocus = null;
  scheduleRender();
}

/** Turns the open menu into the reaction picker, its first emoji focused. */
export function openPicker(convId, seq) {
  menu = { convId, seq, focus: "first", mode: "picker" };
  returnFocus = null;
  scheduleRender();
}

/** Turns the open menu into one of its submenus (e.g. a timeout's lengths), its first item focused. */
export function openSubmenu(convId, seq, name) {
  menu = { convId, seq, focus: "first", mode: name };
  returnFocus = null;
  scheduleRender();
}

const closeHooks = [];

/** fn() runs whenever a message menu closes (e.g. to disarm a two-step action). */
export function onMenuClose(fn) {
  closeHooks.push(fn);
}

export function closeMenu(giveFocusBack = false) {
  if (!menu) return;
  returnFocus = giveFocusBack ? { convId: menu.convId, seq: menu.seq } : null;
  menu = null;
  state.confirmDelete = null;
  for (const fn of closeHooks) fn();
  scheduleRender();
}

const DOTS = () => {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "20");
  svg.setAttribute("height", "20");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  for (const cx of [5, 12, 19]) {
    const c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    c.setAttribute("cx", String(cx));
    c.setAttribute("cy", "12");
    c.setAttribute("r", "2");
    c.setAttribute("fill", "currentColor");
    svg.append(c);
  }
  return svg;
};

/**
 * The "Message actions" button of one message and, while open, its menu. items:
 * [{action, label, danger?, keepOpen?, run}]; an item closes the menu unless keepOpen
 * (e.g. Delete, which asks for a second press first). picker (or null):
 * {choices: [{emoji, name, on}], choose(emoji, on)} for the "Add reaction" mode. submenus:
 * {name: {label, items}}, the modes an item opens with openSubmenu (e.g. a timeout's lengths).
 */
export function messageMenu(convId, seq, items, picker = null, submenus = {}) {
  const open = menuOpenFor(convId, seq);
  const trigger = h(
    "button",
    {
      type: "button",
      class: "msg-menu-button",
      "aria-label": "Message actions",
      "aria-haspopup": "menu",
      "aria-expanded": String(open),
      "data-action": "menu",
      onclick: (e) => {
        e.stopPropagation();
        if (menuOpenFor(convId, seq)) closeMenu(true);
        else openMenu(convId, seq, e.detail === 0 ? "first" : null); // keyboard: into the menu
      },
    },
    DOTS(),
  );
  const wrap = h("div", { class: open ? "msg-menu-wrap open" : "msg-menu-wrap" }, trigger);
  if (open && menu.mode === "picker" && picker) {
    wrap.append(reactionPicker(convId, seq, picker));
  } else if (open) {
    const sub = menu.mode !== "actions" && Object.hasOwn(submenus, menu.mode) ? submenus[menu.mode] : null;
    wrap.append(itemMenu(convId, seq, sub ? sub.items : items, sub ? sub.label : "Message actions", sub ? menu.mode : "actions"));
  } else if ((returnFocus && returnFocus.convId === convId && returnFocus.seq === seq) || triggerHadFocus(seq)) {
    returnFocus = null;
    queueMicrotask(() => {
      if (trigger.isConnected) trigger.focus();
    });
  }
  return wrap;
}

/** A menu of items (the actions, or a submenu's): the focus goes where the menu state says. */
function itemMenu(convId, seq, items, label, mode) {
  const buttons = items.map((it) =>
    h(
      "button",
      {
        type: "button",
        role: "menuitem",
        tabindex: "-1",
        class: it.danger ? "msg-menu-item danger" : "msg-menu-item",
        "data-action": it.action,
        onclick: (e) => {
          e.stopPropagation();
          if (it.keepOpen) menu = { convId, seq, focus: it.action, mode };
          it.run(); // before closing: closing disarms a pending delete
          if (!it.keepOpen) closeMenu(false);
        },
      },
      it.label,
    ),
  );
  const list = h("div", { class: "msg-menu", role: "menu", "aria-label": label, "data-menu": mode }, buttons);
  list.addEventListener("keydown", (e) => onMenuKey(e, buttons));
  const focus = menu.focus || focusedInOldMenu("action");
  menu.focus = null;
  if (focus) {
    queueMicrotask(() => {
      const target = buttons.find((b) => b.dataset.action === focus) || buttons[0];
      if (target && target.isConnected) target.focus();
    });
  }
  return list;
}

/** The emoji of "Add reaction": a menu of checkable items (checked: already ours). */
function reactionPicker(convId, seq, picker) {
  const buttons = picker.choices.map((c) =>
    h(
      "button",
      {
        type: "button",
        role: "menuitemcheckbox",
        tabindex: "-1",
        class: c.on ? "reaction-pick on" : "reaction-pick",
        "aria-checked": String(Boolean(c.on)),
        "aria-label": c.name,
        title: c.name,
        "data-emoji": c.emoji,
        onclick: (e) => {
          e.stopPropagation();
          picker.choose(c.emoji, !c.on);
          closeMenu(e.detail === 0); // by keyboard: the focus goes back to the button
        },
      },
      c.emoji,
    ),
  );
  const list = h("div", { class: "msg-menu reaction-picker", role: "menu", "aria-label": "Add reaction", "data-testid": "reaction-picker" }, buttons);
  list.addEventListener("keydown", (e) => onMenuKey(e, buttons));
  const focus = menu.focus;
  const kept = focus ? null : focusedInOldMenu("emoji");
  menu.focus = null;
  if (focus || kept) {
    queueMicrotask(() => {
      const target = (kept && buttons.find((b) => b.dataset.emoji === kept)) || buttons[0];
      if (target && target.isConnected) target.focus();
    });
  }
  return list;
}

/**
 * A re-render (a read receipt, a reaction, an edit arriving) replaces the open menu's buttons:
 * the one that had the keyboard focus (its data-action or data-emoji) gets it back, so arrow
 * keys keep working. null when the focus was not in a message menu.
 */
function triggerHadFocus(seq) {
  const el = document.activeElement;
  if (!el || !el.classList || !el.classList.contains("msg-menu-button")) return false;
  const msg = el.closest("[data-seq]");
  return Boolean(msg && Number(msg.dataset.seq) === seq);
}

function focusedInOldMenu(key) {
  const el = document.activeElement;
  if (!el || !el.closest || !el.closest(".msg-menu")) return null;
  return el.dataset[key] || null;
}

function onMenuKey(e, buttons) {
  const i = buttons.indexOf(document.activeElement);
  let next = null;
  if (e.key === "ArrowDown" || e.key === "ArrowRight") next = buttons[(i + 1) % buttons.length];
  else if (e.key === "ArrowUp" || e.key === "ArrowLeft") next = buttons[(i - 1 + buttons.length) % buttons.length];
  else if (e.key === "Home") next = buttons[0];
  else if (e.key === "End") next = buttons[buttons.length - 1];
  else if (e.key === "Escape") {
    e.preventDefault();
    e.stopPropagation();
    closeMenu(true);
    return;
  } else if (e.key === "Tab") {
    closeMenu(false);
    return;
  }
  if (next) {
    e.preventDefault();
    next.focus();
  }
}

/**
 * Long-press (touch) and the context menu (right click; Android's long-press) on a message
 * open its menu; a click or tap elsewhere closes it. Called once with the message list.
 * onChipHold(chip): a long-press on a reaction chip (it shows who reacted; no toggle).
 */
let documentWired = false;

/**
 * menuKey(): whose menus the list's messages open (the open conversation's id; the thread
 * panel passes its own key, see render.js menuKey).
 */
export function setupMessageMenus(list, { onChipHold = null, menuKey = () => state.openId } = {}) {
  let press = null;
  let swallowClick = false; // the click that may end a long-press must not close its menu
  const cancel = () => {
    if (press) clearTimeout(press.timer);
    press = null;
  };
  const openFrom = (target) => {
    const el = target.closest(".msg.has-menu[data-seq]");
    const key = menuKey();
    if (!el || !key || target.closest("a, button, textarea")) return false;
    openMenu(key, Number(el.dataset.seq), null); // by finger or mouse: no focus ring
    return true;
  };
  list.addEventListener("pointerdown", (e) => {
    cancel();
    swallowClick = false;
    if (e.pointerType !== "touch") return;
    const target = e.target;
    press = {
      x: e.clientX,
      y: e.clientY,
      timer: setTimeout(() => {
        press = null;
        const chip = target.closest(".reaction-chip");
        if (chip && onChipHold) {
          onChipHold(chip);
          swallowClick = true; // lifting the finger does not toggle the reaction
          return;
        }
        if (!openFrom(target)) return;
        swallowClick = true;
        if (navigator.vibrate) navigator.vibrate(10);
      }, LONG_PRESS_MS),
    };
  });
  list.addEventListener(
    "click",
    (e) => {
      if (!swallowClick) return;
      swallowClick = false;
      e.preventDefault();
      e.stopPropagation();
    },
    true,
  );
  list.addEventListener(
    "keydown",
    () => {
      swallowClick = false;
    },
    true,
  );
  list.addEventListener("pointermove", (e) => {
    if (press && Math.hypot(e.clientX - press.x, e.clientY - press.y) > PRESS_SLOP_PX) cancel();
  });
  list.addEventListener("pointerup", cancel);
  list.addEventListener("pointercancel", cancel);
  list.addEventListener("contextmenu", (e) => {
    if (e.target.closest(".reaction-chip") && e.pointerType === "touch") {
      e.preventDefault(); // Android's long-press: the chip's own hold shows who reacted
      return;
    }
    if (e.target.closest(".msg.has-menu") && openFrom(e.target)) {
      e.preventDefault();
      cancel();
    }
  });
  if (documentWired) return;
  documentWired = true;
  document.addEventListener("click", (e) => {
    // composedPath: the clicked element may have been re-rendered (detached) by now.
    if (menu && !e.composedPath().some((n) => n.classList && n.classList.contains("msg-menu-wrap"))) closeMenu(false);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && menu) closeMenu(true);
  });
}
