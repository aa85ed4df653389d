// Helpers of the JavaScript client's tests (node --test tests/js/): a real Backstage server,
// tokens signed here with HMAC-SHA256, the server API over fetch, a TCP proxy that can cut the
// connection, and event recorders to wait on.
//
// The server: BACKSTAGE_TEST_URLS (comma-separated: processes of one cluster; tests/test_js_client.py
// passes the run's shared servers) with BACKSTAGE_TEST_JWT_SECRET and BACKSTAGE_TEST_API_KEY;
// when unset, `python run_server.py` is started here on a free port with a fresh SQLite file.

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { io } from "socket.io-client";

import { BackstageClient } from "../../chat/static/backstage-client.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const WAIT_MS = 15_000;

// ------------------------------------------------------------------ the server

export async function startServer() {
  if (process.env.BACKSTAGE_TEST_URLS) {
    return {
      urls: process.env.BACKSTAGE_TEST_URLS.split(","),
      secret: process.env.BACKSTAGE_TEST_JWT_SECRET,
      apiKey: process.env.BACKSTAGE_TEST_API_KEY,
      stop: async () => {},
    };
  }
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "backstage-js-"));
  const secret = randomBytes(24).toString("hex");
  const apiKey = randomBytes(12).toString("hex");
  const python = process.env.BACKSTAGE_PYTHON || path.join(ROOT, ".venv", "bin", "python");
  const env = { ...process.env, HOST: "127.0.0.1", PORT: String(port), DATABASE_URL: `sqlite+aiosqlite:///${dir}/backstage.db`,
    JWT_SECRET: secret, API_KEYS: apiKey, LOG_LEVEL: "WARNING" };
  delete env.REDIS_URL;
  const proc = spawn(python, [path.join(ROOT, "run_server.py")], { cwd: ROOT, env, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  proc.stderr.on("data", (d) => (log += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}:\n${log}`);
    try {
      if ((await fetch(`${url}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`server not ready in 30 s:\n${log}`);
    }
    await sleep(100);
  }
  return {
    urls: [url],
    secret,
    apiKey,
    stop: async () => {
      if (proc.exitCode === null) {
        const exited = new Promise((resolve) => proc.once("exit", resolve));
        proc.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ tokens and the server API

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 client JWT, like `python run_server.py token` (exp in whole seconds). */
export function signToken(secret, sub, { ttl = 3600, name } = {}) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + ttl };
  if (name) claims.name = name;
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

export function uid(name) {
  return `${name}_${randomBytes(3).toString("hex")}`;
}

export class Api {
  constructor(server, index = 0) {
    this.server = server;
    this.url = server.urls[index % server.urls.length];
  }

  async call(method, path, body, auth) {
    const res = await fetch(this.url + "/api/v1" + path, {
      method,
      headers: { Authorization: `Bearer ${auth}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await res.json().catch(() => null);
    return { status: res.status, data };
  }

  async admin(method, path, body) {
    const res = await this.call(method, "/server" + path, body, this.server.apiKey);
    if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(res.data)}`);
    return res.data;
  }

  /** Creates the user; returns a client token for them. */
  async user(id, name = id) {
    await this.admin("PUT", `/users/${id}`, { name });
    return signToken(this.server.secret, id, { name });
  }

  async membership(creator, patron, tierCents = 500, status = "active") {
    return this.admin("PUT", `/memberships/${creator}/${patron}`, { tier_cents: tierCents, status });
  }

  async room(creator, name = "Room") {
    const res = await this.admin("POST", "/rooms", { creator_id: creator, name, min_tier_cents: 0, post_policy: "everyone" });
    return String(res.conversation.id);
  }

  async publish(channel, event, data) {
    return this.admin("POST", "/publish", { channel, event, data });
  }

  async messages(token, conversationId, afterSeq = 0) {
    const all = [];
    for (let after = afterSeq; ; ) {
      const res = await this.call("GET", `/conversations/${conversationId}/messages?after_seq=${after}&limit=100`, undefined, token);
      if (res.status !== 200) throw new Error(`messages: ${res.status}`);
      all.push(...res.data.messages);
      if (!res.data.has_more || !res.data.messages.length) return all;
      after = res.data.messages[res.data.messages.length - 1].seq;
    }
  }

  /** A creator, a patron (active member) and a room of the creator; returns their tokens and the room id. */
  async roomWithTwo() {
    const creator = uid("cara");
    const patron = uid("pat");
    const creatorToken = await this.user(creator, "Cara");
    const patronToken = await this.user(patron, "Pat");
    await this.membership(creator, patron);
    const room = await this.room(creator, "Lounge");
    return { creator, patron, creatorToken, patronToken, room };
  }
}

// ------------------------------------------------------------------ clients

/** A BackstageClient that records every event it emits (see Recorder). */
export function makeClient(url, token, options = {}) {
  const client = new BackstageClient({
    url,
    io,
    token,
    socketOptions: { reconnectionDelay: 100, reconnectionDelayMax: 300 },
    ...options,
  });
  client.rec = new Recorder(client, [
    "state", "message", "message_updated", "edit", "delete", "thread", "typing", "read", "presence", "reaction", "notification", "event",
    "access_revoked", "resync", "joined", "subscribed", "join_error", "send_status", "token_refreshed", "token_expired", "error",
    "connect_error",
  ]);
  return client;
}

/** A plain socket.io-client socket (for the "other side" of a test), connected. */
export async function rawSocket(url, token) {
  const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false, forceNew: true });
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return socket;
}

export class Recorder {
  constructor(emitter, events) {
    this.events = new Map();
    this.waiters = [];
    for (const name of events) {
      this.events.set(name, []);
      emitter.on(name, (payload) => {
        this.events.get(name).push(payload);
        for (const w of [...this.waiters]) {
          if (w.name === name && w.pred(payload)) {
            this.waiters.splice(this.waiters.indexOf(w), 1);
            clearTimeout(w.timer);
            w.resolve(payload);
          }
        }
      });
    }
  }

  list(name) {
    return this.events.get(name);
  }

  /** Resolves the first recorded (or future) `name` event matching pred. */
  waitFor(name, pred = () => true, timeoutMs = WAIT_MS) {
    const found = this.events.get(name).find(pred);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = { name, pred, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`no ${name} event within ${timeoutMs} ms; got ${JSON.stringify(this.events.get(name)).slice(0, 2000)}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  /** Waits for a matching event that arrives after this call. */
  next(name, pred = () => true, timeoutMs = WAIT_MS) {
    const seen = this.events.get(name).length;
    return this.waitFor(name, (p) => this.events.get(name).indexOf(p) >= seen && pred(p), timeoutMs);
  }

  /** seqs of the message events of one conversation, in delivery order. */
  seqs(conversationId) {
    return this.list("message").filter((m) => m.conversation_id === conversationId).map((m) => m.seq);
  }
}

/**
 * Returns once `client` has received everything any server process emitted to it before the
 * call: each process publishes a marker to the user's own channel, which reaches the socket
 * after what that process emitted earlier (tests/support.py `barrier`, the same idea).
 */
export async function barrier(server, client, userId) {
  const tag = randomBytes(4).toString("hex");
  await Promise.all(server.urls.map(async (url, n) => {
    const got = client.rec.waitFor("event", (e) => e.event === "test-marker" && e.data.tag === tag && e.data.from === n);
    await new Api(server, n).publish(`user:${userId}`, "test-marker", { tag, from: n });
    await got;
  }));
}

export function range(from, to) {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

// ------------------------------------------------------------------ a TCP proxy that can cut

/** 127.0.0.1 proxy to a server URL: cut() drops every connection and refuses new ones until restore(). */
export class CutProxy {
  constructor(targetUrl) {
    this.target = new URL(targetUrl);
    this.down = false;
    this.deaf = false;
    this.pairs = new Set();
  }

  async start() {
    this.server = net.createServer((client) => {
      if (this.down) {
        client.destroy();
        return;
      }
      const upstream = net.connect(Number(this.target.port), this.target.hostname);
      const pair = { client, upstream };
      this.pairs.add(pair);
      client.on("data", (d) => upstream.write(d));
      upstream.on("data", (d) => {
        if (!this.deaf) client.write(d);
      });
      const close = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("close", close);
      upstream.on("close", close);
      client.on("error", close);
      upstream.on("error", close);
    });
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  /** From now on the server's bytes are dropped (the client's still reach the server). */
  deafen() {
    this.deaf = true;
  }

  cut() {
    this.down = true;
    this.deaf = false;
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  restore() {
    this.down = false;
  }

  async stop() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
