// Photos (docs/api.md "Photos"): choosing them (the attach button, paste, drop), the client-side
// check (type and size), previews with upload progress and remove before sending, the upload
// (POST /api/v1/uploads through XMLHttpRequest, for its upload progress events), and showing a
// message's photos (thumbnails; a click opens the full size in a viewer).
// app.js asks `photosForSend` what to send and hands the ids to the client's `send`.

import * as api from "./api.js";
import { h } from "./dom.js";

export const MAX_PHOTOS = 4; // per message (the server's limit)
export const MAX_BYTES = 10 * 1024 * 1024; // MAX_UPLOAD_BYTES
export const TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif"];
const PREVIEW_PX = 160;

const $ = (id) => document.getElementById(id);

/** tray key (a conversation id; "{conversation id}|{root id}" for a thread) -> [{key, name, size, preview, status, progress, error, id, xhr}] */
const trays = new Map();
let hooks = { convId: () => null, changed: () => {}, notice: () => {}, unauthorized: () => {} };
let nextKey = 1;
/** The composers that take photos: {trayKey() (null: none now), tray element, composer, paintedSig}. */
const slots = [];

function trayOf(convId) {
  if (!trays.has(convId)) trays.set(convId, []);
  return trays.get(convId);
}

/**
 * Wires the attach button, the file input, paste into the composer and drop onto the open
 * conversation. convId(): the open conversation (null: none, or posting not allowed);
 * changed(): a status changed (the send button follows); notice(text, kind); unauthorized().
 */
export function setupPhotos(options) {
  hooks = { ...hooks, ...options };
  addPhotoSlot({
    button: $("attach-button"),
    input: $("photo-input"),
    composer: $("composer"),
    zone: $("conv-pane"),
    tray: $("photo-tray"),
    trayKey: () => hooks.convId(),
  });
}

/**
 * One more composer taking photos (the thread panel's): its attach button, file input,
 * composer (paste), drop zone and tray; trayKey(): whose tray it shows (null: none).
 */
export function addPhotoSlot({ button, input, composer, zone, tray, trayKey }) {
  const slot = { trayKey, tray, composer, paintedSig: null };
  slots.push(slot);
  button.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles([...input.files], slot);
    input.value = ""; // the same file can be chosen again
  });
  composer.addEventListener("paste", (e) => {
    const files = [...((e.clipboardData && e.clipboardData.files) || [])];
    if (!files.length) return;
    e.preventDefault();
    addFiles(files, slot);
  });
  const pane = zone;
  let depth = 0;
  const hasFiles = (e) => Boolean(e.dataTransfer && [...e.dataTransfer.types].includes("Files"));
  pane.addEventListener("dragenter", (e) => {
    if (!hasFiles(e) || !slot.trayKey()) return;
    depth += 1;
    pane.classList.add("dropping");
  });
  pane.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) pane.classList.remove("dropping");
  });
  pane.addEventListener("dragover", (e) => {
    if (hasFiles(e) && slot.trayKey()) e.preventDefault(); // allows the drop
  });
  pane.addEventListener("drop", (e) => {
    depth = 0;
    pane.classList.remove("dropping");
    if (!hasFiles(e)) return;
    e.preventDefault();
    addFiles([...e.dataTransfer.files], slot);
  });
}

/** Why a file cannot be sent (null: it can). */
export function checkFile(file) {
  if (!TYPES.includes(file.type)) return `“${file.name}” is not a photo: only JPEG, PNG, WebP or GIF images can be sent.`;
  if (file.size > MAX_BYTES) return `“${file.name}” is too large (${megabytes(file.size)}): photos can be at most 10 MB.`;
  return null;
}

function megabytes(n) {
  return `${(n / (1024 * 1024)).toFixed(1)} MB`;
}

function addFiles(files, slot) {
  const convId = slot.trayKey();
  if (!convId || !files.length) return;
  const tray = trayOf(convId);
  for (const file of files) {
    const problem = checkFile(file);
    if (problem) {
      hooks.notice(problem, "error");
      continue;
    }
    if (tray.length >= MAX_PHOTOS) {
      hooks.notice(`At most ${MAX_PHOTOS} photos per message.`, "error");
      break;
    }
    const item = { key: nextKey++, name: file.name, size: file.size, preview: null, status: "uploading", progress: 0, error: null, id: null, xhr: null };
    tray.push(item);
    makePreview(file).then((url) => {
      item.preview = url;
      paint();
    });
    upload(item, file);
  }
  paint();
  hooks.changed();
}

