// The JavaScript client (chat/static/backstage-client.js) against a real Backstage server:
// node --test tests/js/   (tests/test_js_client.py runs it in `make test`).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import zlib from "node:zlib";

import { BackstageClient, BackstageError } from "../../chat/static/backstage-client.js";
import { Api, CutProxy, barrier, makeClient, range, rawSocket, signToken, startServer, uid } from "./support.mjs";

const T = { timeout: 20_000 }; // a broken client hangs a test: fail it instead
let server;
let api; // the first process
let other; // the last process (another one in a cluster: its events cross the relay)
const cleanups = [];

before(async () => {
  server = await startServer();
  api = new Api(server, 0);
  other = new Api(server, server.urls.length - 1);
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn();
  if (server) await server.stop();
});

function client(url, token, options) {
  const c = makeClient(url, token, options);
  cleanups.push(async () => c.close());
  return c;
}

async function proxyTo(url) {
  const proxy = await new CutProxy(url).start();
  cleanups.push(() => proxy.stop());
  return proxy;
}

async function socketTo(url, token) {
  const s = await rawSocket(url, token);
  cleanups.push(async () => s.close());
  return s;
}

/** `count` messages from several sockets (each under its 20-message burst), in the order stored. */
async function sendMany(url, tokens, room, count, prefix) {
  const sockets = await Promise.all(tokens.map((t) => socketTo(url, t)));
  const per = Math.ceil(count / sockets.length);
  await Promise.all(sockets.map(async (s, i) => {
    for (let n = i * per; n < Math.min(count, (i + 1) * per); n++) {
      const res = await s.emitWithAck("send", { conversation_id: room, body: `${prefix} ${n}`, client_msg_id: uid("bulk") });
      assert.equal(res.ok, true, JSON.stringify(res));
    }
  }));
  for (const s of sockets) s.close();
}