/** A small preview drawn on a canvas (a data: URL: the page's CSP allows no blob: images). */
async function makePreview(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, PREVIEW_PX / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    return canvas.toDataURL(file.type === "image/png" || file.type === "image/gif" ? "image/png" : "image/jpeg", 0.8);
  } catch {
    return null; // the server decides whether it is an image; the tile shows the file name
  }
}

function upload(item, file) {
  const xhr = new XMLHttpRequest();
  item.xhr = xhr;
  xhr.open("POST", "/api/v1/uploads");
  xhr.setRequestHeader("Authorization", `Bearer ${api.getToken() || ""}`);
  xhr.setRequestHeader("Accept", "application/json");
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable) return;
    item.progress = e.loaded / e.total;
    paintProgress(item);
  });
  const fail = (text) => {
    item.status = "error";
    item.error = text;
    item.xhr = null;
    paint();
    hooks.changed();
  };
  xhr.addEventListener("load", () => {
    let data = null;
    try {
      data = JSON.parse(xhr.responseText);
    } catch {
      data = null;
    }
    if (xhr.status === 201 && data && data.attachment && data.attachment.id !== undefined) {
      item.status = "done";
      item.progress = 1;
      item.id = String(data.attachment.id);
      item.xhr = null;
      paint();
      hooks.changed();
      return;
    }
    if (xhr.status === 401) hooks.unauthorized();
    const err = (data && data.error) || {};
    if (xhr.status === 413) fail("Too large: photos can be at most 10 MB.");
    else if (xhr.status === 429) fail("Too many uploads: wait a moment and try again.");
    else fail(err.message ? `Not uploaded: ${err.message}` : `Not uploaded (HTTP ${xhr.status}).`);
  });
  xhr.addEventListener("error", () => fail("Not uploaded: the server cannot be reached."));
  const form = new FormData();
  form.append("file", file, file.name);
  xhr.send(form);
}

function remove(convId, key, slot) {
  const tray = trayOf(convId);
  const i = tray.findIndex((it) => it.key === key);
  if (i < 0) return;
  const [item] = tray.splice(i, 1);
  if (item.xhr) item.xhr.abort(); // an upload already stored stays unused (never served)
  paint();
  hooks.changed();
  const next = slot.tray.querySelector(".tray-remove") || slot.composer;
  if (next) next.focus();
}

/**
 * What a send takes from the open conversation's tray: {busy} while an upload runs, {failed}
 * when one failed (remove it first), else {attachments: [{id, preview}]} (may be empty).
 */
export function photosForSend(convId) {
  const tray = trayOf(convId);
  if (tray.some((it) => it.status === "uploading")) return { busy: true, attachments: [] };
  if (tray.some((it) => it.status === "error")) return { failed: true, attachments: [] };
  return { attachments: tray.map((it) => ({ id: it.id, preview: it.preview })) };
}

/** Empties the tray once its photos went into a message. */
export function clearTray(convId) {
  trays.delete(convId);
  paint();
}

export function uploading(convId) {
  return Boolean(convId) && trayOf(convId).some((it) => it.status === "uploading");
}

export function hasPhotos(convId) {
  return Boolean(convId) && trayOf(convId).length > 0;
}

// ------------------------------------------------------------------ the tray

/** Draws the open conversation's tray (called by the page's render and on upload status changes). */
export function paint() {
  for (const slot of slots) paintSlot(slot);
}

function paintSlot(slot) {
  const convId = slot.trayKey();
  const el = slot.tray;
  const tray = convId ? trayOf(convId) : [];
  const sig = JSON.stringify([convId, tray.map((it) => [it.key, it.status, it.error, Boolean(it.preview)])]);
  if (sig === slot.paintedSig) return;
  slot.paintedSig = sig;
  el.hidden = tray.length === 0;
  el.replaceChildren(
    ...tray.map((item) => {
      const percent = Math.round(item.progress * 100);
      const label = item.status === "uploading" ? `Uploading ${percent}%` : item.status === "done" ? "Ready" : item.error;
      return h(
        "div",
        { class: `tray-item ${item.status}`, "data-testid": "photo-preview", "data-status": item.status, "data-key": String(item.key) },
        item.preview
          ? h("img", { class: "tray-thumb", src: item.preview, alt: `Preview of ${item.name}` })
          : h("span", { class: "tray-thumb tray-name" }, item.name),
        item.status === "uploading"
          ? h("progress", { class: "tray-progress", max: "100", value: String(percent), "aria-label": `Uploading ${item.name}`, "data-testid": "photo-progress" })
          : null,
        h("span", { class: item.status === "error" ? "tray-status msg-error" : "tray-status", role: item.status === "error" ? "alert" : null }, label),
        h("button", {
          type: "button",
          class: "icon-button tray-remove",
          "aria-label": `Remove ${item.name}`,
          "data-testid": "photo-remove",
          onclick: () => remove(convId, item.key, slot),
        }, "✕"),
      );
    }),
  );
}

function paintProgress(item) {
  const tile = slots.map((s) => s.tray.querySelector(`[data-key="${item.key}"]`)).find(Boolean);
  if (!tile) return;
  const percent = Math.round(item.progress * 100);
  const bar = tile.querySelector("progress");
  if (bar) bar.value = percent;
  const status = tile.querySelector(".tray-status");
  if (status && item.status === "uploading") status.textContent = `Uploading ${percent}%`;
}

// ------------------------------------------------------------------ photos in messages

/** "Photo" / "2 photos": what a list preview says of a message with photos and no text. */
export function photosLabel(msg) {
  const n = Array.isArray(msg.attachments) ? msg.attachments.length : 0;
  if (!n) return "";
  return n === 1 ? "📷 Photo" : `📷 ${n} photos`;
}

/** The photos of a message (null when it has none): thumbnails that open the full size. */
export function buildPhotos(msg, senderName) {
  const list = Array.isArray(msg.attachments) ? msg.attachments.filter((a) => a && (a.thumb_url || a.url || a.preview)) : [];
  if (!list.length || msg.deleted) return null;
  const tiles = list.map((a, i) => {
    const thumb = a.thumb_url || a.preview || a.url;
    const full = a.url && isOwnUrl(a.url) ? a.url : null;
    const alt = `Photo ${list.length > 1 ? `${i + 1} of ${list.length} ` : ""}from ${senderName}`;
    const img = h("img", {
      class: "msg-photo-img",
      src: isOwnUrl(thumb) || thumb.startsWith("data:image/") ? thumb : "",
      alt,
      width: a.width ? String(a.width) : null,
      height: a.height ? String(a.height) : null,
      loading: "lazy",
      decoding: "async",
    });
    img.addEventListener("error", () => {
      img.replaceWith(h("span", { class: "msg-photo-missing" }, "Photo unavailable (reload to see it again)"));
    });
    if (!full) return h("span", { class: "msg-photo pending-photo", "data-testid": "message-photo" }, img);
    return h(
      "button",
      { type: "button", class: "msg-photo", "data-testid": "message-photo", "aria-label": `Open ${alt.charAt(0).toLowerCase()}${alt.slice(1)}`, onclick: (e) => {
        e.stopPropagation();
        openViewer(full, alt);
      } },
      img,
    );
  });
  return h("div", { class: `msg-photos n${Math.min(list.length, 4)}` }, tiles);
}

/** Only the server's own (relative, signed) URLs are loaded. */
function isOwnUrl(url) {
  try {
    return new URL(url, window.location.origin).origin === window.location.origin && !String(url).startsWith("data:");
  } catch {
    return false;
  }
}

/** The full-size photo in a modal viewer (Escape, the close button or a click outside closes it). */
export function openViewer(url, alt) {
  const close = h("button", { type: "button", class: "icon-button viewer-close", "aria-label": "Close photo" }, "✕");
  const dialog = h(
    "dialog",
    { class: "photo-viewer", "data-testid": "photo-viewer", "aria-label": alt },
    h("img", { class: "viewer-img", src: url, alt }),
    h("div", { class: "viewer-bar" },
      h("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "link-button" }, "Open original"),
      close),
  );
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) dialog.close();
  });
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  close.focus();
}