// The suites run side by side (each test has users and rooms of its own); the tests in a suite, one by one.
describe("BackstageClient", { concurrency: true }, () => {
  describe("connect, join, send", () => {
    test("join answers the latest messages; later ones arrive as events, each once, in order", T, async () => {
      const t = await api.roomWithTwo();
      const a = client(server.urls[0], t.creatorToken);
      const b = client(server.urls.at(-1), t.patronToken);
      assert.equal(a.state, "idle");
      await Promise.all([a.connect(), b.connect()]);
      assert.equal(a.state, "connected");
      assert.equal(a.userId, t.creator);
      assert.deepEqual(a.rec.list("state").map((s) => s.state), ["connecting", "connected"]);

      const first = await b.send(t.room, "before anyone joined");
      assert.equal(first.seq, 1);
      const joined = await a.join(t.room);
      assert.equal(joined.conversation.id, t.room);
      assert.deepEqual(joined.messages.map((m) => m.seq), [1]);
      assert.ok(joined.online.includes(t.creator));
      assert.equal(a.lastSeq(t.room), 1);
      await b.join(t.room);

      const sent = await a.send(t.room, "hello");
      assert.equal(sent.seq, 2);
      assert.equal(sent.body, "hello");
      assert.equal(sent.sender.id, t.creator);
      await b.send(t.room, "hi back");
      await b.rec.waitFor("message", (m) => m.seq === 3);
      await barrier(server, a, t.creator);
      // The joiner's own message (ack and broadcast) and the other's, once each; seq 1 was in the answer.
      assert.deepEqual(a.rec.seqs(t.room), [2, 3]);
      assert.deepEqual(b.rec.seqs(t.room), [2, 3]);
      assert.deepEqual(a.rec.list("send_status").map((s) => s.status), ["sending", "sent"]);
      assert.deepEqual(a.pendingSends(), []);
    });

    test("mentions: send() passes a mentions list; messages carry mentions", T, async () => {
      const t = await api.roomWithTwo();
      const a = client(server.urls[0], t.creatorToken);
      const b = client(server.urls.at(-1), t.patronToken);
      await Promise.all([a.connect(), b.connect()]);
      await a.join(t.room);
      await b.join(t.room);
      const byName = await b.send(t.room, "hi @cara");
      assert.deepEqual(byName.mentions, [t.creator]);
      const listed = await b.send(t.room, "look at this", { mentions: [t.creator, "nobody_here"] });
      assert.deepEqual(listed.mentions, [t.creator]);
      const live = await a.rec.waitFor("message", (m) => m.id === listed.id);
      assert.deepEqual(live.mentions, [t.creator]);
    });

    test("edit, delete, reactions, typing, read and presence come through as events", T, async () => {
      const t = await api.roomWithTwo();
      const a = client(server.urls[0], t.creatorToken);
      const b = client(server.urls.at(-1), t.patronToken);
      await Promise.all([a.connect(), b.connect()]);
      await a.join(t.room);
      await b.join(t.room);
      await a.rec.waitFor("presence", (p) => p.user_id === t.patron && p.online);
      const msg = await b.send(t.room, "typo");
      await b.editMessage(msg.id, "fixed");
      await a.rec.waitFor("edit", (m) => m.id === msg.id && m.body === "fixed");
      const reacted = await a.request("react", { message_id: msg.id, emoji: "👍", on: true });
      assert.deepEqual(reacted.reactions, [{ emoji: "👍", count: 1, me: true }]);
      await b.rec.waitFor("reaction", (e) => e.message_id === msg.id && e.user_id === t.creator && e.count === 1);
      await b.deleteMessage(msg.id);
      await a.rec.waitFor("delete", (m) => m.id === msg.id && m.deleted);
      await b.typing(t.room, true);
      await a.rec.waitFor("typing", (e) => e.user_id === t.patron && e.typing);
      const read = await a.markRead(t.room, msg.seq);
      assert.equal(read.unread_count, 0);
      await b.rec.waitFor("read", (e) => e.user_id === t.creator && e.seq === msg.seq);
      assert.equal(a.rec.list("message_updated").length, 2);
    });

    test("threads: a reply with threadId, the root's thread event (stale ones dropped), a thread's pages", T, async () => {
      const t = await api.roomWithTwo();
      const a = client(server.urls[0], t.creatorToken);
      const b = client(server.urls.at(-1), t.patronToken);
      await Promise.all([a.connect(), b.connect()]);
      await a.join(t.room);
      await b.join(t.room);
      const root = await a.send(t.room, "root");
      assert.equal(root.thread_id, null);
      const reply = await b.send(t.room, "in the thread", { threadId: root.id });
      assert.equal(reply.thread_id, root.id);
      assert.equal(reply.seq, root.seq + 1); // one seq for the conversation, replies included
      assert.equal(b.rec.list("send_status").at(-1).threadId, root.id);
      await a.rec.waitFor("message", (m) => m.id === reply.id && m.thread_id === root.id);
      const upd = await a.rec.waitFor("thread", (m) => m.id === root.id);
      assert.deepEqual(upd.thread, { reply_count: 1, last_reply_at: reply.created_at, participants: [t.patron] });
      // an update that crossed a newer one (fewer replies) is dropped, whatever the event
      const seen = a.rec.list("message_updated").length;
      a.socket.listeners("message_updated").forEach((fn) => fn({ ...upd, thread: { ...upd.thread, reply_count: 0 } }));
      assert.equal(a.rec.list("message_updated").length, seen);
      assert.equal(a.rec.list("thread").length, 1);

      const page = await a.history(t.room, { threadId: root.id });
      assert.deepEqual(page.messages.map((m) => m.body), ["root", "in the thread"]);
      assert.equal(page.messages[0].thread.reply_count, 1);
      const main = await a.history(t.room, { includeReplies: false });
      assert.deepEqual(main.messages.map((m) => m.body), ["root"]);
      const after = await a.history(t.room, { afterSeq: root.seq, limit: 1 }); // forward paging
      assert.deepEqual(after.messages.map((m) => m.body), ["in the thread"]);
      assert.equal(after.has_more, false);
      const first = await a.history(t.room, { afterSeq: 0, limit: 1 });
      assert.deepEqual([first.messages.map((m) => m.body), first.has_more], [["root"], true]);
      await assert.rejects(a.send(t.room, "nested", { threadId: reply.id }), (e) => e.code === "invalid");
    });

    test("a subscribed channel's events arrive, also after a reconnect", T, async () => {
      const t = await api.roomWithTwo();
      const proxy = await proxyTo(server.urls[0]);
      const b = client(proxy.url, t.patronToken);
      await b.connect();
      await b.subscribe(`creator:${t.creator}`);
      await api.publish(`creator:${t.creator}`, "live", { n: 1 });
      await b.rec.waitFor("event", (e) => e.event === "live" && e.data.n === 1);
      proxy.cut();
      await b.rec.waitFor("state", (s) => s.state === "reconnecting");
      proxy.restore();
      await b.rec.next("state", (s) => s.state === "connected" && s.reconnect);
      await b.rec.waitFor("subscribed", (e) => e.channel === `creator:${t.creator}` && e.resubscribed);
      await api.publish(`creator:${t.creator}`, "live", { n: 2 });
      await b.rec.waitFor("event", (e) => e.event === "live" && e.data.n === 2);
    });
  });

  describe("photos and slow mode", () => {
    test("send names uploads (attachments); a slow-mode refusal is retried after its retry_after", T, async () => {
      const t = await api.roomWithTwo();
      const b = client(server.urls.at(-1), t.patronToken);
      await b.connect();
      await b.join(t.room);
      const form = new FormData();
      form.append("file", new Blob([onePixelPng()], { type: "image/png" }), "dot.png");
      const up = await fetch(`${server.urls[0]}/api/v1/uploads`, { method: "POST", headers: { Authorization: `Bearer ${t.patronToken}` }, body: form });
      assert.equal(up.status, 201);
      const { attachment } = await up.json();
      const photo = await b.send(t.room, "", { attachments: [attachment.id] });
      assert.deepEqual(photo.attachments.map((a) => a.id), [attachment.id]);
      assert.equal(photo.body, "");

      await api.admin("PUT", `/rooms/${t.room}/slow-mode`, { seconds: 2 });
      await b.send(t.room, "first");
      const started = Date.now();
      const second = b.send(t.room, "second");
      const refused = await b.rec.waitFor("send_status", (s) => s.body === "second" && s.status === "retrying");
      assert.equal(refused.error.code, "rate_limited");
      assert.ok(refused.error.details.retry_after >= 1, JSON.stringify(refused.error.details));
      assert.equal((await second).body, "second");
      // waited out the server's retry_after rather than the 1-s back-off alone
      assert.ok(Date.now() - started >= refused.error.details.retry_after * 1000 - 100, Date.now() - started);
      assert.equal(b.rec.list("send_status").filter((s) => s.body === "second" && s.status === "sending").length, 2);
    });
  });

  describe("recovery", () => {
    test("messages sent while disconnected are recovered in order, once, over several pages; a queued send goes out once", T, async () => {
      const t = await api.roomWithTwo();
      const room2 = await api.room(t.creator, "Second");
      const proxy = await proxyTo(server.urls[0]);
      const a = client(proxy.url, t.patronToken);
      await a.connect();
      await a.join(t.room);
      await a.join(room2);
      await other.call("POST", `/conversations/${t.room}/messages`, { body: "live", client_msg_id: uid("m") }, t.creatorToken);
      await a.rec.waitFor("message", (m) => m.seq === 1);

      proxy.cut();
      await a.rec.waitFor("state", (s) => s.state === "reconnecting");
      assert.equal(a.connected, false);
      // 105 messages: more than one `join {since_seq}` page (100).
      const creator2 = signToken(server.secret, t.creator);
      await sendMany(other.url, [t.creatorToken, creator2, t.creatorToken, creator2, t.creatorToken, creator2], t.room, 105, "missed");
      // (in the other room: nothing live follows the missed ones, so only paging can fetch them all)
      const offline = a.send(room2, "written offline");
      const queued = a.pendingSends(room2);
      assert.equal(queued.length, 1);
      assert.equal(queued[0].status, "queued");
      assert.equal(queued[0].attempts, 0);

      proxy.restore();
      const stored = await offline;
      assert.equal(stored.body, "written offline");
      assert.equal(stored.seq, 1);
      await a.rec.waitFor("message", (m) => m.conversation_id === t.room && m.seq === 106);
      await barrier(server, a, t.patron);
      assert.deepEqual(a.rec.seqs(t.room), range(1, 106));
      assert.deepEqual(a.rec.list("message").filter((m) => m.conversation_id === t.room && m.seq > 1)
        .map((m) => m.body).sort(), range(0, 104).map((n) => `missed ${n}`).sort());
      assert.deepEqual(a.rec.seqs(room2), [1]);
      assert.deepEqual(a.rec.list("state").map((s) => s.state).slice(-2), ["reconnecting", "connected"]);
      assert.ok(a.rec.list("joined").some((j) => j.conversationId === t.room && j.rejoin && j.reason === "reconnect"));
      assert.equal(a.rec.list("send_status").filter((s) => s.status === "sending").length, 1);
      const sent = await api.messages(t.creatorToken, room2);
      assert.deepEqual(sent.map((m) => m.client_msg_id), [stored.client_msg_id]);
      assert.equal((await api.messages(t.creatorToken, t.room)).length, 106);

      // Live delivery resumes.
      await other.call("POST", `/conversations/${t.room}/messages`, { body: "after", client_msg_id: uid("m") }, t.creatorToken);
      await a.rec.waitFor("message", (m) => m.conversation_id === t.room && m.seq === 107);
    });

    test("a send whose ack was lost is retried with its client_msg_id after the reconnect and stored once", T, async () => {
      const t = await api.roomWithTwo();
      const proxy = await proxyTo(server.urls[0]);
      const a = client(proxy.url, t.patronToken);
      const b = client(server.urls.at(-1), t.creatorToken);
      await Promise.all([a.connect(), b.connect()]);
      await a.join(t.room);
      await b.join(t.room);

      proxy.deafen(); // the server gets the send, its answer (and the broadcast) never come back
      const sending = a.send(t.room, "did it arrive?");
      const stored = await b.rec.waitFor("message", (m) => m.body === "did it arrive?");
      assert.equal(a.pendingSends()[0].status, "sending");
      proxy.cut();
      await a.rec.waitFor("state", (s) => s.state === "reconnecting");
      assert.equal(a.pendingSends()[0].status, "queued");
      proxy.restore();

      const msg = await sending;
      assert.equal(msg.id, stored.id);
      assert.equal(msg.client_msg_id, stored.client_msg_id);
      // The join after the reconnect may bring the message before the retry's answer: a socket's
      // events are handled in order, so once this answer is in, the retried send was handled too.
      await a.history(t.room);
      await barrier(server, a, t.patron);
      await barrier(server, b, t.creator);
      assert.deepEqual(a.rec.seqs(t.room), [1]);
      assert.deepEqual(b.rec.seqs(t.room), [1]); // the retry broadcast nothing new
      assert.equal(a.rec.list("send_status").filter((s) => s.status === "sending").length, 2);
      const all = await api.messages(t.creatorToken, t.room);
      assert.deepEqual(all.map((m) => m.body), ["did it arrive?"]);
    });

    test("a live gap is filled with join since_seq; duplicates are dropped", T, async () => {
      const t = await api.roomWithTwo();
      const a = client(server.urls[0], t.patronToken, { gapWaitMs: 50 });
      const b = client(server.urls.at(-1), t.creatorToken);
      await Promise.all([a.connect(), b.connect()]);
      await a.join(t.room);
      await b.send(t.room, "one");
      await a.rec.waitFor("message", (m) => m.seq === 1);

      // The server stops sending this room to A's socket, behind the client's back ...
      assert.equal((await a.socket.emitWithAck("leave", { conversation_id: t.room })).ok, true);
      await b.send(t.room, "two");
      await b.send(t.room, "three");
      // ... and starts again: the next live message leaves a gap (2, 3) that the client fills.
      assert.equal((await a.socket.emitWithAck("join", { conversation_id: t.room })).ok, true);
      await b.send(t.room, "four");
      await a.rec.waitFor("message", (m) => m.seq === 4);
      assert.ok(a.rec.list("joined").some((j) => j.reason === "gap"));

      // A duplicate of a delivered message (live and recovered copies) is not delivered again.
      const dup = a.rec.list("message").find((m) => m.seq === 3);
      for (const listener of a.socket.listeners("message")) listener({ ...dup });
      await barrier(server, a, t.patron);
      assert.deepEqual(a.rec.seqs(t.room), [1, 2, 3, 4]);
      assert.deepEqual(a.rec.list("message").map((m) => m.body), ["one", "two", "three", "four"]);
    });

    test("resync: a client behind last_seq joins again with since_seq", T, async () => {
      const t = await api.roomWithTwo();
      const a = client(server.urls[0], t.patronToken);
      const b = client(server.urls.at(-1), t.creatorToken);
      await Promise.all([a.connect(), b.connect()]);
      await a.join(t.room);
      assert.equal((await a.socket.emitWithAck("leave", { conversation_id: t.room })).ok, true);
      await b.send(t.room, "missed 1");
      const last = await b.send(t.room, "missed 2");
      // `resync` comes from a server whose relay was interrupted (docs/api.md); delivered here as that server would.
      for (const listener of a.socket.listeners("resync")) listener({ conversation_id: t.room, last_seq: last.seq });
      await a.rec.waitFor("message", (m) => m.seq === 2);
      assert.deepEqual(a.rec.seqs(t.room), [1, 2]);
      assert.equal(a.rec.list("resync").length, 1);
      // Not behind: nothing to do.
      const joins = a.rec.list("joined").length;
      for (const listener of a.socket.listeners("resync")) listener({ conversation_id: t.room, last_seq: 2 });
      await barrier(server, a, t.patron);
      assert.equal(a.rec.list("joined").length, joins);
    });
  });

  describe("tokens", () => {
    test("the token is refreshed before exp with getToken and refresh_token; the socket outlives the old exp", T, async () => {
      const t = await api.roomWithTwo();
      const short = signToken(server.secret, t.patron, { ttl: 4 });
      const oldExp = JSON.parse(Buffer.from(short.split(".")[1], "base64url")).exp;
      let calls = 0;
      const fresh = signToken(server.secret, t.patron, { ttl: 3600 });
      // (a token with a second or less left would be replaced at connect: this one has 3 to 4)
      const a = client(server.urls[0], short, { getToken: async () => (calls++, fresh), refreshBeforeMs: 2_500 });
      await a.connect();
      const socketId = a.socket.id;
      const refreshed = await a.rec.waitFor("token_refreshed");
      assert.equal(calls, 1);
      assert.equal(a.token, fresh);
      const newExp = JSON.parse(Buffer.from(fresh.split(".")[1], "base64url")).exp;
      assert.equal(Date.parse(refreshed.expiresAt), newExp * 1000);
      // Past the old token's exp the same socket is still served.
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, oldExp * 1000 + 300 - Date.now())));
      await barrier(server, a, t.patron);
      assert.equal(a.socket.id, socketId);
      assert.deepEqual(a.rec.list("token_expired"), []);
      assert.deepEqual(a.rec.list("state").map((s) => s.state), ["connecting", "connected"]);
    });

    test("after token_expired the client reconnects with a new token and joins again", T, async () => {
      const t = await api.roomWithTwo();
      const short = signToken(server.secret, t.patron, { ttl: 4 });
      const fresh = signToken(server.secret, t.patron, { ttl: 3600 });
      const a = client(server.urls[0], short, { getToken: async () => fresh, autoRefresh: false });
      await a.connect();
      await a.join(t.room);
      await a.rec.waitFor("token_expired");
      await a.rec.waitFor("state", (s) => s.state === "connected" && s.reconnect);
      assert.equal(a.token, fresh);
      await a.rec.waitFor("joined", (j) => j.rejoin);
      await other.call("POST", `/conversations/${t.room}/messages`, { body: "still here?", client_msg_id: uid("m") }, t.creatorToken);
      await a.rec.waitFor("message", (m) => m.body === "still here?");
    });

    test("without getToken, token_expired ends in state disconnected", T, async () => {
      const patron = uid("pat");
      await api.user(patron);
      const a = client(server.urls[0], signToken(server.secret, patron, { ttl: 4 }));
      await a.connect();
      await a.rec.waitFor("token_expired");
      const st = await a.rec.waitFor("state", (s) => s.state === "disconnected");
      assert.equal(st.reason, "token_expired");
    });

    test("a refused connection rejects connect() with unauthorized", T, async () => {
      const a = client(server.urls[0], signToken("not-the-secret", uid("pat")));
      await assert.rejects(a.connect(), (err) => err instanceof BackstageError && err.code === "unauthorized");
      assert.equal(a.state, "disconnected");
      const expired = client(server.urls[0], signToken(server.secret, uid("pat"), { ttl: -10 }));
      await assert.rejects(expired.connect(), (err) => err.code === "unauthorized");
    });

    test("refreshToken with another user's token is forbidden and keeps the old token", T, async () => {
      const patron = uid("pat");
      await api.user(patron);
      const token = signToken(server.secret, patron);
      const a = client(server.urls[0], token);
      await a.connect();
      await assert.rejects(a.refreshToken(signToken(server.secret, uid("eve"))), (err) => err.code === "forbidden");
      await assert.rejects(a.refreshToken("garbage"), (err) => err.code === "unauthorized");
      assert.equal(a.token, token);
    });
  });

  describe("errors", () => {
    test("server error codes reject as BackstageError; a rejected send is not retried", T, async () => {
      const t = await api.roomWithTwo();
      const outsider = uid("eve");
      const eveToken = await api.user(outsider);
      const eve = client(server.urls[0], eveToken);
      const a = client(server.urls[0], t.patronToken);
      await Promise.all([eve.connect(), a.connect()]);

      await assert.rejects(eve.join(t.room), (err) => err instanceof BackstageError && err.code === "forbidden" && !err.transient);
      assert.deepEqual(eve.conversations(), []);
      assert.equal(eve.rec.list("join_error")[0].error.code, "forbidden");
      await assert.rejects(eve.join("999999999"), (err) => err.code === "not_found");
      await assert.rejects(eve.send(t.room, "let me in"), (err) => err.code === "forbidden");
      assert.deepEqual(eve.rec.list("send_status").map((s) => s.status), ["sending", "failed"]);

      await a.join(t.room);
      await assert.rejects(a.send(t.room, "x".repeat(4001)), (err) => err.code === "invalid");
      await assert.rejects(a.send(t.room, "   "), (err) => err.code === "invalid");
      const cmid = uid("cmid");
      await a.send(t.room, "first", { clientMsgId: cmid });
      await assert.rejects(a.send(t.room, "different body", { clientMsgId: cmid }), (err) => err.code === "conflict");
      await assert.rejects(a.editMessage("999999999", "nope"), (err) => err.code === "not_found");
      await assert.rejects(a.request("no_such_event", {}), (err) => err.code === "invalid");
      assert.deepEqual(a.pendingSends(), []);
    });

    test("requests while disconnected reject with offline; close() rejects what is pending", T, async () => {
      const t = await api.roomWithTwo();
      const a = client(server.urls[0], t.patronToken);
      await assert.rejects(a.history(t.room), (err) => err.code === "offline" && err.transient);
      const joining = a.join(t.room); // joins once connected
      const sending = a.send(t.room, "never");
      assert.equal(a.pendingSends()[0].status, "queued");
      a.close();
      await assert.rejects(joining, (err) => err.code === "closed");
      await assert.rejects(sending, (err) => err.code === "closed");
      assert.equal(a.state, "disconnected");
      assert.throws(() => new BackstageClient({ url: server.urls[0], token: "x" }), TypeError);
    });

    test("too many connections is refused with its code", T, async () => {
      const patron = uid("pat");
      const token = await api.user(patron);
      const sockets = [];
      for (let i = 0; i < 10; i++) sockets.push(await socketTo(server.urls[0], token));
      const a = client(server.urls[0], token);
      await assert.rejects(a.connect(), (err) => err.code === "too_many_connections");
      for (const s of sockets) s.close();
    });
  });

  describe("chat spaces", () => {
    test("guidelines are accepted before posting; room changes and deletion are passed on", T, async () => {
      const t = await api.roomWithTwo();
      const a = client(server.urls[0], t.patronToken);
      await a.connect();
      await a.join(t.room);
      const updated = new Promise((resolve) => a.on("conversation_updated", (c) => c.guidelines_version === 1 && resolve(c)));
      await other.admin("PATCH", `/rooms/${t.room}`, { guidelines: "Be kind." });
      assert.equal((await updated).guidelines, "Be kind.");
      await assert.rejects(a.send(t.room, "too early"),
        (err) => err.code === "forbidden" && err.details?.reason === "guidelines" && err.details?.guidelines_version === 1);
      const accepted = await a.acceptGuidelines(t.room, 1);
      assert.equal(accepted.guidelines_version, 1);
      assert.equal((await a.send(t.room, "accepted")).body, "accepted");
      const deleted = new Promise((resolve) => a.on("conversation_deleted", resolve));
      const revoked = new Promise((resolve) => a.on("access_revoked", resolve));
      await other.admin("DELETE", `/rooms/${t.room}`);
      assert.deepEqual(await deleted, { conversation_id: t.room });
      assert.deepEqual(await revoked, { conversation_id: t.room });
      assert.ok(!a.conversations().includes(t.room));
    });
  });
});

/** A 1×1 PNG (a valid image for the upload). */
function onePixelPng() {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.from([0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr),
    chunk("IDAT", zlib.deflateSync(Buffer.from([0, 255, 0, 0]))), chunk("IEND", Buffer.alloc(0))]);
}
